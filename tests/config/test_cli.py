"""``ice.config``: a dataclass from key=value arguments and YAML files, its errors and --help."""

import dataclasses
import enum
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ice_ignite as ice

CHILD = Path(__file__).resolve().parents[1] / "config_child.py"


class Act(enum.Enum):
    relu = 1
    gelu = 2


@dataclasses.dataclass
class Model:
    """The network."""

    width: int = dataclasses.field(default=128, metadata={"help": "hidden units"})
    act: Act = Act.relu


@dataclasses.dataclass
class Config:
    """Train a model."""

    lr: float = dataclasses.field(default=1e-3, metadata={"help": "learning rate"})
    name: str | None = None
    model: Model = dataclasses.field(default_factory=lambda: Model(width=64))
    tags: list[int] = dataclasses.field(default_factory=list)


def test_defaults_then_files_in_order_then_overrides_in_order(tmp_path):
    assert ice.config(Config, []) == Config()
    (tmp_path / "a.yaml").write_text("lr: 0.5\nmodel:\n  width: 7\n")
    (tmp_path / "b.yaml").write_text("model:\n  act: gelu\n")
    cfg = ice.config(
        Config, ["--config", str(tmp_path / "a.yaml"), f"--config={tmp_path / 'b.yaml'}", "lr=2", "tags=[1, 2]", "lr=3"]
    )
    assert cfg == Config(lr=3.0, model=Model(width=7, act=Act.gelu), tags=[1, 2])
    assert type(cfg) is Config and type(cfg.model) is Model and isinstance(cfg.lr, float)
    assert ice.config(Config, ["name=null", "model.width=256"]) == Config(model=Model(width=256))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["model.widht=3"], "unknown key 'model.widht'; did you mean 'model.width'?"),
        (["modle.width=3"], "unknown key 'modle.width'; did you mean 'model.width'?"),
        (["lr=abc"], "key 'lr' got 'abc', expected float"),
        (["model.width=2.5"], "key 'model.width' got '2.5', expected int"),
        (["model.act=tanh"], "key 'model.act' got 'tanh', expected relu|gelu"),
        (["model=3"], "key 'model' got '3', but it is a group of keys (model.width, model.act)"),
        (["lr"], "argument 'lr' is not key=value"),
        (["--lr", "3"], "unknown option '--lr'"),
        (["--config"], "--config needs a YAML file"),
        (["--config", "nope.yaml"], "--config nope.yaml: no such file"),
        (["-m", "lr=1,2"], "-m (several configurations, one run each) is a sweep"),
    ],
)
def test_each_error_names_the_key_and_value(argv, message):
    with pytest.raises(ice.ConfigError) as e:
        ice.config(Config, argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_file_error_names_the_file_and_a_required_key_must_be_given(tmp_path):
    (tmp_path / "bad.yaml").write_text("model:\n  width: wide\n")
    with pytest.raises(ice.ConfigError, match=r"key 'model.width' in .*bad.yaml got 'wide', expected int"):
        ice.config(Config, ["--config", str(tmp_path / "bad.yaml")])

    @dataclasses.dataclass
    class Needs:
        data: str = "???"  # OmegaConf's mark of a required value

    with pytest.raises(ice.ConfigError, match="no value for the required key data: give data=VALUE"):
        ice.config(Needs, [])
    assert ice.config(Needs, ["data=/x"]).data == "/x"

    @dataclasses.dataclass
    class Checked:
        lr: float = 0.1

        def __post_init__(self):
            if self.lr <= 0:
                raise ValueError(f"lr must be positive, got {self.lr}")

    with pytest.raises(ice.ConfigError, match="Checked refused the settings: lr must be positive, got -1.0"):
        ice.config(Checked, ["lr=-1"])
    with pytest.raises(TypeError, match="ice.config takes a dataclass type"):
        ice.config(Config(), [])


def test_help_lists_every_key_with_type_default_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        ice.config(Config, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "Train a model." in out
    lines = out.splitlines()
    rows = [re.split(r"\s{2,}", line) for line in lines[-6:]]
    assert rows == [
        ["key", "type", "default", "help"],
        ["lr", "float", "0.001", "learning rate"],
        ["name", "str | None", "null"],
        ["model.width", "int", "64", "hidden units"],
        ["model.act", "relu|gelu", "relu"],
        ["tags", "list[int]", "[]"],
    ]


@pytest.mark.slow
def test_from_a_script_an_error_is_one_line_on_stderr_and_status_2(tmp_path):
    """A fresh process (imports torch): 5-15 s."""
    bad = subprocess.run([sys.executable, str(CHILD), "lr=fast"], capture_output=True, text=True, timeout=120)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "config_child.py: error: key 'lr' got 'fast', expected float\n"


@pytest.mark.slow
def test_two_spawned_ranks_get_the_same_config(tmp_path):
    """devices="cpu:0-1": the workers re-run the script with its arguments (10-25 s)."""
    (tmp_path / "exp.yaml").write_text("model:\n  width: 6\n")
    argv = [f"out_dir={tmp_path}", "devices=cpu:0-1", "--config", str(tmp_path / "exp.yaml"), "lr=0.05"]
    proc = subprocess.run([sys.executable, str(CHILD), *argv], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = (
        f"Config(out_dir='{tmp_path}', run_id='child', devices='cpu:0-1', lr=0.05, epochs=1, model=Model(width=6))"
    )
    assert [(tmp_path / f"config-rank{r}.txt").read_text() for r in (0, 1)] == [expected, expected]
    # global rank 0 recorded it, with the workers' command line and launcher environment
    record = yaml.safe_load((tmp_path / "child" / "record.yaml").read_text())
    assert record["argv"][1:] == argv and record["overrides"] == argv[:2] + ["lr=0.05"]
    assert record["world_size"] == 2 and record["launcher_env"]["WORLD_SIZE"] == "2"
    assert record["options"]["devices"] == "cpu:0-1" and record["device"] == "cpu"
    assert yaml.safe_load((tmp_path / "child" / "config.yaml").read_text())["model"] == {"width": 6}
