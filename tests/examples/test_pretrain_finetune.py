"""examples/pretrain_finetune.py in its tiny setting: the encoder's weights load under their new name,
both classifiers are measured, each run has its directory."""

from gallery_run import number_after, run_example


def test_pretrain_finetune_loads_the_encoder_renamed_and_measures_both_classifiers(tmp_path):
    lines = run_example("pretrain_finetune", "pretrain_epochs=1", "epochs=2", f"out_dir={tmp_path}", "run_id=pf")
    assert 0 < number_after(next(line for line in lines if line.startswith("pretrain:")), "(MSE)") < 0.2
    (load,) = [line for line in lines if line.startswith("finetune: loaded")]
    assert load == (
        "finetune: loaded {'*/features': ['weights']} from ckpt-000000-E1S45.pt, renamed {'*/encoder': '*/features'}"
    )
    last = lines[-1]
    assert last.startswith("validation accuracy with 10% of the labels: pretrained ")
    pretrained, scratch = number_after(last, "pretrained"), number_after(last, "from scratch")
    assert 0 <= pretrained <= 1 and 0 <= scratch <= 1 and pretrained != scratch  # the loaded weights count
    for run in ("pretrain", "finetune", "scratch"):
        assert any((tmp_path / f"pf-{run}" / "logs").glob("events.out.tfevents.*")), run
