"""What a training script calls first: ``ice.config``, its settings from the command line, as
one configuration or, with ``-m``, a sweep that runs the script once per combination.

Parsing and checking live in ``ice_ignite.config.cli``; the sweep in ``ice_ignite.sweep``.
"""

# no ``from __future__ import annotations``: the doctest below defines dataclasses that OmegaConf reads
import os
import sys
from collections.abc import Sequence
from typing import TypeVar

from ice_ignite.config.cli import check_schema, help_text, load_config, load_member, split_command_line
from ice_ignite.errors import ConfigError
from ice_ignite.sweep import run_sweep

__all__ = ["config"]

T = TypeVar("T")


def config(schema: type[T], argv: Sequence[str] | None = None, *, exit_on_error: bool | None = None) -> T:
    """The settings of a script: an instance of the dataclass ``schema`` (nested dataclasses
    allowed) with its defaults, the YAML files given as ``--config FILE`` merged in order, then
    the ``key=value`` overrides (``model.width=256`` for a nested key). ``--help`` prints every key
    with its type, default and help (``field(metadata={"help": ...})``) and exits with status 0.

    Values are parsed and checked by OmegaConf (YAML values: ``null``, ``true``, ``[1, 2]``).
    Nothing is registered anywhere: pass the result on, e.g. ``g.run(..., config=cfg)`` to record
    it with the run and compare it on resume. ``-m`` with comma lists (``python train.py -m lr=1e-3,3e-3
    seed=0,1``) makes the script a sweep: this call runs it once per combination, in new processes,
    writes the summary and exits (see ``ice_ignite.sweep``). Under ``torchrun`` and ``devices="cpu:0-1"`` every
    process gets the same arguments, hence the same config.

    Args:
        schema: the dataclass type declaring the settings.
        argv: the arguments, without the program name; None: ``sys.argv[1:]``.
        exit_on_error: on a bad argument, print ``prog: error: <message>`` on stderr and exit
            with status 2 (as argparse does) instead of raising ``ConfigError``. None (the default):
            exit when ``argv`` is None (a script), raise when ``argv`` is given (tests, notebooks).

    Returns:
        An instance of ``schema``.

    Raises:
        ConfigError: an unknown key (the message suggests the closest), a value of the wrong type
            (the message names the key, the value and the type), a required key without value, an
            unreadable ``--config`` file, ``-m`` with an explicit ``argv``.
        TypeError: ``schema`` is not a dataclass type, or holds a type OmegaConf cannot.

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class Model:
        ...     width: int = 128
        >>> @dataclasses.dataclass
        ... class Config:
        ...     lr: float = dataclasses.field(default=1e-3, metadata={"help": "learning rate"})
        ...     model: Model = dataclasses.field(default_factory=Model)
        >>> config(Config, ["lr=3e-4", "model.width=256"])
        Config(lr=0.0003, model=Model(width=256))
    """
    check_schema(schema)
    args = sys.argv[1:] if argv is None else list(argv)
    if exit_on_error is None:
        exit_on_error = argv is None
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "script"
    try:
        command_line = split_command_line(args)
        if command_line.help:
            if os.environ.get("RANK", "0") == "0":  # under torchrun: once
                print(help_text(schema, prog), flush=True)
            raise SystemExit(0)
        if command_line.multirun and argv is not None:
            raise ConfigError(
                "-m (several configurations, one run each) is a sweep: it runs from a script's own command line "
                "(python train.py -m lr=1e-3,3e-3), not with an explicit argv"
            )
        if command_line.multirun:  # -m makes this process a sweep's driver; it exits when the sweep ends
            run_sweep(schema, command_line.config_files, command_line.overrides, load_member)
        return load_config(schema, command_line)
    except ConfigError as e:
        if not exit_on_error:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
