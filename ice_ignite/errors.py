"""Exceptions raised by ice_ignite, and the control-flow signals users may raise.

Every error message names the culprit (node uid, tag, key or file) and says what to do.
"""

from __future__ import annotations

from ignite.exceptions import NotComputableError

__all__ = [
    "IceError",
    "GraphError",
    "NodeNotSelectedError",
    "NodeError",
    "MetricNotComputableError",
    "ScheduleError",
    "NonFiniteLossError",
    "CheckpointError",
    "ResumeTaskFailed",
    "ConfigError",
    "StopTask",
    "StopAllTasks",
]


class IceError(Exception):
    """Base class of the errors ice_ignite raises about its users' input."""


class GraphError(IceError):
    """A graph could not be built or executed: bad tags, ambiguous names, cycles."""


class NodeNotSelectedError(GraphError, KeyError):
    """``x["name"]`` asked for a node the running task did not select.

    It is also a ``KeyError``, so ``"name" in x`` / ``try: x["opt"] except KeyError`` work for
    optional nodes.
    """

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class NodeError(IceError):
    """A node's forward or hook raised; the original exception is the ``__cause__``."""

    def __init__(self, message: str, uid: str, phase: str):
        super().__init__(message)
        self.uid = uid
        self.phase = phase


class MetricNotComputableError(NodeError, NotComputableError):
    """A MetricNode's metric could not compute its value (ignite's ``NotComputableError``: it saw
    no sample); the message names the node and the task. It is also ignite's
    ``NotComputableError``, so code that catches that keeps working."""


class NonFiniteLossError(IceError):
    """A train iteration's loss was NaN or infinite (non-finite policy ``"raise"``)."""


class ScheduleError(IceError):
    """The schedule given to ``HyperGraph.run`` / ``exec_tasks`` is malformed."""


class CheckpointError(IceError):
    """A checkpoint could not be written or read; the message names the file."""


class ResumeTaskFailed(IceError):
    """The schedule stored in a checkpoint does not match the schedule being resumed."""


class ConfigError(IceError, ValueError):
    """A script's settings could not be read (``ice.config``): an unknown key, a value of the wrong
    type, a missing required value, an unreadable ``--config`` file. The message is one line naming
    the key (and the closest known key), the value and the expected type."""


class StopTask(Exception):
    """Raise from a node or handler to end the running task; the schedule goes on.

    The raising iteration and the unfinished epoch do not count.

    Examples:
        >>> def forward(n, x):
        ...     if n.epoch_steps >= 10:
        ...         raise StopTask()
    """


class StopAllTasks(Exception):
    """Raise from a node or handler to end the whole run cleanly."""
