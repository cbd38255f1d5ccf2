"""python -m ice_ignite resume RUN_DIR: a run SIGKILLed in the middle, replayed from its run
directory alone, ends bit-identical to an uninterrupted run (1 and 2 processes); show prints
the record. The runs are real processes (tests/replay_child.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import linear_graph

import ice_ignite as ice
from ice_ignite.__main__ import main
from ice_ignite.replay import RUN_DIR_ENV, directed
from ice_ignite.run import RunOptions

CHILD = Path(__file__).with_name("replay_child.py")
TIMEOUT = 240


def environment(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (RUN_DIR_ENV, "REPLAY_KILL_AT_STEP")}
    return {**env, **extra}


def script(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    # a session of its own: the child's SIGKILL of its process group reaches every process of the run
    return subprocess.run(
        [sys.executable, str(CHILD), *args],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        start_new_session=True,
    )


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "ckpts").glob("ckpt-*"))


@pytest.mark.slow
@pytest.mark.parametrize("devices", ["cpu", "cpu:0-1"])
def test_resume_after_sigkill_ends_bit_identical_to_an_uninterrupted_run(tmp_path, devices, capsys):
    work = tmp_path / "work"
    work.mkdir()
    args = [f"devices={devices}", "out_dir=runs", "lr=0.05"]
    whole = script([*args, "run_id=whole"], work)
    assert whole.returncode == 0, whole.stderr
    # SIGKILL in the second epoch of four (5 steps an epoch), the third with 2 processes (3 steps each)
    killed = script([*args, "run_id=killed"], work, REPLAY_KILL_AT_STEP="7")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir, reference_dir = work / "runs" / "killed", work / "runs" / "whole"
    kept = checkpoints(run_dir)
    assert 1 <= len(kept) < 4 and kept == checkpoints(reference_dir)[: len(kept)]
    assert not (run_dir / "weights.pt").exists()

    elsewhere = tmp_path / "elsewhere"  # the replay needs nothing but the run directory's path
    elsewhere.mkdir()
    replay = subprocess.run(
        [sys.executable, "-m", "ice_ignite", "resume", str(run_dir)],
        cwd=elsewhere,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert replay.returncode == 0, replay.stderr
    assert checkpoints(run_dir) == checkpoints(reference_dir)  # the same four, the resumed ones written now
    resumed = torch.load(run_dir / "weights.pt", weights_only=True)
    reference = torch.load(reference_dir / "weights.pt", weights_only=True)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)  # bit for bit
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["killed", "whole"]  # no new run directory

    if devices == "cpu":  # what show prints of it (once is enough)
        main(["show", str(run_dir)])
        text = capsys.readouterr().out
        assert f"command: replay_child.py {' '.join(args)} run_id=killed" in text
        assert "overrides: devices=cpu out_dir=runs lr=0.05 run_id=killed" in text
        assert "world size 1, seed 0\n" in text  # the script's seed=cfg.seed
        assert "changed from the defaults: lr=0.05 (default 0.1), run_id='killed' (default None)" in text
        assert "config (config.yaml, hash " in text and "\n  lr: 0.05\n" in text
        assert "ckpt-000003-E4S20.pt" in text
        assert "last metrics (at steps.train 20):" in text and "val/mse: " in text


def test_the_run_dir_variable_directs_the_next_run_only_and_resumes_what_has_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "exp"))
    options, value = directed(RunOptions(run_id="other", out_dir="elsewhere", resume_from="pretrained.pt"))
    assert (options.out_dir, options.run_id) == (str(tmp_path), "exp")
    assert options.resume_from == "pretrained.pt"  # nothing to resume: the script's own resume_from
    assert value == str(tmp_path / "exp") and RUN_DIR_ENV not in os.environ
    (tmp_path / "exp" / "ckpts").mkdir(parents=True)
    (tmp_path / "exp" / "ckpts" / "ckpt-000000-E1S5.pt").write_bytes(b"")
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "exp"))
    assert directed(RunOptions())[0].resume_from == "auto"
    assert directed(RunOptions())[0].run_id is None  # taken by the first run


def test_resume_and_show_refuse_what_is_not_a_recorded_run_directory(tmp_path, capsys):
    # a run without an entry script of its own (here pytest's process) keeps no script to replay
    run_dir = linear_graph().run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp_path)
    assert list((run_dir / "src").iterdir()) == [] and (run_dir / "metrics.json").exists()
    with pytest.raises(SystemExit) as e:
        main(["resume", str(run_dir)])
    assert e.value.code == 2
    assert "keeps no copy of its entry script" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["show", str(tmp_path / "missing")])
    assert "is not a directory" in capsys.readouterr().err


def test_show_prints_the_seed_a_run_took_from_torch(tmp_path, capsys):
    g = linear_graph()
    torch.manual_seed(7)  # as in an ignite script: the run's seed=None takes torch.initial_seed()
    run_dir = g.run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp_path, progress=False)
    main(["show", str(run_dir)])
    assert "world size 1, seed 7 (torch.initial_seed())\n" in capsys.readouterr().out
