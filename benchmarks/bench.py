"""Wall-clock benchmarks of ice_ignite against the same training written by hand; writes
benchmarks/RESULTS.md and benchmarks/results.png (``make bench``).

Measured the way noise cannot fake: each figure per iteration is the slope between a short and a
long run (so start-up is reported apart), the variants are interleaved in one process, repeated
at least 11 times, and both the minimum and the median are given. Threads: 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import checkpoint_cost  # noqa: E402
import data_bound  # noqa: E402
import variants  # noqa: E402

SHORT, LONG = 50, 350  # iterations of a one-epoch run


# -- speed per iteration -------------------------------------------------------------------------------
def speed(repeats: int) -> dict:
    short, long = variants.data(SHORT), variants.data(LONG)
    chosen = variants.available()
    times = {name: {"short": [], "long": []} for name in chosen}
    final = {}
    for fn in chosen.values():  # warm-up: imports, allocator, caches
        fn(1, short)
    for _ in range(repeats):
        for name, fn in chosen.items():
            gc.collect()
            t0 = time.perf_counter()
            fn(1, short)
            t1 = time.perf_counter()
            gc.collect()
            t2 = time.perf_counter()
            final[name] = fn(1, long)
            t3 = time.perf_counter()
            times[name]["short"].append(t1 - t0)
            times[name]["long"].append(t3 - t2)
    reference = final["torch loop"]
    results = {}
    for name, t in times.items():
        slopes = [(b - a) / (LONG - SHORT) for a, b in zip(t["short"], t["long"])]
        # noise only ever adds time, so the fastest run of each length is the best estimate of it; the
        # slope between those two minimums (not the smallest per-repeat slope, which a slow short run
        # would flatter) is the per-iteration cost
        best = (min(t["long"]) - min(t["short"])) / (LONG - SHORT)
        results[name] = {
            "min_us": 1e6 * best,
            "median_us": 1e6 * statistics.median(slopes),
            "startup_ms": 1e3 * (min(t["short"]) - best * SHORT),
            "identical": all(torch.equal(a, b) for a, b in zip(final[name], reference)),
            "seconds": t,
        }
    return results


# -- graph machinery per node --------------------------------------------------------------------------
def machinery(repeats: int) -> dict:
    import ice_ignite as ice

    def run(nodes: int, steps: int) -> float:
        g = ice.HyperGraph()
        for i in range(nodes):
            g.add(f"n{i}", ice.Node(forward=lambda n, x: None))
        t = time.perf_counter()
        g.exec_tasks([ice.Task(train=False, steps=steps)], ice.Launcher())
        return time.perf_counter() - t

    result = {}
    for nodes in (10, 100):
        run(nodes, 100)
        result[nodes] = min((run(nodes, 2100) - run(nodes, 100)) / 2000 for _ in range(repeats))
    return {
        "us_per_iteration_10": 1e6 * result[10],
        "us_per_iteration_100": 1e6 * result[100],
        "us_per_node": 1e6 * (result[100] - result[10]) / 90,
    }


# -- memory, start-up and checkpoints: each in a fresh process ---------------------------------------------
MEMORY = """
import resource, sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
import variants
variants.available()[{name!r}](20, variants.data(50))   # 1000 iterations
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

GROWTH = """
import sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
import torch.nn.functional as F, ice_ignite as ice, variants
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 1024
marks = {{}}
g = ice.HyperGraph()
g.add("data", ice.DatasetNode(variants.data(50), batch_size=variants.BATCH))
g.add("net", ice.ModuleNode(variants.model(), forward=lambda n, x: n.module(x["data"][0]),
                            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.05, momentum=0.9)))
g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
g.add("probe", ice.Node(update=lambda n: marks.setdefault(n.global_train_steps, rss())))
g.exec_tasks([ice.Task(train=True, steps=2000)], ice.Launcher())
print(marks[200], marks[1999])
"""

STARTUP = """
import time, sys
t0 = time.perf_counter()
import torch, ignite.engine, ignite.metrics
t1 = time.perf_counter()
import ice_ignite as ice
t2 = time.perf_counter()
g = ice.HyperGraph()
g.add("data", ice.DatasetNode(torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=32))
g.add("net", ice.ModuleNode(torch.nn.Linear(4, 1), forward=lambda n, x: n.module(x["data"][0]),
                            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1)))
g.add("mse", ice.LossNode(forward=lambda n, x: torch.nn.functional.mse_loss(x["net"], x["data"][1])))
t3 = time.perf_counter()
g.run([ice.Task(train=True, steps=1)], devices="cpu", out_dir={out!r}, progress=False)
t4 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3)
"""


def fresh(code: str) -> list[float]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [float(v) for v in proc.stdout.split()[-6:]]


def memory() -> dict:
    peaks = {}
    for name in ("torch loop", "ice_ignite"):
        peaks[name] = min(fresh(MEMORY.format(here=str(HERE), name=name))[-1] for _ in range(3)) / 1024
    early, late = fresh(GROWTH.format(here=str(HERE)))[-2:]
    return {
        "peak_mb": peaks,
        "ratio": peaks["ice_ignite"] / peaks["torch loop"],
        "rss_step_200_mb": early / 1024,
        "rss_step_1999_mb": late / 1024,
    }


def startup() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        runs = [fresh(STARTUP.format(out=tmp))[-4:] for _ in range(5)]
    return {
        "import_torch_ignite_s": min(r[0] for r in runs),
        "import_ice_ignite_s": min(r[1] for r in runs),
        "build_graph_s": min(r[2] for r in runs),
        "run_one_iteration_s": min(r[3] for r in runs),
    }


def checkpoint() -> dict:
    """``checkpoint_cost.measure`` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "checkpoint_cost.py"), "--json"], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- report ------------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, ignite {__import__('ignite').__version__}, 1 thread"
    )


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["speed"])
    base = results["speed"]["torch loop"]["min_us"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(names[::-1], [results["speed"][n]["min_us"] / base for n in names[::-1]], color="#4a86e8")
    ax.axvline(1.0, color="#333333", lw=1)
    ax.set_xlabel("time per iteration / hand-written loop (minimum of the repeats)")
    ax.set_title("same training, 1 CPU thread")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pair(values: dict, name: str) -> str:
    """``values[name]`` over its ignite counterpart's (see ``variants.PAIRS``), or "" if it has none."""
    other = variants.PAIRS.get(name)
    return f"{values[name] / values[other]:.3f}" if other in values else ""


def report(results: dict) -> str:
    s = results["speed"]
    base, ign = s["torch loop"]["min_us"], s["ignite Engine"]["min_us"]
    lines = [
        "# Benchmarks",
        "",
        "Regenerated by `make bench` (instructions by `make bench-instructions`). The training: a 32-64-10 MLP,",
        "batches of 32 from fixed in-memory data, SGD with momentum, and ignite's `Loss` and `Accuracy` for the",
        "epoch statistics in every variant but the last two: the path a user meets first, `g.run` with its defaults",
        "(run directory, logs, TensorBoard board, progress, the loss's own metric), and a bare ignite Engine with the",
        "same step and no metric (see `benchmarks/variants.py`).",
        "",
        f"Machine: {results['machine']}.",
        "",
        "## Time per iteration",
        "",
        f"Slope between one-epoch runs of {SHORT} and {LONG} iterations (so start-up and per-epoch work "
        f"cancel), {results['repeats']} interleaved repeats. \"min\": the slope between the fastest run of each "
        "length; \"median\": the median of the repeats' slopes. \"/ pair\": an ice_ignite variant over its ignite "
        "counterpart: `exec_tasks` with Loss and Accuracy over an Engine with the same metrics, and `g.run` with its "
        "defaults over a bare Engine (target ≤ 1.03).",
        "",
        "| variant | min µs | median µs | min / loop | min / ignite | min / pair | median / loop | median / pair | start-up ms | weights identical to the loop |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    mins, medians = ({n: r[k] for n, r in s.items()} for k in ("min_us", "median_us"))
    for name, r in s.items():
        lines.append(
            f"| {name} | {r['min_us']:.1f} | {r['median_us']:.1f} | {r['min_us'] / base:.3f} | "
            f"{r['min_us'] / ign:.3f} | {pair(mins, name)} | {r['median_us'] / s['torch loop']['median_us']:.3f} | "
            f"{pair(medians, name)} | {r['startup_ms']:.1f} | {'yes' if r['identical'] else 'NO'} |"
        )
    lines += ["", "![time per iteration](results.png)", ""]
    if "instructions" in results:
        ins = results["instructions"]
        lines += [
            "## Instructions per iteration (callgrind)",
            "",
            "| variant | M instructions / iteration | / loop | / ignite | / pair |",
            "|---|---|---|---|---|",
        ]
        for name, value in ins.items():
            lines.append(
                f"| {name} | {value / 1e6:.3f} | {value / ins['torch loop']:.3f} | "
                f"{value / ins['ignite Engine']:.3f} | {pair(ins, name)} |"
            )
        lines += [
            "",
            "The progress line `g.run` logs every 30 s without a terminal is left out of these counts: timed by the "
            "wall clock, it came 50-100x more often per iteration under valgrind than in a real run (one line per "
            "some 30,000 steps here), in proportion to the machine's load.",
            "",
        ]
    if "data_bound" in results:
        lines += data_bound.render(results["data_bound"])
    m = results["machinery"]
    lines += [
        "## Graph machinery",
        "",
        f"An eval task of trivial nodes: {m['us_per_iteration_10']:.1f} µs per iteration with 10 nodes, "
        f"{m['us_per_iteration_100']:.1f} µs with 100: **{m['us_per_node']:.2f} µs per node per iteration**.",
        "",
    ]
    mem = results["memory"]
    lines += [
        "## Memory",
        "",
        f"Peak RSS of a 1000-iteration run: hand-written loop {mem['peak_mb']['torch loop']:.0f} MB, "
        f"ice_ignite {mem['peak_mb']['ice_ignite']:.0f} MB (ratio {mem['ratio']:.3f}). RSS during an "
        f"ice_ignite run: {mem['rss_step_200_mb']:.1f} MB at step 200, {mem['rss_step_1999_mb']:.1f} MB at "
        "step 1999.",
        "",
    ]
    lines += checkpoint_cost.render(results["checkpoint"])
    st = results["startup"]
    lines += [
        "## Start-up",
        "",
        f"Importing torch and ignite: {st['import_torch_ignite_s']:.2f} s. Beyond that: importing ice_ignite "
        f"{st['import_ice_ignite_s']:.3f} s, and `run()` of a one-iteration job (run directory, logs, board, "
        f"engines, the iteration) **{st['run_one_iteration_s']:.3f} s**. Building the small graph took "
        f"{st['build_graph_s']:.2f} s, nearly all of it torch importing its compiler stack the first time an "
        "optimizer is built, which a hand-written script pays as well.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from results.json")
    parser.add_argument(
        "--checkpoint-only",
        action="store_true",
        help="measure the checkpoint cost only, keeping the other results of results.json",
    )
    parser.add_argument(
        "--data-bound-only",
        action="store_true",
        help="measure the data-bound epoch only, keeping the other results of results.json",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.render_only or args.data_bound_only or args.checkpoint_only:
        results = json.loads((HERE / "results.json").read_text())
        if args.data_bound_only:
            results["data_bound"] = data_bound.measure()
        if args.checkpoint_only:
            results["checkpoint"] = checkpoint()
    else:
        results = {
            "machine": machine(),
            "repeats": args.repeats,
            "speed": speed(args.repeats),
            "machinery": machinery(5),
            "memory": memory(),
            "checkpoint": checkpoint(),
            "startup": startup(),
            "data_bound": data_bound.measure(),
        }
    instructions = HERE / "instructions.json"
    if instructions.exists():
        results["instructions"] = json.loads(instructions.read_text())
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if not (args.data_bound_only or args.checkpoint_only):  # the chart shows the other results, unchanged
        chart(results, HERE / "results.png")
    text = report(results)
    (HERE / "RESULTS.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
