"""Every bad input a user can make gets a clear error: the right type, a message that names the
culprit and says what to do. docs/errors.md lists the same cases (checked at the end)."""

import dataclasses
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import linear_graph, regression_set, saved_checkpoint
from ignite.engine import Events
from ignite.metrics import Accuracy
from torch.distributed.fsdp import CPUOffloadPolicy

import ice_ignite as ice
from ice_ignite import (
    CheckpointError,
    ConfigError,
    GraphError,
    NodeError,
    NodeNotSelectedError,
    ResumeTaskFailed,
    ScheduleError,
)
from ice_ignite.checkpoint import sharded as ice_sharded
from ice_ignite.checkpoint.files import read_checkpoint, write_sharded_checkpoint
from ice_ignite.distributed import parallel as ice_parallel
from ice_ignite.errors import MetricNotComputableError, NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


def fwd(n, x):
    return n.module(x["data"][0])


def net():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))


def run_one(g, tmp, **kwargs):
    return g.run([ice.Task(train=True, epochs=1, tags="train")], out_dir=tmp, **{"devices": "cpu", **kwargs})


def exec_one(g, task):
    g.exec_tasks([task], ice.Launcher())


def nan_loss(tmp):
    g = linear_graph()
    g.remove("*/mse")
    g.add("mse", ice.LossNode(forward=lambda n, x: x["net"].sum() * float("nan")))
    exec_one(g, ice.Task(train=True, epochs=1, tags="train"))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def truncated(tmp):
    _, path = saved_checkpoint(tmp)
    bad = tmp / "truncated.pt"
    bad.write_bytes(path.read_bytes()[:200])
    return bad


def flipped(tmp):
    """A checkpoint with one byte of its weights flipped on disk."""
    from test_durability import flip_byte_in_tensor_data

    _, path = saved_checkpoint(tmp)
    flip_byte_in_tensor_data(path)
    return path


def deep_out_dir(tmp):
    """An out_dir of 4060 bytes: the run directory fits below PATH_MAX (4096), its files do not."""
    out = tmp
    while len(os.fsencode(str(out))) < 4060 - 201:
        out = out / ("d" * 200)
    return out / ("e" * (4060 - len(os.fsencode(str(out))) - 1))


def async_failure(tmp):
    (tmp / "blocked").write_text("a file where a directory should be")
    run_one(linear_graph(), tmp, async_checkpoints=True)  # a run whose last checkpoint fails in the background
    g = linear_graph()
    return g.run(
        [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask(tmp / "blocked" / "x.pt")],
        devices="cpu",
        out_dir=tmp,
        run_id="async",
        async_checkpoints=True,
    )


def foreign(tmp):
    torch.save({"model": torch.zeros(2)}, tmp / "foreign.pt")
    return tmp / "foreign.pt"


def malicious(tmp):
    torch.save({"format": "ice_ignite.checkpoint.v1", "x": Payload()}, tmp / "evil.pt")
    return tmp / "evil.pt"


def unsafe_directory(tmp):
    """A checkpoint directory (as FSDP-sharded runs write them; here by one process) whose DCP
    metadata pickles a call."""
    _, path = saved_checkpoint(tmp)
    directory = write_sharded_checkpoint(read_checkpoint(path), ["*/net"], tmp / "ckpt.dcp")
    (directory / ".metadata").write_bytes(pickle.dumps(Payload()))
    return directory


class Registered:
    """A registered object whose state holds a numpy array."""

    def state_dict(self):
        import numpy

        return {"table": numpy.zeros(2)}

    def load_state_dict(self, state):
        pass


def unloadable_state(tmp):
    g = linear_graph()
    g.register_stateful("ema", Registered())
    g.run([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], devices="cpu", out_dir=tmp)


def nothing_loads(tmp):
    _, path = saved_checkpoint(tmp)
    path.write_bytes(path.read_bytes()[:200])
    linear_graph().run(
        [ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp, run_id="src", resume_from="auto"
    )


def unsafe_sharded_value(tmp):
    """A directory of sharded.save whose optimizer learning rate (a plain value DCP pickles) is a call."""
    import torch.distributed.checkpoint as dcp

    node = ice.ModuleNode(torch.nn.Linear(3, 1), forward=fwd, optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1))
    directory = ice_sharded.save(tmp / "c", {"*/net": node})
    states, _ = ice_sharded._states({"*/net": node})
    states["*/net"]["optimizers"]["param_groups"][0]["lr"] = Payload()
    for item in directory.iterdir():
        if item.name != ice_sharded.META:
            item.unlink()
    dcp.save(states, checkpoint_id=directory, no_dist=True)
    ice_sharded.load(directory, {"*/net": node})


def fifo(tmp):
    import os

    os.mkfifo(tmp / "pipe.pt")
    return tmp / "pipe.pt"


_KEEP = []  # sockets bound by unix_socket, open until the session ends


def unix_socket(tmp):
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp / "sock.pt"))  # left bound: the file is a socket while the test runs
    _KEEP.append(sock)
    return tmp / "sock.pt"


def no_sample_metric(tmp):
    """A MetricNode whose forward selects no sample (a filter that matches nothing)."""
    from ignite.metrics import MeanSquaredError

    g = linear_graph()
    g.add("mse", ice.MetricNode(MeanSquaredError(), forward=lambda n, x: (x["net"][:0], x["data"][1][:0])), tags="val")
    exec_one(g, ice.Task(train=False, epochs=1, tags="val"))


def other_graph_checkpoint(tmp):
    _, path = saved_checkpoint(tmp)
    g = ice.HyperGraph()
    g.add("net", ice.ModuleNode(torch.nn.Linear(5, 1), forward=lambda n, x: 0))  # other shapes than the saved net
    g.load_checkpoint(path, tags="*")


def file_as_out_dir(tmp):
    (tmp / "file").write_text("x")
    run_one(linear_graph(), tmp / "file")


def out_dir_below_a_file(tmp):
    (tmp / "file").write_text("x")
    run_one(linear_graph(), tmp / "file" / "runs")


def reused_run_dir(tmp):
    saved_checkpoint(tmp)
    linear_graph().run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp, run_id="src")


def resumed_with(g, tmp):
    saved_checkpoint(tmp)
    g.run(
        [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()],
        devices="cpu",
        out_dir=tmp,
        run_id="src",
        resume_from="auto",
    )


def resumed_with_a_new_epoch_length(tmp):
    """A checkpoint after a repetition of a task, resumed leniently with a smaller batch and one more."""

    def schedule(times):
        return [ice.Repeat([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], times=times)]

    linear_graph().run(schedule(1), devices="cpu", out_dir=tmp, run_id="src")
    with pytest.warns(UserWarning, match="batch_size was 8 and is now 4"):
        linear_graph(batch_size=4).run(
            schedule(2), devices="cpu", out_dir=tmp, run_id="src", resume_from="auto", strict_resume=False
        )


def with_net(name="net", optimizer=torch.optim.SGD):
    g = linear_graph()
    g.remove("net")
    g.add(name, ice.ModuleNode(torch.nn.Linear(3, 1), forward=fwd, optimizers=ice.Optimizer(optimizer, lr=0.1)))
    return g


def loaded_with(tmp, g=None, **options):
    _, path = saved_checkpoint(tmp)
    (g or linear_graph()).load_checkpoint(path, **options)


def different_schedule(tmp):
    saved_checkpoint(tmp)
    linear_graph().run(
        [ice.Task(train=False, epochs=1, tags="val")], devices="cpu", out_dir=tmp, run_id="src", resume_from="auto"
    )


def resumed_with_another_world_size(tmp):
    """A checkpoint inside an accumulation cycle, rewritten as if 2 processes (batch in total) wrote it."""
    g, task = linear_graph(), ice.Task(train=True, steps=2, tags="train")
    g.set_gradient_accumulate(2)
    task.engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: e.hypergraph.save_checkpoint())
    g.run([task], devices="cpu", out_dir=tmp, run_id="src")
    path = next((tmp / "src" / "ckpts").glob("ckpt-*.pt"))
    state = torch.load(path, weights_only=True)
    state.update(world_size=2, ranks=state["ranks"] * 2)
    for settings in state["data_settings"].values():
        settings["batch_size_in_total"] = True
    torch.save(state, tmp / "two.pt")
    g = linear_graph()
    g.set_gradient_accumulate(2)
    g.run(
        [ice.Task(train=True, steps=2, tags="train")],
        devices="cpu",
        out_dir=tmp,
        run_id="dst",
        resume_from=tmp / "two.pt",
    )


def raising_forward(tmp):
    g = linear_graph()
    g.add("bad", ice.Node(forward=lambda n, x: {}["missing"]), tags="train")
    exec_one(g, ice.Task(train=True, steps=1, tags="train"))


def dataset_of_objects(tmp):
    class Objects(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return object()

    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(Objects(), batch_size=2))
    exec_one(g, ice.Task(train=False, epochs=1))


def ambiguous(tmp):
    g = ice.HyperGraph()
    g.add("data", ice.Node(), tags="a")
    g.add("data", ice.Node(), tags="b")
    g.select_nodes("a", "b")


def unselected(tmp):
    g = ice.HyperGraph()
    g.add("acc", ice.Node(), tags="val")
    g.add("net", ice.Node(forward=lambda n, x: x["acc"]))
    exec_one(g, ice.Task(train=False, steps=1))


def too_deep(tmp):
    g = ice.HyperGraph()
    for i in range(2001):  # each node's forward pulls the next one: a chain of 2001 pulls
        g.add(f"n{i}", ice.Node(forward=(lambda n, x: 1) if i == 2000 else (lambda n, x, j=i + 1: x[f"n{j}"] + 1)))
    exec_one(g, ice.Task(train=False, steps=1))


def cycle(tmp):
    g = ice.HyperGraph()
    g.add("a", ice.Node(forward=lambda n, x: x["b"]))
    g.add("b", ice.Node(forward=lambda n, x: x["a"]))
    exec_one(g, ice.Task(train=False, steps=1))


def vector_loss(tmp):
    g = linear_graph()
    g.add("bad", ice.LossNode(forward=lambda n, x: x["net"]), tags="train")
    exec_one(g, ice.Task(train=True, steps=1, tags="train"))


def detached_loss(tmp):
    g = ice.HyperGraph()
    g.add("net", ice.ModuleNode(net(), fwd, optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1)))
    g.add("data", ice.DatasetNode(regression_set(), batch_size=5))
    g.add("l", ice.LossNode(forward=lambda n, x: x["net"].detach().mean()))
    exec_one(g, ice.Task(train=True, steps=1))


def loss_without_optimizers(tmp):
    g = ice.HyperGraph()
    g.add("net", ice.ModuleNode(net(), fwd))
    g.add("data", ice.DatasetNode(regression_set(), batch_size=5))
    g.add("l", ice.LossNode(forward=lambda n, x: x["net"].mean()))
    exec_one(g, ice.Task(train=True, steps=1))


class OwnRandomSampler(torch.utils.data.Sampler):
    """A sampler with a random generator of its own, which a DatasetNode cannot seed."""

    def __init__(self):
        self.rng = torch.Generator().manual_seed(0)

    def __len__(self):
        return 4

    def __iter__(self):
        return iter(torch.randperm(4, generator=self.rng).tolist())


def iterable(tmp):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(4))

    return Stream()


# id -> (action, exception type, words naming the culprit, words saying what to do)
def checkpoint_in_forward(tmp_path):
    g = linear_graph()
    g.add("saver", ice.Node(forward=lambda n, x: g.save_checkpoint()), tags="train")
    run_one(g, tmp_path)


def epoch_length_changed(tmp_path):
    g = linear_graph()
    train = ice.Task(train=True, epochs=1, tags="train")
    g.exec_tasks([train], ice.Launcher())
    g.set_gradient_accumulate(1)
    g["train/data"].batch_size = 16  # 40 samples: 5 batches of 8, now 3 of 16
    g.exec_tasks([train], ice.Launcher())


@dataclasses.dataclass
class Settings:
    """A script's settings for the config cases."""

    lr: float = 0.1
    data: str = "???"  # required


def resumed_with_config(tmp):
    """A run with config lr=0.1 resumed with lr=0.2."""

    def run(lr, **kwargs):
        linear_graph().run(
            [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()],
            devices="cpu",
            out_dir=tmp,
            run_id="src",
            config=Settings(lr=lr, data="d"),
            **kwargs,
        )

    run(0.1)
    run(0.2, resume_from="auto")


CASES = {
    # the script's settings (ice.config)
    "config-unknown-key": (
        lambda t: ice.config(Settings, ["data=d", "lr_rate=0.1"]),
        ConfigError,
        "unknown key 'lr_rate'",
        "did you mean 'lr'?",
    ),
    "config-wrong-type": (
        lambda t: ice.config(Settings, ["data=d", "lr=fast"]),
        ConfigError,
        "key 'lr' got 'fast'",
        "expected float",
    ),
    "config-required": (lambda t: ice.config(Settings, []), ConfigError, "required key data", "give data=VALUE"),
    "config-not-key-value": (
        lambda t: ice.config(Settings, ["--lr", "0.1"]),
        ConfigError,
        "unknown option '--lr'",
        "key=value (e.g. lr=0.1)",
    ),
    "config-file": (
        lambda t: ice.config(Settings, ["--config", str(t / "exp.yaml")]),
        ConfigError,
        "exp.yaml",
        "no such file",
    ),
    "config-not-a-dataclass": (lambda t: ice.config({"lr": 0.1}, []), TypeError, "got dict", "@dataclasses.dataclass"),
    "resume-config-changed": (
        resumed_with_config,
        ResumeTaskFailed,
        "lr: 0.1 → 0.2",
        "strict_resume=False",
    ),
    # constructors
    "node-forward-not-callable": (
        lambda t: ice.Node(forward=3),
        TypeError,
        "forward of Node",
        "e.g. forward=lambda n, x",
    ),
    "node-forward-signature": (
        lambda t: ice.Node(forward=lambda x: x),
        TypeError,
        "forward of Node",
        "accept 2 positional",
    ),
    "node-hook-signature": (lambda t: ice.Node(update=lambda: 0), TypeError, "'update' hook", "update=lambda n:"),
    "node-resource-clash": (lambda t: ice.Node(name="x"), TypeError, "resource 'name'", "rename the resource"),
    "module-not-a-module": (lambda t: ice.ModuleNode("net", fwd), TypeError, "'net'", "torch.nn.Module"),
    "module-no-forward": (lambda t: ice.ModuleNode(net(), None), TypeError, "ModuleNode", "forward=lambda n, x"),
    "module-optimizers-type": (
        lambda t: ice.ModuleNode(net(), fwd, optimizers=torch.optim.SGD),
        TypeError,
        "optimizers of ModuleNode(Sequential)",
        "ice.Optimizer(torch.optim.Adam",
    ),
    "module-bad-regex": (
        lambda t: ice.ModuleNode(net(), fwd, optimizers={"(": ice.Optimizer(torch.optim.SGD, lr=1)}),
        ValueError,
        "pattern '('",
        "not a valid regex",
    ),
    "module-pattern-matches-nothing": (
        lambda t: ice.ModuleNode(net(), fwd, optimizers={"head.*": ice.Optimizer(torch.optim.SGD, lr=1)}),
        ValueError,
        "pattern 'head.*'",
        "names such as: 0.weight",
    ),
    "module-parameter-matched-twice": (
        lambda t: ice.ModuleNode(
            net(),
            fwd,
            optimizers={
                r"0\..*": ice.Optimizer(torch.optim.SGD, lr=1),
                r".*\.weight": ice.Optimizer(torch.optim.SGD, lr=1),
            },
        ),
        ValueError,
        "parameter '0.weight'",
        "give each parameter to one optimizer",
    ),
    "module-unused-policy": (
        lambda t: ice.ModuleNode(net(), fwd, unused_parameters="warn"),
        ValueError,
        "'warn'",
        "'error', 'zero' or 'skip'",
    ),
    "module-option-typo": (
        lambda t: ice.ModuleNode(net(), fwd, find_unused_parameter=True),
        TypeError,
        "find_unused_parameter=True",
        "did you mean find_unused_parameters?",
    ),
    "module-ddp-option-as-keyword": (
        lambda t: ice.ModuleNode(net(), fwd, bucket_cap_mb=25),
        TypeError,
        "bucket_cap_mb=25",
        "ddp_kwargs={'bucket_cap_mb': 25}",
    ),
    "module-ddp-kwargs-unknown": (
        lambda t: ice.ModuleNode(net(), fwd, ddp_kwargs={"bucket_cap": 25}),
        TypeError,
        "'bucket_cap'",
        "did you mean 'bucket_cap_mb'? valid options are",
    ),
    "module-ddp-kwargs-reserved": (
        lambda t: ice.ModuleNode(net(), fwd, ddp_kwargs={"static_graph": True}),
        TypeError,
        "'static_graph'",
        "ModuleNode(..., static_graph=...)",
    ),
    "module-sync-batchnorm-cpu": (
        lambda t: ice_parallel.sync_batchnorm(torch.nn.BatchNorm1d(4), torch.device("cpu"), "ModuleNode '*/net'"),
        GraphError,
        "ModuleNode '*/net'",
        "Run on GPUs (devices='cuda'), or drop sync_batchnorm=True",
    ),
    "module-parallel-mode": (
        lambda t: ice.ModuleNode(net(), fwd, parallel="zero3"),
        ValueError,
        "got 'zero3'",
        "ice.DDP(...), ice.FSDP(...) or None",
    ),
    "module-fsdp-options-without-fsdp": (
        lambda t: ice.ModuleNode(net(), fwd, fsdp_kwargs={"reshard_after_forward": 1}),
        TypeError,
        "ModuleNode(Sequential)",
        "pass parallel='fsdp' or leave them out",
    ),
    "module-ddp-options-without-ddp": (
        lambda t: ice.ModuleNode(net(), fwd, parallel="fsdp", static_graph=True),
        TypeError,
        "(static_graph) with parallel='fsdp'",
        "apply to parallel='ddp' only",
    ),
    "module-fsdp-kwargs-unknown": (
        lambda t: ice.ModuleNode(net(), fwd, parallel="fsdp", fsdp_kwargs={"cpu_offload": 1}),
        TypeError,
        "fsdp_kwargs of ModuleNode(Sequential)",
        "not a fully_shard option",
    ),
    "module-fsdp-kwargs-reserved": (
        lambda t: ice.ModuleNode(net(), fwd, parallel="fsdp", fsdp_kwargs={"mesh": None}),
        TypeError,
        "sets 'mesh'",
        "shards over all processes of the run",
    ),
    "module-fsdp-cpu-offload": (
        lambda t: ice_parallel.shard_fsdp(
            net(), net(), None, torch.device("cpu"), None, "ModuleNode 'x'", offload_policy=CPUOffloadPolicy()
        ),
        GraphError,
        "ModuleNode 'x'",
        "drop the offload_policy",
    ),
    "module-module-policy": (
        lambda t: ice.ModuleNode(net(), fwd, activation_checkpointing="Linear"),
        TypeError,
        "activation_checkpointing of ModuleNode(Sequential)",
        "a torch.nn.Module class, a tuple of them or a callable module -> bool",
    ),
    "module-compile-options": (
        lambda t: ice.ModuleNode(net(), fwd, compile={"mode": "max-autotune", "backnd": "x"}),
        TypeError,
        "compile of ModuleNode(Sequential) has 'backnd'",
        "did you mean 'backend'?",
    ),
    "sharded-exists": (
        lambda t: ice_sharded.save(t, {}),
        CheckpointError,
        "sharded checkpoint",
        "exists already; give a new directory",
    ),
    "sharded-not-a-checkpoint": (
        lambda t: ice_sharded.load(t, {}),
        CheckpointError,
        "is not a sharded checkpoint",
        "not written by ice_ignite.sharded.save, or its save did not finish",
    ),
    "sharded-missing-node": (
        lambda t: ice_sharded.load(ice_sharded.save(t / "c", {}), {"*/net": ice.ModuleNode(net(), fwd)}),
        CheckpointError,
        "holds no state for */net",
        "(it holds no node)",
    ),
    "optimizer-instance": (
        lambda t: ice.Optimizer(torch.optim.SGD(net().parameters(), lr=1)),
        TypeError,
        "SGD",
        "ice.Optimizer(torch.optim.Adam, lr=1e-3)",
    ),
    "optimizer-bad-kwargs": (
        lambda t: ice.ModuleNode(net(), fwd, optimizers=ice.Optimizer(torch.optim.SGD, lr=-1)),
        ValueError,
        "building SGD",
        "Invalid learning rate",
    ),
    "optimizer-clip": (
        lambda t: ice.Optimizer(torch.optim.SGD, grad_clip_norm=-1),
        ValueError,
        "-1",
        "positive finite number",
    ),
    "optimizer-scheduler": (
        lambda t: ice.Optimizer(torch.optim.SGD, lr_scheduler=5),
        TypeError,
        "5",
        "lambda opt: torch.optim.lr_scheduler.StepLR",
    ),
    "loss-no-forward": (lambda t: ice.LossNode(None), TypeError, "LossNode", "forward=lambda n, x"),
    "loss-weight": (lambda t: ice.LossNode(forward=lambda n, x: 0, weight="1"), TypeError, "'1'", "finite number"),
    "loss-mode": (
        lambda t: ice.LossNode(forward=lambda n, x: 0, loss_mode="manual"),
        TypeError,
        "'manual'",
        "ice.LossMode.MANUAL",
    ),
    "metric-not-computable": (
        no_sample_metric,
        MetricNotComputableError,
        "MetricNode 'val/mse' of Task(train=False, epochs=1, tags='val')",
        "gave the metric no sample",
    ),
    "metric-class": (
        lambda t: ice.MetricNode(Accuracy, forward=lambda n, x: 0),
        TypeError,
        "class Accuracy",
        "Accuracy()",
    ),
    "metric-not-ignite": (
        lambda t: ice.MetricNode(sum, forward=lambda n, x: 0),
        TypeError,
        "builtin_function",
        "MetricNode(Accuracy()",
    ),
    "dataset-not-a-dataset": (lambda t: ice.DatasetNode(42), TypeError, "int", "__getitem__ and __len__"),
    "dataset-batch-size": (
        lambda t: ice.DatasetNode(regression_set(4), batch_size=0),
        ValueError,
        "batch_size",
        ">= 1",
    ),
    "dataset-in-order": (
        lambda t: ice.DatasetNode(regression_set(), num_workers=2, in_order=False),
        ValueError,
        "in_order=False",
        "leave in_order=True",
    ),
    "dataset-sampler": (
        lambda t: ice.DatasetNode(regression_set(4), sampler=torch.utils.data.BatchSampler(range(4), 2, False)),
        TypeError,
        "BatchSampler",
        "batch_size=...",
    ),
    "dataset-sampler-not-resumable": (
        lambda t: ice.DatasetNode(regression_set(4), sampler=OwnRandomSampler()),
        ValueError,
        "OwnRandomSampler",
        "Let it draw from a `generator` attribute",
    ),
    "dataset-workers-option": (
        lambda t: ice.DatasetNode(regression_set(4), prefetch_factor=4),
        ValueError,
        "prefetch_factor=4",
        "pass num_workers=... >= 1",
    ),
    "dataset-unknown-kwarg": (
        lambda t: ice.DatasetNode(regression_set(4), suffle=True),
        TypeError,
        "'suffle'",
        "options it passes on",
    ),
    "dataset-shuffle-iterable": (
        lambda t: ice.DatasetNode(iterable(t), shuffle=True),
        ValueError,
        "IterableDataset",
        "shuffle inside the dataset",
    ),
    # names, tags, queries
    "name-empty": (lambda t: ice.HyperGraph().add("", ice.Node()), ValueError, "''", "without spaces"),
    "name-slash": (lambda t: ice.HyperGraph().add("a/b", ice.Node()), ValueError, "'a/b'", "without spaces, '/'"),
    "name-hash": (
        lambda t: ice.HyperGraph().add("a#b", ice.Node()),
        ValueError,
        "'a#b'",
        "without spaces, '/', ',', '#'",
    ),
    "name-control-character": (
        lambda t: ice.HyperGraph().add("a\x00b", ice.Node()),
        ValueError,
        "'a\\x00b'",
        "printable characters only",
    ),
    "name-too-long": (
        lambda t: ice.HyperGraph().add("n" * 256, ice.Node()),
        ValueError,
        "256 bytes",
        "at most 255 bytes",
    ),
    "name-not-encodable": (
        lambda t: ice.HyperGraph().add("a\udc80", ice.Node()),
        ValueError,
        "'a\\udc80'",
        "cannot be encoded as a file name",
    ),
    "tags-empty": (
        lambda t: ice.HyperGraph().add("x", ice.Node(), tags=""),
        ValueError,
        "tags of node 'x'",
        'pass "*"',
    ),
    "tags-star-mixed": (
        lambda t: ice.HyperGraph().add("x", ice.Node(), tags="*,train"),
        ValueError,
        "'*,train'",
        'drop "*"',
    ),
    "tags-malformed": (
        lambda t: ice.HyperGraph().add("x", ice.Node(), tags="tr ain"),
        ValueError,
        "'tr ain'",
        "letters, digits",
    ),
    "tags-type": (lambda t: ice.HyperGraph().add("x", ice.Node(), tags=7), TypeError, "7", "a list of str"),
    "duplicate-uid": (
        lambda t: [g := ice.HyperGraph(), g.add("x", ice.Node()), g.add("x", ice.Node())],
        ValueError,
        "'*/x'",
        "use another name or tags",
    ),
    "add-a-module": (
        lambda t: ice.HyperGraph().add("net", torch.nn.Linear(1, 1)),
        TypeError,
        "'net'",
        "wrap it: ice.ModuleNode",
    ),
    "uid-malformed": (lambda t: ice.HyperGraph()["net"], KeyError, "'net'", "'<tags>/<name>'"),
    "uid-missing": (lambda t: linear_graph()["test/data"], KeyError, "'test/data'", "nodes named 'data'"),
    "remove-missing": (lambda t: linear_graph().remove("nope"), KeyError, "'nope'", "uids are"),
    "ambiguous-name": (ambiguous, GraphError, "'a/data' and 'b/data'", "different names"),
    "unselected-node": (unselected, NodeNotSelectedError, "x['acc']", "add the task's tag"),
    "graph-too-deep": (
        too_deep,
        GraphError,
        "pulling 'n2000' makes a chain of 2001 nodes",
        "add producers before their consumers",
    ),
    "cycle": (cycle, GraphError, "a -> b -> a", "may not depend on itself"),
    # the schedule
    "task-neither": (lambda t: ice.Task(train=True), ValueError, "epochs=0, steps=0", "Task(train=True, epochs=1"),
    "task-both": (lambda t: ice.Task(train=True, epochs=1, steps=1), ValueError, "epochs=1, steps=1", "exactly one"),
    "task-train-type": (lambda t: ice.Task(train="yes", epochs=1), TypeError, "'yes'", "True or False"),
    "repeat-times": (lambda t: ice.Repeat([ice.Task(train=True, steps=1)], times=0), ValueError, "0", "int >= 1"),
    "schedule-item": (
        lambda t: ice.HyperGraph().exec_tasks([42], ice.Launcher()),
        ScheduleError,
        "schedule[0]",
        "wrap the action in a function",
    ),
    "schedule-class": (
        lambda t: ice.HyperGraph().exec_tasks([ice.SaveCheckpointTask], ice.Launcher()),
        ScheduleError,
        "SaveCheckpointTask",
        "call it",
    ),
    "schedule-callable-arity": (
        lambda t: ice.HyperGraph().exec_tasks([lambda a, b, c: 0], ice.Launcher()),
        ScheduleError,
        "schedule[0]",
        "f(), f(g) or f(g, launcher)",
    ),
    "epoch-task-without-data": (
        lambda t: exec_one(linear_graph(), ice.Task(train=False, epochs=1, tags="x")),
        ScheduleError,
        "Task(train=False, epochs=1, tags='x')",
        "steps=N",
    ),
    # running
    "forward-raises": (raising_forward, NodeError, "'train/bad'", "in forward"),
    "loss-not-scalar": (vector_loss, GraphError, "'train/bad'", "reduce it"),
    "loss-detached": (detached_loss, GraphError, "'*/l'", "do not depend on any trainable parameter (of '*/net')"),
    "loss-nothing-trains": (loss_without_optimizers, GraphError, "'*/l'", "give a ModuleNode optimizers"),
    "dataset-non-tensors": (dataset_of_objects, GraphError, "'*/data'", "pass a collate_fn"),
    "accumulate": (lambda t: ice.HyperGraph().set_gradient_accumulate(0), ValueError, "0", "int >= 1"),
    "nonfinite-loss": (nan_loss, NonFiniteLossError, "non-finite loss in */mse", "grad_clip_norm="),
    "nonfinite-policy": (
        lambda t: ice.HyperGraph().set_nonfinite_policy("warn"),
        ValueError,
        "'warn'",
        "'raise', 'skip', 'stop' or 'ignore'",
    ),
    "autocast-dtype": (
        lambda t: ice.HyperGraph().init_autocast(autocast_dtype=torch.int8),
        ValueError,
        "int8",
        "torch.float16, torch.bfloat16 or None",
    ),
    "handler-not-callable": (lambda t: ice.HyperGraph().on(Events.STARTED, 42), TypeError, "42", "callable handler"),
    "checkpoint-inside-iteration": (
        checkpoint_in_forward,
        CheckpointError,
        "inside an iteration",
        "at an iteration boundary",
    ),
    "epoch-length-changed": (
        epoch_length_changed,
        ScheduleError,
        "ran with 5 iterations per epoch and now has 3",
        "use a new Task",
    ),
    "resume-new-epoch-length": (
        resumed_with_a_new_epoch_length,
        ResumeTaskFailed,
        "ran with 5 iterations per epoch in the run that wrote the checkpoint",
        "resume with the settings of that run",
    ),
    "state-not-a-checkpoint": (
        lambda t: ice.HyperGraph().load_state_dict({"x": 1}),
        CheckpointError,
        "got dict",
        "what HyperGraph.state_dict returned",
    ),
    "stateful-object": (
        lambda t: ice.HyperGraph().register_stateful("ema", 3),
        TypeError,
        "'ema'",
        "state_dict() and load_state_dict()",
    ),
    "print-no-names": (lambda t: linear_graph().print_forward_output(), TypeError, "()", "needs node names"),
    # devices and processes
    "device-kind": (
        lambda t: run_one(linear_graph(), t, devices="gpu"),
        ValueError,
        "'gpu'",
        "'cpu', 'cuda' or 'auto'",
    ),
    "device-index": (lambda t: run_one(linear_graph(), t, devices="cpu:a"), ValueError, "'a'", "'cuda:0-3,6'"),
    "cuda-without-gpu": (
        lambda t: run_one(linear_graph(), t, devices="cuda:0"),
        RuntimeError,
        "'cuda:0'",
        "use devices='cpu'",
    ),
    "nnodes": (
        lambda t: run_one(linear_graph(), t, devices="cpu:0-1", nnodes="2:1"),
        ValueError,
        "'2:1'",
        "1 <= MIN <= MAX",
    ),
    "start-method": (
        lambda t: run_one(linear_graph(), t, start_method="forkserver"),
        ValueError,
        "'forkserver'",
        "'spawn'",
    ),
    # run arguments and the run directory
    "seed-type": (lambda t: run_one(linear_graph(), t, seed="0"), TypeError, "'0'", "an int"),
    "n-saved": (lambda t: run_one(linear_graph(), t, n_saved=0), ValueError, "0", "None (keep all)"),
    "out-dir-is-a-file": (file_as_out_dir, NotADirectoryError, "file", "pass a directory"),
    "out-dir-not-creatable": (out_dir_below_a_file, PermissionError, "runs", "pass a writable out_dir"),
    "run-dir-has-checkpoints": (reused_run_dir, FileExistsError, "src", "resume_from='auto'"),
    "run-id-type": (lambda t: run_one(linear_graph(), t, run_id=5), TypeError, "int 5", "pass run_id='5'"),
    "run-id-name": (lambda t: run_one(linear_graph(), t, run_id="a\0b"), ValueError, "'a\\x00b'", "pass a plain name"),
    "run-id-too-long": (
        lambda t: run_one(linear_graph(), t, run_id="x" * 300),
        ValueError,
        "300 bytes",
        "pass a shorter run_id",
    ),
    "run-id-too-long-for-workers": (
        lambda t: run_one(linear_graph(), t, run_id="x" * 250),
        ValueError,
        "250 bytes",
        "at most 246 bytes",
    ),
    "run-id-not-encodable": (
        lambda t: run_one(linear_graph(), t, run_id="a\ud800b"),
        ValueError,
        "run_id 'a\\ud800b'",
        "pass a run_id of encodable characters",
    ),
    "out-dir-not-encodable": (
        lambda t: run_one(linear_graph(), t / "\ud800"),
        ValueError,
        "out_dir",
        "pass an out_dir of encodable characters",
    ),
    "run-dir-path-too-long": (
        lambda t: run_one(linear_graph(), deep_out_dir(t)),
        ValueError,
        "bytes long: the files a run writes below it",
        "Pass a shorter out_dir",
    ),
    "run-dir-locked": (
        lambda t: linear_graph().run(
            [lambda: run_one(linear_graph(), t, run_id="busy")], devices="cpu", out_dir=t, run_id="busy"
        ),
        RuntimeError,
        "busy' is in use by another run (host",
        "pass another run_id",
    ),
    "run-dir-not-writable": (
        lambda t: [(t / "r").mkdir(), (t / "r" / "ckpts").write_text("a file"), run_one(linear_graph(), t, run_id="r")],
        PermissionError,
        "r/ckpts'",
        "pass another out_dir / run_id",
    ),
    "run-dir-deleted": (
        lambda t: linear_graph().run(
            [ice.Task(train=True, epochs=1, tags="train"), lambda: (t / "gone").rename(t / "moved")],
            devices="cpu",
            out_dir=t,
            run_id="gone",
        ),
        FileNotFoundError,
        "gone'",
        "Keep a run directory until its run ends",
    ),
    "launch-std": (lambda t: run_one(linear_graph(), t, tee="7"), ValueError, "tee='7'", "'0:3,1:2'"),
    "launch-rdzv-configs": (
        lambda t: run_one(linear_graph(), t, rdzv_configs="timeout"),
        ValueError,
        "rdzv_configs='timeout'",
        "pass a dict",
    ),
    "launch-standalone": (
        lambda t: run_one(linear_graph(), t, standalone=True, nnodes=2),
        ValueError,
        "nnodes=2",
        "drop standalone=True",
    ),
    "launch-omp-threads": (
        lambda t: run_one(linear_graph(), t, omp_num_threads=0),
        ValueError,
        "got 0",
        "None (torchrun's default)",
    ),
    "launch-monitor-interval": (
        lambda t: run_one(linear_graph(), t, monitor_interval=-1),
        ValueError,
        "got -1",
        "seconds > 0",
    ),
    "collective-timeout-value": (
        lambda t: run_one(linear_graph(), t, collective_timeout=-1),
        ValueError,
        "got -1",
        "number of seconds > 0",
    ),
    "launch-options-twice": (
        lambda t: run_one(linear_graph(), t, launch=ice.LaunchOptions(), tee="3"),
        TypeError,
        "['tee']",
        "in one place",
    ),
    "run-unknown-keyword": (
        lambda t: run_one(linear_graph(), t, max_restart=2),
        TypeError,
        "'max_restart'",
        "did you mean 'max_restarts', in launch=ice.LaunchOptions(max_restarts=...)",
    ),
    # checkpoints
    "resume-missing-file": (
        lambda t: run_one(linear_graph(), t, resume_from=t / "nope.pt"),
        CheckpointError,
        "nope.pt",
        "check the path",
    ),
    "resume-fifo": (
        lambda t: run_one(linear_graph(), t, resume_from=fifo(t)),
        CheckpointError,
        "pipe.pt' is a named pipe (FIFO)",
        "Pass the path of a checkpoint file",
    ),
    "resume-device-file": (
        lambda t: run_one(linear_graph(), t, resume_from="/dev/zero"),
        CheckpointError,
        "'/dev/zero' is a character device",
        "Pass the path of a checkpoint file",
    ),
    "resume-socket": (
        lambda t: run_one(linear_graph(), t, resume_from=unix_socket(t)),
        CheckpointError,
        "sock.pt' is a socket",
        "Pass the path of a checkpoint file",
    ),
    "resume-corrupt-file": (
        lambda t: run_one(linear_graph(), t, resume_from=truncated(t)),
        CheckpointError,
        "truncated.pt",
        "truncated or corrupted",
    ),
    "resume-checksum-mismatch": (
        lambda t: run_one(linear_graph(), t, resume_from=flipped(t)),
        CheckpointError,
        "ckpt-000000-E1S5.pt",
        "does not match the CRC-32 checksum",
    ),
    "save-async-failed": (async_failure, CheckpointError, "blocked/x.pt", "an asynchronous checkpoint write"),
    "resume-foreign-file": (
        lambda t: run_one(linear_graph(), t, resume_from=foreign(t)),
        CheckpointError,
        "foreign.pt",
        "pass a file written by save_checkpoint",
    ),
    "resume-malicious-file": (
        lambda t: run_one(linear_graph(), t, resume_from=malicious(t)),
        CheckpointError,
        "evil.pt",
        "only a file you trust",
    ),
    "resume-incomplete-directory": (
        lambda t: run_one(linear_graph(), t, resume_from=[(t / "ckpt.dcp").mkdir(), t / "ckpt.dcp"][1]),
        CheckpointError,
        "ckpt.dcp",
        "resume from another checkpoint",
    ),
    "resume-unsafe-directory": (
        lambda t: run_one(linear_graph(), t, resume_from=unsafe_directory(t)),
        CheckpointError,
        "ckpt.dcp",
        "open only a checkpoint you trust",
    ),
    "resume-nothing-loads": (
        nothing_loads,
        CheckpointError,
        "ckpt-000000-E1S5.pt (",
        "Resume from a copy you trust (resume_from=path), or move these out of the run directory",
    ),
    "save-unloadable-state": (
        unloadable_state,
        CheckpointError,
        "objects['ema']['table'] in the checkpoint is a numpy.ndarray",
        "torch.from_numpy(a)",
    ),
    "sharded-unsafe-value": (
        unsafe_sharded_value,
        CheckpointError,
        "'*/net.optimizers.param_groups.0.lr'",
        "open only a checkpoint you trust",
    ),
    "resume-other-schedule": (different_schedule, ResumeTaskFailed, "entry 0", "strict_resume=False"),
    "checkpoint-of-another-graph": (other_graph_checkpoint, CheckpointError, "'*/net'", "size mismatch"),
    "resume-renamed-node": (
        lambda t: resumed_with(with_net("encoder"), t),
        ResumeTaskFailed,
        "'*/net'",
        "strict_resume=False",
    ),
    "resume-dataset-settings": (
        lambda t: resumed_with(linear_graph(batch_size=9), t),
        ResumeTaskFailed,
        "'train/data': batch_size was 8 and is now 9",
        "strict_resume=False",
    ),
    "resume-other-world-size": (
        resumed_with_another_world_size,
        ResumeTaskFailed,
        "written by 2 process(es)",
        "resume with 2 process(es)",
    ),
    "resume-training-changed": (
        lambda t: resumed_with(linear_graph(lr=0.01), t),
        ResumeTaskFailed,
        "node '*/net' optimizer '.*' lr 0.1 → 0.01",
        "strict_resume=False",
    ),
    "resume-other-optimizer": (
        lambda t: resumed_with(with_net(optimizer=torch.optim.AdamW), t),
        CheckpointError,
        "'*/net'",
        "load its weights only",
    ),
    "load-other-optimizer": (
        lambda t: loaded_with(t, with_net(optimizer=torch.optim.AdamW), optimizers=True),
        CheckpointError,
        "'*/net'",
        "optimizers=False",
    ),
    "load-options": (
        lambda t: ice.LoadCheckpointTask("x.pt", rename=["net"]),
        TypeError,
        "['net']",
        "{'pretrain/encoder': 'finetune/encoder'}",
    ),
    "load-unknown-node": (
        lambda t: loaded_with(t, nodes="backbone"),
        CheckpointError,
        "'backbone'",
        "name one of its nodes",
    ),
    "load-rename-unknown-source": (
        lambda t: loaded_with(t, rename={"backbone": "net"}),
        CheckpointError,
        "'backbone'",
        "name one of its nodes",
    ),
    "load-rename-unknown-destination": (
        lambda t: loaded_with(t, rename={"net": "encoder"}),
        CheckpointError,
        "'encoder'",
        "name one of its nodes",
    ),
    "load-rename-conflict": (
        lambda t: loaded_with(t, rename={"net": "net", "mse": "net"}),
        CheckpointError,
        "'*/net'",
        "rename one saved state onto each node",
    ),
    "load-ambiguous-name": (
        lambda t: loaded_with(t, rename={"data": "train/data"}),
        CheckpointError,
        "'data'",
        "write one uid instead",
    ),
    "load-not-a-module-state": (
        lambda t: loaded_with(t, rename={"train/data": "net", "net": "mse"}),
        CheckpointError,
        "'train/data'",
        "rename a ModuleNode of the checkpoint onto it",
    ),
    "save-without-run-dir": (
        lambda t: linear_graph().save_checkpoint(),
        CheckpointError,
        "save_checkpoint",
        "pass save_to=path",
    ),
    "save-over-a-file": (
        lambda t: [(t / "x.pt").write_text("x"), linear_graph().save_checkpoint(t / "x.pt")],
        CheckpointError,
        "x.pt",
        "save to another path",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_error(case, tmp_path):
    action, error, culprit, fix = CASES[case]
    with pytest.raises(error) as info:
        action(tmp_path)
    message = str(info.value)
    assert culprit in message, f"{case}: the message does not name {culprit!r}: {message}"
    assert fix in message, f"{case}: the message does not say {fix!r}: {message}"


def test_every_error_class_users_can_meet_has_a_case():
    import ice_ignite.errors as errors

    classes = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.IceError) and cls is not errors.IceError
    }
    covered = {cls for cls in classes if any(issubclass(error, cls) for _, error, _, _ in CASES.values())}
    assert covered == classes, f"no case raises {sorted(c.__name__ for c in classes - covered)}"


def test_the_errors_page_lists_exactly_these_cases():
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| `(\w+)` \|", (ROOT / "docs" / "errors.md").read_text(), re.M)
    documented = dict(rows)
    assert documented.keys() == CASES.keys(), (
        f"missing: {CASES.keys() - documented.keys()}, extra: {documented.keys() - CASES.keys()}"
    )
    for case, (_, error, _, _) in CASES.items():
        assert documented[case] == error.__name__, case


def test_the_forward_error_keeps_the_original_traceback_as_its_cause(tmp_path):
    with pytest.raises(NodeError) as info:
        raising_forward(tmp_path)
    assert isinstance(info.value.__cause__, KeyError) and info.value.phase == "forward"


def test_a_handler_error_says_which_handler_and_task_raised_it():
    g = linear_graph()
    task = ice.Task(train=True, epochs=1, tags="train")
    task.engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: 1 / 0)
    with pytest.raises(ZeroDivisionError) as info:
        exec_one(g, task)
    assert (
        "raised by a handler of ITERATION_COMPLETED on the engine of Task(train=True, epochs=1, tags='train')"
        in "\n".join(info.value.__notes__)
    )


# -- faults --------------------------------------------------------------------------------------------
FULL_DISK = """
import resource, signal, sys, torch, ice_ignite as ice
sys.path.insert(0, {tests!r})
from conftest import linear_graph
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG instead
g = linear_graph()

def fill_the_disk(g):
    limit = 12000  # bytes: more than the pickled structure (torch reports a failure there as RuntimeError), less
    # than the checkpoint, so its write fails part way, in the tensor data
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

try:
    g.run([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask(), fill_the_disk,
           ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], devices="cpu",
          out_dir={out!r}, run_id="full")
except ice.CheckpointError as e:
    print("ERROR", e)
"""


def test_a_full_disk_while_saving_leaves_the_previous_checkpoint_intact(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK.format(tests=str(Path(__file__).parent), out=str(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ERROR writing checkpoint" in proc.stdout and "File too large" in proc.stdout, proc.stdout + proc.stderr
    assert "the previous checkpoints are intact" in proc.stdout
    files = sorted(p.name for p in (tmp_path / "full" / "ckpts").iterdir())
    assert files == ["ckpt-000000-E1S5.pt"]  # the failed write left nothing behind
    report = linear_graph().load_checkpoint(tmp_path / "full" / "ckpts" / files[0])  # intact and loadable
    assert "*/net" in report["loaded"]


def test_a_crash_in_a_node_mid_epoch_stops_the_run_and_the_last_checkpoint_resumes_exactly(tmp_path):
    def build(fail_at=None):
        g = linear_graph()
        g.add(
            "fault",
            ice.Node(
                forward=lambda n, x: (
                    (_ for _ in ()).throw(RuntimeError("sensor offline")) if n.global_train_steps == fail_at else None
                )
            ),
            tags="train",
        )
        train = ice.Task(train=True, epochs=3, tags="train")
        train.engine.add_event_handler(Events.ITERATION_COMPLETED(every=2), lambda e: g.save_checkpoint())
        return g, [train]

    g, tasks = build(fail_at=7)
    with pytest.raises(NodeError, match=r"node 'train/fault' raised RuntimeError in forward: sensor offline"):
        g.run(tasks, devices="cpu", out_dir=tmp_path, run_id="crash")
    resumed, tasks = build()
    resumed.run(tasks, devices="cpu", out_dir=tmp_path, run_id="crash", resume_from="auto")
    straight, tasks = build()
    straight.run(tasks, devices="cpu", out_dir=tmp_path, run_id="straight")
    for a, b in zip(resumed["*/net"].module.parameters(), straight["*/net"].module.parameters()):
        assert torch.equal(a, b)
