"""Replaying a run from its run directory alone: what a run keeps for it (the entry script's sources
in ``src/`` and ``replay.json``: the script, its arguments, the working directory), the environment
variable that hands a run its directory (``ICE_IGNITE_RUN_DIR``), and ``resume`` / ``show``, the
commands of ``python -m ice_ignite``.

The argument flow of ``python -m ice_ignite resume RUN_DIR``: it sets ``ICE_IGNITE_RUN_DIR=RUN_DIR``
and runs the kept script in this process (as ``python src/train.py ARGS`` would, from the recorded
working directory, with the recorded arguments). The first ``HyperGraph.run`` of that process takes
the variable (and removes it, so a later ``run`` of the script is its own): its run directory is
``RUN_DIR`` whatever ``out_dir`` / ``run_id`` the script passes, and ``resume_from`` is ``"auto"``
when ``RUN_DIR`` holds checkpoints (else the script's own ``resume_from``). Workers that ``run``
starts get the variable back, so every rank of a multi-process run agrees. A sweep member
(``ice.config``'s ``-m``) is started with the same variable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
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
from ice_ignite.observe.board import METRICS_NAME

__all__ = [
    "RUN_DIR_ENV",
    "RECORD_NAME",
    "METRICS_NAME",
    "RecordError",
    "directed",
    "passed_on",
    "record_entry",
    "read_record",
    "resume",
    "show",
]

logger = logging.getLogger("ice_ignite")

#: the run directory that the next ``HyperGraph.run`` of a process uses, resuming it when it holds checkpoints
RUN_DIR_ENV = "ICE_IGNITE_RUN_DIR"
#: what ``resume`` re-runs: the entry script (in the newest source copy), its arguments, the working directory
RECORD_NAME = "replay.json"


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

    if script_command() is None:
        return None
    return Path(sys.modules["__main__"].__file__).resolve()


def record_entry(run_dir: Path | None, rank: int, registered: Path | None = None) -> Path | None:
    """At the start of a run, on global rank 0: keep the entry script's sources in ``src/`` (the first
    run; ``src-<n>/`` when a later run's differ) and write ``replay.json``, what ``resume`` needs to
    run it again. Nothing where there is no entry script, nor where the sources registered with
    ``g.backup_source_files`` (``registered``) are another script's (the record would name a script
    the run directory does not hold). Returns the record written."""
    if run_dir is None or rank != 0:
        return None
    script = _entry_script()
    if script is None:
        return None
    if registered is not None and registered.resolve() != script:
        logger.info("replay.json not written: the kept sources are %s's, the entry script is %s", registered, script)
        return None
    keep_sources(script, run_dir)
    newest = source_copies(run_dir)[-1]
    record = {
        "script": script.name,
        "sources": newest.name,
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "python": sys.executable,
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    path = run_dir / RECORD_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_record(run_dir: str | os.PathLike) -> dict:
    """``replay.json`` of ``run_dir``.

    Raises:
        RecordError: ``run_dir`` is not a run directory, or its run kept no record (it had no
            entry script: a notebook, ``python -c``), naming what is missing and what to do.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RecordError(f"{str(root)!r} is not a directory: pass a run directory (out_dir/run_id)")
    path = root / RECORD_NAME
    if not path.is_file():
        raise RecordError(
            f"{str(root)!r} holds no {RECORD_NAME}: its run had no entry script to keep (a notebook, python -c) "
            "or it is not a run directory; resume it by running its script with resume_from='auto' and "
            f"run_id={root.name!r}"
        )
    return json.loads(path.read_text())


def resume(run_dir: str | os.PathLike) -> None:
    """Run the recorded script of ``run_dir`` again, in this process, from its kept sources, with its
    recorded arguments and working directory, into ``run_dir`` (resumed from its newest checkpoint
    when it has one): what ``python -m ice_ignite resume RUN_DIR`` does. The script's own exit
    (``SystemExit``) ends it, as it would end the script.

    Raises:
        RecordError: no record, or the kept script is gone.
    """
    root = Path(run_dir).resolve()
    record = read_record(root)
    script = root / record["sources"] / record["script"]
    if not script.is_file():
        raise RecordError(
            f"{str(script)!r}, the script {str(root)!r} recorded, is gone: restore {record['sources']}/ of the run "
            "directory, or run the original script with resume_from='auto'"
        )
    cwd = record.get("cwd")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    else:
        print(
            f"ice_ignite resume: the recorded working directory {cwd!r} is gone; running in {os.getcwd()!r}",
            file=sys.stderr,
        )
    os.environ[RUN_DIR_ENV] = str(root)
    sys.argv = [str(script), *record["argv"]]
    sys.path.insert(0, str(script.parent))  # as `python script.py`: its directory first
    runpy.run_path(str(script), run_name="__main__")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def show(run_dir: str | os.PathLike) -> str:
    """What a run directory records, for a person: the command that ran it, the configuration and
    the rest of the run's record (when written), its checkpoints and its last metrics.

    Raises:
        RecordError: ``run_dir`` is not a directory.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RecordError(f"{str(root)!r} is not a directory: pass a run directory (out_dir/run_id)")
    lines = [f"run directory: {root.resolve()}"]
    record = _read_json(root / RECORD_NAME)
    if record:
        lines.append(f"command: {record['script']} {' '.join(record['argv'])}".rstrip())
        lines.append(f"  sources: {record['sources']}/, working directory: {record['cwd']}, python: {record['python']}")
    else:
        lines.append(f"command: not recorded (no {RECORD_NAME})")
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
