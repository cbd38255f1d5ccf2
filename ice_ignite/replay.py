"""Replaying a run from its run directory alone: the entry script's sources kept in ``src/`` (here),
the run's record (``record.yaml``: argv, working directory, options, written by ``config/record.py``),
the environment variable that hands a run its directory (``ICE_IGNITE_RUN_DIR``), and ``resume`` /
``show``, the commands of ``python -m ice_ignite``.

The argument flow of ``python -m ice_ignite resume RUN_DIR``: it sets ``ICE_IGNITE_RUN_DIR=RUN_DIR``
and runs the newest kept copy of the script in this process (as ``python src/train.py ARGS`` would,
from the recorded working directory, with the recorded arguments). The first ``HyperGraph.run`` of
that process takes the variable (and removes it, so a later ``run`` of the script is its own): its
run directory is ``RUN_DIR`` whatever ``out_dir`` / ``run_id`` the script passes, and
``resume_from`` is ``"auto"`` when ``RUN_DIR`` holds checkpoints (else the script's own
``resume_from``). Workers that ``run`` starts get the variable back, so every rank of a
multi-process run agrees. A sweep's runs (``ice.config``'s ``-m``) are started with the same variable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ice_ignite.checkpoint.backup import keep_sources, source_copies
from ice_ignite.checkpoint.files import list_checkpoints
from ice_ignite.checkpoint.rundir import RunDir
from ice_ignite.config.record import CONFIG_FILE, HISTORY_FILE, RECORD_FILE
from ice_ignite.observe.board import METRICS_NAME

__all__ = [
    "RUN_DIR_ENV",
    "METRICS_NAME",
    "RecordError",
    "directed",
    "passed_on",
    "keep_entry_sources",
    "read_record",
    "replay_script",
    "resume",
    "show",
]

logger = logging.getLogger("ice_ignite")

#: the run directory that the next ``HyperGraph.run`` of a process uses, resuming it when it holds checkpoints
RUN_DIR_ENV = "ICE_IGNITE_RUN_DIR"


class RecordError(FileNotFoundError):
    """A run directory lacks what ``resume`` / ``show`` need (its record, its kept script)."""


def directed(options: Any) -> tuple[Any, str | None]:
    """``options`` (a ``RunOptions``) with the run directory named by ``ICE_IGNITE_RUN_DIR``, which
    is taken out of the environment (the next ``run`` of this process is its own); returns the
    options and the variable's value (None: not set, ``options`` unchanged).

    Examples:
        >>> from ice_ignite.run import RunOptions
        >>> os.environ[RUN_DIR_ENV] = "/tmp/runs/exp"
        >>> options, value = directed(RunOptions(run_id="other"))
        >>> options.out_dir, options.run_id, options.resume_from, RUN_DIR_ENV in os.environ
        ('/tmp/runs', 'exp', None, False)
    """
    value = os.environ.pop(RUN_DIR_ENV, None)
    if not value:
        return options, None
    root = Path(value)
    resume_from = "auto" if RunDir(root).has_checkpoints() else options.resume_from
    return dataclasses.replace(options, out_dir=str(root.parent), run_id=root.name, resume_from=resume_from), value


@contextlib.contextmanager
def passed_on(value: str | None) -> Iterator[None]:
    """``ICE_IGNITE_RUN_DIR=value`` in the environment while the workers of a directed run start
    (they re-run the script, and their first ``run`` must take the same directory)."""
    if value is None:
        yield
        return
    os.environ[RUN_DIR_ENV] = value
    try:
        yield
    finally:
        os.environ.pop(RUN_DIR_ENV, None)


def _entry_script() -> Path | None:
    """The script this process runs (``python train.py``), or None (a notebook, ``python -c``, pytest)."""
    from ice_ignite.distributed.launcher import script_command

    main_file = getattr(sys.modules["__main__"], "__file__", None)
    if script_command() is None or main_file is None:
        return None
    return Path(main_file).resolve()


def keep_entry_sources(run_dir: Path | None, rank: int, registered: Path | None = None) -> Path | None:
    """At the start of a run, on global rank 0: keep the entry script and the local modules it imports
    in ``src/`` (the first run; ``src-<n>/`` when a later run's differ), as
    ``g.backup_source_files(__file__)`` does, so that ``resume`` can run it again. Nothing where there
    is no entry script, nor where the sources registered with ``g.backup_source_files``
    (``registered``) are another script's. Returns the folder written (None: nothing new)."""
    if run_dir is None or rank != 0:
        return None
    script = _entry_script()
    if script is None:
        return None
    if registered is not None and registered.resolve() != script:
        logger.info("src/ keeps %s's sources (backup_source_files), not the entry script %s's", registered, script)
        return None
    return keep_sources(script, run_dir)


def read_record(run_dir: str | os.PathLike) -> dict:
    """``record.yaml`` of ``run_dir`` (written by every start of its run, see ``config/record.py``).

    Raises:
        RecordError: ``run_dir`` is not a run directory, or holds no record, naming what is missing
            and what to do.
    """
    import yaml

    root = Path(run_dir)
    if not root.is_dir():
        raise RecordError(f"{str(root)!r} is not a directory: pass a run directory (out_dir/run_id)")
    path = root / RECORD_FILE
    if not path.is_file():
        raise RecordError(
            f"{str(root)!r} holds no {RECORD_FILE}: it is not a run directory, or its run ended before its first "
            "task started; run its script again with resume_from='auto' and run_id=" + repr(root.name)
        )
    return yaml.safe_load(path.read_text()) or {}


def replay_script(run_dir: str | os.PathLike) -> tuple[Path, dict]:
    """The kept script that ``resume`` runs (in the newest source copy of ``run_dir``) and the record.

    Raises:
        RecordError: no record; the run had no entry script (a notebook, ``python -c``); its copy is
            not in the run directory; the run's processes were started by torchrun or SLURM and this
            process is not one of such a launch.
    """
    from ice_ignite.distributed.launcher import in_worker, parse_devices

    root = Path(run_dir).resolve()
    record = read_record(root)
    entry = record.get("entry_script")
    copies = source_copies(root)
    script = copies[-1] / Path(entry).name if entry and copies else None
    if script is None or not script.is_file():
        raise RecordError(
            f"{str(root)!r} keeps no copy of its entry script {entry!r} in src/: its run had no script to keep "
            "(a notebook, python -c, a test), or src/ was removed; run the script again with "
            f"resume_from='auto' and run_id={root.name!r}"
        )
    options = record.get("options") or {}
    world_size = int(record.get("world_size") or 1)
    try:
        started_here = len(parse_devices(str(options.get("devices", "auto")))) * _nodes(options)
    except (ValueError, RuntimeError):
        started_here = world_size
    if world_size > started_here and not in_worker():
        raise RecordError(
            f"{str(root)!r} ran {world_size} processes started by a launcher (torchrun, SLURM): resume it under the "
            f"same launcher, e.g. torchrun --nproc_per_node={world_size} -m ice_ignite resume {root}"
        )
    return script, record


def _nodes(options: dict) -> int:
    nnodes = str((options.get("launch") or {}).get("nnodes", "1"))
    return int(nnodes.split(":")[-1])


def resume(run_dir: str | os.PathLike) -> None:
    """Run the recorded script of ``run_dir`` again, in this process, from its newest source copy
    (``src/``, ``src-<n>/``), with its recorded arguments and working directory, into ``run_dir``
    (resumed from its newest checkpoint when it has one): what ``python -m ice_ignite resume
    RUN_DIR`` does. The script's own exit (``SystemExit``) ends it, as it would end the script.

    Raises:
        RecordError: see ``replay_script``.
    """
    root = Path(run_dir).resolve()
    script, record = replay_script(root)
    cwd = record.get("cwd")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    else:
        print(
            f"ice_ignite resume: the recorded working directory {cwd!r} is gone; running in {os.getcwd()!r}",
            file=sys.stderr,
        )
    os.environ[RUN_DIR_ENV] = str(root)
    sys.argv = [str(script), *list(record.get("argv") or [])[1:]]
    sys.path.insert(0, str(script.parent))  # as `python script.py`: its directory first
    runpy.run_path(str(script), run_name="__main__")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _indented(text: str) -> list[str]:
    return ["  " + line for line in text.rstrip().splitlines()]


def show(run_dir: str | os.PathLike) -> str:
    """What a run directory records, for a person: the command that ran it and where, the overrides
    and the keys changed from their defaults, the configuration, the versions and the code's git
    state, the configuration's history across resumes, the checkpoints and the last metrics.

    Raises:
        RecordError: ``run_dir`` is not a directory.
    """
    import yaml

    root = Path(run_dir)
    if not root.is_dir():
        raise RecordError(f"{str(root)!r} is not a directory: pass a run directory (out_dir/run_id)")
    lines = [f"run directory: {root.resolve()}"]
    try:
        record = yaml.safe_load((root / RECORD_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        record = {}
    if record:
        argv = list(record.get("argv") or [])
        script = Path(argv[0]).name if argv else "?"
        options = record.get("options") or {}
        lines.append(f"command: {' '.join([script, *argv[1:]])}")
        lines.append(f"  started {record.get('started')} on {record.get('host')} in {record.get('cwd')}")
        seed = record.get("seed", options.get("seed"))
        origin = " (torch.initial_seed())" if options.get("seed") is None and seed is not None else ""
        lines.append(f"  devices {options.get('devices')}, world size {record.get('world_size')}, seed {seed}{origin}")
        lines.append(f"overrides: {' '.join(record.get('overrides') or []) or 'none'}")
        changed = record.get("changed_from_defaults") or {}
        lines.append(
            "changed from the defaults: "
            + (", ".join(f"{k}={v['value']!r} (default {v['default']!r})" for k, v in changed.items()) or "none")
        )
        versions = record.get("versions") or {}
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        git = record.get("git")
        if git:
            lines.append(
                f"git: {git.get('commit')} ({git.get('branch')}){', dirty: see ' + str(git.get('diff')) if git.get('dirty') else ''}"
            )
    else:
        lines.append(f"command: not recorded (no {RECORD_FILE})")
    if (root / CONFIG_FILE).is_file():
        lines.append(f"config ({CONFIG_FILE}, hash {record.get('config_hash')}):")
        lines.extend(_indented((root / CONFIG_FILE).read_text()))
    if (root / HISTORY_FILE).is_file():
        lines.append(f"config history ({HISTORY_FILE}):")
        lines.extend(_indented((root / HISTORY_FILE).read_text()))
    lines.append("checkpoints:")
    ckpts = list_checkpoints(root / "ckpts", best=True)
    lines.extend(f"  {path.name}" for _, path in ckpts)
    if not ckpts:
        lines.append("  none")
    metrics = _read_json(root / METRICS_NAME)
    if metrics:
        lines.append(f"last metrics (at steps.train {metrics['steps.train']}):")
        lines.extend(f"  {name}: {value:.6g}" for name, value in sorted(metrics["metrics"].items()))
    else:
        lines.append("last metrics: none (no epoch ended)")
    return "\n".join(lines)
