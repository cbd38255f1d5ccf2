"""Several ``run`` calls in one multi-process script (pretrain → finetune → evaluate): every run
joins a fresh rendezvous, gets a run directory of its own, and the code after it knows its rank
from what ``run`` returned. Both launch paths: ``run`` starting the workers (``devices="cpu:0-1"``)
and torchrun. Each script runs in a real subprocess with 2 gloo workers and a timeout.

The failure this guards against (a second run reading the first group's addresses) came in 4 of 5
tries, so repeat: ``ICE_IGNITE_MULTI_RUN_REPEATS=10 pytest tests/distributed/test_multi_run.py``.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = Path(__file__).resolve().parents[1] / "multi_run_child.py"
REPEATS = int(os.environ.get("ICE_IGNITE_MULTI_RUN_REPEATS", "1"))
# One script takes 15-45 s on a loaded 2-core machine; the hang waited for gloo's 30-minute timeout.
TIMEOUT = 180
COMMANDS = {
    "run": [sys.executable, str(CHILD)],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(CHILD)],
}
LINE = re.compile(r"run (\d): pid \d+ rank (\d) of 2 main (True|False) idist rank \d dir (\S+)")


def check_three_runs(out: Path, stdout: str) -> None:
    seen = LINE.findall(stdout)
    # every process of every run knows its rank, and only rank 0 is the main one
    assert sorted((i, r, m) for i, r, m, _ in seen) == [
        (str(i), str(r), str(r == 0)) for i in range(3) for r in range(2)
    ], stdout
    dirs = [{d for j, _, _, d in seen if j == str(i)} for i in range(3)]
    assert dirs[0] == {"pretrain"} and dirs[2] == {"evaluate"}
    assert len(dirs[1]) == 1 and dirs[1] != {"pretrain"}  # run_id=None: a fresh directory, agreed by both ranks
    for i, names in enumerate(dirs):
        (name,) = names
        assert (out / f"export-{i}.txt").read_text().startswith(name)  # written once, by the main process
        assert (out / name / "run.lock").read_text() == ""  # released
    assert len(list((out / "pretrain" / "ckpts").glob("ckpt-*.pt"))) == 1


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT * REPEATS + 60)
@pytest.mark.parametrize("how", list(COMMANDS))
def test_three_runs_in_one_multi_process_script(tmp_path, how):
    times = []
    for attempt in range(REPEATS):
        out = tmp_path / f"try{attempt}"
        start = time.monotonic()
        proc = subprocess.run(COMMANDS[how] + [str(out)], capture_output=True, text=True, timeout=TIMEOUT)
        times.append(round(time.monotonic() - start, 1))
        assert proc.returncode == 0, f"try {attempt + 1} of {REPEATS}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        check_three_runs(out, proc.stdout)
    print(f"{how}: {REPEATS} scripts of 3 runs passed in {times} s")
