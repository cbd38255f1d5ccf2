"""What ``ice.config`` and the run's record add to a run's start-up.

    python benchmarks/config_startup.py            # 9 interleaved pairs of fresh processes, a table

Each child process (this script with ``--child``, so that the record finds an entry script in a git
repository and runs git) builds a one-layer graph and runs one iteration: the baseline with
``g.run(...)`` as today (no config, no record), the other with ``cfg = ice.config(Config, argv)``
(OmegaConf imported on first use) and ``g.run(..., config=cfg)`` (record.yaml, config.yaml, git,
the package freeze in a background thread). Measured from just before ``ice.config`` (or the run) to
the first iteration's ITERATION_STARTED ("start-up"), and to ``run``'s return ("whole run", which
waits for the background freeze to be on disk).
"""

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time

PAIRS = 9


@dataclasses.dataclass
class Model:
    width: int = dataclasses.field(default=4, metadata={"help": "hidden units"})


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    model: Model = dataclasses.field(default_factory=Model)


def child(with_config: bool, out: str) -> None:
    import torch
    from ignite.engine import Events

    import ice_ignite as ice

    g = ice.HyperGraph()
    g.add(
        "data", ice.DatasetNode(torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=32)
    )
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(4, 1),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: torch.nn.functional.mse_loss(x["net"], x["data"][1])))
    task = ice.Task(train=True, steps=1)
    first: list[float] = []
    task.engine.add_event_handler(Events.ITERATION_STARTED, lambda e: first.append(time.perf_counter()))
    t0 = time.perf_counter()
    cfg = ice.config(Config, ["lr=0.05", "model.width=4"]) if with_config else None
    g.run([task], devices="cpu", out_dir=out, progress=False, config=cfg)
    t1 = time.perf_counter()
    print(first[0] - t0, t1 - t0)


def measure(pairs: int = PAIRS) -> dict:
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(pairs):
            for with_config in (False, True):
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", "config" if with_config else "plain", out],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                start, whole = (float(v) for v in proc.stdout.split()[-2:])
                runs[with_config].append((start, whole))
    result = {}
    for i, what in enumerate(("start-up", "whole run")):
        plain = [r[i] for r in runs[False]]
        config = [r[i] for r in runs[True]]
        result[what] = {
            "plain_min": min(plain),
            "config_min": min(config),
            "added_min": min(config) - min(plain),
            "added_median": statistics.median(c - p for c, p in zip(config, plain)),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=PAIRS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0] == "config", args.child[1])
        return
    result = measure(args.pairs)
    print(
        "| measured to | run() as today, min s | ice.config + run(config=cfg), min s | added, min s | added, median of pairs s |"
    )
    print("|---|---|---|---|---|")
    for what, r in result.items():
        print(
            f"| {what} | {r['plain_min']:.3f} | {r['config_min']:.3f} | {r['added_min']:.3f} | {r['added_median']:.3f} |"
        )


if __name__ == "__main__":
    main()
