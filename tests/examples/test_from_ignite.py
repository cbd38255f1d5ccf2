"""examples/from_ignite_plain.py (a typical ignite script) and examples/from_ignite.py (its port) give
the same results: printed metrics, checkpoint files, board."""

import pytest
import torch
from gallery_run import finish, plot_board, start


def test_the_port_prints_saves_and_logs_what_the_ignite_script_does(tmp_path):
    # lr 0.02 and patience 1: validation accuracy stalls at epoch 4, EarlyStopping ends both before epoch 6
    settings = ["max_epochs=6", "patience=1", "lr=0.02", "warmup=10", "log_every=15", f"out_dir={tmp_path}"]
    procs = {name: start(name, *settings, f"run_id={name}") for name in ("from_ignite_plain", "from_ignite")}
    lines = {name: finish(proc) for name, proc in procs.items()}
    plain, port = lines["from_ignite_plain"], lines["from_ignite"]

    assert plain[-1] == f"run directory: {tmp_path / 'from_ignite_plain'}"
    assert port[-1] == f"run directory: {tmp_path / 'from_ignite'}"
    assert port[:-1] == plain[:-1]  # every loss and metric value, as printed with 6 decimals
    assert "trained 4 epochs, 180 iterations" in plain  # stopped early, after 4 of 6 epochs
    assert sum("validation accuracy" in line for line in plain) == 4

    models = {name: sorted((tmp_path / name / "models").iterdir()) for name in lines}
    assert [p.name for p in models["from_ignite"]] == [p.name for p in models["from_ignite_plain"]]
    assert len(models["from_ignite"]) == 2  # ModelCheckpoint's n_saved
    for ours, theirs in zip(models["from_ignite"], models["from_ignite_plain"]):
        a, b = torch.load(ours, weights_only=True), torch.load(theirs, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), ours.name

    boards = {name: plot_board.read_scalars(tmp_path / name / "tb") for name in lines}
    ours, theirs = boards["from_ignite"], boards["from_ignite_plain"]
    assert sorted(ours) == sorted(theirs) == ["lr/group_0", "training/loss", "validation/accuracy", "validation/loss"]
    for tag in theirs:  # the same steps, the same values (float32 on the board)
        assert ours[tag] == theirs[tag], tag
    assert [s for s, _ in theirs["validation/accuracy"]] == [1, 2, 3, 4]  # epochs: global_step_from_engine
    assert [s for s, _ in theirs["lr/group_0"]] == list(range(1, 181))
    lrs = [v for _, v in theirs["lr/group_0"]]
    assert lrs[0] == 0.0 and lrs[:10] == sorted(lrs[:10]) and max(lrs) == pytest.approx(0.02)  # warm-up in 10
    assert lrs[10:] == sorted(lrs[10:], reverse=True)  # then the cosine
