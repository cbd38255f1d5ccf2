"""What a run writes of itself into its run directory at start (global rank 0), for a person to read
and for the run to be replayed:

- ``config.yaml``: the resolved config (when the run was given one: ``run(config=cfg)``);
- ``record.yaml``: the config's hash, the command line (argv, the ``key=value`` overrides), the keys
  set away from their defaults, the run's own options, the code (entry script, git commit, branch,
  whether the tree was dirty), versions (Python, torch, ignite, numpy, ice_ignite), host, world
  size and the launcher's environment variables;
- ``git.diff``: the uncommitted changes of the entry script's repository, when there are any;
- ``packages.txt``: the installed distributions (``name==version``), from the names of their
  ``.dist-info`` directories (about 1 ms; pip is not run).

Each start of the run directory (a resume) rewrites them; ``config-history.yaml`` keeps what changed.
"""

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ice_ignite.config.values import ConfigValues

__all__ = [
    "RunRecord",
    "write_run_record",
    "append_config_history",
    "read_config_history",
    "launcher_environment",
    "git_state",
    "package_freeze",
    "overrides_of",
]

RECORD_FILE = "record.yaml"
CONFIG_FILE = "config.yaml"
GIT_DIFF_FILE = "git.diff"
PACKAGES_FILE = "packages.txt"
HISTORY_FILE = "config-history.yaml"

#: environment variables set by launchers and schedulers that say how the process was started
LAUNCHER_PREFIXES = (
    "TORCHELASTIC_",
    "MASTER_",
    "SLURM_",
    "PMI_",
    "OMPI_COMM_WORLD_",
    "GROUP_",
    "ROLE_",
    "CUDA_VISIBLE",
)
LAUNCHER_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "OMP_NUM_THREADS")
GIT_TIMEOUT_S = 5.0
MAX_DIFF_BYTES = 10 * 2**20  # a larger diff is cut there (the record says so)


def dump_yaml(data: Any) -> str:
    """``data`` as block-style YAML, keys in their order."""
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def launcher_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The launcher's and scheduler's variables of ``environ`` (``os.environ``), sorted.

    Examples:
        >>> launcher_environment({"RANK": "1", "HOME": "/root", "SLURM_JOB_ID": "7"})
        {'RANK': '1', 'SLURM_JOB_ID': '7'}
    """
    env = os.environ if environ is None else environ
    return {k: env[k] for k in sorted(env) if k in LAUNCHER_NAMES or k.startswith(LAUNCHER_PREFIXES)}


def overrides_of(argv: Sequence[str]) -> list[str]:
    """The ``key=value`` arguments of a command line (what ``ice.config`` applies on the defaults).

    Examples:
        >>> overrides_of(["train.py", "--config", "exp.yaml", "lr=0.1", "model.width=8"])
        ['lr=0.1', 'model.width=8']
    """
    return [a for a in list(argv)[1:] if "=" in a and not a.startswith("-")]


def git_state(directory: Path) -> tuple[dict | None, str]:
    """The git commit, branch and dirtiness of the repository holding ``directory``, and its
    uncommitted diff (against HEAD); ``(None, "")`` when git is absent, slow (over
    ``GIT_TIMEOUT_S``) or ``directory`` is in no repository."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args],
                capture_output=True,
                timeout=GIT_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.decode(errors="replace") if done.returncode == 0 else None

    head = git("rev-parse", "HEAD", "--abbrev-ref", "HEAD", "--show-toplevel")  # one call: three lines
    if head is None or len(head.splitlines()) != 3:
        return None, ""
    commit, branch, root = head.splitlines()
    status = git("status", "--porcelain", "--untracked-files=normal") or ""
    diff = git("diff", "HEAD", "--no-color") or ""
    cut = len(diff.encode()) > MAX_DIFF_BYTES
    if cut:
        diff = diff.encode()[:MAX_DIFF_BYTES].decode(errors="ignore")
    state = {
        "commit": commit,
        "branch": branch,
        "root": root,
        "dirty": bool(status.strip()),
        "untracked": [line[3:] for line in status.splitlines() if line.startswith("??")],
    }
    if diff:
        state["diff"] = GIT_DIFF_FILE + (" (cut at 10 MiB)" if cut else "")
    return state, diff


def package_freeze() -> list[str]:
    """``name==version`` of every installed distribution on ``sys.path``, sorted: read from the
    names of their ``name-version.dist-info`` directories (about 1 ms: no METADATA file is parsed,
    no pip), ``.egg-info`` ones through importlib.metadata. Names are as the directories spell them
    (normalized: ``pytorch_ignite``)."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info") and "-" in name:
                package, version = name[: -len(".dist-info")].split("-", 1)
                found.setdefault(package.lower().replace("-", "_"), f"{package}=={version}")
            elif name.endswith(".egg-info"):
                try:
                    dist = importlib.metadata.PathDistribution(Path(entry or ".") / name)
                    package = dist.metadata["Name"]
                    version = dist.version
                except Exception:  # a broken egg-info: left out, not the run's error
                    continue
                if package:
                    found.setdefault(package.lower().replace("-", "_"), f"{package}=={version}")
    return [found[k] for k in sorted(found)]


def versions() -> dict[str, str | None]:
    """The versions of Python and of the libraries a run depends on."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in (("torch", "torch"), ("ignite", "pytorch-ignite"), ("numpy", "numpy"), ("ice_ignite", None)):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is None and dist is not None:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = None
        found[name] = str(version) if version is not None else None
    return found


def entry_script() -> Path | None:
    """The script this process runs (``__main__``'s file); None in a notebook, ``python -c`` or an
    installed tool (pytest, an IPython kernel: their entry point is not the user's code)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    real = os.path.realpath(path)
    installed = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib", "stdlib", "scripts")}
    return None if any(real.startswith(d + os.sep) for d in installed) else Path(real)


class RunRecord:
    """The record of one start of a run in ``run_dir``, written by ``write``."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def write(
        self,
        config: ConfigValues | None,
        options: Mapping[str, Any],
        *,
        world_size: int,
        device: str | None = None,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        seed: int | None = None,
    ) -> Path:
        """Write ``config.yaml`` (when ``config``), ``git.diff`` (when the entry script's
        repository has changes), ``packages.txt`` and ``record.yaml``. ``options``:
        the run's own options as plain values (``RunOptions.to_dict()``: devices, seed,
        resume_from, launch options, ...); ``device``: this process's device (rank 0's);
        ``seed``: the seed the run used (``options["seed"]`` is None when it came from
        ``torch.initial_seed()``). Returns ``record.yaml``'s path."""
        argv = list(sys.argv if argv is None else argv)
        script = entry_script()
        git, diff = git_state(script.parent) if script is not None else (None, "")
        record: dict[str, Any] = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config_hash": config.hash if config is not None else None,
            "config": CONFIG_FILE if config is not None else None,
            "argv": argv,
            "overrides": overrides_of(argv),
            "changed_from_defaults": (
                {key: {"default": old, "value": new} for key, old, new in config.changed_from_defaults()}
                if config is not None
                else {}
            ),
            "options": {k: _plain_option(v) for k, v in options.items()},
            "entry_script": str(script) if script is not None else None,
            "cwd": os.getcwd(),
            "git": git,
            "versions": versions(),
            "packages": PACKAGES_FILE,
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "pid": os.getpid(),
            "world_size": world_size,
            "device": device,
            "seed": seed,
            "launcher_env": launcher_environment(environ),
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            _write_text(self.run_dir / CONFIG_FILE, dump_yaml(config.values))
        if diff:
            _write_text(self.run_dir / GIT_DIFF_FILE, diff)
        _write_text(self.run_dir / PACKAGES_FILE, "\n".join(package_freeze()) + "\n")
        path = self.run_dir / RECORD_FILE
        _write_text(path, "# the record of this run's latest start (ice_ignite); see config.yaml\n" + dump_yaml(record))
        return path


def write_run_record(
    run_dir: Path,
    config: Any,
    options: Mapping[str, Any],
    *,
    world_size: int = 1,
    argv: Sequence[str] | None = None,
) -> RunRecord:
    """Write the record of a run's start into ``run_dir`` (see the module's docstring); ``config``
    is a dataclass instance, a dict, a ``ConfigValues`` or None. Returns the ``RunRecord``."""
    values = config if isinstance(config, ConfigValues) or config is None else ConfigValues.of(config)
    record = RunRecord(run_dir)
    record.write(values, options, world_size=world_size, argv=argv)
    return record


def append_config_history(
    run_dir: Path, step: int, checkpoint: str, old_hash: str, new_hash: str, changed: Sequence[str]
) -> Path:
    """Add an entry to ``run_dir/config-history.yaml``: a resume from ``checkpoint`` (taken at
    optimizer step ``step``) continued with another config; ``changed``: ``key: old → new``."""
    import yaml

    path = Path(run_dir) / HISTORY_FILE
    entries = (yaml.safe_load(path.read_text()) or []) if path.exists() else []
    entries.append(
        {
            "step": step,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "resumed_from": str(checkpoint),
            "old_hash": old_hash,
            "new_hash": new_hash,
            "changed": list(changed),
        }
    )
    _write_text(
        path, "# configs changed on resume (strict_resume=False), at optimizer step `step`\n" + dump_yaml(entries)
    )
    return path


def read_config_history(run_dir: Path) -> list[dict]:
    """The entries of ``run_dir/config-history.yaml`` ([] when no config changed on resume)."""
    import yaml

    path = Path(run_dir) / HISTORY_FILE
    return (yaml.safe_load(path.read_text()) or []) if path.exists() else []


def _plain_option(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain_option(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_option(v) for v in value]
    return str(value)


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
