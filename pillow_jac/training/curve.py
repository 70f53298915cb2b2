r"""Training curves from a run's ``log.csv`` and ``eval.csv`` (the model card's training record).

``python -m pillow_jac.training.curve runs/main --out benchmarks/results/training_curve.png`` plots
the training loss and PSNR (a moving average over the logged windows, against the global step,
with the learning rate), and the periodic Kodak evaluations (real bitstreams, qualities 1/4/8).

Example:
    >>> rows = read_log(io.StringIO("step,wall_s,lr,loss,bpp,psnr\n50,1,1e-4,5,1,28\n100,2,1e-4,4,1,29\n"))
    >>> [r["step"] for r in rows], moving_average([1.0, 2.0, 3.0], 2)
    ([50, 100], [1.0, 1.5, 2.5])
"""

from __future__ import annotations

import argparse
import csv
import io  # noqa: F401  (used by the doctest)
from pathlib import Path
from typing import IO

__all__ = ["read_log", "read_eval", "moving_average", "plot"]


def read_log(f: IO[str]) -> list[dict[str, float]]:
    """Rows of a ``log.csv``; when a resumed run logged a step again, the later row wins."""
    rows: dict[int, dict[str, float]] = {}
    for rec in csv.DictReader(f):
        row = {k: float(v) for k, v in rec.items()}
        row["step"] = int(row["step"])
        rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def read_eval(f: IO[str]) -> list[dict[str, float]]:
    """Rows of an ``eval.csv`` (``step,q1_bpp=...,q1_psnr=...,...``)."""
    out = []
    for line in f:
        fields = line.strip().split(",")
        if len(fields) < 2:
            continue
        row: dict[str, float] = {"step": int(fields[0])}
        row.update({k: float(v) for k, v in (item.split("=", 1) for item in fields[1:])})
        out.append(row)
    return out


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(run: Path, out: Path, window: int = 10) -> None:
    """Write the curve of ``run/log.csv`` (and ``run/eval.csv`` if present) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(run / "log.csv") as f:
        log = read_log(f)
    evals = []
    if (run / "eval.csv").exists():
        with open(run / "eval.csv") as f:
            evals = read_eval(f)
    steps = [r["step"] for r in log]
    fig, (ax_loss, ax_psnr, ax_eval) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(steps, moving_average([r["loss"] for r in log], window), label="loss (moving average)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("lambda 255^2 MSE + bpp")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(steps, [r["lr"] for r in log], color="gray", linestyle=":", label="learning rate")
    ax_lr.set_ylabel("learning rate")
    ax_psnr.plot(steps, moving_average([r["psnr"] for r in log], window))
    ax_psnr.set_xlabel("step")
    ax_psnr.set_ylabel("training PSNR (dB), qualities mixed")
    for q in (1, 4, 8):
        points = [(r["step"], r[f"q{q}_psnr"]) for r in evals if f"q{q}_psnr" in r]
        if points:
            ax_eval.plot(*zip(*points, strict=True), marker="o", label=f"quality {q}")
    ax_eval.set_xlabel("step")
    ax_eval.set_ylabel("Kodak PSNR (dB), real bitstreams")
    if evals:
        ax_eval.legend()
    fig.suptitle(f"training run {run}")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m pillow_jac.training.curve RUN_DIR --out PNG``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run folder with log.csv (and eval.csv)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--window", type=int, default=10, help="log rows per moving average")
    args = p.parse_args(argv)
    plot(args.run, args.out, args.window)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
