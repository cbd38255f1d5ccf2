"""Run a script of examples/ the way a user does (``python examples/NAME.py key=value ...``), for the
gallery's tests in tests/examples/."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example_module(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plot_board = _example_module("plot_board")  # examples/plot_board.py: read_scalars, plot_board


def start(name: str, *settings: str) -> subprocess.Popen:
    """Start ``examples/{name}.py`` with ``settings``. One intra-op thread: the examples' models are
    tiny, and on a shared machine more threads only wait for each other (10x slower here at load 9)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *settings],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> list[str]:
    """Wait for ``proc``; return its stdout lines, after checking it exited 0."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{err[-3000:]}"
    return out.strip().splitlines()


def run_example(name: str, *settings: str, timeout: float = 120) -> list[str]:
    """Run ``examples/{name}.py`` with ``settings``; return its stdout lines."""
    return finish(start(name, *settings), timeout)


def number_after(line: str, words: str) -> float:
    """The number that follows ``words`` in ``line``."""
    return float(line.split(words, 1)[1].split()[0].rstrip(",;)"))
