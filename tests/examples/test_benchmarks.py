"""benchmarks/workloads.py and benchmarks/gpu.py at the tiny size: ice_ignite's char_lm training equals the
hand-written loop's, loss for loss, and gpu.py's CPU fallback writes its figures."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu  # noqa: E402
import workloads  # noqa: E402


def test_first_50_losses_equal_the_hand_written_loop_bit_for_bit(tmp_path):
    cfg = workloads.setting("tiny", steps=25)  # 2 micro-batches per step: 50 losses
    data = workloads.ordered_data(cfg, steps=25)
    hand = workloads.hand(cfg, data, warmup=5)
    ice = workloads.ice(cfg, data, warmup=5, out_dir=tmp_path)
    assert len(hand["losses"]) == len(ice["losses"]) == 50
    assert ice["losses"] == hand["losses"]  # floats compared exactly
    assert hand["losses"][-1] < hand["losses"][0]  # they trained (the comparison is not of constants)


def test_gpu_benchmark_falls_back_to_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    gpu.main(["--device", "cpu", "--size", "tiny", "--steps", "4", "--warmup", "2", "--out", str(out)])
    results = json.loads(out.read_text())
    rows = results["variants"]
    assert results["device"] == "cpu"
    assert [(r["precision"], r["compiled"], r["impl"]) for r in rows] == [
        ("bf16", False, "hand"),
        ("bf16", False, "ice_ignite"),
        ("fp16", False, "hand"),
        ("fp16", False, "ice_ignite"),
    ]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert [r["losses_equal_hand"] for r in rows[1::2]] == [True, True]  # fp16: through a GradScaler on both sides
