"""DatasetNode with real processes: a resumable stream killed with SIGKILL and resumed with workers,
and two ranks taking their slices of a sampler's order and their shards of a stream, across a resume.
Every test starts real processes with a timeout."""

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import data_child
import pytest
import torch

from ice_ignite.nodes.sampling import sampler_order
from ice_ignite.training.seeding import derive_seed

CHILD = Path(__file__).resolve().parents[1] / "data_child.py"
pytestmark = pytest.mark.slow


def start(out_dir, run_id, mode, workers, *extra):
    # a session of its own: a kill takes the process with its DataLoader workers, as a lost machine would
    return subprocess.Popen(
        [sys.executable, "-u", str(CHILD), str(out_dir), run_id, mode, str(workers), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def test_a_stream_killed_at_random_moments_resumes_with_workers_without_a_repeat_or_a_gap(tmp_path):
    data_child.kill(argparse.Namespace(out_dir=tmp_path, run_id="ref", workers=2))  # the reference, in this process
    reference = torch.load(tmp_path / "ref-final.pt", weights_only=True)
    assert len(reference["seen"]) == 30 * 4 and sorted(reference["seen"][:96]) == list(range(96))
    rng = random.Random(15)
    kills = 0
    for trial in range(10):
        proc = start(tmp_path, "killed", "kill", 2)
        try:
            if kills < 2:
                assert proc.stdout.readline().strip() == "STARTED", proc.stderr.read()
                time.sleep(rng.uniform(0.2, 0.8))
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                    kills += 1
                    continue
            finish(proc)
            break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert kills == 2, f"the run ended before 2 kills (trial {trial})"
    resumed = torch.load(tmp_path / "killed-final.pt", weights_only=True)
    assert resumed["seen"] == reference["seen"]  # each element once a pass, in the same order
    for key, value in reference["module"].items():
        assert torch.equal(resumed["module"][key], value), key


def test_two_ranks_take_their_slices_of_the_sampled_order_and_their_shards_of_a_stream(tmp_path):
    finish(start(tmp_path, "ref", "ranks", 2), timeout=300)
    ref = [torch.load(tmp_path / f"ref-rank{r}.pt", weights_only=True)["batches"] for r in (0, 1)]
    assert len(ref[0]) == len(ref[1]) == 3 + 9
    # the sampler: per global batch of 6, rank 0 holds the first 3, rank 1 the next; a pass is the order
    # drawn once, from a generator seeded by (seed, node, pass) alone
    sampler = torch.utils.data.WeightedRandomSampler(torch.linspace(0.1, 1.0, 30), num_samples=26)
    expected = [sampler_order(sampler, derive_seed(0, "*/sampled", "sampler", p)) for p in range(3)]
    got = [a[0] + b[0] for a, b in zip(*ref)]
    assert got[:5] == [expected[0][i : i + 6] for i in range(0, 26, 6)]
    assert got[5:10] == [expected[1][i : i + 6] for i in range(0, 26, 6)]
    # the stream: 2 ranks x 2 workers, 8 batches of 4 a rank per pass; together every element once
    streamed = [a[1] + b[1] for a, b in zip(*ref)]
    assert sorted(sum(streamed[:8], [])) == list(range(64))
    assert sum(streamed[8:], []) == sum(streamed[:4], [])  # the next pass starts over in the same order
    # resumed from the checkpoint after 3 steps: every rank continues where it was, the stream's
    # workers included
    checkpoint = next((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt"))
    finish(start(tmp_path, "resumed", "ranks", 2, "--resume", str(checkpoint)), timeout=300)
    for r in (0, 1):
        assert torch.load(tmp_path / f"resumed-rank{r}.pt", weights_only=True)["batches"] == ref[r][3:], r
