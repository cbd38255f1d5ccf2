"""ice_ignite: an event-driven PyTorch training toolkit on pytorch-ignite.

Describe training as a HyperGraph of named, tagged nodes and a schedule of Tasks; every Task
runs as an ignite ``Engine``.
"""

from ice_ignite.checkpoint.files import LoadCheckpointTask, SaveCheckpointTask
from ice_ignite.distributed.launcher_record import Launcher
from ice_ignite.distributed.preemption import Preempted
from ice_ignite.distributed.strategies import DDP, FSDP
from ice_ignite.engine.counters import Counter, GlobalCounters
from ice_ignite.engine.events import StepEvents
from ice_ignite.errors import (
    CheckpointError,
    ConfigError,
    GraphError,
    IceError,
    NodeError,
    NodeNotSelectedError,
    NonFiniteLossError,
    ResumeTaskFailed,
    ScheduleError,
    StopAllTasks,
    StopTask,
)
from ice_ignite.graph.graph import ExecutableGraph, GraphOutputCache
from ice_ignite.graph.schedule import Repeat
from ice_ignite.graph.task import Task
from ice_ignite.hypergraph import HyperGraph
from ice_ignite.nodes import DatasetNode, LossMode, LossNode, MetricNode, ModuleNode, Node
from ice_ignite.run import LaunchOptions, OutputOptions
from ice_ignite.script import config
from ice_ignite.tracking import MLflow
from ice_ignite.training.optimizer import Optimizer

__version__ = "0.1.0"

__all__ = [
    "HyperGraph",
    "config",
    "ExecutableGraph",
    "GraphOutputCache",
    "StepEvents",
    "LaunchOptions",
    "OutputOptions",
    "Node",
    "ModuleNode",
    "LossNode",
    "LossMode",
    "MetricNode",
    "DatasetNode",
    "Optimizer",
    "DDP",
    "FSDP",
    "Task",
    "Repeat",
    "SaveCheckpointTask",
    "LoadCheckpointTask",
    "Launcher",
    "Counter",
    "GlobalCounters",
    "IceError",
    "GraphError",
    "NodeError",
    "NodeNotSelectedError",
    "NonFiniteLossError",
    "ScheduleError",
    "CheckpointError",
    "ResumeTaskFailed",
    "ConfigError",
    "StopTask",
    "StopAllTasks",
    "Preempted",
    "MLflow",
]
