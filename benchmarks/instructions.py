"""Instructions per training iteration of each variant, counted by valgrind's callgrind: the
slope between a one-epoch run of 50 iterations and one of 450, so that start-up (importing torch
takes most of it) and per-epoch work cancel. Repeatable, whatever else the machine is doing.

    python benchmarks/instructions.py                 # every variant, writes benchmarks/instructions.json
    python benchmarks/instructions.py --variants "ignite Engine bare" "ice_ignite g.run defaults"   # some
    python benchmarks/instructions.py --one NAME ITERATIONS   # (internal) the program valgrind runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHORT, LONG = 50, 450  # iterations of the one epoch


def one(name: str, iterations: int) -> None:
    import gc

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import variants

    if name.startswith("ice_ignite"):
        # Under valgrind a run is some 50-100x slower, so work timed by the wall clock (the progress line g.run
        # logs every 30 s without a terminal) would come 50-100x more often per iteration than in a real run,
        # and with the machine's load: counted here, it measured the load (natively: ~1 line per 30,000 steps)
        from ice_ignite.observe.progress import Progress

        Progress.line_every = float("inf")
    dataset = variants.data(iterations)
    gc.collect()  # start both runs from the same collector state
    variants.available()[name](1, dataset)


def count(name: str, iterations: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        # a fixed hash seed and no address randomisation: the same count on every run
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--one",
            name,
            str(iterations),
        ]
        if shutil.which("setarch"):
            command = ["setarch", platform.machine(), "-R"] + command
        # one thread everywhere: valgrind runs threads one at a time, and idle pool threads spinning
        # would add instructions that depend on scheduling
        env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"valgrind failed for {name}: {proc.stderr[-2000:]}")
        return int(re.search(r"Collected : (\d+)", proc.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=2, metavar=("NAME", "ITERATIONS"))
    parser.add_argument("--variants", nargs="*", default=None)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], int(args.one[1]))
        return
    sys.path.insert(0, str(HERE))
    import variants

    names = args.variants or list(variants.available())
    width = max(map(len, names))
    iterations = LONG - SHORT
    results = {}
    for name in names:
        short, long = count(name, SHORT), count(name, LONG)
        results[name] = (long - short) / iterations
        print(f"{name:{width}s} {results[name] / 1e6:8.3f} M instructions / iteration", flush=True)
    path = HERE / "instructions.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(results)
    path.write_text(json.dumps(old, indent=1) + "\n")
    for ice, ignite in variants.PAIRS.items():
        if ice in old and ignite in old:
            print(f"{ice} / {ignite}: {old[ice] / old[ignite]:.3f}")


if __name__ == "__main__":
    main()
