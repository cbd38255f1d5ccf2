"""Loading node states from a checkpoint into a graph that may differ from the one that wrote it,
e.g. pretrained weights before fine-tuning (B8): module weights and buffers by default, optimizer
and other node state on request, nodes chosen by tags, names or uids, and a ``src -> dst`` rename
map. A resume (``run(resume_from=...)``) restores everything instead; see ``Checkpointer``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ice_ignite.errors import CheckpointError
from ice_ignite.graph.tags import make_uid, split_uid
from ice_ignite.nodes.module import ModuleNode
from ice_ignite.nodes.node import Node

__all__ = ["LoadSpec", "load_node_states", "check_optimizer_kinds", "has_state"]

#: what a node's saved state is made of: a ModuleNode's ``module`` (weights and buffers), its
#: ``optimizers`` and ``lr_schedulers`` (both under "optimizers"), and everything else ("other")
PARTS = ("weights", "optimizers", "other")
_MODULE_KEYS = {"weights": ("module",), "optimizers": ("optimizers", "lr_schedulers")}


def _names(value: Any, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"{what} must be a node name or uid, or a list of them, got {value!r}") from None
    if not items or not all(isinstance(v, str) and v for v in items):
        raise TypeError(f"{what} must be a node name or uid, or a list of them, got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class LoadSpec:
    """What ``load_checkpoint`` / ``LoadCheckpointTask`` load; checked when built.

    Args:
        weights: module weights and buffers of ModuleNodes (``module.state_dict()``).
        optimizers: ModuleNodes' optimizer and LR scheduler states.
        other: every other node state: DatasetNode positions, LossNode and MetricNode
            accumulators and best records, the state of your own Node subclasses.
        nodes: names or uids of the graph's nodes that receive state (None: every node of the tags).
        rename: ``{source in the checkpoint: destination in this graph}``, names or uids.

    Examples:
        >>> LoadSpec(nodes="encoder", rename={"pretrain/encoder": "*/encoder"}).parts
        ('weights',)
    """

    weights: bool = True
    optimizers: bool = False
    other: bool = False
    nodes: str | Iterable[str] | None = None
    rename: Mapping[str, str] | None = field(default_factory=dict)  # None: {} (a dict after __post_init__)

    def __post_init__(self) -> None:
        for name in PARTS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"load_checkpoint {name}= must be True or False, got {getattr(self, name)!r}")
        if self.nodes is not None:
            object.__setattr__(self, "nodes", _names(self.nodes, "load_checkpoint nodes="))
        rename = {} if self.rename is None else self.rename
        if not isinstance(rename, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in rename.items()
        ):
            raise TypeError(
                f"load_checkpoint rename= must be a dict {{source name or uid: destination name or uid}}, "
                f"e.g. {{'pretrain/encoder': 'finetune/encoder'}}; got {self.rename!r}"
            )
        object.__setattr__(self, "rename", dict(rename))

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts asked for, in ``PARTS`` order."""
        return tuple(p for p in PARTS if getattr(self, p))


def _resolve(query: str, uids: Iterable[str], where: str, what: str) -> list[str]:
    """The uids in ``uids`` that ``query`` (a uid in any tag order, or a bare name) names."""
    uids = list(uids)
    if "/" in query:
        try:
            name, tags = split_uid(query)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{what}: {e}") from None
        found = [make_uid(name, tags)]
    else:
        found = [uid for uid in uids if uid.rsplit("/", 1)[-1] == query]
    found = [uid for uid in found if uid in uids]
    if not found:
        raise CheckpointError(
            f"{what}: {query!r} is not in {where}; name one of its nodes: {', '.join(uids) or 'none'}"
        )
    return found


def _resolve_one(query: str, uids: Iterable[str], where: str, what: str) -> str:
    found = _resolve(query, uids, where, what)
    if len(found) > 1:
        raise CheckpointError(
            f"{what}: the name {query!r} matches several nodes of {where} ({', '.join(found)}); write one uid instead"
        )
    return found[0]


def _saved_parts(state: Any) -> list[str]:
    """The parts a saved node state holds, judged by its layout."""
    if not isinstance(state, dict) or not state:
        return []
    if "module" in state:
        return ["weights"] + (["optimizers"] if state.get("optimizers") or state.get("lr_schedulers") else [])
    return ["other"]


def has_state(node: Node) -> bool:
    """Whether ``node`` checkpoints a state: its class overrides ``Node.state_dict`` (told without
    calling it: a state_dict may be a collective)."""
    return type(node).state_dict is not Node.state_dict


def _node_parts(node: Node) -> list[str]:
    """The parts a node of this graph can receive."""
    if isinstance(node, ModuleNode):
        return ["weights"] + (["optimizers"] if node.optimizers or node.lr_schedulers else [])
    return ["other"] if has_state(node) else []


def check_optimizer_kinds(node: ModuleNode, saved: dict, source: str, uid: str, fix: str) -> None:
    """Raise ``CheckpointError`` when an optimizer state in ``saved`` (a ModuleNode's) was written by
    another kind of optimizer than the node's (told by its hyper-parameter names)."""
    own = dict(zip(node.learning_rates(), node.optimizers.values()))  # by the names the state is saved under
    for name, state in saved.get("optimizers", {}).items():
        if name not in own or not state.get("param_groups") or not own[name].param_groups:
            continue
        theirs = sorted(set(state["param_groups"][0]) - {"params"})
        mine = sorted(set(own[name].param_groups[0]) - {"params"})
        if theirs != mine:
            kind = type(own[name]).__name__
            raise CheckpointError(
                f"{source}: node {uid!r}: the state of optimizer {name!r} was written by another kind of optimizer "
                f"(hyper-parameters {', '.join(theirs)}) than this node's {kind} ({', '.join(mine)}); {fix}"
            )


def _pairs(
    saved: dict, graph: dict[str, Node], rename: Mapping[str, str], source: str
) -> tuple[dict[str, str], dict[str, str]]:
    """``({source uid: destination uid}, {renamed source: destination})``; a saved state whose
    name another source was renamed onto, and which is not renamed itself, maps nowhere."""
    renamed: dict[str, str] = {}
    for src, dst in rename.items():
        what = f"load_checkpoint rename={{{src!r}: {dst!r}}}"
        s = _resolve_one(src, saved, f"the checkpoint {source!r}", what)
        d = _resolve_one(dst, graph, "this graph", what)
        if s in renamed:
            raise CheckpointError(f"{what}: {s!r} is renamed twice, to {renamed[s]!r} and {d!r}; rename it once")
        if d in renamed.values():
            first = next(k for k, v in renamed.items() if v == d)
            raise CheckpointError(
                f"{what}: {first!r} and {s!r} are both renamed to {d!r}; rename one saved state onto each node"
            )
        renamed[s] = d
    targets = set(renamed.values())
    destination = {uid: renamed.get(uid, uid) for uid in saved if uid in renamed or uid not in targets}
    return destination, renamed


def _load_one(node: Node, saved: dict, parts: list[str], strict: bool) -> None:
    if not isinstance(node, ModuleNode):
        node.load_state_dict(saved, strict=strict)
        return
    # a ModuleNode loads a whole state: the parts not asked for are its own (loading them is a no-op;
    # sharded with FSDP, its state_dict is a collective, as load_checkpoint is called on every rank)
    state = node.state_dict()
    for part in parts:
        for key in _MODULE_KEYS[part]:
            state[key] = saved.get(key, {})
    node.load_state_dict(state, strict=strict)


def load_node_states(
    saved: dict, graph: dict[str, Node], selected: dict[str, Node], spec: LoadSpec, strict: bool, source: str
) -> dict:
    """Load the parts ``spec`` asks for of the saved node states (by uid) into the ``selected``
    nodes (of ``graph``, every node by uid), following ``spec.rename``.

    Returns:
        The report: ``loaded`` (graph uids that received state), ``parts`` (what each received),
        ``left`` (saved parts not asked for, by graph uid), ``renamed`` (source -> destination),
        ``not_selected`` (graph uids with a saved state that tags / ``nodes`` left out),
        ``only_in_checkpoint`` (saved uids that found no node), ``only_in_graph`` (selected uids
        with no saved state).

    Raises:
        CheckpointError: a name in ``nodes`` or ``rename`` is unknown or ambiguous, a saved state
            does not fit its node, or an optimizer state was written by another kind of optimizer.
    """
    destination, renamed = _pairs(saved, graph, spec.rename or {}, source)
    if spec.nodes is not None:
        chosen = {
            uid
            for query in spec.nodes
            for uid in _resolve(query, selected, "the nodes the tags select", "load_checkpoint nodes=")
        }
        selected = {uid: node for uid, node in selected.items() if uid in chosen}
    source_of = {dst: src for src, dst in destination.items() if dst in graph}
    report: dict[str, Any] = {
        "loaded": [],
        "parts": {},
        "left": {},
        "renamed": renamed,
        "not_selected": [dst for dst in source_of if dst not in selected],
        "only_in_checkpoint": [uid for uid in saved if destination.get(uid) not in graph],
        "only_in_graph": [uid for uid in selected if uid not in source_of],
    }
    plan = []
    for dst, node in selected.items():
        if dst not in source_of:
            continue
        src = source_of[dst]
        state = saved[src]
        if isinstance(node, ModuleNode):
            have = _saved_parts(state)
            if have and "weights" not in have:
                raise CheckpointError(
                    f"{source}: the saved state of {src!r} is not a ModuleNode's (it has "
                    f"{', '.join(map(str, state))}) and cannot load into ModuleNode {dst!r}; "
                    "rename a ModuleNode of the checkpoint onto it"
                )
        else:  # the whole state of any other node is one part
            have = ["other"] if state else []
        parts = [p for p in have if p in spec.parts]
        if "optimizers" in parts and isinstance(node, ModuleNode):  # only a ModuleNode's state has them
            check_optimizer_kinds(node, state, source, dst, "load the weights only (optimizers=False, the default)")
        plan.append((src, dst, node, state, parts))
        if parts:
            report["loaded"].append(dst)
            report["parts"][dst] = parts
        if [p for p in have if p not in parts]:
            report["left"][dst] = [p for p in have if p not in parts]
    for _src, dst, node, state, parts in plan:
        if parts:
            try:
                _load_one(node, state, parts, strict)
            except Exception as e:
                raise CheckpointError(f"loading node {dst!r} from {source} failed: {e}") from e
    _warn_one_sided(report, saved, graph, spec, source)
    return report


def _warn_one_sided(report: dict, saved: dict, graph: dict[str, Node], spec: LoadSpec, source: str) -> None:
    """Warn about one-sided uids that hold (or could receive) a part that was asked for; with
    ``nodes=`` the saved states left out were left out on purpose."""
    lost = [
        uid
        for uid in report["only_in_checkpoint"]
        if spec.nodes is None and set(_saved_parts(saved[uid])) & set(spec.parts)
    ]
    fresh = [uid for uid in report["only_in_graph"] if set(_node_parts(graph[uid])) & set(spec.parts)]
    for uids, what in ((lost, "absent from this graph"), (fresh, "absent from the checkpoint")):
        if uids:
            warnings.warn(
                f"{source}: node(s) {', '.join(uids)} {what}; left as they are (rename={{source: "
                f"destination}} maps nodes whose names differ)",
                stacklevel=5,
            )
