"""``NodeRegistry``: the nodes of a HyperGraph by uid, and their selection by a task's tags (B1)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ice_ignite.engine.roles import name_of
from ice_ignite.errors import GraphError
from ice_ignite.graph.graph import ExecutableGraph
from ice_ignite.graph.tags import DEFAULT_TAG, check_name, is_selected, make_uid, normalize_tags, split_uid
from ice_ignite.graph.task import Task
from ice_ignite.nodes.context import RunContext
from ice_ignite.nodes.module import ModuleNode
from ice_ignite.nodes.node import Node

__all__ = ["NodeRegistry"]


class NodeRegistry:
    """Nodes by uid (``"<sorted tags>/<name>"``), in ``add`` order, and the ExecutableGraph of
    each task's tags (built once, until the next add / remove). ``HyperGraph`` is one."""

    def __init__(self, context: RunContext):
        self._nodes: dict[str, Node] = {}
        self._egraphs: dict[tuple[str, ...], ExecutableGraph] = {}
        #: what the nodes see of the run: counters, launcher, precision, board, run directory
        self.context = context

    # -- nodes ----------------------------------------------------------------------------------
    def add(self, name: str, node: Node, tags: str | Iterable[str] = DEFAULT_TAG) -> Node:
        """Add ``node`` under ``name`` and ``tags``; returns the node.

        A ``"*"`` node is selected by every task unless a node of the same name is selected by
        its own tags, which then overrides it, whatever the order of ``add``.

        Raises:
            TypeError: ``node`` is not a Node.
            ValueError: the uid ``"<tags>/<name>"`` is taken, or the name or tags are malformed.
        """
        check_name(name)
        if not isinstance(node, Node):
            hint = (
                " wrap it: ice.ModuleNode(module, forward=lambda n, x: n.module(x['data'][0]))"
                if isinstance(node, torch.nn.Module)
                else ""
            )
            raise TypeError(f"HyperGraph.add({name!r}, ...) needs an ice Node, got {type(node).__name__};{hint}")
        self._check_not_running("add")
        tag_tuple = normalize_tags(tags, what=f"tags of node {name!r}")
        uid = make_uid(name, tag_tuple)
        if uid in self._nodes:
            raise ValueError(f"a node with uid {uid!r} exists already; use another name or tags, or remove({uid!r})")
        node._attach(self, self.context, name, uid, tag_tuple)
        self._nodes[uid] = node
        self._egraphs.clear()
        return node

    def remove(self, query: str) -> list[Node]:
        """Remove the node with uid ``query`` (``"train/data"``), or every node named ``query``."""
        self._check_not_running("remove")
        if not isinstance(query, str):
            raise TypeError(f"remove takes a uid or a name, got {query!r}")
        if "/" in query:
            name, tags = split_uid(query)
            uids = [make_uid(name, tags)] if make_uid(name, tags) in self._nodes else []
        else:
            uids = self.uids_of(query)
        if not uids:
            raise KeyError(f"no node matches {query!r}; uids are: {', '.join(self._nodes) or 'none'}")
        removed = [self._nodes.pop(uid) for uid in uids]
        for node in removed:
            node._detach()
        self._egraphs.clear()
        return removed

    def __getitem__(self, uid: str) -> Node:
        name, tags = split_uid(uid)
        key = make_uid(name, tags)
        if key not in self._nodes:
            others = self.uids_of(name)
            hint = f"nodes named {name!r}: {', '.join(others)}" if others else f"no node is named {name!r}"
            raise KeyError(f"no node with uid {key!r} ({hint})")
        return self._nodes[key]

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, str):
            return False
        try:
            name, tags = split_uid(uid)
        except (KeyError, ValueError, TypeError):
            return False
        return make_uid(name, tags) in self._nodes

    @property
    def nodes(self) -> dict[str, Node]:
        """Every node by uid, in ``add`` order (a copy)."""
        return dict(self._nodes)

    def uids_of(self, name: str) -> list[str]:
        """The uids of the nodes named ``name``."""
        return [uid for uid, node in self._nodes.items() if node.name == name]

    def _select(self, tags: tuple[str, ...]) -> dict[str, Node]:
        query = frozenset(tags)
        specific: dict[str, Node] = {}
        named = [(name_of(node), node) for node in self._nodes.values()]
        for name, node in named:
            if node.tags != (DEFAULT_TAG,) and is_selected(node.tags, query):
                other = specific.get(name)
                if other is not None:
                    raise GraphError(
                        f"tags ({','.join(tags)}) select two nodes named {name!r}: {other.uid!r} and "
                        f"{node.uid!r}; give them different names or tags that exclude one another"
                    )
                specific[name] = node
        return {
            name: node
            for name, node in named
            if specific.get(name) is node or (node.tags == (DEFAULT_TAG,) and name not in specific)
        }

    def select_nodes(self, *tags: str) -> dict[str, Node]:
        """``{uid: node}`` that a task with ``tags`` selects; ``"*"`` (or nothing) means every node.

        Examples:
            >>> import ice_ignite as ice
            >>> g = ice.HyperGraph()
            >>> _ = g.add("data", ice.Node(), tags="train"); _ = g.add("data", ice.Node(), tags="val")
            >>> _ = g.add("net", ice.Node()); _ = g.add("probe", ice.Node(), tags="#dbg")
            >>> list(g.select_nodes("train"))
            ['train/data', '*/net']
            >>> list(g.select_nodes("val", "#dbg"))
            ['val/data', '*/net', '#dbg/probe']
        """
        query = normalize_tags(tags or DEFAULT_TAG, what="select_nodes tags")
        if query == (DEFAULT_TAG,):
            return dict(self._nodes)
        selected = set(map(id, self._select(query).values()))
        return {uid: node for uid, node in self._nodes.items() if id(node) in selected}

    def select_egraph(self, tags: str | Iterable[str]) -> ExecutableGraph:
        """The ExecutableGraph of a task with ``tags`` (built once, until the next add/remove)."""
        key = normalize_tags(tags, what="task tags")
        graph = self._egraphs.get(key)
        if graph is None:
            graph = self._egraphs[key] = ExecutableGraph(self._select(key), key, self.context, self.uids_of)
        return graph

    def release_wrappers(self) -> None:
        """At the end of a run: every reference to a DistributedDataParallel wrapper (which holds
        the process group) dropped, so that destroying the group frees it."""
        for node in self._nodes.values():
            if isinstance(node, ModuleNode):
                node.release_wrapper()
        for graph in self._egraphs.values():
            graph.release_wrappers()

    def _running_task(self) -> Task | None:
        """The task running now, if any (nodes cannot be added or removed then)."""
        return None

    def _check_not_running(self, what: str) -> None:
        task = self._running_task()
        if task is not None:
            raise RuntimeError(f"cannot {what} nodes while {task!r} runs; do it in a schedule callable between tasks")
