"""examples/char_lm.py in its tiny setting: one process (and a resume), two processes with DDP and with FSDP."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import char_lm  # noqa: E402

TINY = [
    "megabytes=0.2",
    "context=32",
    "width=32",
    "depth=1",
    "heads=2",
    "batch_size=8",
    "grad_acc=2",
    "eval_every=20",
    "val_batches=2",
    "warmup=5",
    "lr=3e-3",
    "sample_chars=60",
]


def run_example(tmp_path: Path, *settings: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "char_lm.py"), *TINY, f"out_dir={tmp_path}", *settings],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def reports(out: str) -> list[tuple[int, float, float]]:
    """(step, train loss, val loss) of every validation line."""
    found = re.findall(r"^step +(\d+)  train (\S+)  val (\S+)$", out, flags=re.M)
    return [(int(s), float(t), float(v)) for s, t, v in found]


def sampled(out: str) -> str:
    head = re.search(r"^--- (\d+) characters sampled after a validation prompt ---\n", out, flags=re.M)
    return out[head.end() : out.index("\n--- end ---")]


def check_trained(out: str, steps: list[int]) -> None:
    lines = reports(out)
    assert [s for s, _, _ in lines] == steps
    vals = [v for _, _, v in lines]
    assert vals[-1] < vals[0] < math.log(len(char_lm.VOCAB))  # below chance, and falling
    text = sampled(out)
    assert len(text) == 60 and set(text) <= set(char_lm.VOCAB)
    finals = re.findall(r"^val loss (\S+) nats/char after (\d+) steps", out, flags=re.M)
    assert finals == [(f"{vals[-1]:.4f}", str(steps[-1]))]  # printed once, by rank 0


@pytest.mark.slow
def test_one_process_trains_samples_and_a_resume_continues_the_step_count(tmp_path):
    out = run_example(tmp_path, "steps=40", "run_id=lm")
    check_trained(out, [20, 40])
    ckpts = sorted(p.name for p in (tmp_path / "lm" / "ckpts").glob("ckpt-*"))
    assert [c.split("-")[2] for c in ckpts] == ["E0S20.pt", "E0S40.pt"]

    out = run_example(tmp_path, "steps=60", "run_id=lm", "resume_from=auto")
    assert [s for s, _, _ in reports(out)] == [60]  # steps 1-40 are not run again
    assert re.search(r"^val loss \S+ nats/char after 60 steps", out, flags=re.M)
    assert len(list((tmp_path / "lm" / "ckpts").glob("ckpt-*"))) == 3


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes(tmp_path, parallel):
    out = run_example(tmp_path, "steps=40", "devices=cpu:0-1", f"parallel={parallel}", "run_id=two")
    check_trained(out, [20, 40])
    if parallel == "fsdp":  # sharded checkpoints: a directory that both processes wrote to
        assert all(p.is_dir() for p in (tmp_path / "two" / "ckpts").glob("ckpt-*"))


def test_corpus_is_the_standard_library_in_a_fixed_order():
    train, val = char_lm.load_corpus(0.2)
    assert len(train) + len(val) == 200_000 and 0.05 < len(val) / len(train) < 0.2
    assert char_lm.decode(train[:3]) == '"""' and char_lm.load_corpus(0.2)[1].equal(val)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"parallel": "fdsp"}, "parallel='fdsp': choose one of ddp, fsdp"),
        ({"steps": 130}, "not a multiple of eval_every"),
    ],
)
def test_a_bad_setting_is_an_error_naming_it(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        char_lm.Config(**settings)
