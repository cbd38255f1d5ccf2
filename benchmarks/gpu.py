"""char_lm on a GPU (issue 25): tokens per second of ice_ignite and of the hand-written loop of
benchmarks/workloads.py (same model, weights, data order), with bf16 autocast and with fp16 autocast and
a GradScaler, each eager and compiled, batches from page-locked memory (``pin_memory``) copied without
blocking. Under 5 minutes on one GPU. Without a GPU it falls back to the CPU: the tiny model, eager only
(compiling on a CPU takes minutes), which is what the suite runs (tests/examples/test_benchmarks.py).

    python benchmarks/gpu.py                          # on a CUDA machine: writes benchmarks/gpu.json
    python benchmarks/gpu.py --device cpu --size tiny --steps 6 --warmup 2 --out /tmp/gpu.json

Not part of ``make test`` or ``make bench`` (no GPU there); run it by hand where one is.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workloads  # noqa: E402
from workloads import char_lm  # noqa: E402

# a model that keeps a GPU busy (25 M parameters, 32 k tokens per optimizer step)
workloads.SIZES["gpu"] = char_lm.Config(context=256, width=512, depth=8, heads=8, batch_size=64, grad_acc=2)


def measure(device: str, size: str, steps: int, warmup: int, compile_too: bool) -> dict:
    """Every variant once, in this process: ``{"variants": [...], ...}``."""
    cfg = workloads.setting(size, steps)
    data = workloads.ordered_data(cfg, steps)  # the same windows, in the same order, for every variant
    tokens_per_step = cfg.batch_size * cfg.context * cfg.grad_acc
    rows = []
    for precision in ("bf16", "fp16"):
        for compiled in (False, True) if compile_too else (False,):
            losses = {}
            for impl in ("hand", "ice_ignite"):
                run_cfg = char_lm.Config(**{**cfg.__dict__, "devices": device, "precision": precision})
                run_cfg.compile = compiled
                if compiled:
                    torch.compiler.reset()  # each variant compiles its own model
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    if impl == "hand":
                        out = workloads.hand(run_cfg, data, warmup)
                    else:
                        out = workloads.ice(run_cfg, data, warmup, out_dir=tmp)
                losses[impl] = out["losses"]
                rows.append(
                    {
                        "precision": precision,
                        "compiled": compiled,
                        "impl": impl,
                        "s_per_step": out["s_per_step"],
                        "tokens_per_s": tokens_per_step / out["s_per_step"],
                        "wall_s": time.perf_counter() - start,
                        "first_loss": out["losses"][0],
                        "last_loss": out["losses"][-1],
                    }
                )
                print(
                    f"{precision} {'compiled' if compiled else 'eager':8s} {impl:10s} "
                    f"{rows[-1]['tokens_per_s']:12.0f} tokens/s  ({rows[-1]['wall_s']:.0f} s)",
                    flush=True,
                )
            rows[-1]["losses_equal_hand"] = losses["hand"] == losses["ice_ignite"]
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "CPU"
    return {
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "size": size,
        "model": {k: getattr(cfg, k) for k in ("context", "width", "depth", "heads", "batch_size", "grad_acc")},
        "steps": steps,
        "warmup": warmup,
        "variants": rows,
    }


def table(results: dict) -> str:
    lines = [
        f"char_lm ({results['size']}: {results['model']}) on {results['device']} ({results['device_name']}), "
        f"torch {results['torch']}; tokens/s after {results['warmup']} warm-up steps of {results['steps']}.",
        "",
        "| precision | mode | hand-written tokens/s | ice_ignite tokens/s | ice_ignite / hand | losses equal |",
        "|---|---|---|---|---|---|",
    ]
    rows = results["variants"]
    for hand, ice in zip(rows[0::2], rows[1::2]):
        mode = "compiled" if hand["compiled"] else "eager"
        ratio = hand["tokens_per_s"] / ice["tokens_per_s"]  # time ratio: ice_ignite's time over the loop's
        lines.append(
            f"| {hand['precision']} | {mode} | {hand['tokens_per_s']:.0f} | {ice['tokens_per_s']:.0f} | "
            f"{ratio:.3f} | {'yes' if ice['losses_equal_hand'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(workloads.SIZES), default=None, help="gpu on CUDA, tiny on a CPU")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the clock starts")
    parser.add_argument("--out", default=str(HERE / "gpu.json"))
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if not cuda:
        print("no GPU: the CPU fallback (eager only)", flush=True)
    results = measure(args.device, args.size or ("gpu" if cuda else "tiny"), args.steps, args.warmup, cuda)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
