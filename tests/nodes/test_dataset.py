"""DatasetNode: reproducible order, own generator, devices, workers (API.md B7)."""

import collections

import pytest
import torch

import ice_ignite as ice
from ice_ignite.nodes.dataset import move_to


def index_set(n):
    return torch.utils.data.TensorDataset(torch.arange(n))


def orders(seed=0, uid_tags="train", passes=2, n=12, batch_size=4, **kwargs):
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(n), batch_size=batch_size, shuffle=True, **kwargs), tags=uid_tags)
    seen = []
    g.add("rec", ice.Node(forward=lambda n_, x: seen.extend(x["data"][0].tolist())), tags=uid_tags)
    g.seed = seed
    g.exec_tasks([ice.Task(train=False, epochs=passes, tags=uid_tags)], ice.Launcher())
    per = n // batch_size * batch_size
    return [seen[i * per:(i + 1) * per] for i in range(passes)]


def test_shuffle_order_is_a_pure_function_of_seed_uid_and_pass():
    a, b = orders(seed=0), orders(seed=0)
    assert a == b
    assert a[0] != a[1] and sorted(a[0]) == list(range(12))
    assert orders(seed=1) != a
    assert orders(seed=0, uid_tags="other") != a


def test_creating_iterators_does_not_draw_from_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    orders(passes=3)
    assert torch.equal(torch.get_rng_state(), before)


def test_workers_yield_the_same_batches_in_the_same_order():
    assert orders(num_workers=2) == orders(num_workers=0)


class Augmented(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(1) + 100 * i


def test_random_augmentation_in_workers_does_not_depend_on_the_worker():
    def draws(workers):
        g = ice.HyperGraph()
        g.add("data", ice.DatasetNode(Augmented(), batch_size=2, num_workers=workers))
        seen = []
        g.add("rec", ice.Node(forward=lambda n, x: seen.append(x["data"].squeeze(1))))
        g.exec_tasks([ice.Task(train=False, epochs=2)], ice.Launcher())
        return torch.cat(seen)

    one, two = draws(1), draws(2)
    assert torch.equal(one, two)
    assert not torch.equal(one[:8], one[8:])  # a new pass draws anew


def test_drop_last_and_lengths():
    assert ice.DatasetNode(index_set(10), batch_size=4).batches_per_pass() == 3
    assert ice.DatasetNode(index_set(10), batch_size=4, drop_last=True).batches_per_pass() == 2
    assert ice.DatasetNode(index_set(10), batch_size=4, batch_size_in_total=True).local_batch_size == 4


@pytest.mark.parametrize(
    "kwargs, error, words",
    [({"sampler": None}, TypeError, "does not take 'sampler'"), ({"foo": 1}, TypeError, "unknown argument 'foo'"),
     ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"), ({"shuffle": 1}, TypeError, "shuffle must be"),
     ({"num_workers": -1}, ValueError, "num_workers must be an int >= 0")],
)
def test_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        ice.DatasetNode(index_set(4), **kwargs)


def test_not_a_dataset():
    with pytest.raises(TypeError, match="needs a torch Dataset"):
        ice.DatasetNode(42)


def test_move_to_handles_nested_batches():
    Pair = collections.namedtuple("Pair", "x y")
    batch = {"a": [torch.ones(2), (torch.zeros(1), "s")], "p": Pair(torch.ones(1), 3)}
    moved = move_to(batch, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == "s" and isinstance(moved["p"], Pair) and moved["p"].y == 3


def test_dataset_len_larger_than_its_data_is_reported():
    class Liar(torch.utils.data.IterableDataset):
        def __len__(self):
            return 10

        def __iter__(self):
            return iter(range(4))

    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(Liar(), batch_size=2))
    with pytest.raises(ice.GraphError, match="ran out of batches after 2 in an epoch of 5"):
        g.exec_tasks([ice.Task(train=False, epochs=1)], ice.Launcher())
