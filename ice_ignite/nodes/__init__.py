"""The node kinds of a HyperGraph: ``Node`` (node), ``ModuleNode`` (module), ``LossNode`` (loss),
``MetricNode`` (metric), ``DatasetNode`` (dataset) and its sampling (sampling), the print probe
(printing), and ``RunContext``, what the nodes see of the run they are in (context).

May import ``training/``, ``distributed/`` (the ``Launcher`` record, not the launcher),
``observe/``, ``engine/`` and ``ice_ignite.errors``; nothing of ``graph/``, ``checkpoint/`` or the
front door.
"""

from ice_ignite.nodes.dataset import DatasetNode
from ice_ignite.nodes.loss import LossMode, LossNode
from ice_ignite.nodes.metric import MetricNode
from ice_ignite.nodes.module import ModuleNode
from ice_ignite.nodes.node import Node

__all__ = ["Node", "ModuleNode", "LossNode", "LossMode", "MetricNode", "DatasetNode"]
