"""One run directory, one run: the OS lock (``run.lock``, ``fcntl.flock``) a run holds on its
directory for its whole life, released however it ends (API.md B8)."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import linear_graph

import ice_ignite as ice

TESTS = Path(__file__).resolve().parents[1]


def wait_until_released():
    """The holder's schedule entry (it waits there); the same qualname keeps a resumed schedule equal."""


def schedule():
    return [
        ice.Task(train=True, epochs=1, tags="train"),
        ice.SaveCheckpointTask(),
        wait_until_released,
        ice.Task(train=True, epochs=1, tags="train"),
    ]


def test_a_second_run_of_a_directory_in_use_fails_at_once_naming_the_holder(tmp_path):
    refused = []

    def second_run():  # while the first run holds "exp" (in this process: another open of the lock file)
        start = time.monotonic()
        with pytest.raises(RuntimeError) as info:
            linear_graph().run(schedule(), devices="cpu", out_dir=tmp_path, run_id="exp", resume_from="auto")
        refused.append((str(info.value), time.monotonic() - start))

    first = linear_graph()
    first.run(
        [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask(), second_run],
        devices="cpu",
        out_dir=tmp_path,
        run_id="exp",
    )
    ((message, seconds),) = refused
    assert re.search(
        rf"the run directory '.*/exp' is in use by another run \(host {re.escape(socket.gethostname())}, "
        rf"pid {os.getpid()}, started \d{{4}}-\d\d-\d\dT[\d:]+[+-][\d:]+\); wait for that run "
        "to end .* or pass another run_id",
        message,
    ), message
    assert seconds < 2
    assert first.global_counters.steps.train == 5  # the second run neither trained nor disturbed the first
    assert len(list((tmp_path / "exp" / "ckpts").glob("ckpt-*.pt"))) == 1


def test_the_lock_is_released_when_a_run_raises(tmp_path):
    failing = [True]

    def step():
        if failing[0]:
            raise ValueError("planned")

    def tasks():
        return [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask(), step]

    with pytest.raises(ValueError, match="planned"):
        linear_graph().run(tasks(), devices="cpu", out_dir=tmp_path, run_id="exp")
    assert (tmp_path / "exp" / "run.lock").read_text() == ""
    failing[0] = False
    g = linear_graph()  # the directory is free again: the failed run resumes
    g.run(tasks(), devices="cpu", out_dir=tmp_path, run_id="exp", resume_from="auto")
    assert g.global_counters.steps.train == 5


HOLDER = """
import sys, time, pathlib
sys.path.insert(0, {tests!r})
import ice_ignite as ice
from conftest import linear_graph
out = pathlib.Path({out!r})

def wait_until_released():  # holds the run directory, a checkpoint in it, until the test ends
    (out / "holding").write_text("yes")
    time.sleep(300)

linear_graph().run([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask(), wait_until_released,
                    ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=out, run_id="exp",
                   progress=False)
"""


@pytest.mark.slow
def test_a_live_run_is_never_resumed_and_a_killed_one_is_taken_over(tmp_path):
    log = (tmp_path / "holder.log").open("w")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(tests=str(TESTS), out=str(tmp_path))], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "holding").exists():
            assert holder.poll() is None and time.monotonic() < deadline, (tmp_path / "holder.log").read_text()
            time.sleep(0.1)
        assert len(list((tmp_path / "exp" / "ckpts").glob("ckpt-*.pt"))) == 1  # its in-progress checkpoint
        start = time.monotonic()
        late = linear_graph()
        with pytest.raises(RuntimeError, match=rf"is in use by another run \(host \S+, pid {holder.pid}, started"):
            late.run(schedule(), devices="cpu", out_dir=tmp_path, run_id="exp", resume_from="auto")
        assert time.monotonic() - start < 2 and late.global_counters.steps.train == 0  # refused, nothing resumed

        holder.kill()  # SIGKILL: no clean-up runs; the kernel drops the lock with the process
        holder.wait(timeout=30)
        assert f"pid {holder.pid}," in (tmp_path / "exp" / "run.lock").read_text()  # stale text, no lock
        g = linear_graph()
        g.run(schedule(), devices="cpu", out_dir=tmp_path, run_id="exp", resume_from="auto")
        assert g.global_counters.steps.train == 10  # the killed run's checkpoint (5 steps), then the rest
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        log.close()
