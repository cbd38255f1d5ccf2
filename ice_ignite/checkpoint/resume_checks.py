"""What a resume would change in training (API.md B8, turn 3): the optimizers' class, hyper-parameters
and gradient clipping, the gradient accumulation and the autocast dtype, compared between a
checkpoint and the code that resumes it.

A checkpoint carries ``training_record``; a checkpoint without one (older) is compared for the
gradient accumulation only (unknown is not an error). ``compare_training`` lists every change;
``strict_resume=True`` makes them one ``ResumeTaskFailed``, ``strict_resume=False`` one warning that
says which value wins: the code's, except the learning rate of an optimizer that has an LR
scheduler, which the loaded scheduler state sets (docs/checkpoints.md says why).

The run's config (``run(config=cfg)``) is checkpointed too (``config_record``); ``compare_config``
lists every key whose value differs, as ``key: old → new``.
"""

from __future__ import annotations

from typing import Any

import torch

from ice_ignite.config.values import ConfigValues, differences, show
from ice_ignite.nodes.module import ModuleNode, key_name

__all__ = ["training_record", "compare_training", "TrainingChanges", "config_record", "compare_config"]


def _autocast_name(autocast: tuple[str, torch.dtype] | None) -> str:
    return "off" if autocast is None else str(autocast[1]).removeprefix("torch.")


def training_record(nodes: dict[str, Any], precision: Any) -> dict:
    """What the ModuleNodes' optimizers and the run's precision train with, for a checkpoint."""
    return {
        "autocast": _autocast_name(precision.autocast),
        "optimizers": {
            uid: node.training_record()
            for uid, node in nodes.items()
            if isinstance(node, ModuleNode) and node.optimizers
        },
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return torch.equal(torch.as_tensor(a).detach().cpu().double(), torch.as_tensor(b).detach().cpu().double())
        except (TypeError, RuntimeError, ValueError):
            return False
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor({value.item()!r})" if value.numel() == 1 else f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return repr(value)


def _short(qualified: str) -> str:
    return qualified.rsplit(".", 1)[-1]


class TrainingChanges:
    """The changes a resume found, with what ``apply`` does about them after the checkpoint's
    states are loaded (the code's values wherever the code's wins)."""

    def __init__(self) -> None:
        #: ``(what changed, "old → new", which value wins)``
        self.items: list[tuple[str, str, str]] = []
        #: ``(optimizer, param group index, key, the code's value)`` set by ``apply``
        self.overrides: list[tuple[torch.optim.Optimizer, int, str, Any]] = []
        #: factor for the checkpoint's gradients of an unfinished accumulation cycle (old k / new k)
        self.grad_factor = 1.0

    def __bool__(self) -> bool:
        return bool(self.items)

    def apply(self) -> None:
        """Put the code's values into the optimizers' param groups (after their states loaded)."""
        for opt, index, key, value in self.overrides:
            opt.param_groups[index][key] = value.clone() if isinstance(value, torch.Tensor) else value

    def describe(self, with_winner: bool) -> str:
        parts = []
        for what, change, wins in self.items:
            parts.append(f"{what} {change}" + (f" ({wins})" if with_winner else ""))
        return "; ".join(parts)


def compare_training(state: dict, nodes: dict[str, Any], grad_acc_steps: int, precision: Any) -> TrainingChanges:
    """What resuming ``state`` into ``nodes`` (every node of the graph) with this gradient
    accumulation and precision would change."""
    changes = TrainingChanges()
    old_k = state.get("grad_acc_steps")
    if old_k is not None and old_k != grad_acc_steps:
        mid_cycle = any(rank and rank.get("grads") for rank in state.get("ranks", []))
        wins = f"the code's: optimizers step every {grad_acc_steps} iteration(s) from the resume on"
        if mid_cycle:
            changes.grad_factor = old_k / grad_acc_steps
            wins += (
                f"; the checkpoint's gradients of its unfinished cycle, scaled 1/{old_k} per micro-batch, are "
                f"rescaled to 1/{grad_acc_steps} and summed with the next micro-batches'"
            )
        changes.items.append(("gradient accumulation (set_gradient_accumulate)", f"{old_k} → {grad_acc_steps}", wins))
    record = state.get("training")
    if not isinstance(record, dict):  # a checkpoint of an older version: unknown, not an error
        return changes
    old_autocast, new_autocast = record.get("autocast"), _autocast_name(precision.autocast)
    if old_autocast is not None and old_autocast != new_autocast:
        changes.items.append(
            (
                "autocast dtype (init_autocast)",
                f"{old_autocast} → {new_autocast}",
                "the code's: forwards run with the new precision; a GradScaler continues from the "
                "checkpoint's state where both runs have one",
            )
        )
    for uid, saved in record.get("optimizers", {}).items():
        node = nodes.get(uid)
        if not isinstance(node, ModuleNode):
            continue  # a node the graph lacks: the graph check reports it
        now = node.training_record()
        built = node.built_hyper_parameters()
        optimizers = {key_name(k): opt for k, opt in node.optimizers.items()}
        scheduled = {key_name(k) for k in node.lr_schedulers}
        for name, then in saved.items():
            mine = now.get(name)
            if mine is None:
                continue  # an optimizer the node lacks: loading it reports it
            groups_then, groups_now = then.get("hyper_parameters", []), mine["hyper_parameters"]
            if groups_then and groups_now and set(groups_then[0]) != set(groups_now[0]):
                continue  # another kind of optimizer altogether: a CheckpointError when its state loads
            where = f"node {uid!r} optimizer {name!r}"
            if then.get("class") != mine["class"]:
                changes.items.append(
                    (
                        f"{where} class",
                        f"{_short(then['class'])} → {_short(mine['class'])}",
                        "the code's optimizer, with the checkpoint's state (moments, step counts)",
                    )
                )
            if not _same(then.get("grad_clip_norm"), mine["grad_clip_norm"]):
                changes.items.append(
                    (
                        f"{where} grad_clip_norm",
                        f"{then.get('grad_clip_norm')!r} → {mine['grad_clip_norm']!r}",
                        "the code's",
                    )
                )
            if len(groups_then) != len(groups_now):
                changes.items.append(
                    (
                        f"{where} param groups",
                        f"{len(groups_then)} → {len(groups_now)}",
                        "the checkpoint's values, as loaded",
                    )
                )
                continue
            for index, (a, b) in enumerate(zip(groups_then, groups_now)):
                group = f" (param group {index})" if len(groups_now) > 1 else ""
                for key in a:
                    if key in b and not _same(a[key], b[key]):
                        if key == "lr" and name in scheduled:
                            wins = (
                                "the checkpoint's: the loaded LR scheduler sets the learning rate; change the "
                                "scheduler, or start a new run from the weights, to use another"
                            )
                        else:
                            wins = "the code's, set after the checkpoint's optimizer state is loaded"
                            changes.overrides.append((optimizers[name], index, key, built[name][index][key]))
                        changes.items.append((f"{where} {key}{group}", f"{_show(a[key])} → {_show(b[key])}", wins))
    return changes


def config_record(config: ConfigValues | None) -> dict | None:
    """The run's config as a checkpoint holds it: its plain values and their hash (None: no config)."""
    return None if config is None else {"values": config.values, "hash": config.hash}


def compare_config(state: dict, config: ConfigValues | None) -> list[str]:
    """``key: old → new`` for every config key that differs between the checkpoint ``state`` and
    the run's ``config``, except the fields marked ``metadata={"compare": False}`` (where to write,
    how many rounds); [] when they are equal or either has no config (an older checkpoint, a run
    given none: nothing to compare)."""
    saved = state.get("run_config")
    if not isinstance(saved, dict) or config is None or saved.get("hash") == config.hash:
        return []
    changed = differences(saved.get("values", {}), config.values)
    return [f"{key}: {show(old)} → {show(new)}" for key, old, new in changed if config.compared(key)]
