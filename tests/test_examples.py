"""The example the README's `make demo` runs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_digits_example_reaches_95_percent_and_says_where_the_run_is(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits.py"), f"out_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    accuracy = float(last.split("validation accuracy ")[1].split()[0])
    assert accuracy >= 0.95
    run_dir = Path(last.split("run directory: ")[1])
    assert run_dir.parent == tmp_path and len(list((run_dir / "ckpts").glob("ckpt-*.pt"))) == 10
    assert (run_dir / "config.yaml").read_text().startswith("rounds: 10\nlr: 0.002\n")
