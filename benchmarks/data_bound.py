"""A data-bound epoch: ``g.run`` with a DatasetNode against a hand-written loop over a DataLoader
with the same settings (``make bench`` renders it into RESULTS.md; run alone it prints the table).

The job a new user meets on a first real data set: 8192 CIFAR-sized images in memory, random crop
(numpy), flip (python ``random``) and colour jitter (torch) in ``__getitem__``, batches of 256,
shuffled, a tiny linear model. Both sides time each epoch from its start to its end (the
DataLoader's workers start inside it, as they do in a plain ``for`` loop), interleaved, for
``num_workers`` 0, 2 and 4. A second, short run checks that the DatasetNode hands the model the
collated batch itself, not a copy (same ``data_ptr``; with workers, the same shared-memory storage).
Last, the time to resume a 1,000,000-element stream at element 900,000, with and without
``state_dict`` / ``load_state_dict``.

    python benchmarks/data_bound.py [--repeats 11] [--epochs 3]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from ice_ignite.distributed.streams import stream_shard

SAMPLES, BATCH, PAD = 8192, 256, 4
WORKERS = (0, 2, 4)


class Images(Dataset):
    """CIFAR-sized uint8 images with random crop, flip and colour jitter from numpy, python and torch."""

    def __init__(self, n: int = SAMPLES):
        g = torch.Generator().manual_seed(0)
        self.x = F.pad(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), (PAD,) * 4)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        dy, dx = np.random.randint(0, 2 * PAD + 1, size=2)
        image = self.x[i, :, dy : dy + 32, dx : dx + 32]
        if random.random() < 0.5:
            image = image.flip(2)
        image = image.float().div_(255).mul_(1 + 0.1 * torch.randn(3, 1, 1))
        return image, self.y[i]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers, once joined)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_loop(data: Dataset, workers: int, epochs: int) -> tuple[list[float], float]:
    """The hand-written loop; the wall clock of each epoch, and the CPU time of all epochs."""
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, num_workers=workers)
    times, cpu = [], cpu_seconds()
    for _ in range(epochs):
        t = time.perf_counter()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return times, cpu_seconds() - cpu


def ice_graph(data: Dataset, workers: int, collate_fn=None, seen: list | None = None):
    import ice_ignite as ice

    def forward(n, x):
        if seen is not None:
            seen.append(x["data"][0])
        return n.module(x["data"][0])

    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data, batch_size=BATCH, shuffle=True, num_workers=workers, collate_fn=collate_fn))
    g.add("net", ice.ModuleNode(model(), forward=forward, optimizers=ice.Optimizer(torch.optim.SGD, lr=0.01)))
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    return g


def run_ice(data: Dataset, workers: int, epochs: int, out_dir: str, run_id: str) -> tuple[list[float], float]:
    """``g.run`` with its defaults; the wall clock of each epoch (EPOCH_STARTED to EPOCH_COMPLETED),
    and the CPU time from the first epoch's start to the task's end (the run's start-up left out)."""
    import ice_ignite as ice

    task = ice.Task(train=True, epochs=epochs)
    starts, times, cpu = [], [], []
    task.engine.add_event_handler(Events.EPOCH_STARTED(once=1), lambda e: cpu.append(cpu_seconds()))
    task.engine.add_event_handler(Events.EPOCH_STARTED, lambda e: starts.append(time.perf_counter()))
    task.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: times.append(time.perf_counter() - starts[-1]))
    task.engine.add_event_handler(Events.COMPLETED, lambda e: cpu.append(cpu_seconds()))
    ice_graph(data, workers).run([task], devices="cpu", out_dir=out_dir, run_id=run_id)
    return times, cpu[1] - cpu[0]


def same_storage(data: Dataset, workers: int, out_dir: str) -> bool:
    """Whether the model's forward sees the collated batch itself: the same ``data_ptr`` as the
    tensor ``collate_fn`` returned (in the main process), or with workers the shared-memory
    storage the worker wrote (a copy would be private memory)."""
    import ice_ignite as ice

    collated, seen = [], []

    def collate(samples):
        batch = default_collate(samples)
        collated.append(batch[0].data_ptr())
        return batch

    g = ice_graph(data, workers, collate_fn=collate, seen=seen)
    g.run([ice.Task(train=True, steps=3)], devices="cpu", out_dir=out_dir, run_id=f"storage{workers}")
    if workers == 0:
        return [x.data_ptr() for x in seen] == collated[: len(seen)]
    return all(x.is_shared() for x in seen)


class Counting(torch.utils.data.IterableDataset):
    """The stream 0 .. n-1, sharded over processes and workers; it can only be replayed."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        start, step = stream_shard()
        return iter(range(start, self.n, step))


class ResumableCounting(Counting):
    """The same stream with ``state_dict`` / ``load_state_dict``: it resumes from its position."""

    def __init__(self, n: int):
        super().__init__(n)
        self.next, self.resume = None, None

    def __iter__(self):
        start, step = stream_shard()
        if self.resume is not None:
            start = self.resume
        self.resume, self.next = None, start
        for i in range(start, self.n, step):
            self.next = i + step
            yield i

    def state_dict(self) -> dict:
        return {"next": self.resume if self.resume is not None else self.next}

    def load_state_dict(self, state: dict) -> None:
        self.resume = state["next"]


STREAM, STREAM_BATCH, RESUME_AT = 1_000_000, 1000, 900_000


def stream_resume(kind: type, workers: int, out: str) -> tuple[float, list[int]]:
    """Seconds from ``g.run(resume_from=...)`` to the first batch, resuming a 1,000,000-element
    stream at element 900,000, and that batch's first elements."""
    import ice_ignite as ice

    def graph(first: list):
        g = ice.HyperGraph()
        g.add("data", ice.DatasetNode(kind(STREAM), batch_size=STREAM_BATCH, num_workers=workers))
        g.add(
            "first",
            ice.Node(
                forward=lambda n, x: first.append((time.perf_counter(), x["data"][:2].tolist())) if not first else None
            ),
        )
        return g

    steps = RESUME_AT // STREAM_BATCH
    tasks = [ice.Task(train=False, steps=steps), ice.SaveCheckpointTask(), ice.Task(train=False, steps=1)]
    run_id = f"{kind.__name__}{workers}"
    graph([]).run(tasks, devices="cpu", out_dir=out, run_id=run_id)
    checkpoint = next((Path(out) / run_id / "ckpts").glob("ckpt-*.pt"))
    first: list = []
    t = time.perf_counter()
    graph(first).run(tasks, devices="cpu", out_dir=out, run_id=f"{run_id}-resumed", resume_from=checkpoint)
    return first[0][0] - t, first[0][1]


def measure(repeats: int = 11, epochs: int = 3, workers: tuple[int, ...] = WORKERS) -> dict:
    """Per ``num_workers``: the epoch times and CPU times of both sides, their ratios, and whether
    the model saw the collated batch's storage; then the stream resume times."""
    torch.set_num_threads(1)
    data = Images()
    result = {"samples": SAMPLES, "batch": BATCH, "epochs": epochs, "repeats": repeats, "workers": {}}
    with tempfile.TemporaryDirectory(prefix="ice_ignite-data-bound-") as out:
        for n in workers:
            run_loop(data, n, 1)  # warm-up: imports, allocator
            run_ice(data, n, 1, out, f"warm{n}")
            loop, ice = [], []
            for r in range(repeats):  # interleaved, each side first in every other repeat
                if r % 2:
                    ice.append(run_ice(data, n, epochs, out, f"w{n}r{r}"))
                loop.append(run_loop(data, n, epochs))
                if not r % 2:
                    ice.append(run_ice(data, n, epochs, out, f"w{n}r{r}"))
            loop_s, ice_s = [t for t, _ in loop], [t for t, _ in ice]
            result["workers"][n] = {
                "loop_s": loop_s,
                "ice_s": ice_s,
                "loop_cpu_s": [c for _, c in loop],
                "ice_cpu_s": [c for _, c in ice],
                "min_ratio": min(map(min, ice_s)) / min(map(min, loop_s)),
                # each run's fastest epoch over that of the run next to it in time: the load of other
                # processes on a shared machine drifts slowly, and a pair sees about the same
                "paired_ratio": statistics.median(min(i) / min(lp) for i, lp in zip(ice_s, loop_s)),
                # CPU time (this process and its workers) waiting for a core does not count
                "cpu_ratio": statistics.median(i / lp for (_, i), (_, lp) in zip(ice, loop)),
                "same_storage": same_storage(data, n, out),
            }
        result["stream_resume"] = {}
        for n in (0, 2):
            for kind in (ResumableCounting, Counting):
                seconds, first = stream_resume(kind, n, out)
                result["stream_resume"][f"{kind.__name__} {n}"] = {"seconds": seconds, "first": first}
    return result


def render(result: dict) -> list[str]:
    """The RESULTS.md section."""
    lines = [
        "## Data-bound epoch",
        "",
        f"{result['samples']} CIFAR-sized images in memory, random crop (numpy), flip (python `random`) and "
        f"colour jitter (torch) in `__getitem__`, batches of {result['batch']}, shuffled, a linear model "
        "(`benchmarks/data_bound.py`). Wall clock of an epoch (workers start inside it) with `g.run` and a "
        "DatasetNode over a hand-written loop over `DataLoader(..., shuffle=True)` with the same `num_workers`, "
        f"{result['repeats']} interleaved pairs of runs of {result['epochs']} epochs each (target ≤ 1.05). \"min\": "
        "fastest epoch over fastest epoch (noise only ever adds time); \"paired\": the median over the pairs of "
        "each run's fastest epoch over its partner's (the load of other processes drifts slowly); \"CPU\": the "
        "median over the pairs of the CPU time of the epochs, the process's and its workers' (time spent "
        "waiting for a core of this shared machine does not count). \"same "
        "storage\": the model's forward sees the collated batch itself (no copy): the same `data_ptr` without "
        "workers, the worker's shared-memory storage with them.",
        "",
        "| num_workers | loop min s | ice_ignite min s | ice_ignite / loop (min) | ice_ignite / loop (paired) "
        "| ice_ignite / loop (CPU) | same storage |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in result["workers"].items():
        lines.append(
            f"| {n} | {min(map(min, r['loop_s'])):.3f} | {min(map(min, r['ice_s'])):.3f} | "
            f"{r['min_ratio']:.3f} | {r['paired_ratio']:.3f} | {r['cpu_ratio']:.3f} | "
            f"{'yes' if r['same_storage'] else 'NO'} |"
        )
    if "stream_resume" in result:
        lines += [
            "",
            f"Resuming a stream of {STREAM:,} elements (batches of {STREAM_BATCH}) at element {RESUME_AT:,}: "
            "seconds from `g.run(resume_from=...)` to the first batch (run directory, logs and board "
            "included), for a stream with `state_dict()` / `load_state_dict()` (through torchdata's "
            "`StatefulDataLoader`) and for the same stream without them (replayed).",
            "",
            "| num_workers | resumable stream s | replayed stream s | first elements after resume |",
            "|---|---|---|---|",
        ]
        r = result["stream_resume"]
        for n in (0, 2):
            a, b = r[f"ResumableCounting {n}"], r[f"Counting {n}"]
            lines.append(f"| {n} | {a['seconds']:.3f} | {b['seconds']:.3f} | {a['first']} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    args = parser.parse_args()
    print("\n".join(render(measure(args.repeats, args.epochs, tuple(args.workers)))))


if __name__ == "__main__":
    main()
