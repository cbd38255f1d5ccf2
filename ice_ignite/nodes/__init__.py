"""The node kinds of a HyperGraph."""

from ice_ignite.nodes.dataset import DatasetNode
from ice_ignite.nodes.loss import LossMode, LossNode
from ice_ignite.nodes.metric import MetricNode
from ice_ignite.nodes.module import ModuleNode
from ice_ignite.nodes.node import Node

__all__ = ["Node", "ModuleNode", "LossNode", "LossMode", "MetricNode", "DatasetNode"]
