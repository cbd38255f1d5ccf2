"""No checkpoint path unpickles code or allocates more than the files hold, whatever the files of a
checkpoint directory hold (B8, issue "Nothing lost, nothing run", item 1). Hostile directories are
made from real ones (a run's checkpoint directory, a ``sharded.save`` directory) and taken through
every path that reads one: a run's ``resume_from=path``, ``resume_from="auto"`` (which falls back
past them), ``g.load_checkpoint``, ``LoadCheckpointTask``, ``sharded.load`` and ``sharded.export``.
A pickled payload would create a marker file: it never appears."""

import pickle
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import linear_graph, regression_set, saved_checkpoint
from ignite.metrics import Accuracy
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata

import ice_ignite as ice
from ice_ignite import CheckpointError
from ice_ignite.checkpoint import sharded
from ice_ignite.checkpoint.files import (
    FORMAT,
    STATE,
    best_filename,
    best_files,
    best_uid,
    read_checkpoint,
    write_sharded_checkpoint,
)

RUN_DIR = "ckpt-000001-E1S5.dcp"


class Marker:
    """Unpickled, it creates a file: the proof that a load ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A run directory holding a checkpoint file and a newer checkpoint directory of the same
    state, and a directory of ``sharded.save``."""
    base = tmp_path_factory.mktemp("sources")
    _, file = saved_checkpoint(base)
    write_sharded_checkpoint(read_checkpoint(file), ["*/net"], file.parent / RUN_DIR)
    sharded.save(base / "sharded", {"*/net": linear_graph()["*/net"]}, meta={"step": 3})
    return base


def edit_metadata(directory, change, name=".metadata"):
    meta = pickle.loads((directory / ".metadata").read_bytes())  # a test reading a file it wrote
    change(meta)
    (directory / name).write_bytes(pickle.dumps(meta))


def first_tensor(meta, ndim=1):
    return next(
        (fqn, e)
        for fqn, e in meta.state_dict_metadata.items()
        if isinstance(e, TensorStorageMetadata) and len(e.size) == ndim
    )


def huge(meta):
    """A tensor of 2**43 float32 (32 TiB) in one chunk; its storage stays what it was."""
    _fqn, entry = first_tensor(meta)
    entry.properties.dtype = torch.float32
    entry.size = torch.Size([2**43])
    entry.chunks = [ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([2**43]))]


def storage_of(meta, fqn=None):
    fqn = fqn or first_tensor(meta)[0]
    return next(info for index, info in meta.storage_data.items() if index.fqn == fqn)


def past_end(meta):
    info = storage_of(meta)
    info.offset = 10**6


def escaping_path(meta):
    storage_of(meta).relative_path = "../../../../etc/hostname"


def dtype_as_str(meta):
    first_tensor(meta)[1].properties.dtype = "float32"


def offsets_as_list(meta):
    first_tensor(meta)[1].chunks[0].offsets = [0]


def storage_meta_int(meta):
    meta.storage_meta = 5


def uncovered(meta):
    """A tensor whose one chunk covers half of it: the rest would stay uninitialised memory."""
    _fqn, entry = first_tensor(meta, ndim=2)
    entry.size = torch.Size([entry.size[0] * 2, *entry.size[1:]])


def transformed(meta):
    storage_of(meta).transform_descriptors = ["zstd"]


# damage(directory, marker), and what the error says (besides the directory's path)
HOSTILE = {
    "payload-in-metadata": (
        lambda d, m: (d / ".metadata").write_bytes(pickle.dumps(Marker(m))),
        r"its \.metadata holds pickled objects other than DCP metadata",
    ),
    "payload-inside-metadata": (
        lambda d, m: edit_metadata(d, lambda meta: setattr(meta.storage_meta, "save_id", Marker(m))),
        r"its \.metadata holds pickled objects other than DCP metadata",
    ),
    # torch's read_metadata fails on storage_meta = 5 and DCP falls back to pickle.load(__0.metadata)
    "payload-in-rank-metadata": (
        lambda d, m: [edit_metadata(d, storage_meta_int), (d / "__0.metadata").write_bytes(pickle.dumps(Marker(m)))],
        r"its (__0)?\.metadata",
    ),
    "payload-in-extra-rank-metadata": (
        lambda d, m: (d / "__1.metadata").write_bytes(pickle.dumps(Marker(m))),
        r"its __1\.metadata holds pickled objects",
    ),
    "storage-meta-int": (
        lambda d, m: edit_metadata(d, storage_meta_int),
        r"its \.metadata does not describe .*"
        r"storage_meta",
    ),
    "huge-tensor": (lambda d, m: edit_metadata(d, huge), r"holds \d+ bytes, less than its 35184372088832 bytes"),
    "offset-past-end": (lambda d, m: edit_metadata(d, past_end), r"lies past the end of '__0_0.distcp'"),
    "path-outside": (
        lambda d, m: edit_metadata(d, escaping_path),
        r"names '\.\./\.\./\.\./\.\./etc/hostname', not a "
        r"shard file",
    ),
    "dtype-as-str": (lambda d, m: edit_metadata(d, dtype_as_str), r"not TensorProperties with a dtype"),
    "offsets-as-list": (lambda d, m: edit_metadata(d, offsets_as_list), r"not a torch.Size"),
    "uncovered-tensor": (lambda d, m: edit_metadata(d, uncovered), r"do not cover its size"),
    "transformed-storage": (lambda d, m: edit_metadata(d, transformed), r"is transformed"),
}


def hostile_run_dir(sources, tmp_path, case):
    """A copy of the source run directory whose checkpoint directory is made hostile."""
    shutil.copytree(sources / "src", tmp_path / "src")
    directory = tmp_path / "src" / "ckpts" / RUN_DIR
    marker = tmp_path / "ran"
    HOSTILE[case][0](directory, marker)
    return directory, marker


def two_epochs():
    return [
        ice.Task(train=True, epochs=1, tags="train"),
        ice.SaveCheckpointTask(),
        ice.Task(train=True, epochs=1, tags="train"),
    ]


RUN_PATHS = {
    "resume": lambda d, tmp: linear_graph().run(two_epochs(), devices="cpu", out_dir=tmp, run_id="new", resume_from=d),
    "load_checkpoint": lambda d, tmp: linear_graph().load_checkpoint(d),
    "LoadCheckpointTask": lambda d, tmp: linear_graph().exec_tasks([ice.LoadCheckpointTask(d)], ice.Launcher()),
    "export": lambda d, tmp: sharded.export(d, tmp / "exported.pt"),
}


@pytest.mark.parametrize("path", list(RUN_PATHS))
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_checkpoint_directory_is_refused_unread_by_every_path(sources, tmp_path, case, path):
    directory, marker = hostile_run_dir(sources, tmp_path, case)
    with pytest.raises(CheckpointError, match=HOSTILE[case][1]) as info:
        RUN_PATHS[path](directory, tmp_path)
    assert str(directory) in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "exported.pt").exists()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_auto_falls_back_past_a_hostile_checkpoint_directory(sources, tmp_path, case):
    _directory, marker = hostile_run_dir(sources, tmp_path, case)
    g = linear_graph()
    with pytest.warns(UserWarning, match=f"skipping checkpoint {RUN_DIR}: .*{HOSTILE[case][1]}"):
        g.run(two_epochs(), devices="cpu", out_dir=tmp_path, run_id="src", resume_from="auto")
    assert not marker.exists()
    assert g.global_counters.epochs.train == 2  # resumed from the file after epoch 1


def payload_in_state(directory, marker):
    torch.save({"format": FORMAT, "nodes": {}, "x": Marker(marker)}, directory / STATE)


def test_a_payload_in_the_state_file_of_a_directory_is_refused_naming_it(sources, tmp_path):
    shutil.copytree(sources / "src", tmp_path / "src")
    directory, marker = tmp_path / "src" / "ckpts" / RUN_DIR, tmp_path / "ran"
    payload_in_state(directory, marker)
    for path in RUN_PATHS.values():
        with pytest.raises(CheckpointError, match=rf"{RUN_DIR}' \(its state.pt\): it holds pickled objects"):
            path(directory, tmp_path)
    assert not marker.exists()


# -- directories of sharded.save ------------------------------------------------------------------
SHARDED_PATHS = {
    "sharded.load": lambda d, tmp: sharded.load(d, {"*/net": linear_graph()["*/net"]}),
    "sharded.export": lambda d, tmp: sharded.export(d, tmp / "exported.pt"),
}


def payload_in_a_value(directory, marker):
    """The optimizer's learning rate, a plain value DCP stores pickled, replaced by a payload."""
    node = linear_graph()["*/net"]
    states, _ = sharded._states({"*/net": node})  # what sharded.save writes, as a test builds it
    states["*/net"]["optimizers"]["param_groups"][0]["lr"] = Marker(marker)
    for item in directory.iterdir():
        if item.name != sharded.META:
            item.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP's own, without a process group
        dcp.save(states, checkpoint_id=directory, no_dist=True)


def payload_in_meta(directory, marker):
    torch.save(
        {"meta": Marker(marker), "lr_schedulers": {"*/net": {}}, "empty_optimizers": {}}, directory / sharded.META
    )


SHARDED_HOSTILE = {
    **HOSTILE,
    "payload-in-a-value": (
        payload_in_a_value,
        r"refused the value '\*/net.optimizers.param_groups.0.lr'"
        r".*could run code",
    ),
    "payload-in-meta": (payload_in_meta, r"\(its meta.pt\): it holds pickled objects"),
}


@pytest.mark.parametrize(
    "case, path",
    [
        (case, path)
        for case in SHARDED_HOSTILE
        for path in SHARDED_PATHS
        if (case, path) != ("payload-in-meta", "sharded.export")
    ],
)  # export skips it
def test_a_hostile_sharded_directory_is_refused_unread(sources, tmp_path, case, path):
    directory, marker = tmp_path / "sharded", tmp_path / "ran"
    shutil.copytree(sources / "sharded", directory)
    SHARDED_HOSTILE[case][0](directory, marker)
    with pytest.raises(CheckpointError, match=SHARDED_HOSTILE[case][1]) as info:
        SHARDED_PATHS[path](directory, tmp_path)
    assert str(directory) in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "exported.pt").exists()


def test_the_untouched_directories_still_load_through_every_path(sources, tmp_path):
    """The checks refuse nothing that save_checkpoint and sharded.save write."""
    shutil.copytree(sources / "src", tmp_path / "src")
    directory = tmp_path / "src" / "ckpts" / RUN_DIR
    for name, path in RUN_PATHS.items():
        path(directory, tmp_path / name)
    assert sharded.load(sources / "sharded", {"*/net": linear_graph()["*/net"]}) == {"step": 3}
    full = torch.load(sharded.export(sources / "sharded", tmp_path / "full.pt"), weights_only=True)
    assert sorted(full["*/net"]) == ["module", "optimizers"]
    assert full["*/net"]["optimizers"]["param_groups"][0]["lr"] == 0.1


# -- item 2: a run never writes a checkpoint it cannot read ----------------------------------------
class Custom:
    pass


class TableNode(ice.Node):
    """A node whose state holds ``value`` under ``extra.table``."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def state_dict(self):
        return {"extra": {"table": self.value}}

    def load_state_dict(self, state, strict=True):
        self.value = state["extra"]["table"]


class Stateful:
    """A registered object or handler whose state holds ``value``."""

    def __init__(self, value):
        self.value = value

    def __call__(self, engine):
        pass

    def state_dict(self):
        return {"seen": self.value}

    def load_state_dict(self, state):
        self.value = state["seen"]


def unreadable_node(g, task, value):
    g.add("table", TableNode(value))


def unreadable_object(g, task, value):
    g.register_stateful("ema", Stateful(value))


def unreadable_handler(g, task, value):
    from ignite.engine import Events

    task.engine.add_event_handler(Events.EPOCH_COMPLETED, Stateful(value))


UNREADABLE = {
    "numpy-array-in-a-node": (
        unreadable_node,
        lambda: __import__("numpy").zeros(3),
        r"nodes\['\*/table'\]\['extra'\]\['table'\] in the checkpoint is a numpy.ndarray",
    ),
    "custom-class-registered": (
        unreadable_object,
        Custom,
        r"objects\['ema'\]\['seen'\] in the checkpoint is a test_checkpoint_safety.Custom",
    ),
    "numpy-number-in-a-handler": (
        unreadable_handler,
        lambda: __import__("numpy").float64(0.5),
        r"handlers\['task0/0'\]\['state'\]\['seen'\] in the checkpoint is a numpy.float64",
    ),
    "frozenset-in-a-node": (
        unreadable_node,
        lambda: frozenset({1}),
        r"nodes\['\*/table'\]\['extra'\]\['table'\] in the checkpoint is a builtins.frozenset",
    ),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_a_state_weights_only_loading_refuses_is_an_error_before_anything_is_written(tmp_path, case):
    add, make, message = UNREADABLE[case]
    g = linear_graph()
    train = ice.Task(train=True, epochs=1, tags="train")
    add(g, train, make())
    with pytest.raises(CheckpointError, match=message + r".*none was written.*torch.from_numpy\(a\)"):
        g.run(
            [train, ice.SaveCheckpointTask(), ice.Task(train=True, epochs=1, tags="train")],
            devices="cpu",
            out_dir=tmp_path,
            run_id="src",
        )
    assert list((tmp_path / "src" / "ckpts").iterdir()) == []
    assert g.global_counters.epochs.train == 1  # the task after the save never ran
    with pytest.raises(CheckpointError, match=message):
        g.state_dict()  # what ignite's Checkpoint({"graph": g}) would save


def test_a_set_is_what_weights_only_loading_reads_so_it_saves_and_resumes(tmp_path):
    """torch 2.13's weights_only unpickler allows sets (and complex, bytes, torch.device)."""
    g = linear_graph()
    g.register_stateful("ema", Stateful({1, 2, b"x", 1j, torch.device("cpu")}))
    g.run(
        [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()],
        devices="cpu",
        out_dir=tmp_path,
        run_id="src",
    )
    g2 = linear_graph()
    ema = Stateful(None)
    g2.register_stateful("ema", ema)
    g2.run(
        [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()],
        devices="cpu",
        out_dir=tmp_path,
        run_id="src",
        resume_from="auto",
    )
    assert ema.value == {1, 2, b"x", 1j, torch.device("cpu")}


# -- item 3: never restart silently ----------------------------------------------------------------
def rounds(times):
    return [ice.Repeat([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], times=times)]


def ckpt_names(tmp_path, run_id="src"):
    return sorted(p.name for p in (tmp_path / run_id / "ckpts").iterdir())


def test_auto_refuses_a_run_directory_whose_only_checkpoint_is_truncated(tmp_path):
    _, file = saved_checkpoint(tmp_path)
    file.write_bytes(file.read_bytes()[:200])
    g = linear_graph()
    with (
        pytest.warns(UserWarning, match="skipping checkpoint"),
        pytest.raises(
            CheckpointError,
            match=rf"holds 1 checkpoint\(s\) and none loads, so the run is not restarted "
            rf"from the beginning beside them: {file.name} \(.*truncated or "
            r"corrupted.*\)\. Resume from a copy you trust",
        ),
    ):
        g.run(rounds(2), devices="cpu", out_dir=tmp_path, run_id="src", resume_from="auto")
    assert g.global_counters.epochs.train == 0  # nothing trained
    assert ckpt_names(tmp_path) == [file.name]  # nothing written beside it


def test_auto_lists_every_checkpoint_that_does_not_load_and_why(tmp_path):
    _, file = saved_checkpoint(tmp_path)
    ckpts = file.parent
    file.write_bytes(b"")
    (ckpts / "ckpt-000001-E1S5.dcp").mkdir()  # a directory without state.pt
    (ckpts / "best-000002-E1S5-val%2Fmse=0.5.pt").write_bytes(b"not a checkpoint")
    (ckpts / "ckpt-final.pt").write_bytes(b"")  # a name that is no checkpoint's
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="holds 4 checkpoint") as info:
        linear_graph().run(rounds(2), devices="cpu", out_dir=tmp_path, run_id="src", resume_from="auto")
    message = str(info.value)
    for name, why in (
        (file.name, "truncated or corrupted"),
        ("ckpt-000001-E1S5.dcp", "has no state.pt"),
        ("best-000002-E1S5-val%2Fmse=0.5.pt", "refused to load"),
        ("ckpt-final.pt", "not a checkpoint name"),
    ):
        assert re.search(rf"{re.escape(name)} \([^;]*{why}", message), (name, message)


def test_best_files_alone_protect_a_run_directory(tmp_path):
    _, file = saved_checkpoint(tmp_path)
    best = file.rename(file.with_name("best-000000-E1S5-val%2Fmse=0.5.pt"))
    with pytest.raises(FileExistsError, match=r"holds checkpoints; pass resume_from='auto'.*best-\*"):
        linear_graph().run(rounds(1), devices="cpu", out_dir=tmp_path, run_id="src", n_saved=1)
    assert best.exists()


def test_auto_resumes_the_newest_checkpoint_of_either_kind(tmp_path):
    linear_graph().run(rounds(2), devices="cpu", out_dir=tmp_path, run_id="src")
    ckpts = tmp_path / "src" / "ckpts"
    (ckpts / "ckpt-000001-E2S10.pt").rename(ckpts / "best-000001-E2S10-val%2Fmse=0.5.pt")
    before = ckpt_names(tmp_path)
    g = linear_graph()
    g.run(rounds(2), devices="cpu", out_dir=tmp_path, run_id="src", resume_from="auto")
    assert g.global_counters.epochs.train == 2
    assert ckpt_names(tmp_path) == before  # resumed after the last save (from the best file): nothing to redo


def test_metric_nodes_of_one_name_under_different_tags_keep_their_own_best_files(tmp_path):
    values = {"val": iter([0.5, 0.7, 0.6]), "test": iter([0.9, 0.4, 0.95])}

    def metric(tag):
        return ice.MetricNode(
            Accuracy(),
            forward=lambda n, x: (torch.ones(1, 2), torch.zeros(1).long()),
            epoch_end=lambda n: n.save_best(next(values[tag]), max_keep=1),
        )

    g = linear_graph()
    g.add("acc", metric("val"), tags="val")
    g.add("acc", metric("test"), tags="test")
    g.add("data", ice.DatasetNode(regression_set(16, seed=2), batch_size=8), tags="test")
    g.run(
        [
            ice.Repeat(
                [
                    ice.Task(train=True, epochs=1, tags="train"),
                    ice.Task(train=False, epochs=1, tags="val"),
                    ice.Task(train=False, epochs=1, tags="test"),
                ],
                times=3,
            )
        ],
        devices="cpu",
        out_dir=tmp_path,
        run_id="src",
    )
    ckpts = tmp_path / "src" / "ckpts"
    for uid, value in (("val/acc", 0.7), ("test/acc", 0.95)):
        records = g[uid].best_records
        assert [v for v, _ in records] == [value]
        assert [p.name for p in best_files(ckpts, uid)] == [records[0][1]]  # the record's file exists
        assert best_uid(records[0][1]) == (uid, "acc")


def test_old_best_file_names_are_still_read(tmp_path):
    _, file = saved_checkpoint(tmp_path)
    ckpts = file.parent
    legacy = file.rename(ckpts / "best-000000-E1S5-acc=0.5.pt")
    new = ckpts / best_filename(3, 1, 5, "#dbg,val/acc", 0.75)
    shutil.copy(legacy, new)
    assert new.name == "best-000003-E1S5-%23dbg%2Cval%2Facc=0.75.pt"
    assert best_uid(legacy.name) == (None, "acc")
    assert best_files(ckpts, "#dbg,val/acc") == [legacy, new]  # an old file of its name may be its own
    assert best_files(ckpts, "#dbg,val/acc", legacy=False) == [new]
    assert best_files(ckpts, "test/acc", legacy=False) == []
    assert best_files(ckpts, "acc") == [legacy, new]  # by name: every node of that name
    g = linear_graph()
    g.run(rounds(2), devices="cpu", out_dir=tmp_path, run_id="src", resume_from="auto")  # the newest: `new`
    assert g.global_counters.epochs.train == 2
