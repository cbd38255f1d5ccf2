"""The front door (issue 23): ``HyperGraph.run``'s signature, its options objects (recorded as plain
dicts), the deprecated keywords and graph properties, and where a run resumes from."""

import dataclasses
import datetime
import inspect
import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import linear_graph

import ice_ignite as ice
from ice_ignite.checkpoint.resume import resume_from_of
from ice_ignite.run import RunOptions, options_of_keywords

P = inspect.Parameter


def schedule():
    return [ice.Task(train=True, epochs=1, tags="train"), *(ice.SaveCheckpointTask() for _ in range(3))]


def test_run_takes_the_schedule_and_eleven_options():
    params = list(inspect.signature(ice.HyperGraph.run).parameters.values())[1:]  # after self
    # API.md's positional head stays positional: run(tasks, devices, run_id, out_dir, resume_from, seed)
    assert [p.name for p in params if p.kind is P.POSITIONAL_OR_KEYWORD] == [
        "tasks",
        "devices",
        "run_id",
        "out_dir",
        "resume_from",
        "seed",
    ]
    assert [p.name for p in params[1:] if p.kind is P.KEYWORD_ONLY] == [
        "strict_resume",
        "progress",
        "launch",
        "outputs",
        "config",  # issue 24: the script's settings (ice.config), recorded and compared on resume
        "launcher",
    ]
    assert params[-1].kind is P.VAR_KEYWORD and len(params) == 13  # **deprecated: the old keywords, one release
    # what a forked worker passes back to run: every option, by the names run takes
    assert [*RunOptions().keywords(), "launcher"] == [p.name for p in params[1:12]]
    with pytest.raises(TypeError, match="positional argument"):
        ice.HyperGraph().run([], "cpu", None, None, None, None, "1:1")  # the old positional nnodes


def test_old_keywords_warn_and_map_onto_the_options_objects():
    old = {"tee": "3", "max_restarts": 2, "collective_timeout": 5, "n_saved": 2, "timing": True}
    with pytest.warns(DeprecationWarning) as caught:
        launch, outputs = options_of_keywords(old, None, None)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "run(n_saved=..., timing=...) is deprecated: pass outputs=ice.OutputOptions(n_saved=..., timing=...); "
        "the keywords go in the next release",
        "run(tee=..., max_restarts=..., collective_timeout=...) is deprecated: pass launch=ice.LaunchOptions("
        "tee=..., max_restarts=..., collective_timeout=...); the keywords go in the next release",
    ]
    assert launch == ice.LaunchOptions(tee="3", max_restarts=2, collective_timeout=5)
    assert outputs == ice.OutputOptions(n_saved=2, timing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new way warns about nothing
        assert options_of_keywords({}, None, None) == (ice.LaunchOptions(), ice.OutputOptions())


def test_old_keywords_and_options_objects_run_alike(tmp_path):
    graphs = [linear_graph(), linear_graph()]
    with pytest.warns(DeprecationWarning, match=r"pass outputs=ice.OutputOptions\(n_saved=..., log_every=...\)"):
        old = graphs[0].run(schedule(), devices="cpu", out_dir=tmp_path, run_id="old", n_saved=2, log_every=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = graphs[1].run(
            schedule(),
            devices="cpu",
            out_dir=tmp_path,
            run_id="new",
            outputs=ice.OutputOptions(n_saved=2, log_every=0),
            launch=ice.LaunchOptions(collective_timeout=60, standalone=True),
        )
    kept = [sorted(p.name for p in (run_dir / "ckpts").glob("ckpt-*.pt")) for run_dir in (old, new)]
    assert kept[0] == kept[1] and len(kept[0]) == 2  # 3 saved, the newest 2 kept
    a, b = (g["*/net"].module.weight for g in graphs)
    assert torch.equal(a, b) and graphs[1].global_counters.steps.train == 5


def test_an_unknown_keyword_is_an_error_naming_the_closest(tmp_path):
    g = linear_graph()
    with pytest.raises(TypeError, match=r"'n_save'; did you mean 'n_saved', in outputs=ice.OutputOptions\(n_saved="):
        g.run(schedule(), devices="cpu", out_dir=tmp_path, n_save=2)
    with pytest.raises(TypeError, match=r"'rdzv_endpiont'; did you mean 'rdzv_endpoint', in launch=ice.LaunchOptions"):
        g.run(schedule(), devices="cpu", out_dir=tmp_path, rdzv_endpiont="host:1")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'devics'; did you mean 'devices'\?"):
        g.run(schedule(), devics="cpu", out_dir=tmp_path)
    with pytest.raises(TypeError, match=r"'zzz'; its keywords are devices, run_id, out_dir, resume_from, seed"):
        g.run(schedule(), devices="cpu", out_dir=tmp_path, zzz=1)
    with pytest.raises(TypeError, match=r"output keywords \['n_saved'\] too; pass the output options in one place"):
        g.run(schedule(), devices="cpu", out_dir=tmp_path, outputs=ice.OutputOptions(), n_saved=2)
    with pytest.raises(TypeError, match=r"run launch= needs an ice.LaunchOptions, got dict"):
        g.run(schedule(), devices="cpu", out_dir=tmp_path, launch={"tee": "3"})
    assert list(tmp_path.iterdir()) == [] and g.global_counters.steps.train == 0  # refused before anything ran


def test_the_options_are_recorded_as_plain_dicts_and_read_back():
    options = RunOptions(
        devices="cpu:0-1",
        out_dir=Path("runs"),
        resume_from=Path("runs/a/ckpts/ckpt-3.pt"),
        launch=ice.LaunchOptions(
            tee="3", rdzv_configs={"timeout": 60}, collective_timeout=datetime.timedelta(seconds=90)
        ),
        outputs=ice.OutputOptions(n_saved=2, hparams={"lr": 0.1}),
    )
    record = options.to_dict()
    assert json.loads(json.dumps(record)) == record  # plain values only
    assert (record["out_dir"], record["resume_from"], record["devices"]) == (
        "runs",
        "runs/a/ckpts/ckpt-3.pt",
        "cpu:0-1",
    )
    assert record["launch"] == {**dataclasses.asdict(options.launch), "collective_timeout": 90.0}
    assert record["outputs"] == dataclasses.asdict(options.outputs) == options.outputs.to_dict()
    back = RunOptions.from_dict(record)
    assert back.launch == dataclasses.replace(options.launch, collective_timeout=90.0)
    assert back.outputs == options.outputs and back.to_dict() == record
    with pytest.raises(TypeError, match=r"LaunchOptions has no option 'te'; did you mean 'tee'\?"):
        ice.LaunchOptions.from_dict({"te": "3"})
    with pytest.raises(ValueError, match="collective_timeout must be None"):
        ice.LaunchOptions(collective_timeout=-1)


def test_the_run_context_is_read_from_g_context_and_the_old_graph_properties_warn(tmp_path):
    g = linear_graph()
    seen = {}

    def look(g):
        node = g["*/net"]
        ctx = g.context
        assert node.context is ctx
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the node's properties (API.md) are plain shorthands
            seen["node"] = (node.out_dir, node.run_id, node.launcher, node.grad_scaler, node.board)
        seen["context"] = (ctx.run_dir, ctx.run_id, ctx.launcher, ctx.grad_scaler, ctx.board)
        with pytest.warns(DeprecationWarning) as caught:
            seen["graph"] = (g.run_dir, g.run_id, g.launcher, g.grad_scaler, g.board)
            seen["seed"] = g.seed
        assert {str(w.message).split(" is deprecated")[0] for w in caught} == {
            f"HyperGraph.{name}" for name in ("run_dir", "run_id", "launcher", "grad_scaler", "board", "seed")
        }
        assert all(w.filename == __file__ for w in caught)  # the warning points at the caller's line

    g.run([look], devices="cpu", out_dir=tmp_path, run_id="ctx", seed=7)
    assert seen["graph"] == seen["context"] == seen["node"]
    assert seen["context"][:2] == (tmp_path / "ctx", "ctx") and seen["seed"] == 7
    with pytest.warns(DeprecationWarning, match=r"HyperGraph.seed is deprecated .* read g.context.seed"):
        g.seed = 3
    assert g.context.seed == 3


def test_a_restarted_worker_resumes_from_the_last_checkpoint(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert resume_from_of(None, worker=True) is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume_from_of(None, worker=True) == "auto"
    assert resume_from_of(None, worker=False) is None  # a launching process starts nothing of its own
    assert resume_from_of("a.pt", worker=True) == "a.pt"


def test_api_positional_head_still_works(tmp_path):
    """API.md's ``run(tasks, devices, run_id, out_dir, resume_from, seed)`` called positionally."""
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(torch.arange(8.0).unsqueeze(1), batch_size=4))
    run_dir = g.run([ice.Task(train=False, epochs=1)], "cpu", "positional", tmp_path, None, 3, progress=False)
    assert run_dir == tmp_path / "positional" and g.context.seed == 3
