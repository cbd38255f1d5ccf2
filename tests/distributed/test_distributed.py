"""Multi-process runs: run() starting workers, torchrun on one and two "machines", forked workers,
failures, elastic restarts, gradient accumulation and preemption (API.md B9). Every test starts
real processes (gloo on CPU) with a timeout."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ice_ignite.distributed.launcher import free_port

CHILD = Path(__file__).resolve().parents[1] / "distributed_child.py"
pytestmark = pytest.mark.slow


def child(out_dir, run_id, *args, timeout=120, via=None):
    cmd = (via or [sys.executable]) + [str(CHILD), str(out_dir), run_id, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *map(str, args)]


def result(out_dir, run_id):
    return torch.load(Path(out_dir) / f"{run_id}-result.pt", weights_only=True)


def max_diff(a, b):
    return max((a["module"][k] - b["module"][k]).abs().max().item() for k in a["module"])


def assert_same_training(a, b, tol=1e-6):
    assert a["steps"] == b["steps"] == 24
    assert max_diff(a, b) <= tol
    assert a["metrics"].keys() == b["metrics"].keys() == {"ce", "acc"}
    for key in a["metrics"]:
        assert abs(a["metrics"][key] - b["metrics"][key]) <= tol, key


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def single(out):
    proc = child(out, "single", "--devices", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert result(out, "single")["world_size"] == 1
    return result(out, "single")


@pytest.fixture(scope="module")
def spawned(out):
    proc = child(out, "spawned")
    assert proc.returncode == 0, proc.stderr
    return proc, result(out, "spawned")


def lock_holder(stdout):
    """The pid the run directory's lock file named during the run, and rank 0's pid and parent's."""
    holder, me, parent = re.search(
        r"lock: host \S+, pid (\d+), started \S+; I am pid (\d+), child of (\d+)", stdout
    ).groups()
    return int(holder), int(me), int(parent)


def weights_by_rank(stdout):
    # workers print concurrently: their lines may run into each other
    return dict(re.findall(r"rank (\d+) of \d+ .*?; weights (-?\d+\.\d{12})", stdout))


def test_run_starts_one_gloo_worker_per_device_and_matches_one_process(single, spawned):
    proc, two = spawned
    assert two["world_size"] == 2
    assert "rank 0 of 2 (local 0 of 2, node 0) on cpu with gloo: done" in proc.stdout
    assert "rank 1 of 2 (local 1 of 2, node 0) on cpu with gloo: done" in proc.stdout
    assert "board BoardWriter" in proc.stdout and "board NullWriter" in proc.stdout  # rank 0 writes, rank 1 not
    assert len(set(weights_by_rank(proc.stdout).values())) == 1
    assert_same_training(two, single)
    holder, rank0, parent = lock_holder(proc.stdout)
    assert holder == parent != rank0  # the launching process holds the run directory for its workers
    # code after run() knows its rank from what run returned (idist.get_rank() is 0 there)
    assert re.search(r"after run: pid \d+ rank 0 main True", proc.stdout)
    assert re.search(r"after run: pid \d+ rank 1 main False", proc.stdout)
    assert max_diff(two, single) > 0  # really two processes: the sums ran in another order


def test_the_same_script_under_torchrun(out, spawned):
    proc = child(out, "torchrun", via=torchrun("--nproc_per_node=2"))
    assert proc.returncode == 0, proc.stderr
    holder, rank0, _ = lock_holder(proc.stdout)
    assert holder == rank0  # no launching process of ours: global rank 0 holds the run directory
    assert "rank 1 main False" in proc.stdout and "rank 0 main True" in proc.stdout
    assert max_diff(result(out, "torchrun"), spawned[1]) == 0


@pytest.mark.parametrize("how", ["torchrun-c10d", "run-static"])
def test_two_machines_on_loopback(out, spawned, how):
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        if how == "torchrun-c10d":
            cmd = torchrun(
                "--nnodes=2",
                f"--node_rank={node_rank}",
                "--nproc_per_node=1",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=loopback",
            )
            args = ()
        else:
            cmd, args = None, ("--devices", "cpu", "--nnodes", 2, "--node-rank", node_rank, "--master-port", port)
        full = (cmd or [sys.executable]) + [str(CHILD), str(out), how, *map(str, args)]
        procs.append(subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr
    assert "rank 1 of 2 (local 0 of 1, node 1)" in outputs[1][0]
    assert max_diff(result(out, how), spawned[1]) == 0


def test_forked_workers_when_there_is_no_entry_script(out, spawned):
    """Also torchrun's options passed through: per-rank log files (tee) and OMP_NUM_THREADS."""
    code = (
        f"import sys; sys.argv = ['-c', {str(out)!r}, 'forked', '--tee', '3', '--omp-num-threads', '2']; "
        f"sys.path.insert(0, {str(CHILD.parent)!r})\n"
        "import distributed_child; distributed_child.main(); print('the launching process goes on')"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "the launching process goes on" in proc.stdout and "rank 1 of 2" in proc.stdout
    assert max_diff(result(out, "forked"), spawned[1]) == 0
    # code after run() runs only here, in the launching process, whose graph did not train
    assert re.findall(r"after run: pid \d+ rank (\S+) main (\S+)", proc.stdout) == [("None", "False")]
    holder, rank0, parent = lock_holder(proc.stdout)
    assert holder == parent != rank0
    for rank in (0, 1):
        (log,) = (out / "forked" / "logs" / "workers").glob(f"*/attempt_0/{rank}/stdout.log")
        assert re.search(rf"rank {rank} of 2 .* threads 2;", log.read_text())


def test_a_failing_rank_ends_the_run_quickly_naming_the_rank_and_its_traceback(out):
    start = time.monotonic()
    proc = child(out, "failing", "--fail-rank", 1, timeout=90)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0 and elapsed < 60
    assert "WorkerFailed" in proc.stderr
    assert "Root Cause" in proc.stderr and "rank      : 1 (local_rank: 1)" in proc.stderr
    assert "planned failure on rank 1" in proc.stderr
    assert "Traceback" in proc.stderr


def test_an_elastic_restart_resumes_from_the_last_checkpoint(out, spawned):
    proc = child(out, "restarted", "--die-at-step", 6, "--max-restarts", 1, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "exitcode: 9" in proc.stderr  # the crash the agent saw before restarting the workers
    assert max_diff(result(out, "restarted"), spawned[1]) == 0


def test_gradient_accumulation_skips_the_all_reduce_on_non_stepping_iterations(out, spawned):
    proc = child(out, "accumulated", "--accumulate", 2)
    assert proc.returncode == 0, proc.stderr
    assert "all-reduces 12" in proc.stdout  # 24 iterations, one step (one all-reduce) every 2
    assert "all-reduces 24" in spawned[0].stdout


def test_sigterm_to_the_launcher_checkpoints_every_rank_and_resumes_exactly(out, spawned):
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(out), "preempted", "--slow", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list((out / "preempted" / "ckpts").glob("ckpt-*.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)  # the first periodic checkpoint: training is under way
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    # the launching process does not claim a checkpoint it cannot see (a hung worker writes none)
    assert "preempted by SIGTERM: the workers were asked to checkpoint at their next iteration boundary" in stderr
    resumed = child(out, "preempted")
    assert resumed.returncode == 0, resumed.stderr
    assert max_diff(result(out, "preempted"), spawned[1]) == 0


@pytest.mark.parametrize("policy", ["zero", "error"])
def test_an_unused_branch_under_ddp(out, policy):
    proc = child(out, f"unused-{policy}", "--unused", policy)
    if policy == "zero":
        assert proc.returncode == 0, proc.stderr
        weights = weights_by_rank(proc.stdout)
        assert len(weights) == 2 and len(set(weights.values())) == 1  # every rank stepped the same way
    else:
        assert proc.returncode != 0
        assert "got no gradient in optimizer step 1: unused.weight, unused.bias" in proc.stderr


def _children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _start_slow(out, run_id, *extra):
    # a session of its own: a signal to the group reaches the launcher, the ranks and their DataLoader workers
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(out), run_id, "--slow", "0.2", *map(str, extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _first_checkpoint(out, run_id, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not list((out / run_id / "ckpts").glob("ckpt-*.pt")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.1)  # the first periodic checkpoint: training is under way


def _preempted_and_resumed(out, run_id, proc, spawned):
    try:
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, stderr
    assert "WorkerFailed" not in stderr and "__getitem__" not in stderr and "killed by signal" not in stderr
    for rank in (0, 1):  # every rank reached a boundary and stopped there, rank 0 with the checkpoint
        assert f"ice_ignite: rank {rank}: preempted by SIGTERM: " in stderr
    assert "ice_ignite: rank 0: preempted by SIGTERM: checkpoint saved to" in stderr
    assert "preempted by SIGTERM: the workers were asked to checkpoint at their next iteration boundary" in stderr
    resumed = child(out, run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert max_diff(result(out, run_id), spawned[1]) == 0


def test_sigterm_to_the_process_group_with_dataloader_workers_checkpoints_and_exits_143(out, spawned):
    proc = _start_slow(out, "group-term", "--workers", 2)
    _first_checkpoint(out, "group-term", proc)
    deadline = time.monotonic() + 30
    while not all(len(_children(rank)) >= 2 for rank in _children(proc.pid)):  # every rank's DataLoader workers
        assert time.monotonic() < deadline, "no DataLoader workers"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM and `timeout` send it
    _preempted_and_resumed(out, "group-term", proc, spawned)


def test_sigterm_to_one_worker_rank_checkpoints_every_rank_and_the_launcher_exits_143(out, spawned):
    proc = _start_slow(out, "one-term")
    _first_checkpoint(out, "one-term", proc)
    ranks = _children(proc.pid)
    assert len(ranks) == 2
    os.kill(ranks[-1], signal.SIGTERM)
    _preempted_and_resumed(out, "one-term", proc, spawned)


def _processes_of(run_id):
    """The pids of live processes whose command line names ``run_id`` (the launcher, its ranks and
    their DataLoader workers all run distributed_child.py OUT RUN_ID ...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if run_id.encode() in argv and str(CHILD).encode() in argv and state != "Z":
                found.append(int(entry.name))
    return found


def test_no_worker_outlives_a_killed_launcher_nor_writes_without_the_run_lock(out):
    from ice_ignite.checkpoint.rundir import RunLock

    proc = _start_slow(out, "orphans", "--workers", 2)
    try:
        _first_checkpoint(out, "orphans", proc)
        assert len(_processes_of("orphans")) >= 3
        proc.kill()  # the launcher only: SIGKILL, no clean-up
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while _processes_of("orphans"):
            assert time.monotonic() < deadline, f"orphaned workers still run: {_processes_of('orphans')}"
            time.sleep(0.05)
        lock = RunLock(out / "orphans" / "run.lock")
        lock.acquire()  # the directory is free, and nothing writes there any more
        before = sorted(p.name for p in (out / "orphans" / "ckpts").iterdir())
        time.sleep(2)
        assert sorted(p.name for p in (out / "orphans" / "ckpts").iterdir()) == before
        lock.release()
    finally:
        for pid in _processes_of("orphans"):
            os.kill(pid, signal.SIGKILL)


def test_a_rank_stuck_in_user_code_ends_the_run_in_bounded_time_naming_it_with_its_stack_in_logs(out):
    start = time.monotonic()
    proc = child(out, "stuck", "--stuck-rank", 1, "--collective-timeout", 4, timeout=90)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, proc.stderr
    assert elapsed < 4 + 30, elapsed  # far from the 40 s the rank sleeps, let alone torch's 30 minutes
    assert "CollectiveTimeout" in proc.stderr and "collective_timeout=4 s" in proc.stderr
    assert re.search(
        r"rank 1 is stuck \(host \S+, pid \d+\) in node '(train/)?stuck' in task Task\(train=True", proc.stderr
    ), proc.stderr
    report = (out / "stuck" / "logs" / "hang-rank1.txt").read_text()
    assert "rank 1 of 2" in report and "in node" in report and "stuck_forward" in report  # its Python stack
    assert (out / "stuck" / "logs" / "hang-rank0.txt").exists()  # the waiting rank says where it waits
