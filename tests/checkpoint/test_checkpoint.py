"""Checkpoints and exact resume (API.md B8): content, mid-epoch exactness, kills, preemption,
safety, retention, best checkpoints, schedule checks, partial loading, source backup."""

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import linear_graph, saved_checkpoint
from ignite.engine import Events
from ignite.metrics import Accuracy

import ice_ignite as ice
from ice_ignite import CheckpointError, ResumeTaskFailed

CHILD = Path(__file__).resolve().parents[1] / "checkpoint_child.py"


# -- an experiment with every source of randomness ------------------------------------------------
class Augmented(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(4), self.y[i], torch.tensor(i)


def experiment(workers, accumulate=2):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.set_gradient_accumulate(accumulate)
    g.add("data", ice.DatasetNode(Augmented(28), batch_size=4, shuffle=True, num_workers=workers), tags="train")
    g.add("data", ice.DatasetNode(Augmented(12), batch_size=6), tags="val")
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    spec = ice.Optimizer(
        torch.optim.Adam, lr=1e-2, lr_scheduler=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    )
    g.add("net", ice.ModuleNode(net, forward=lambda n, x: n.module(x["data"][0]), optimizers=spec))
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1])), tags="val")
    seen = []
    g.add(
        "rec",
        ice.Node(
            forward=lambda n, x: seen.append(
                (n.task.train, x["data"][2].tolist(), x["data"][0].sum().item(), x["net"].sum().item())
            )
        ),
    )
    return g, net, seen


def schedule():
    train = ice.Task(train=True, epochs=2, tags="train")  # 7 iterations per epoch, cycles of 2 (last one partial)
    train.engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: e.state.g.save_checkpoint() if hasattr(e.state, "g") else None
    )
    val = ice.Task(train=False, epochs=1, tags="val")
    val.engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: e.state.g.save_checkpoint() if hasattr(e.state, "g") else None
    )
    return [ice.Repeat([train, val, ice.SaveCheckpointTask()], times=2), ice.Task(train=True, steps=3, tags="train")], [
        train,
        val,
    ]


def run_experiment(tmp_path, run_id, workers, resume_from=None, save_every_iteration=False):
    g, net, seen = experiment(workers)
    tasks, engines = schedule()
    if save_every_iteration:
        for t in engines:
            t.engine.state.g = g
    g.run(tasks, devices="cpu", out_dir=tmp_path, run_id=run_id, resume_from=resume_from)
    return g, net, seen


def final_state(g, net):
    return {
        "module": {k: v.clone() for k, v in net.state_dict().items()},
        "optim": g["*/net"].optimizers[".*"].state_dict(),
        "sched": g["*/net"].lr_schedulers[".*"].state_dict(),
        "counters": g.global_counters.state_dict(),
    }


def assert_identical(a, b, path="state"):
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_a_checkpoint_holds_everything_needed_to_resume(tmp_path):
    _g, _net, _ = run_experiment(tmp_path, "ref", 0, save_every_iteration=True)
    state = torch.load(sorted((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt"))[3], weights_only=True)
    assert state["format"] == "ice_ignite.checkpoint.v1"
    assert set(state) >= {
        "schedule",
        "progress",
        "nodes",
        "counters",
        "ranks",
        "seed",
        "grad_scaler",
        "engines",
        "handlers",
        "objects",
    }
    assert len(state["ranks"]) == 1 and set(state["ranks"][0]["rng"]) >= {"torch", "python", "numpy"}
    assert set(state["nodes"]) == {"train/data", "val/data", "*/net", "*/ce", "val/acc", "*/rec"}
    assert state["nodes"]["train/data"] == {"pass_index": 0, "position": 4, "pass_open": True}
    # one ignite run over the task's two repetitions: max_epochs is their total, this one ends at epoch 2
    assert state["progress"] == {
        "entry": 0,
        "task": {"iteration": 4, "epoch_length": 7, "max_epochs": 4, "epoch_done": True, "stop_at": 2},
    }
    assert state["engines"]["task0"] == {
        "iteration": 4,
        "epoch": 0,
        "epoch_length": 7,
        "max_epochs": 4,
        "optim_step": 2,
        "terminate": False,
        "base": 0,
    }
    assert set(state["nodes"]["*/net"]) == {"module", "optimizers", "lr_schedulers"}
    assert state["ranks"][0]["grads"] == {}  # iteration 4 ends a cycle of 2
    mid = torch.load(sorted((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt"))[2], weights_only=True)
    assert set(mid["ranks"][0]["grads"]["*/net"]) == {"0.weight", "0.bias", "3.weight", "3.bias"}  # after iteration 3


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_any_checkpoint_continues_bit_for_bit(tmp_path, workers):
    g, net, reference_seen = run_experiment(tmp_path, "ref", workers, save_every_iteration=True)
    reference = final_state(g, net)
    checkpoints = sorted((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt"))
    assert len(checkpoints) == 2 * (14 + 2 + 1)
    picks = checkpoints if workers == 0 else checkpoints[::4] + [checkpoints[-1]]
    for k, ckpt in enumerate(picks):
        done = torch.load(ckpt, weights_only=True)["nodes"]["*/rec"]
        g2, net2, seen = run_experiment(tmp_path, f"resume{k}", workers, resume_from=ckpt)
        assert_identical(final_state(g2, net2), reference, f"resumed from {ckpt.name}")
        assert seen == reference_seen[len(reference_seen) - len(seen) :], ckpt.name
        assert done == {}


def test_explicit_bad_files_are_clear_errors(tmp_path):
    _, good = saved_checkpoint(tmp_path, run_id="a")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(1)}, foreign)
    for path, words in [
        (truncated, "truncated or corrupted"),
        (foreign, "not an ice_ignite checkpoint"),
        (tmp_path / "missing.pt", "does not exist"),
    ]:
        with pytest.raises(CheckpointError, match=words) as info:
            linear_graph().run(
                [ice.Task(train=True, epochs=1, tags="train")],
                devices="cpu",
                out_dir=tmp_path,
                run_id="b",
                resume_from=path,
            )
        assert str(path) in str(info.value)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_with_pickled_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ice_ignite.checkpoint.v1", "nodes": {}, "payload": _Payload(marker)}, evil)
    with open(evil, "rb") as f:  # the payload does run under a plain unpickler, so the test is real
        assert f.read(2) == b"PK"
    g = linear_graph()
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        g.load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        linear_graph().run(
            [ice.Task(train=True, epochs=1, tags="train")],
            devices="cpu",
            out_dir=tmp_path,
            run_id="x",
            resume_from=evil,
        )
    assert not marker.exists()
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_broken_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    tasks = lambda: [ice.Repeat([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], times=3)]
    linear_graph().run(tasks(), devices="cpu", out_dir=tmp_path, run_id="r")
    ckpts = sorted((tmp_path / "r" / "ckpts").glob("ckpt-*.pt"))
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:100])
    g = linear_graph()
    with pytest.warns(UserWarning, match=f"skipping checkpoint {ckpts[-1].name}.*falling back"):
        g.run(tasks(), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    assert g.global_counters.epochs.train == 3  # resumed after epoch 2, ran epoch 3 again


def test_partial_writes_of_a_killed_process_are_cleaned_up(tmp_path):
    tasks = lambda: [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()]
    linear_graph().run(tasks(), devices="cpu", out_dir=tmp_path, run_id="r")
    (tmp_path / "r" / "ckpts" / "tmpab12cd").write_bytes(b"half a checkpoint")
    linear_graph().run(tasks() * 2, devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    assert sorted(p.name for p in (tmp_path / "r" / "ckpts").iterdir()) == [
        "ckpt-000000-E1S5.pt",
        "ckpt-000001-E2S10.pt",
    ]


def test_n_saved_keeps_the_newest_periodic_checkpoints_across_resumes(tmp_path):
    tasks = lambda times: [
        ice.Repeat([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], times=times)
    ]
    linear_graph().run(tasks(4), devices="cpu", out_dir=tmp_path, run_id="r", n_saved=2)
    names = lambda: sorted(p.name for p in (tmp_path / "r" / "ckpts").iterdir())
    assert names() == ["ckpt-000002-E3S15.pt", "ckpt-000003-E4S20.pt"]
    linear_graph().run(tasks(6), devices="cpu", out_dir=tmp_path, run_id="r", n_saved=2, resume_from="auto")
    assert names() == ["ckpt-000004-E5S25.pt", "ckpt-000005-E6S30.pt"]


def test_save_best_keeps_the_best_k_across_resumes(tmp_path):
    values = iter([0.5, 0.7, 0.6, 0.9, 0.65, 0.8])

    def graph():
        g = linear_graph()
        g.add(
            "score",
            ice.MetricNode(
                Accuracy(),
                forward=lambda n, x: (torch.ones(1, 2), torch.zeros(1).long()),
                epoch_end=lambda n: n.save_best(next(values), max_keep=2),
            ),
            tags="val",
        )
        return g

    def tasks(times):
        return [
            ice.Repeat(
                [
                    ice.Task(train=True, epochs=1, tags="train"),
                    ice.Task(train=False, epochs=1, tags="val"),
                    ice.SaveCheckpointTask(),
                ],
                times=times,
            )
        ]

    g = graph()
    g.run(tasks(3), devices="cpu", out_dir=tmp_path, run_id="r")
    best = lambda: sorted(p.name.split("-", 4)[-1] for p in (tmp_path / "r" / "ckpts").glob("best-*"))
    assert best() == ["val%2Fscore=0.6.pt", "val%2Fscore=0.7.pt"]  # the uid val/score, encoded
    assert [v for v, _ in g["val/score"].best_records] == [0.7, 0.6]
    g = graph()
    g.run(tasks(6), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    assert best() == ["val%2Fscore=0.8.pt", "val%2Fscore=0.9.pt"]
    # a best checkpoint is a full checkpoint: its weights load
    ice_ckpt = next((tmp_path / "r" / "ckpts").glob("best-*score=0.9.pt"))
    assert graph().load_checkpoint(ice_ckpt)["loaded"]


def test_schedule_mismatch_is_refused_or_restarted(tmp_path):
    first = [
        ice.Task(train=True, epochs=1, tags="train"),
        ice.SaveCheckpointTask(),
        ice.Task(train=True, epochs=1, tags="train"),
    ]
    linear_graph().run(first, devices="cpu", out_dir=tmp_path, run_id="r", seed=0)
    changed = [ice.Task(train=False, epochs=1, tags="val"), ice.SaveCheckpointTask()]
    with pytest.raises(
        ResumeTaskFailed,
        match=r"entry 0 was .Task\(train=True, epochs=1, tags=.train.\). and is "
        r"now .Task\(train=False, epochs=1, tags=.val",
    ):
        linear_graph().run(changed, devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    g = linear_graph()
    with pytest.warns(UserWarning, match="restarting the schedule with the loaded states"):
        g.run(changed, devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto", strict_resume=False)
    assert (g.global_counters.epochs.train, g.global_counters.epochs.eval) == (1, 1)  # loaded, then the new schedule


@pytest.mark.parametrize("where", ["mid-schedule", "finished"])
def test_raising_a_tasks_epochs_continues_to_the_new_total_and_no_further(tmp_path, where):
    def tasks(epochs):
        save = [ice.SaveCheckpointTask()] if where == "mid-schedule" else []
        return [
            ice.Task(train=True, epochs=epochs, tags="train"),
            *save,
            ice.Task(train=False, epochs=1, tags="val"),
            ice.SaveCheckpointTask(),
        ]

    straight = linear_graph()
    straight.run(tasks(5), devices="cpu", out_dir=tmp_path, run_id="straight", seed=0)
    linear_graph().run(tasks(3), devices="cpu", out_dir=tmp_path, run_id="r", seed=0)
    ckpts = sorted((tmp_path / "r" / "ckpts").glob("ckpt-*.pt"))
    g = linear_graph()
    g.run(tasks(5), devices="cpu", out_dir=tmp_path, run_id="r", resume_from=ckpts[0])  # after the 3 epochs
    assert g.global_counters.epochs.train == 5  # not 3 + 5
    for key, value in straight["*/net"].module.state_dict().items():
        assert torch.equal(g["*/net"].module.state_dict()[key], value), key


@pytest.mark.parametrize("last", [True, False], ids=["last-item", "followed-by-a-test"])
def test_raising_repeat_times_continues_the_schedule(tmp_path, last):
    def tasks(times):
        after = [] if last else [ice.Task(train=False, epochs=1, tags="val"), ice.SaveCheckpointTask()]
        return [
            ice.Repeat([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], times=times),
            *after,
        ]

    linear_graph().run(tasks(2), devices="cpu", out_dir=tmp_path, run_id="r")
    g = linear_graph()
    g.run(tasks(3), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    assert g.global_counters.epochs.train == 3  # the Repeat continued to its new total, once
    assert g.global_counters.epochs.eval == (0 if last else 2)  # then the test ran again (1 loaded + 1)
    straight = linear_graph()
    straight.run(tasks(3), devices="cpu", out_dir=tmp_path, run_id="s")
    assert torch.equal(g["*/net"].module.weight, straight["*/net"].module.weight)


def test_load_checkpoint_restores_only_the_selected_nodes_and_reports_the_rest(tmp_path):
    g, path = saved_checkpoint(tmp_path, run_id="pre", epochs=2)
    other = linear_graph()
    other.remove("mse")
    other.add("extra", ice.Node(), tags="val")
    with pytest.warns(UserWarning) as warned:
        report = other.load_checkpoint(path, tags="val", other=True)
    assert report == {
        "loaded": ["val/data", "*/net"],
        "parts": {"val/data": ["other"], "*/net": ["weights"]},
        "left": {"*/net": ["optimizers"]},
        "renamed": {},
        "not_selected": ["train/data"],
        "only_in_checkpoint": ["*/mse"],
        "only_in_graph": ["val/extra"],
    }
    assert any("*/mse absent from this graph" in str(w.message) for w in warned)
    assert torch.equal(other["*/net"].module.weight, g["*/net"].module.weight)
    assert other.global_counters.steps.train == 0  # counters are not touched
    assert other["train/data"].pass_index == -1


def test_load_checkpoint_task_loads_pretrained_weights_into_the_schedule(tmp_path):
    pre, path = saved_checkpoint(tmp_path, run_id="pre", epochs=3)
    fine = linear_graph()
    seen = []
    fine.run(
        [ice.LoadCheckpointTask(path, tags="val"), lambda g: seen.append(g["*/net"].module.weight.clone())],
        devices="cpu",
        out_dir=tmp_path,
        run_id="fine",
    )
    assert torch.equal(seen[0], pre["*/net"].module.weight)


def test_backup_source_files_copies_the_entry_script_and_its_local_modules(tmp_path):
    proj = tmp_path / "proj"
    (proj / "pkg" / "sub").mkdir(parents=True)
    (proj / "main.py").write_text("import helper\nfrom pkg.sub import deep\nimport torch\n")
    (proj / "helper.py").write_text("from . import nothing_here\nX = 1\n")
    (proj / "pkg" / "__init__.py").write_text("")
    (proj / "pkg" / "sub" / "__init__.py").write_text("")
    (proj / "pkg" / "sub" / "deep.py").write_text("from .. import sub\n")
    (proj / "unused.py").write_text("")
    g = linear_graph()
    g.backup_source_files(proj / "main.py")
    run_dir = g.run([ice.Task(train=True, steps=1, tags="train")], devices="cpu", out_dir=tmp_path, run_id="r")
    copied = sorted(str(p.relative_to(run_dir / "src")) for p in (run_dir / "src").rglob("*.py"))
    assert copied == ["helper.py", "main.py", "pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/deep.py"]
    with pytest.raises(FileNotFoundError, match="pass __file__"):
        g.backup_source_files(tmp_path / "nope.py")


def test_a_resume_keeps_the_first_runs_sources_and_its_own_beside_them_when_they_differ(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "main.py").write_text("import helper\n")
    (proj / "helper.py").write_text("LR = 0.1\n")

    def schedule():
        return [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()]

    def run(**kwargs):
        g = linear_graph()
        g.backup_source_files(proj / "main.py")
        return g.run(schedule(), devices="cpu", out_dir=tmp_path, run_id="r", **kwargs)

    run_dir = run()
    (proj / "helper.py").write_text("LR = 0.2\n")  # the code changed, then the run is resumed
    with pytest.warns(UserWarning, match=r"differ from those kept in src/ \(changed: helper.py\): kept in src-2/"):
        run(resume_from="auto")
    assert (run_dir / "src" / "helper.py").read_text() == "LR = 0.1\n"  # what produced the first checkpoint
    assert (run_dir / "src-2" / "helper.py").read_text() == "LR = 0.2\n"
    assert (run_dir / "src-2" / "main.py").read_text() == "import helper\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same sources again: nothing new, no warning
        run(resume_from="auto")
    (proj / "helper.py").write_text("LR = 0.1\n")
    (proj / "extra.py").write_text("")
    (proj / "main.py").write_text("import helper, extra\n")
    with pytest.warns(UserWarning, match=r"from those kept in src-2/ \(changed: helper.py, main.py; new: extra.py\)"):
        run(resume_from="auto")
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("src")) == ["src", "src-2", "src-3"]
    assert (run_dir / "src" / "main.py").read_text() == "import helper\n"


# -- processes that die ------------------------------------------------------------------------------
def _start(out_dir, run_id, workers, slow=0.15):
    return subprocess.Popen(
        [sys.executable, "-u", str(CHILD), str(out_dir), run_id, str(workers), "--slow-save", str(slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc, marker, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return False
        if line.strip() == marker:
            return True
    raise TimeoutError(f"no {marker} within {timeout} s")


def _children(pid):
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def _final(out_dir, run_id):
    return torch.load(Path(out_dir) / f"{run_id}-final.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, workers):
    rng = random.Random(1000 + workers)
    ref = _start(tmp_path, "ref", workers)
    _out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    kills, during_write, trials = 0, 0, 0
    while True:
        trials += 1
        assert trials <= 20, "the run never finished"
        proc = _start(tmp_path, "killed", workers)
        try:
            if kills < 6:
                in_write = kills % 2 == 1
                if in_write:  # the k-th checkpoint write, killed before it is renamed into place
                    for _ in range(rng.randint(1, 4)):
                        if not _wait_for(proc, "WRITE-START"):
                            break
                    time.sleep(rng.uniform(0.0, 0.1))
                else:
                    _wait_for(proc, "STARTED")
                    time.sleep(rng.uniform(0.05, 1.5))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    kills += 1
                    during_write += in_write
                    continue
            _out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert kills >= 3 and during_write >= 1
    assert_identical(_final(tmp_path, "killed"), _final(tmp_path, "ref"))
    print(f"num_workers={workers}: trials {trials}, kills {kills} ({during_write} during a write), bit-identical")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_preemption_saves_at_the_next_iteration_and_resumes_exactly(tmp_path, sig, code):
    ref = _start(tmp_path, "ref", 0, slow=0.0)
    assert ref.wait(timeout=300) == 0
    proc = _start(tmp_path, "pre", 0, slow=0.05)
    _wait_for(proc, "STARTED")
    time.sleep(0.5)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"preempted by {signal.Signals(sig).name}: checkpoint saved to" in err
    assert "resume_from='auto'" in err
    resumed = _start(tmp_path, "pre", 0, slow=0.0)
    _out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_identical(_final(tmp_path, "pre"), _final(tmp_path, "ref"))


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_process_group_with_dataloader_workers_checkpoints_and_exits_with_its_code(tmp_path, sig, code):
    # as SLURM and `timeout` send it: to every process of the group, the DataLoader workers included
    ref = _start(tmp_path, "ref", 2, slow=0.0)
    assert ref.wait(timeout=300) == 0
    proc = subprocess.Popen(
        [sys.executable, "-u", str(CHILD), str(tmp_path), "pre", "2", "--slow-save", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(proc, "STARTED")
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < 2:  # the DataLoader workers are up: they get the signal too
            assert time.monotonic() < deadline, "no DataLoader workers"
            time.sleep(0.02)
        os.killpg(proc.pid, sig)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    assert f"preempted by {signal.Signals(sig).name}: checkpoint saved to" in err
    assert "__getitem__" not in err and "Traceback" not in err
    resumed = _start(tmp_path, "pre", 2, slow=0.0)
    _out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_identical(_final(tmp_path, "pre"), _final(tmp_path, "ref"))


@pytest.mark.slow
def test_a_second_sigint_during_a_save_leaves_every_checkpoint_intact_and_says_so(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-u", str(CHILD), str(tmp_path), "int2", "0", "--slow-write", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(proc, "WRITE-START")
        _wait_for(proc, "WRITE-START")  # the second checkpoint: the first is published
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # inside torch's zip writer, on old code
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "a second SIGINT" in err and "every published checkpoint is intact" in err, err
    assert "PytorchStreamWriter" not in err and "zip" not in err.lower(), err
    ckpts = sorted((tmp_path / "int2" / "ckpts").glob("ckpt-*"))
    assert len(ckpts) >= 2 and not list((tmp_path / "int2" / "ckpts").glob(".*"))
    for path in ckpts:  # every published checkpoint loads
        ice.checkpoint.files.read_checkpoint(path)
