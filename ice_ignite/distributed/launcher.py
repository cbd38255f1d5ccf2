"""Where a process runs: the ``devices=`` grammar of ``HyperGraph.run``, and starting or joining
the processes of a multi-process run through torch's elastic agent and ``ignite.distributed`` (B9)."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ice_ignite.distributed.hang import collective_timeout_of
from ice_ignite.distributed.launcher_record import Launcher

__all__ = [
    "LaunchOptions",
    "options_from_dict",
    "parse_devices",
    "default_backend",
    "in_worker",
    "join",
    "leave",
    "launch",
    "launch_config",
    "WorkerFailed",
    "preempted_signal",
    "joined_group",
    "script_command",
    "free_port",
]


def _std(name: str, value: str | int) -> Any:
    """torchrun's ``--redirects`` / ``--tee`` value as torch's ``Std`` (or a map by local rank)."""
    from torch.distributed.elastic.multiprocessing.api import Std

    try:
        return Std.from_str(str(value))
    except ValueError:
        raise ValueError(
            f"{name}={value!r}: write torchrun's form, '0' (nothing), '1' (stdout), '2' (stderr), "
            f"'3' (both), or one per local rank such as '0:3,1:2'"
        ) from None


def _rdzv_configs(value: dict[str, Any] | str | None) -> dict[str, Any]:
    """``rdzv_configs`` as a dict: a dict as it is, or torchrun's ``--rdzv-conf`` text ``'k=v,k2=v2'``."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    if isinstance(value, str):
        pairs = [part.partition("=") for part in value.split(",") if part.strip()]
        if all(eq and key.strip() for key, eq, _ in pairs):
            return {key.strip(): v.strip() for key, _, v in pairs}
    raise ValueError(
        f"rdzv_configs={value!r}: pass a dict such as {{'timeout': 1800}} or torchrun's "
        "--rdzv-conf text 'timeout=1800,read_timeout=120'"
    )


def options_from_dict(cls: Any, values: dict[str, Any]) -> Any:
    """An options dataclass ``cls`` from what its ``to_dict()`` returned; an unknown key is a
    ``TypeError`` naming the closest field.

    Examples:
        >>> options_from_dict(LaunchOptions, {"tee": "3", "max_restarts": 2}).max_restarts
        2
    """
    if not isinstance(values, dict):
        raise TypeError(f"{cls.__name__}.from_dict needs a dict, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; its fields are {', '.join(names)}"
            raise TypeError(f"{cls.__name__} has no option {key!r}{hint}")
    return cls(**values)


def plain_value(value: Any) -> Any:
    """``value`` as a plain recordable value (JSON, YAML): a path as text, a ``timedelta`` as
    seconds, dicts, lists and tuples element by element; anything else as it is."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value


@dataclass(frozen=True)
class LaunchOptions:
    """How ``run`` starts and joins the processes of a multi-process run: torchrun's options,
    passed to torch's elastic agent (``torch.distributed.launcher.api.LaunchConfig``), and the
    process group's. A run that joins (a worker, a script under torchrun) starts nothing: it
    uses only ``dist_backend`` and ``collective_timeout``.

    * ``nnodes``, ``node_rank``, ``master_addr``, ``master_port``, ``rdzv_endpoint``,
      ``rdzv_backend``, ``rdzv_configs`` (a dict or ``'k=v,...'``), ``max_restarts``,
      ``monitor_interval`` (seconds), ``standalone``: torchrun's options of those names.
      One machine always gets a rendezvous of its own on a free port, as ``--standalone``.
    * ``redirects`` / ``tee``: ``'0'`` (none), ``'1'`` (stdout), ``'2'`` (stderr), ``'3'`` (both),
      or per local rank (``'0:3,1:0'``): write those streams of every worker to
      ``<run dir>/logs/workers/<rendezvous id>/attempt_<n>/<local rank>/{stdout,stderr}.log``
      (``tee``: and to the console).
    * ``omp_num_threads``: ``OMP_NUM_THREADS`` of the workers. None: torchrun's rule, 1 when a
      machine runs several workers and the environment sets none.
    * ``dist_backend``: ``"auto"`` (gloo on CPU, nccl on CUDA), ``"gloo"``, ``"nccl"`` or
      ``"mpi"``; ``start_method``: ``"spawn"`` (re-run the script) or ``"fork"``.
    * ``collective_timeout``: seconds (or a ``timedelta``) a collective may wait
      (torch.distributed's ``timeout``). None: 5 minutes on gloo (CPU), torch's default on nccl.
      When it expires, every rank writes where it is and its stacks to ``logs/hang-rank<r>.txt``
      and the run ends with a ``CollectiveTimeout`` naming the stuck rank.

    A frozen dataclass: ``to_dict()`` (or ``dataclasses.asdict``) records it, ``from_dict``
    reads the record back.

    Examples:
        >>> LaunchOptions(tee="3", omp_num_threads=2, rdzv_configs="timeout=60").rdzv_config_dict()
        {'timeout': '60'}
        >>> LaunchOptions.from_dict(LaunchOptions(max_restarts=2).to_dict()) == LaunchOptions(max_restarts=2)
        True
    """

    nnodes: str = "1:1"
    node_rank: int = 0
    dist_backend: str = "auto"
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    rdzv_endpoint: str = ""
    rdzv_backend: str = "static"
    max_restarts: int = 0
    start_method: str = "spawn"
    rdzv_configs: dict[str, Any] | str | None = None
    standalone: bool = False
    monitor_interval: float = 0.1
    redirects: str | int = "0"
    tee: str | int = "0"
    omp_num_threads: int | None = None
    collective_timeout: float | datetime.timedelta | None = None

    def __post_init__(self) -> None:
        collective_timeout_of(self.collective_timeout, None)  # the error, before anything starts
        if self.start_method not in ("spawn", "fork"):
            raise ValueError(f"start_method must be 'spawn' (re-run the script) or 'fork', got {self.start_method!r}")
        _nodes(self.nnodes)
        _std("redirects", self.redirects)
        _std("tee", self.tee)
        self.rdzv_config_dict()
        m = self.monitor_interval
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            raise ValueError(f"monitor_interval must be a number of seconds > 0, got {m!r}")
        n = self.omp_num_threads
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"omp_num_threads must be None (torchrun's default) or an int >= 1, got {n!r}")
        if self.standalone and (self.several_nodes or self.rdzv_endpoint or self.rdzv_backend != "static"):
            raise ValueError(
                f"standalone=True runs on one machine with a rendezvous of its own, but nnodes="
                f"{self.nnodes!r}, rdzv_backend={self.rdzv_backend!r}, rdzv_endpoint="
                f"{self.rdzv_endpoint!r}; drop standalone=True, or these options"
            )

    def to_dict(self) -> dict[str, Any]:
        """The options as plain values (a ``timedelta`` as seconds), for the run's record."""
        return {key: plain_value(value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LaunchOptions:
        """The options ``to_dict()`` recorded."""
        return options_from_dict(cls, values)

    @property
    def several_nodes(self) -> bool:
        """Whether the run spans more than one machine."""
        return _nodes(self.nnodes)[1] > 1

    def rdzv_config_dict(self) -> dict[str, Any]:
        """``rdzv_configs`` as a dict."""
        return _rdzv_configs(self.rdzv_configs)

    @property
    def writes_worker_logs(self) -> bool:
        """Whether ``redirects`` or ``tee`` send a stream of some worker to a file."""
        return bool(_std("redirects", self.redirects) or _std("tee", self.tee))


_RANGE = re.compile(r"^\d+(-\d+)?$")


def _indices(spec: str, available: int, devices: str) -> list[int]:
    if spec == "*":
        return list(range(available))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not _RANGE.match(part):
            raise ValueError(
                f"devices={devices!r}: {part!r} is not an index or a range; write e.g. 'cuda:0', 'cuda:0-3,6', "
                "'cuda:*', 'cpu', 'cpu:0-1'"
            )
        lo, _, hi = part.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
        if hi_i < lo_i:
            raise ValueError(f"devices={devices!r}: the range {part!r} runs backwards")
        out.extend(range(lo_i, hi_i + 1))
    return out


def parse_devices(devices: str) -> list[torch.device]:
    """One device per process from ``"auto"``, ``"cpu"``, ``"cpu:0-1"``, ``"cpu:*"``, ``"cuda"``,
    ``"cuda:0"``, ``"cuda:1,3"``, ``"cuda:0-2,7"``, ``"cuda:*"`` or ``"auto:*"``.

    Examples:
        >>> parse_devices("cpu:0-1")
        [device(type='cpu'), device(type='cpu')]
    """
    if not isinstance(devices, str) or not devices.strip():
        raise TypeError(f"devices must be a string such as 'cpu', 'cuda:0-1' or 'auto', got {devices!r}")
    text = devices.strip().lower()
    kind, _, spec = text.partition(":")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
        spec = spec or ""
    if kind == "cpu":
        count = len(_indices(spec, os.cpu_count() or 1, devices)) if spec else 1
        if count == 0:
            raise ValueError(f"devices={devices!r} names no process")
        return [torch.device("cpu")] * count
    if kind == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise RuntimeError(
                f"devices={devices!r} asks for CUDA, but torch sees no CUDA device on this machine "
                f"(torch {torch.__version__}); use devices='cpu' or devices='auto'"
            )
        indices = _indices(spec, available, devices) if spec else [0]
        missing = [i for i in indices if i >= available]
        if missing:
            raise ValueError(f"devices={devices!r} names CUDA device(s) {missing}, but only {available} exist")
        if not indices:
            raise ValueError(f"devices={devices!r} names no process")
        return [torch.device("cuda", i) for i in indices]
    raise ValueError(f"devices={devices!r}: the device kind must be 'cpu', 'cuda' or 'auto', got {kind!r}")


def default_backend(devices: list[torch.device], dist_backend: str = "auto") -> str:
    """``gloo`` for CPU, ``nccl`` for CUDA with one process per GPU (gloo when a GPU is shared)."""
    if dist_backend != "auto":
        if dist_backend not in ("gloo", "nccl", "mpi"):
            raise ValueError(f"dist_backend must be 'auto', 'gloo', 'nccl' or 'mpi', got {dist_backend!r}")
        return dist_backend
    if all(d.type == "cuda" for d in devices) and len(set(devices)) == len(devices):
        return "nccl"
    return "gloo"


# -- multi-process runs ------------------------------------------------------------------------
class WorkerFailed(RuntimeError):
    """A worker process of a multi-process run failed; the message names its rank and error."""


def in_worker() -> bool:
    """Whether this process is one worker of a multi-process run: started by ``run``, by
    ``torchrun`` or by SLURM, or with a process group already initialised (by
    ``idist.Parallel``, ``idist.initialize`` or ``torch.distributed.init_process_group``)."""
    import torch.distributed as dist

    env = os.environ
    if dist.is_available() and dist.is_initialized():
        return True
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env):
        return True
    return "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def _worker_device(devices: str, local_rank: int, local_world_size: int) -> torch.device:
    text = devices.strip().lower()
    if text in ("auto", "auto:*"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    listed = parse_devices(devices)
    if len(listed) == local_world_size:
        return listed[local_rank]
    if all(d.type == "cpu" for d in listed):
        return torch.device("cpu")
    if text in ("cuda", "cuda:*"):
        return torch.device("cuda", local_rank)
    raise ValueError(
        f"devices={devices!r} names {len(listed)} device(s), but this machine runs {local_world_size} processes "
        "of the run; name one device per process (e.g. 'cuda:0-3'), or 'auto' / 'cuda' for one GPU per process"
    )


def _backend_names(backend: str) -> set[str]:
    """The backends of a process group's backend string: ``'gloo'`` -> {gloo},
    ``'cpu:gloo,cuda:nccl'`` -> {gloo, nccl}."""
    return {part.rpartition(":")[2].strip().lower() for part in str(backend).split(",") if part.strip()}


def _group_devices(
    devices: str, dist_backend: str, backend: str, local_rank: int, local_world_size: int
) -> list[torch.device]:
    """Every local worker's device in a process group that exists, with backend ``backend``;
    raises ValueError where ``devices`` or ``dist_backend`` contradict the group."""
    names = _backend_names(backend)
    where = (
        f"this process is local rank {local_rank} of {local_world_size} in a process group with backend "
        f"{backend!r} that was initialised before run (idist.Parallel, idist.initialize or "
        "torch.distributed.init_process_group)"
    )
    if dist_backend != "auto":
        default_backend([], dist_backend)  # the usual error for an unknown name
        if dist_backend not in names:
            raise ValueError(
                f"dist_backend={dist_backend!r}, but {where}; pass dist_backend='auto' (or "
                f"{sorted(names)[0]!r}), or initialise the group with {dist_backend!r}"
            )
    if not 0 <= local_rank < local_world_size:
        raise ValueError(
            f"{where}: the local rank is out of range; set LOCAL_RANK (or call "
            "idist.set_local_rank) before initialising the group"
        )
    local_devices = [_worker_device(devices, r, local_world_size) for r in range(local_world_size)]
    cuda = [d for d in local_devices if d.type == "cuda"]
    if cuda:
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = sorted({d.index for d in cuda if d.index >= available})
        if missing:
            raise ValueError(
                f"devices={devices!r} puts local ranks on CUDA device(s) {missing}, but this machine "
                f"has {available}; {where}"
            )
    if names == {"nccl"} and default_backend(local_devices) != "nccl":
        raise ValueError(
            f"devices={devices!r} gives the local ranks {[str(d) for d in local_devices]}, but {where}: "
            "nccl needs one GPU of its own per process; use devices='auto' or 'cuda', or a gloo group"
        )
    return local_devices


def _adopt_group(devices: str, dist_backend: str) -> Launcher:
    """The launcher of a process in a process group that exists: its place (rank, local rank,
    processes per node, node rank, backend) from ``ignite.distributed`` and ``torch.distributed``,
    not from the environment (``idist.Parallel``'s spawned workers have no ``LOCAL_WORLD_SIZE``)."""
    import ignite.distributed as idist
    import torch.distributed as dist

    # A group made with torch.distributed.init_process_group: ignite.distributed adopts it at its
    # first call (idist.sync: collectives that every rank makes here).
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if (idist.get_rank(), idist.get_world_size()) != (rank, world_size):
        raise RuntimeError(
            f"torch.distributed says rank {rank} of {world_size}, ignite.distributed says rank {idist.get_rank()} "
            f"of {idist.get_world_size()}: the group changed after ignite adopted it; call idist.sync() after "
            "creating the new group"
        )
    backend = str(idist.backend() or dist.get_backend())
    local_rank, local_world_size = idist.get_local_rank(), idist.get_nproc_per_node()
    if not 1 <= local_world_size <= world_size:
        raise RuntimeError(
            f"ignite.distributed counts {local_world_size} processes on this machine in a group of "
            f"{world_size}; call idist.sync() after creating the group"
        )
    device = _group_devices(devices, dist_backend, backend, local_rank, local_world_size)[local_rank]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Launcher(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        local_world_size=local_world_size,
        node_rank=idist.get_node_rank(),
        device=device,
        backend=backend,
    )


#: the process group this process joined: its collective timeout (seconds) and a store for reports
_JOINED: dict[str, Any] = {"timeout": None, "store": None}


def joined_group() -> tuple[float, Any]:
    """The collective timeout (seconds) of the group ``join`` joined, and a store all its ranks
    reach (for hang reports)."""
    import torch.distributed as dist

    timeout, store = _JOINED["timeout"], _JOINED["store"]
    if store is None:
        # no public accessor for the store of a group that run did not create (torchrun's
        # env:// init, SLURM, idist.Parallel): the default group's store, prefixed for our keys
        store = dist.PrefixStore("ice_ignite/hang", dist.distributed_c10d._get_default_store())
    return (timeout if timeout is not None else dist.default_pg_timeout.total_seconds()), store


def join(devices: str, dist_backend: str = "auto", collective_timeout: Any = None) -> tuple[Launcher, bool]:
    """Join the process group of this worker. A group that exists (``idist.Parallel``,
    ``idist.initialize``, ``torch.distributed.init_process_group``) is used as it is: this process's
    place in it comes from ``ignite.distributed``, and ``leave`` does not destroy it. Otherwise the
    group is initialised from the environment that ``torchrun``, the elastic agent or SLURM set.
    Returns the launcher and whether the group was initialised here."""
    import ignite.distributed as idist
    import torch.distributed as dist

    _die_with_launcher()
    _JOINED.update(timeout=None, store=None)
    if dist.is_available() and dist.is_initialized():
        launcher = _adopt_group(devices, dist_backend)  # its timeout is the creator's
        given = collective_timeout_of(collective_timeout, launcher.backend)
        _JOINED["timeout"] = given.total_seconds() if given is not None else None
        return launcher, False
    env = os.environ
    local_rank = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", "0")))
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1")))
    if not 0 <= local_rank < local_world_size:
        raise RuntimeError(
            f"this worker's local rank {local_rank} is not below the {local_world_size} processes per machine that "
            "the environment gives (LOCAL_RANK / LOCAL_WORLD_SIZE, or SLURM_LOCALID / SLURM_NTASKS_PER_NODE); start "
            "workers with torchrun, srun or idist.Parallel, or initialise the process group before run"
        )
    # every local worker's device: nccl only when each process has a GPU of its own
    local_devices = [_worker_device(devices, r, local_world_size) for r in range(local_world_size)]
    device = local_devices[local_rank]
    backend = default_backend(local_devices, dist_backend)
    if backend == "nccl" and device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = collective_timeout_of(collective_timeout, backend)
    if timeout is None:  # torch's default for the backend
        from torch.distributed import constants

        # (torch's NCCL default is None in a build without NCCL, where backend "nccl" cannot start)
        timeout = (constants.default_pg_nccl_timeout if backend == "nccl" else None) or constants.default_pg_timeout
    _JOINED["timeout"] = timeout.total_seconds()
    if "TORCHELASTIC_RESTART_COUNT" in env:
        _init_elastic_worker(backend, timeout)
    else:
        idist.initialize(backend, timeout=timeout)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    launcher = Launcher(
        rank=idist.get_rank(),
        local_rank=idist.get_local_rank(),
        world_size=idist.get_world_size(),
        local_world_size=idist.get_nproc_per_node(),
        node_rank=idist.get_node_rank(),
        device=device,
        backend=idist.backend(),
    )
    return launcher, True


def _die_with_launcher() -> None:
    """In a worker that ``run`` started: die (SIGKILL) when the launching process dies, so that no
    worker goes on training and writing checkpoints after the run directory's lock, which the
    launching process holds, is free. The variable is removed, so that processes this worker
    starts do not take it for theirs."""
    from ice_ignite.distributed.processes import LAUNCHER_PID_ENV, die_with_parent

    launcher_pid = os.environ.pop(LAUNCHER_PID_ENV, None)
    if launcher_pid is not None and launcher_pid.isdigit():
        die_with_parent(int(launcher_pid))


def _init_elastic_worker(backend: str, timeout: Any = None) -> None:
    """Initialise the process group of a worker of torch's elastic agent, its store keys
    prefixed by the restart attempt and by how many groups this rank joined before.

    The agent keeps one store for all attempts and all the runs of a script, and ``env://`` adds
    no prefix, so the workers of a restarted group, or of a script's second ``run``, read the
    addresses that the previous group published and fail to connect or hang (seen with torch
    2.13). Every rank runs the same script, so the count agrees. ignite then adopts the group
    (``idist.sync``).
    """
    import ignite.distributed as idist
    import torch.distributed as dist
    from torch.distributed.rendezvous import (
        _create_c10d_store,  # the env:// store without its rendezvous: no public name
    )

    env = os.environ
    rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
    timeout = timeout if timeout is not None else dist.default_pg_timeout
    # the store keeps torch's long timeout (rendezvous, hang reports); collectives get ``timeout``
    store = _create_c10d_store(env["MASTER_ADDR"], int(env["MASTER_PORT"]), rank, world_size, dist.default_pg_timeout)
    attempt = f"ice_ignite/attempt_{env['TORCHELASTIC_RESTART_COUNT']}"
    joins = store.add(f"{attempt}/joins_of_rank_{rank}", 1)  # 1 at this rank's first run, 2 at its second...
    store = dist.PrefixStore(f"{attempt}/run_{joins}", store)
    _JOINED["store"] = dist.PrefixStore("ice_ignite/hang", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    idist.sync()


def leave(initialised_here: bool) -> None:
    """Destroy the process group if ``join`` created it. A group that existed before ``join``
    (``idist.Parallel``'s, the user's) is left to whoever created it."""
    if initialised_here:
        import ignite.distributed as idist

        idist.finalize()


def free_port() -> int:
    """A TCP port free on this machine now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(nnodes: str | int) -> tuple[int, int]:
    text = str(nnodes)
    lo, _, hi = text.partition(":")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"nnodes must be 'N' or 'MIN:MAX', got {nnodes!r}") from None
    if not 1 <= low <= high:
        raise ValueError(f"nnodes must be 'N' or 'MIN:MAX' with 1 <= MIN <= MAX, got {nnodes!r}")
    return low, high


def script_command() -> list[str] | None:
    """The command that re-runs this process's entry script with its arguments, as ``torchrun``
    would, or None when there is no script (a notebook, ``python -c``)."""
    import sys
    import sysconfig

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    # The entry point of an installed tool (pytest, unittest, an IPython kernel) is not the
    # user's script: re-running it would not lead back to this run().
    real = os.path.realpath(path)
    tool_dirs = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib", "stdlib", "scripts")}
    if any(real.startswith(d + os.sep) for d in tool_dirs):
        return None
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return ["-u", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return ["-u", os.path.abspath(path), *sys.argv[1:]]


def _omp_threads(options: LaunchOptions, nproc_per_node: int) -> str | None:
    """The ``OMP_NUM_THREADS`` the workers get (None: the environment's)."""
    current = os.environ.get("OMP_NUM_THREADS")
    if options.omp_num_threads is None:
        return "1" if current is None and nproc_per_node > 1 else None  # torchrun's rule
    if current is not None and current != str(options.omp_num_threads):
        raise ValueError(
            f"omp_num_threads={options.omp_num_threads}, but the environment sets OMP_NUM_THREADS="
            f"{current}; unset OMP_NUM_THREADS or drop omp_num_threads"
        )
    return str(options.omp_num_threads)


def _forked(entrypoint: Callable[[], Any]) -> Callable[[], Any]:
    """``entrypoint`` for a forked worker, which inherits torch's threads from the launching
    process instead of reading ``OMP_NUM_THREADS`` at start-up."""

    def worker() -> Any:
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        return entrypoint()

    return worker


def preempted_signal(failures: dict[int, Any]) -> int | None:
    """SIGTERM or SIGINT when the workers stopped for a preemption, else None: some exited with the
    code of ``Preempted`` (143 or 130: the ranks agreed on an iteration boundary and checkpointed
    there, then stopped), and every other failed one too, or was ended by SIGTERM / SIGINT once
    it had (the agent stops the remaining workers as soon as the first one exits). Workers ended
    by a signal with none exiting through ``Preempted`` wrote no checkpoint: a failure."""
    codes = {getattr(f, "exitcode", None) for f in failures.values()}
    preempted = codes & {128 + signal.SIGTERM, 128 + signal.SIGINT}
    if not preempted or not codes <= preempted | {-signal.SIGTERM, -signal.SIGINT}:
        return None
    codes = preempted
    # a mix: SIGTERM (the cluster's), as the stronger request
    return signal.SIGTERM if 128 + signal.SIGTERM in codes else signal.SIGINT


def launch_config(
    nproc_per_node: int,
    options: LaunchOptions | None = None,
    start_method: str = "spawn",
    run_id: str = "ice_ignite",
    log_dir: str | os.PathLike | None = None,
) -> Any:
    """The ``torch.distributed.launcher.api.LaunchConfig`` of torch's elastic agent for
    ``nproc_per_node`` workers on this machine with ``options``; ``log_dir`` receives the per-rank
    files of ``options.redirects`` / ``options.tee``.

    Examples:
        >>> config = launch_config(2, LaunchOptions(monitor_interval=0.5, rdzv_configs={"join_timeout": 60}))
        >>> config.rdzv_backend, config.monitor_interval, config.rdzv_configs["join_timeout"]
        ('c10d', 0.5, 60)
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    o = options if options is not None else LaunchOptions()
    min_nodes, max_nodes = _nodes(o.nnodes)
    rdzv_backend, rdzv_endpoint, configs = o.rdzv_backend, o.rdzv_endpoint, o.rdzv_config_dict()
    if rdzv_backend == "static" and max_nodes == 1:
        # One machine (or standalone=True): a c10d rendezvous on a free local port, as `torchrun
        # --standalone`. torch's static rendezvous keeps its store across restarts of the workers
        # (and so does c10d on port 0), and restarted workers then read the previous attempt's
        # gloo addresses.
        import uuid

        rdzv_backend, rdzv_endpoint = "c10d", f"127.0.0.1:{free_port()}"
        run_id = f"{run_id}-{uuid.uuid4().hex[:8]}"
    if rdzv_backend == "static":
        if min_nodes != max_nodes:
            raise ValueError(
                f"nnodes={o.nnodes!r}: a static rendezvous needs a fixed number of nodes; use "
                "rdzv_backend='c10d' for an elastic range"
            )
        if o.master_port is None:  # several machines: one machine went to c10d above
            raise ValueError(
                "a run on several machines needs master_port= (the same on every machine), or a "
                "c10d rendezvous: rdzv_backend='c10d', rdzv_endpoint='host:port'"
            )
        endpoint, configs = f"{o.master_addr}:{o.master_port}", {**configs, "rank": o.node_rank}
    else:
        if not rdzv_endpoint:
            raise ValueError(f"rdzv_backend={rdzv_backend!r} needs rdzv_endpoint='host:port'")
        endpoint = rdzv_endpoint
    logs = None
    if o.writes_worker_logs:
        logs = DefaultLogsSpecs(
            log_dir=str(log_dir) if log_dir is not None else None,
            redirects=_std("redirects", o.redirects),
            tee=_std("tee", o.tee),
        )
    return LaunchConfig(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nproc_per_node=nproc_per_node,
        run_id=run_id,
        rdzv_endpoint=endpoint,
        rdzv_backend=rdzv_backend,
        rdzv_configs=configs,
        max_restarts=o.max_restarts,
        monitor_interval=float(o.monitor_interval),
        start_method=start_method,
        logs_specs=logs,
    )


def launch(
    entrypoint: Callable[[], Any] | list[str],
    nproc_per_node: int,
    options: LaunchOptions | None = None,
    start_method: str = "spawn",
    run_id: str = "ice_ignite",
    log_dir: str | os.PathLike | None = None,
) -> None:
    """Start ``nproc_per_node`` workers on this machine through torch's elastic agent (what
    ``torchrun`` uses) with ``options`` (see ``launch_config``), and wait for them.
    ``entrypoint`` is a callable that forked workers call, or the python arguments each worker
    is started with (``script_command()``: re-run the script).

    Raises:
        WorkerFailed: a worker failed (after ``max_restarts`` restarts of the group); the message
            names the rank and carries its traceback.
    """
    import sys

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    from ice_ignite.distributed.preemption import Preempted

    o = options if options is not None else LaunchOptions()
    threads = _omp_threads(o, nproc_per_node)
    config = launch_config(nproc_per_node, o, start_method, run_id, log_dir)
    target: str | Callable[[], Any]
    if isinstance(entrypoint, list):
        target, args = sys.executable, entrypoint
    else:
        target, args = _forked(entrypoint), []
    before = os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = threads  # the agent passes it on to the workers
    try:
        elastic_launch(config, target)(*args)
    except ChildFailedError as e:
        signum = preempted_signal(e.failures)
        if signum is not None:  # every rank that stopped did so through Preempted: checkpointed, then exited
            raise Preempted(signum, None, launcher=True) from None
        raise WorkerFailed(f"a worker of the run failed:\n{e}") from None
    except SignalException as e:  # the agent stopped the workers, which checkpointed first
        raise Preempted(int(e.sigval), None, launcher=True) from None
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
