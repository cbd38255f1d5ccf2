"""python train.py -m lr=...,... seed=...,...: one run per combination, each in its run directory
named by its overrides, a summary as CSV and Markdown; a sweep SIGKILLed in its first run resumes
that run and skips none of the others when its command is run again (tests/replay_child.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ice_ignite.replay import RUN_DIR_ENV
from ice_ignite.sweep import expand, split_values

CHILD = Path(__file__).with_name("replay_child.py")
SWEEP = ["-m", "lr=0.05,0.1", "seed=0,1", "times=2"]
NAMES = ["lr=0.05,seed=0,times=2", "lr=0.05,seed=1,times=2", "lr=0.1,seed=0,times=2", "lr=0.1,seed=1,times=2"]


def sweep(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in (RUN_DIR_ENV, "REPLAY_KILL_AT_STEP")}
    return subprocess.run(
        [sys.executable, str(CHILD), *args],
        cwd=cwd,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=400,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_two_by_two_sweep_runs_four_runs_writes_its_summary_and_resumes_after_a_sigkill(tmp_path):
    # SIGKILL (the whole process group, the sweep's driver too) after step 7 of the first run (5 an epoch)
    killed = sweep(tmp_path, *SWEEP, REPLAY_KILL_AT_STEP="7")
    assert killed.returncode == -signal.SIGKILL
    root = tmp_path / "runs" / "sweep_lr=0.05,0.1_seed=0,1_times=2"
    assert json.loads((root / "sweep.json").read_text())["status"] == {NAMES[0]: "running"}
    assert sorted(p.name for p in (root / NAMES[0] / "ckpts").iterdir()) == ["ckpt-000000-E1S5.pt"]

    done = sweep(tmp_path, *SWEEP)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == NAMES
    for name in NAMES:  # each its own run, resumed (the first) or whole: 2 epochs, 2 checkpoints
        assert sorted(p.name for p in (root / name / "ckpts").iterdir()) == [
            "ckpt-000000-E1S5.pt",
            "ckpt-000001-E2S10.pt",
        ]
    with open(root / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["lr"], r["seed"], r["times"], r["status"], r["steps.train"]) for r in rows] == [
        ("0.05", "0", "2", "done", "10"),
        ("0.05", "1", "2", "done", "10"),
        ("0.1", "0", "2", "done", "10"),
        ("0.1", "1", "2", "done", "10"),
    ]
    for row, name in zip(rows, NAMES):  # the last metrics of each run
        last = json.loads((root / name / "metrics.json").read_text())["metrics"]
        assert float(row["val/mse"]) == last["val/mse"] and float(row["train/mse"]) == last["train/mse"]
    assert rows[0]["val/mse"] != rows[2]["val/mse"]  # another learning rate, another result
    markdown = (root / "summary.md").read_text().splitlines()
    assert markdown[0] == "| lr | seed | times | status | steps.train | train/mse | val/mse |"
    assert len(markdown) == 2 + 4 and markdown[2].startswith("| 0.05 | 0 | 2 | done | 10 | ")

    again = sweep(tmp_path, *SWEEP)  # everything done: nothing runs again
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 4


def test_a_sweep_refuses_a_bad_combination_before_running_anything(tmp_path):
    bad = sweep(tmp_path, "-m", "lr=0.1,fast", "seed=0")
    assert bad.returncode == 2
    assert "lr=fast,seed=0" in bad.stderr and "nothing ran" in bad.stderr
    assert not (tmp_path / "runs").exists()


def test_comma_lists_expand_to_every_combination_in_order():
    assert [m.overrides for m in expand(["a=1,2", "b=x", "c=[1,2],[3]"])] == [
        ("a=1", "b=x", "c=[1,2]"),
        ("a=1", "b=x", "c=[3]"),
        ("a=2", "b=x", "c=[1,2]"),
        ("a=2", "b=x", "c=[3]"),
    ]
    assert split_values("'x,y',\"z\"") == ["'x,y'", '"z"']
    assert expand(["path=a/b"])[0].name == "path=a%2Fb"
