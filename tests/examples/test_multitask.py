"""examples/multitask.py in its tiny setting: both heads train in turn, each task's metrics on the board;
examples/plot_board.py draws them."""

import pytest
from gallery_run import number_after, plot_board, run_example


def test_multitask_alternates_the_two_tasks_and_puts_each_tasks_metrics_on_the_board(tmp_path):
    lines = run_example("multitask", "rounds=2", "switches=2", "steps=5", f"out_dir={tmp_path}", "run_id=mt")
    rounds = [line for line in lines if line.startswith("step ")]
    assert [number_after(line, "step") for line in rounds] == [20, 40]  # 2 x (5 cls + 5 rec) steps a round
    assert lines[-1].startswith("validation: accuracy ") and lines[-1].endswith(str(tmp_path / "mt"))
    assert number_after(lines[-1], "accuracy") == number_after(rounds[-1], "val accuracy")
    assert number_after(lines[-1], "(MSE)") == number_after(rounds[-1], "(MSE)")

    board = plot_board.read_scalars(tmp_path / "mt")
    # the train tasks' epoch values: "cls" steps 1-5, 11-15, ... and "rec" steps 6-10, 16-20, ...
    assert [s for s, _ in board["cls/ce"]] == [5, 15, 25, 35]
    assert [s for s, _ in board["rec/mse"]] == [10, 20, 30, 40]
    for tag in ("cls_val/acc", "cls_val/ce", "rec_val/mse"):  # the validations, each in its own task
        assert [s for s, _ in board[tag]] == [20, 40], tag
    assert board["cls_val/acc"][-1][1] == pytest.approx(number_after(rounds[-1], "val accuracy"), abs=5e-5)

    png = plot_board.plot_board({"multitask": tmp_path / "mt"}, ["*/ce", "rec*/mse"], tmp_path / "curves.png")
    assert png.stat().st_size > 0
    with pytest.raises(KeyError, match="'val/acc' is not on the board .* its tags: .*cls_val/acc"):
        plot_board.plot_board({"multitask": tmp_path / "mt"}, ["val/acc"], tmp_path / "no.png")
