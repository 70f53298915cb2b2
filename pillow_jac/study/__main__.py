"""``python -m pillow_jac.study``: train, measure and report every variant of the study (docs/study.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..training.data import list_images, load_rgb
from .variants import BUDGET, VARIANTS, run_name

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def planned_runs(only: list[str] | None = None) -> list[tuple]:
    """``(variant, seed)`` in training order: every variant's first seed, then the second seeds."""
    chosen = [v for v in VARIANTS.values() if not only or v.name in only]
    seeds = sorted({s for v in chosen for s in v.seeds})
    return [(v, s) for s in seeds for v in chosen if s in v.seeds]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m pillow_jac.study", description=__doc__)
    p.add_argument("phase", nargs="?", default="all", choices=("train", "all"))
    p.add_argument("--data", type=Path, default=SHARED / "train", help="training images (never an evaluation set)")
    p.add_argument("--runs", type=Path, default=Path("runs/study"), help="where the runs' checkpoints go")
    p.add_argument("--only", nargs="*", help="variants to run (default: all)")
    args = p.parse_args(argv)
    from .train import train_run

    runs = planned_runs(args.only)
    _log(f"{len(runs)} runs; budget {BUDGET.to_dict()}")
    images = [load_rgb(path, 512) for path in list_images(args.data)]
    _log(f"{len(images)} training images loaded")
    for variant, seed in runs:
        name = run_name(variant, seed)
        path, seconds = train_run(variant, seed, BUDGET, images, args.runs / name, log=_log)
        _log(f"{name}: trained in {seconds / 60:.1f} min -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
