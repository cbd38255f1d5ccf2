"""DatasetNode: reproducible order, own generator, devices, workers, samplers, per-batch seeding,
no copy on the CPU (API.md B7)."""

import collections
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import SubsetRandomSampler, WeightedRandomSampler
from torch.utils.data._utils.collate import default_collate

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
    return [seen[i * per : (i + 1) * per] for i in range(passes)]


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
    [
        ({"batch_sampler": None}, TypeError, "does not take 'batch_sampler'"),
        ({"foo": 1}, TypeError, "unknown argument 'foo'"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        ({"shuffle": 1}, TypeError, "shuffle must be"),
        ({"num_workers": -1}, ValueError, "num_workers must be an int >= 0"),
        ({"prefetch_factor": 0, "num_workers": 1}, ValueError, "prefetch_factor must be an int >= 1"),
        ({"persistent_workers": True}, ValueError, "persistent_workers=True needs worker processes"),
        ({"sampler": torch.utils.data.SequentialSampler(range(4)), "shuffle": True}, TypeError, "drop shuffle=True"),
    ],
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


# -- random augmentation seeded once per batch ---------------------------------------------------------
class ThreeStreams(torch.utils.data.Dataset):
    """Random augmentation from torch, numpy and python's random, as real pipelines mix them."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([i, torch.rand(()).item(), np.random.rand(), random.random()], dtype=torch.float64)


def three_stream_draws(workers, passes=2):
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(ThreeStreams(), batch_size=3, shuffle=True, num_workers=workers))
    seen = []
    g.add("rec", ice.Node(forward=lambda n, x: seen.append(x["data"])))
    g.exec_tasks([ice.Task(train=False, epochs=passes)], ice.Launcher())
    return torch.cat(seen)


def test_torch_numpy_and_python_augmentation_in_workers_does_not_depend_on_the_worker():
    one, two = three_stream_draws(1), three_stream_draws(2)
    assert torch.equal(one, two)
    draws = one[:, 1:]
    assert len(set(draws.flatten().tolist())) == draws.numel()  # every sample, stream and pass draws anew


# -- no copy on the CPU --------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_the_model_sees_the_collated_batch_itself_on_the_cpu(workers):
    collated, seen = [], []

    def collate(samples):
        batch = default_collate(samples)
        collated.append(batch[0].data_ptr())
        return batch

    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(12), batch_size=4, num_workers=workers, collate_fn=collate))
    g.add("rec", ice.Node(forward=lambda n, x: seen.append(x["data"][0])))
    g.exec_tasks([ice.Task(train=False, epochs=1)], ice.Launcher())
    if workers == 0:
        assert [t.data_ptr() for t in seen] == collated
    else:  # collated in a worker, in shared memory: a copy would be private memory of this process
        assert len(seen) == 3 and all(t.is_shared() for t in seen)


def test_prefetch_factor_reaches_the_dataloader(tmp_path):
    loaded = []

    class Logged(torch.utils.data.Dataset):
        def __init__(self, log):
            self.log = log

        def __len__(self):
            return 40

        def __getitem__(self, i):
            with open(self.log, "a") as f:
                f.write(f"{i}\n")
            return i

    def loaded_when_the_first_batch_arrived(prefetch, log):
        g = ice.HyperGraph()
        g.add("data", ice.DatasetNode(Logged(log), batch_size=2, num_workers=1, prefetch_factor=prefetch))

        def first(n, x):
            if not loaded:
                time.sleep(1.0)  # let the worker fill the prefetch queue
                loaded.append(len(Path(log).read_text().split()))

        g.add("rec", ice.Node(forward=first))
        g.exec_tasks([ice.Task(train=False, steps=1)], ice.Launcher())
        return loaded.pop()

    # the worker loads `prefetch_factor` batches ahead, and one more once the first is taken
    assert loaded_when_the_first_batch_arrived(5, tmp_path / "a") == 2 * (5 + 1)
    assert loaded_when_the_first_batch_arrived(2, tmp_path / "b") == 2 * (2 + 1)


# -- samplers ------------------------------------------------------------------------------------------
def sampled(sampler, passes=2, batch_size=3, workers=0, seed=0):
    g = ice.HyperGraph()
    g.seed = seed
    g.add("data", ice.DatasetNode(index_set(20), batch_size=batch_size, sampler=sampler, num_workers=workers))
    seen = []
    g.add("rec", ice.Node(forward=lambda n, x: seen.append(x["data"][0].tolist())))
    g.exec_tasks([ice.Task(train=False, epochs=passes)], ice.Launcher())
    per = -(-len(sampler) // batch_size)
    return [sum(seen[p * per : (p + 1) * per], []) for p in range(passes)]


def test_a_weighted_sampler_draws_a_seeded_order_per_pass_and_leaves_every_stream_alone():
    weights = torch.tensor([0.0] * 10 + [1.0] * 10)
    own = torch.Generator().manual_seed(5)
    sampler = WeightedRandomSampler(weights, num_samples=14, replacement=True, generator=own)
    torch.manual_seed(1)
    before, own_before = torch.get_rng_state(), own.get_state()
    a = sampled(sampler)
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(own.get_state(), own_before)
    assert sampler.generator is own
    assert [len(p) for p in a] == [14, 14] and all(i >= 10 for p in a for i in p)  # its weights and length
    assert a[0] != a[1]  # a new draw each pass
    assert sampled(sampler) == a and sampled(sampler, workers=2) == a
    assert sampled(sampler, seed=1) != a


def test_a_subset_sampler_draws_a_permutation_of_its_subset_each_pass():
    subset = [1, 4, 5, 9, 12, 17, 18]
    a = sampled(SubsetRandomSampler(subset), batch_size=2)
    assert [sorted(p) for p in a] == [subset, subset] and a[0] != a[1]


class GlobalStreamSampler(torch.utils.data.Sampler):
    """A custom sampler that draws from python's global random stream."""

    def __len__(self):
        return 20

    def __iter__(self):
        order = list(range(20))
        random.shuffle(order)
        return iter(order)


def test_a_custom_sampler_drawing_from_the_global_streams_is_seeded_per_pass():
    random.seed(3)
    state = random.getstate()
    a = sampled(GlobalStreamSampler())
    assert random.getstate() == state
    assert sorted(a[0]) == list(range(20)) and a[0] != a[1] and sampled(GlobalStreamSampler()) == a


class OwnStreamSampler(GlobalStreamSampler):
    """A sampler with a python random generator of its own: its order cannot be seeded."""

    def __init__(self):
        self.rng = random.Random(0)

    def __iter__(self):
        order = list(range(20))
        self.rng.shuffle(order)
        return iter(order)


@pytest.mark.parametrize(
    "sampler, error, words",
    [
        (OwnStreamSampler(), ValueError, "the OwnStreamSampler cannot be resumed"),
        (torch.utils.data.BatchSampler(range(20), 4, False), TypeError, "does not take a BatchSampler"),
        (torch.utils.data.DistributedSampler(range(20), num_replicas=2, rank=0), TypeError, "its slice of the order"),
        (iter(range(20)), TypeError, "has no __len__"),
    ],
)
def test_samplers_that_cannot_resume_or_shard_are_refused(sampler, error, words):
    with pytest.raises(error, match=words):
        ice.DatasetNode(index_set(20), sampler=sampler)


def test_a_sampler_of_a_stream_is_refused():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(4))

    with pytest.raises(TypeError, match="an IterableDataset orders itself"):
        ice.DatasetNode(Stream(), sampler=torch.utils.data.SequentialSampler(range(4)))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_with_a_sampler_resumes_mid_pass_with_the_same_batches(tmp_path, workers):
    def run(run_id, resume_from=None):
        g = ice.HyperGraph()
        sampler = WeightedRandomSampler(torch.linspace(0.1, 1, 20), num_samples=17)
        g.add("data", ice.DatasetNode(index_set(20), batch_size=3, sampler=sampler, num_workers=workers))
        seen = []
        g.add("rec", ice.Node(forward=lambda n, x: seen.append(x["data"][0].tolist())))
        tasks = [ice.Task(train=False, steps=4), ice.SaveCheckpointTask(), ice.Task(train=False, steps=10)]
        g.run(tasks, devices="cpu", out_dir=tmp_path, run_id=run_id, resume_from=resume_from)
        return seen

    reference = run("ref")
    assert len(reference) == 14 and reference[:6] != reference[6:12]  # 6 batches a pass: a second pass
    checkpoint = next((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt"))
    assert run("resumed", resume_from=checkpoint) == reference[4:]
