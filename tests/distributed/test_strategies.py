"""``ice.DDP`` / ``ice.FSDP``: the parallel strategies of a ModuleNode (API.md A, turn 3)."""

import inspect

import pytest
import torch

import ice_ignite as ice


def net():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))


def fwd(n, x):
    return n.module(x["data"][0])


def test_a_misspelt_strategy_option_is_a_type_error_with_the_closest_name():
    with pytest.raises(TypeError, match="'static_grpah'.*static_graph"):
        ice.DDP(static_grpah=True)
    with pytest.raises(TypeError, match="'reshard_after_forwrd'.*reshard_after_forward"):
        ice.FSDP(reshard_after_forwrd=False)
    with pytest.raises(TypeError, match="device_ids"):
        ice.DDP(device_ids=[0])  # set by ice_ignite itself
    with pytest.raises(TypeError, match="sync_batchnorm must be True or False"):
        ice.DDP(sync_batchnorm="yes")


def test_the_strategy_gives_ddp_only_the_options_that_differ_from_its_defaults():
    strategy = ice.DDP(static_graph=True, broadcast_buffers=False, bucket_cap_mb=50)
    assert strategy.flags("error") == {"static_graph": True, "broadcast_buffers": False, "bucket_cap_mb": 50}
    assert ice.DDP().flags("skip") == {"find_unused_parameters": True}  # an unused-parameter policy needs it
    assert repr(strategy) == "DDP(static_graph=True, broadcast_buffers=False, bucket_cap_mb=50)"


def test_a_module_node_takes_a_strategy_or_none_and_keeps_eight_parameters():
    assert len(inspect.signature(ice.ModuleNode.__init__).parameters) - 2 <= 8  # self and **resources aside
    node = ice.ModuleNode(net(), fwd, parallel=ice.FSDP(policy=torch.nn.Linear, reshard_after_forward=False))
    assert node.parallel == "fsdp" and node.fsdp_kwargs == {"reshard_after_forward": False}
    assert node.strategy.pick(torch.nn.Linear(1, 1)) and not node.strategy.pick(torch.nn.ReLU())
    assert ice.ModuleNode(net(), fwd).parallel == "ddp" and ice.ModuleNode(net(), fwd, parallel=None).parallel == "none"
    with pytest.raises(TypeError, match="got parallel=DDP\\(\\) and the strategy options find_unused_parameters"):
        ice.ModuleNode(net(), fwd, parallel=ice.DDP(), find_unused_parameters=True)


def test_the_old_keywords_are_deprecated_aliases_of_the_strategies():
    with pytest.warns(DeprecationWarning, match="parallel='fsdp' and fsdp_policy=, fsdp_kwargs= are deprecated"):
        old = ice.ModuleNode(
            net(), fwd, parallel="fsdp", fsdp_policy=torch.nn.Linear, fsdp_kwargs={"reshard_after_forward": False}
        )
    assert isinstance(old.strategy, ice.FSDP) and old.fsdp_kwargs == {"reshard_after_forward": False}
    with pytest.warns(DeprecationWarning, match="find_unused_parameters=, ddp_kwargs= are deprecated"):
        old = ice.ModuleNode(net(), fwd, find_unused_parameters=True, ddp_kwargs={"bucket_cap_mb": 5})
    assert old.strategy.flags("error") == ice.DDP(find_unused_parameters=True, bucket_cap_mb=5).flags("error")
