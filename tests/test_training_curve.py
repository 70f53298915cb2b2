"""The training-curve reader and plot (model card figure)."""

from __future__ import annotations

import io

import pytest

from pillow_jac.training import curve


def test_resumed_steps_keep_the_later_row():
    text = "step,wall_s,lr,loss,bpp,psnr\n50,1,3e-4,5,1,28\n100,2,3e-4,6,1,27\n100,1,1e-4,4,1,29\n150,2,1e-4,3,1,30\n"
    rows = curve.read_log(io.StringIO(text))
    assert [r["step"] for r in rows] == [50, 100, 150]
    assert rows[1]["loss"] == 4 and rows[1]["lr"] == 1e-4


def test_eval_rows_and_moving_average():
    rows = curve.read_eval(io.StringIO("3000,q1_bpp=0.27,q1_psnr=26.8\n\n6000,q1_bpp=0.25,q1_psnr=27.1\n"))
    assert rows == [{"step": 3000, "q1_bpp": 0.27, "q1_psnr": 26.8}, {"step": 6000, "q1_bpp": 0.25, "q1_psnr": 27.1}]
    assert curve.moving_average([4.0, 2.0, 6.0, 0.0], 3) == [4.0, 3.0, 4.0, 8.0 / 3]


def test_plot_draws_the_loss_psnr_and_evaluations(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = "step,wall_s,lr,loss,bpp,psnr\n50,1,1e-4,5,1,28\n100,2,1e-4,4,1,29\n150,3,5e-5,3,1,31\n"
    (tmp_path / "log.csv").write_text(log)
    evals = "100,q1_bpp=0.3,q1_psnr=26,q4_bpp=0.7,q4_psnr=30,q8_bpp=1.6,q8_psnr=33\n150,q1_bpp=0.3,q1_psnr=27\n"
    (tmp_path / "eval.csv").write_text(evals)
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    try:
        curve.main([str(tmp_path), "--out", str(tmp_path / "curve.png"), "--window", "1"])
    finally:
        for figure in figures:
            close(figure)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = figures
    lines = {
        axis.get_ylabel(): [(list(line.get_xdata()), list(line.get_ydata())) for line in axis.lines]
        for axis in figure.axes
    }
    steps = [50, 100, 150]
    assert lines["lambda 255^2 MSE + bpp"] == [(steps, [5.0, 4.0, 3.0])]  # --window 1: the logged values
    assert lines["learning rate"] == [(steps, [1e-4, 1e-4, 5e-5])]
    assert lines["training PSNR (dB), qualities mixed"] == [(steps, [28.0, 29.0, 31.0])]
    assert lines["Kodak PSNR (dB), real bitstreams"] == [
        ([100, 150], [26.0, 27.0]), ([100], [30.0]), ([100], [33.0])
    ]  # fmt: skip
