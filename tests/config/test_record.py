"""What a run records of itself (record.yaml, config.yaml, packages.txt, git), the config in its
checkpoints and on TensorBoard, and a resume with another config refused or recorded."""

import dataclasses
import importlib.metadata
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import linear_graph

import ice_ignite as ice
from ice_ignite.checkpoint.files import read_checkpoint
from ice_ignite.config.record import git_state, read_config_history, write_run_record
from ice_ignite.config.values import ConfigValues
from ice_ignite.run import RunOptions


@dataclasses.dataclass
class Model:
    width: int = 4


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    model: Model = dataclasses.field(default_factory=Model)
    note: str = dataclasses.field(default="", metadata={"compare": False, "help": "free text, may change on resume"})


def train(out, cfg, **kwargs):
    g = linear_graph(lr=cfg.lr)  # 40 samples, batches of 8: 5 optimizer steps an epoch
    tasks = [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()]
    return g.run(tasks, devices="cpu", out_dir=out, run_id="r", config=cfg, progress=False, **kwargs)


def hparams_of(logs: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    (run,) = [p for p in logs.iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    values = HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in values.items()}


def test_the_run_records_config_options_environment_and_checkpoints_the_config(tmp_path, monkeypatch):
    """About 2 s."""
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    cfg = ice.config(Config, ["lr=0.05", "model.width=8"])
    run_dir = train(tmp_path, cfg, seed=3, outputs=ice.OutputOptions(hparams={"extra": 1}))
    values = ConfigValues.of(cfg)
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == {"lr": 0.05, "model": {"width": 8}, "note": ""}
    record = yaml.safe_load((run_dir / "record.yaml").read_text())
    assert record["config_hash"] == values.hash and len(values.hash) == 64
    assert record["changed_from_defaults"] == {
        "lr": {"default": 0.1, "value": 0.05},
        "model.width": {"default": 4, "value": 8},
    }
    options = record["options"]
    assert (options["devices"], options["seed"], options["resume_from"], options["run_id"]) == ("cpu", 3, None, "r")
    assert options["launch"]["nnodes"] == "1:1" and options["launch"]["start_method"] == "spawn"
    assert options["outputs"]["hparams"] == {"extra": 1} and record["device"] == "cpu"
    assert RunOptions.from_dict(options).to_dict() == options  # the record reads back as the run's options
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["ignite"] == importlib.metadata.version("pytorch-ignite")
    assert record["versions"]["numpy"] == importlib.metadata.version("numpy")
    assert (record["world_size"], record["host"]) == (1, socket.gethostname())
    assert record["launcher_env"]["SLURM_JOB_ID"] == "42"
    packages = (run_dir / "packages.txt").read_text().splitlines()
    names = [line.split("==")[0].lower() for line in packages]
    assert f"omegaconf=={importlib.metadata.version('omegaconf')}" in packages and names == sorted(names)
    # every checkpoint holds the config and its hash
    (ckpt,) = (run_dir / "ckpts").glob("ckpt-*.pt")
    assert read_checkpoint(ckpt)["run_config"] == {"values": values.values, "hash": values.hash}
    # the config's flat keys with the final metrics, hparams= adding to them
    assert hparams_of(run_dir / "logs") == {"lr": 0.05, "model.width": 8, "note": "", "extra": 1}


def test_argv_overrides_and_the_background_freeze(tmp_path):
    record = write_run_record(tmp_path, Config(), {"devices": "cpu:0-1"}, argv=["t.py", "--config", "e.yaml", "lr=1"])
    record.wait()
    written = yaml.safe_load((tmp_path / "record.yaml").read_text())
    assert written["argv"] == ["t.py", "--config", "e.yaml", "lr=1"] and written["overrides"] == ["lr=1"]
    assert written["options"] == {"devices": "cpu:0-1"} and written["changed_from_defaults"] == {}
    assert (tmp_path / "packages.txt").read_text().count("==") > 10


def test_git_commit_and_dirty_diff_and_a_silent_skip_without_git(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    (repo / "train.py").write_text("lr = 0.1\n")
    git("add", "train.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    assert git_state(repo) == (
        {"commit": git("rev-parse", "HEAD").strip(), "branch": git("rev-parse", "--abbrev-ref", "HEAD").strip(),
         "root": str(repo.resolve()), "dirty": False, "untracked": []},
        "",
    )  # fmt: skip
    (repo / "train.py").write_text("lr = 0.2\n")
    (repo / "new.py").write_text("")
    state, diff = git_state(repo)
    assert state["dirty"] and state["untracked"] == ["new.py"] and state["diff"] == "git.diff"
    assert "-lr = 0.1\n+lr = 0.2" in diff
    assert git_state(tmp_path) == (None, "")  # no repository
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert git_state(repo) == (None, "")  # no git


def test_a_changed_override_is_refused_on_resume_listing_the_key(tmp_path):
    """About 2 s."""
    train(tmp_path, ice.config(Config, ["lr=0.05"]))
    changed = ice.config(Config, ["lr=0.2", "note=again"])  # note: compare=False
    with pytest.raises(ice.ResumeTaskFailed) as e:
        train(tmp_path, changed, resume_from="auto")
    assert "another config" in str(e.value) and "lr: 0.05 → 0.2." in str(e.value) and "note" not in str(e.value)
    # the refused start left the record of the run that wrote the checkpoint
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["lr"] == 0.05
    train(tmp_path, ice.config(Config, ["lr=0.05", "note=again"]), resume_from="auto")  # compare=False: resumes
    assert read_config_history(tmp_path / "r") == []


def test_a_lenient_resume_warns_and_keeps_the_change_in_the_history(tmp_path):
    """About 2 s."""
    train(tmp_path, ice.config(Config, ["lr=0.05"]))
    new = ice.config(Config, ["lr=0.2", "model.width=5"])
    with pytest.warns(UserWarning, match=r"another config .*: lr: 0.05 → 0.2; model.width: 4 → 5; resuming anyway"):
        run_dir = train(tmp_path, new, resume_from="auto", strict_resume=False)
    (entry,) = read_config_history(run_dir)
    assert entry["step"] == 5 and entry["changed"] == ["lr: 0.05 → 0.2", "model.width: 4 → 5"]
    assert entry["new_hash"] == ConfigValues.of(new).hash and entry["resumed_from"].endswith("ckpt-000000-E1S5.pt")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["lr"] == 0.2
