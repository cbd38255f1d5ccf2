"""Sweeps: ``python train.py -m lr=1e-3,3e-3 seed=0,1`` runs the script once per combination of the
comma lists (4 runs here), one after another, each in its own run directory named by its overrides,
and writes a summary table (overrides → status, ``steps.train``, last metrics) as CSV and Markdown.

``ice.config`` hands ``-m`` here: this process becomes the sweep's driver. It checks every
combination's configuration first (an unknown key or a wrong type stops the sweep before any run),
then starts the script as a new process per combination, with that combination's ``key=value``
arguments and ``ICE_IGNITE_RUN_DIR`` naming its run directory (see ``ice_ignite.replay``): the
run resumes from its directory's newest checkpoint when it has one. Running the same command again
skips the combinations that finished and resumes the others. SIGTERM or SIGINT to the process group
(SLURM, Ctrl-C) makes the running run checkpoint and exit; the sweep then stops with 128 + the signal.

    runs/sweep_lr=1e-3,3e-3_seed=0,1/
        lr=1e-3,seed=0/  lr=1e-3,seed=1/  lr=3e-3,seed=0/  lr=3e-3,seed=1/   (run directories)
        sweep.json  summary.csv  summary.md
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ice_ignite.checkpoint.rundir import DEFAULT_OUT_DIR
from ice_ignite.errors import ConfigError
from ice_ignite.observe.board import METRICS_NAME
from ice_ignite.replay import RUN_DIR_ENV

__all__ = ["Member", "split_values", "expand", "sweep_dir_name", "run_sweep", "summary_rows", "STATE_NAME"]

#: the sweep's state: its command and each combination's status
STATE_NAME = "sweep.json"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NAME_MAX = 200  # bytes of a directory name made of overrides, below the 255 a file system allows


def split_values(value: str) -> list[str]:
    """The comma list ``value`` as its items, splitting only at commas outside brackets and quotes.

    Examples:
        >>> split_values("1e-3,3e-3")
        ['1e-3', '3e-3']
        >>> split_values("[1,2],[3,4]")
        ['[1,2]', '[3,4]']
        >>> split_values("'a,b',c")
        ["'a,b'", 'c']
    """
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(value):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(value[start:i])
            start = i + 1
    items.append(value[start:])
    return items


@dataclasses.dataclass(frozen=True)
class Member:
    """One combination of a sweep: its ``key=value`` overrides and its run directory's name."""

    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        """The overrides joined with ``,`` (``/`` written as ``%2F``), shortened with a hash when long."""
        return _dir_name(",".join(self.overrides))


def _dir_name(text: str) -> str:
    text = text.replace("%", "%25").replace("/", "%2F")
    if not text or text in (".", ".."):
        text = "default"
    if len(text.encode()) > _NAME_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        text = text.encode()[: _NAME_MAX - 13].decode(errors="ignore") + "-" + digest
    return text


def expand(overrides: Sequence[str]) -> list[Member]:
    """Every combination of the comma lists in ``overrides`` (``key=a,b``), the first key varying
    slowest; an override without a comma is in every combination.

    Examples:
        >>> [m.name for m in expand(["lr=1e-3,3e-3", "seed=0,1"])]
        ['lr=1e-3,seed=0', 'lr=1e-3,seed=1', 'lr=3e-3,seed=0', 'lr=3e-3,seed=1']
    """
    choices = []
    for override in overrides:
        key, value = override.split("=", 1)
        items = split_values(value)
        if any(not item for item in items):
            raise ConfigError(f"sweep override {override!r} has an empty value: write {key}=a,b,c")
        choices.append([f"{key}={item}" for item in items])
    return [Member(tuple(combination)) for combination in itertools.product(*choices)]


def sweep_dir_name(config_files: Sequence[str], overrides: Sequence[str]) -> str:
    """The sweep's directory name: ``sweep_`` and its arguments, so that the same command finds the
    same sweep again."""
    parts = [Path(f).stem for f in config_files] + list(overrides)
    return _dir_name("sweep_" + "_".join(parts))


def _script() -> list[str]:
    """The command that runs this process's entry script, without its arguments."""
    from ice_ignite.distributed.launcher import script_command

    command = script_command()
    if command is None:
        raise ConfigError(
            "-m (a sweep) starts the script once per combination: run it as a script (python train.py -m ...), "
            "not from a notebook or python -c"
        )
    given = len(sys.argv) - 1
    return [sys.executable, *(command[: len(command) - given] if given else command)]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def summary_rows(sweep_dir: Path, members: Sequence[Member], status: dict[str, str]) -> tuple[list[str], list[list]]:
    """The summary's header and rows: each member's overrides (one column per key), status,
    ``steps.train`` and last metrics (from its run directory's ``metrics.json``)."""
    keys = list(dict.fromkeys(o.split("=", 1)[0] for m in members for o in m.overrides))
    metrics = {m.name: _read_json(sweep_dir / m.name / METRICS_NAME) or {} for m in members}
    names = sorted({k for record in metrics.values() for k in record.get("metrics", {})})
    rows = []
    for m in members:
        values = dict(o.split("=", 1) for o in m.overrides)
        record = metrics[m.name]
        rows.append(
            [values.get(k, "") for k in keys]
            + [status.get(m.name, "pending"), record.get("steps.train", "")]
            + [record.get("metrics", {}).get(n, "") for n in names]
        )
    return keys + ["status", "steps.train"] + names, rows


def _write_summary(sweep_dir: Path, members: Sequence[Member], status: dict[str, str]) -> None:
    header, rows = summary_rows(sweep_dir, members, status)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    _write(sweep_dir / "summary.csv", buffer.getvalue())

    def cell(value: Any) -> str:
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    _write(sweep_dir / "summary.md", "\n".join(lines) + "\n")


def run_sweep(
    schema: type,
    config_files: Sequence[str],
    overrides: Sequence[str],
    load: Callable[[type, Sequence[str], Sequence[str]], Any],
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
) -> NoReturn:
    """Run the sweep of ``overrides`` (``key=a,b`` comma lists) over the script of this process, then
    exit: status 0 when every combination finished, 1 otherwise (the summary says which).

    Args:
        schema: the script's config dataclass.
        config_files: the ``--config`` files, given to every run.
        overrides: the ``key=value`` arguments, comma lists included.
        load: ``load(schema, config_files, member_overrides)`` builds one combination's config (or
            raises ``ConfigError``): every combination is checked before the first run.
        out_dir: where the sweep's directory goes.

    Raises:
        ConfigError: under ``torchrun`` (a sweep starts its runs itself), a combination's config is
            refused (all are listed), or there is no script to run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or RUN_DIR_ENV in os.environ:
        raise ConfigError(
            "-m (a sweep) starts its runs itself, one process each: run `python train.py -m ...` without "
            "torchrun (give the devices in the config, e.g. devices=cpu:0-1)"
        )
    members = expand(overrides)
    errors = []
    for member in members:
        try:
            load(schema, config_files, member.overrides)
        except ConfigError as e:
            errors.append(f"{member.name}: {e}")
    if errors:
        raise ConfigError("the sweep's configurations are refused, nothing ran:\n  " + "\n  ".join(errors))
    command = _script()
    sweep_dir = (Path(out_dir) / sweep_dir_name(config_files, overrides)).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    state = _read_json(sweep_dir / STATE_NAME) or {}
    status: dict[str, str] = dict(state.get("status", {}))
    files = [arg for f in config_files for arg in ("--config", f)]

    def save() -> None:
        record = {"command": [*command, "-m", *files, *overrides], "cwd": os.getcwd(), "status": status}
        _write(sweep_dir / STATE_NAME, json.dumps(record, indent=2) + "\n")
        _write_summary(sweep_dir, members, status)

    # SIGTERM / SIGINT to the process group (SLURM, Ctrl-C) reach the running run too, which checkpoints
    # and exits: the driver waits for it (never kills it), records it, and starts no other run
    stopped: list[int] = []
    handlers = {sig: signal.signal(sig, lambda number, frame: stopped.append(number)) for sig in _STOP_SIGNALS}
    try:
        for i, member in enumerate(members, 1):
            if status.get(member.name) == "done":
                print(f"ice_ignite sweep: [{i}/{len(members)}] {member.name}: done before, skipped", flush=True)
                continue
            if stopped:
                break
            run_dir = sweep_dir / member.name
            print(f"ice_ignite sweep: [{i}/{len(members)}] {member.name} -> {run_dir}", flush=True)
            status[member.name] = "running"
            save()
            child = subprocess.Popen(
                [*command, *files, *member.overrides], env={**os.environ, RUN_DIR_ENV: str(run_dir)}
            )
            code = child.wait()
            status[member.name] = "done" if code == 0 else f"{'stopped' if stopped else 'failed'} (exit {code})"
            save()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if stopped:
        print(
            f"ice_ignite sweep: stopped by signal {stopped[0]}; run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + stopped[0])
    failed = [name for name, s in status.items() if s != "done" and name in {m.name for m in members}]
    print(f"ice_ignite sweep: summary in {sweep_dir / 'summary.md'}", flush=True)
    if failed:
        print(
            f"ice_ignite sweep: {len(failed)} of {len(members)} runs did not finish ({', '.join(failed)}); run the "
            "same command again to resume them",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(1)
    raise SystemExit(0)
