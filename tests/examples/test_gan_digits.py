"""examples/gan_digits.py in its tiny setting: the tasks alternate, the judge measures, the board has both losses."""

from gallery_run import number_after, plot_board, run_example


def test_gan_digits_trains_the_judge_then_alternates_d_and_g_and_reports_the_judges_accuracy(tmp_path):
    lines = run_example("gan_digits", "rounds=1", "steps=10", "clf_epochs=2", f"out_dir={tmp_path}", "run_id=gan")
    judge = next(line for line in lines if line.startswith("judge CNN: validation accuracy"))
    assert number_after(judge, "validation accuracy") >= 0.85  # the digits CNN after 2 epochs
    step = next(line for line in lines if line.startswith("step "))
    # 2 epochs of 45 CNN steps (1437 images, batches of 32), then 10 D steps and 10 G steps
    assert number_after(step, "step") == 2 * 45 + 20
    last = lines[-1]
    assert last.startswith("generated digits classified as their class: ") and last.endswith(str(tmp_path / "gan"))
    assert 0.0 <= number_after(last, "their class:") <= 1.0
    assert number_after(last, "judge CNN validation accuracy") == number_after(judge, "validation accuracy")

    board = plot_board.read_scalars(tmp_path / "gan")
    assert [s for s, _ in board["D/d_loss"]] == list(range(91, 110, 2))  # D steps: 91, 93, ..., 109
    assert [s for s, _ in board["G/g_loss"]] == list(range(92, 111, 2))
    assert [s for s, _ in board["judge/acc"]] == [110]
    assert (tmp_path / "gan" / "samples.png").stat().st_size > 0
    assert len(list((tmp_path / "gan" / "ckpts").glob("ckpt-*.pt"))) == 1
