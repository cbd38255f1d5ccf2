"""DatasetNode over streams (IterableDataset): a stream with ``state_dict`` / ``load_state_dict``
resumes from its saved position, each worker's included, without replaying what it had yielded."""

from pathlib import Path

import pytest
import torch
from data_child import CountingStream, Recorder

import ice_ignite as ice
from ice_ignite import CheckpointError
from ice_ignite.distributed.streams import stream_shard


def produced(log_dir):
    return [int(v) for f in Path(log_dir).iterdir() for v in f.read_text().split()]


def stream_run(tmp_path, run_id, workers, steps=(5, 11), n=64, resume_from=None, **kwargs):
    log = tmp_path / f"{run_id}-log"
    log.mkdir()
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(CountingStream(n, log), batch_size=4, num_workers=workers, **kwargs))
    recorder = g.add("rec", Recorder(n))
    tasks = [ice.Task(train=False, steps=steps[0]), ice.SaveCheckpointTask(), ice.Task(train=False, steps=steps[1])]
    g.run(tasks, devices="cpu", out_dir=tmp_path, run_id=run_id, resume_from=resume_from)
    return recorder.seen, produced(log)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stateful_stream_resumes_where_it_was_without_replaying(tmp_path, workers):
    # 64 elements in batches of 4: 16 batches a pass (with 2 workers, 8 from each shard)
    reference, _ = stream_run(tmp_path, "ref", workers)
    assert sorted(reference) == list(range(64))
    checkpoint = next((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt"))
    before = reference[: 5 * 4]
    resumed, made = stream_run(tmp_path, "resumed", workers, resume_from=checkpoint)
    assert resumed == reference  # the recorder's saved elements and the new ones: none twice, none skipped
    assert not set(made) & set(before)  # nothing consumed before the checkpoint was produced again


@pytest.mark.parametrize("persistent", [False, True])
def test_a_stream_position_carries_over_between_step_tasks_and_into_a_new_pass(tmp_path, persistent):
    # 25 batches: a pass and 9 batches of the next
    seen, made = stream_run(tmp_path, "r", 2, steps=(5, 20), persistent_workers=persistent)
    assert seen[:64] != seen[64:] and sorted(seen[:64]) == list(range(64))
    assert sorted(seen[64:]) == sorted(seen[:36])  # the second pass repeats the first one's order
    assert len(made) <= len(seen) + 2 * 2 * 4 * 2  # what was consumed, and the prefetched batches of two passes


def test_a_stream_resumed_with_other_num_workers_is_refused(tmp_path):
    stream_run(tmp_path, "ref", 2)
    checkpoint = next((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt"))
    with pytest.raises(
        CheckpointError,
        match=r"'\*/data'.*num_workers=2 and this node has num_workers=1.*resume "
        r"with num_workers=2",
    ):
        stream_run(tmp_path, "other", 1, resume_from=checkpoint)


def test_a_million_element_stream_resumes_at_900000_without_replay(tmp_path):
    def run(run_id, resume_from=None):
        stream = CountingStream(1_000_000)
        g = ice.HyperGraph()
        g.add("data", ice.DatasetNode(stream, batch_size=1000))
        first = []
        g.add("rec", ice.Node(forward=lambda n, x: first.append(x["data"][:3].tolist()) if not first else None))
        tasks = [ice.Task(train=False, steps=900), ice.SaveCheckpointTask(), ice.Task(train=False, steps=1)]
        g.run(tasks, devices="cpu", out_dir=tmp_path, run_id=run_id, resume_from=resume_from, progress=False)
        return first[0], stream.produced

    run("ref")
    resumed_first, made = run("resumed", next((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt")))
    assert resumed_first == [900_000, 900_001, 900_002]
    assert made == 1000  # one batch, not 900,001 batches' worth


def test_stream_shard_spans_processes_and_workers():
    class Shards(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield stream_shard()

    loader = torch.utils.data.DataLoader(Shards(), batch_size=None, num_workers=2)
    assert sorted(tuple(s) for s in loader) == [(0, 2), (1, 2)]
    assert stream_shard() == (0, 1)


class SizedCountingStream(CountingStream):
    def __len__(self):
        return self.n


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sized_stream_resumes_in_the_middle_of_an_epoch(tmp_path, workers):
    from ignite.engine import Events

    def run(run_id, resume_from=None):
        log = tmp_path / f"{run_id}-log"
        log.mkdir()
        g = ice.HyperGraph()
        g.add("data", ice.DatasetNode(SizedCountingStream(32, log), batch_size=4, num_workers=workers))
        recorder = g.add("rec", Recorder(32))
        train = ice.Task(train=False, epochs=2)
        train.engine.add_event_handler(Events.ITERATION_COMPLETED(every=3), lambda e: g.save_checkpoint())
        g.run([train], devices="cpu", out_dir=tmp_path, run_id=run_id, resume_from=resume_from)
        return recorder.seen, len(produced(log))

    reference, _ = run("ref")
    assert sorted(reference[:32]) == sorted(reference[32:]) == list(range(32))  # 8 batches an epoch
    checkpoints = sorted((tmp_path / "ref" / "ckpts").glob("ckpt-*.pt"))
    assert torch.load(checkpoints[0], weights_only=True)["nodes"]["*/data"]["position"] == 3
    # from iteration 3 of epoch 1 (13 batches to go) and iteration 1 of epoch 2 (7 to go)
    for checkpoint, to_go in (checkpoints[0], 13), (checkpoints[2], 7):
        seen, made = run(f"from-{checkpoint.stem}", resume_from=checkpoint)
        assert seen == reference
        assert made == to_go * 4  # the stream produced what was left, and nothing again
