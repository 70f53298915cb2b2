"""``python -m pillow_jac.study``: train, measure and report every variant of the study (docs/study.md).

Phases: ``train`` trains the runs; ``measure`` also freezes and measures each trained run with real
files (and JPEG/WebP on the same images, once); ``time`` times each run's encode and decode at
768x512 (run it on an otherwise idle machine); ``report`` writes ``benchmarks/results/study.{json,md,png}``
from what has been measured (refusing while a planned run is not, unless ``--partial``); ``all`` (the
default) does train, measure and report. Every phase skips what is already done, so the study resumes
where it stopped. ``--steps`` other than the study's budget keeps its measurements and report apart
(``study/measured-<steps>/``, ``study-<steps>.*``), so those of the study's budget stay.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..bench.metrics import machine_description, portable_path
from ..files import write_atomic
from .report import TRAIN_STEP_KEY, MissingRunsError, budget_paths, measurement
from .variants import BUDGET, VARIANTS, run_name

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RESULTS = Path("benchmarks/results")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def planned_runs(only: list[str] | None = None, seeds: list[int] | None = None) -> list[tuple]:
    """``(variant, seed)`` in training order: every variant's first seed, then the second seeds.

    ``only`` keeps those variants and ``seeds`` those of their seeds (default: all of both).
    """
    chosen = [v for v in VARIANTS.values() if not only or v.name in only]
    planned = sorted({s for v in chosen for s in v.seeds if seeds is None or s in seeds})
    return [(v, s) for s in planned for v in chosen if s in v.seeds]


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(value, indent=1) + "\n").encode()
    write_atomic(path, lambda f: f.write(data))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m pillow_jac.study", description=__doc__.split("\n\n")[0])
    p.add_argument("phase", nargs="?", default="all", choices=("train", "measure", "time", "report", "all"))
    p.add_argument("--data", type=Path, default=SHARED / "train", help="training images (never an evaluation set)")
    p.add_argument("--kodak", type=Path, default=SHARED / "kodak")
    p.add_argument("--urban", type=Path, default=SHARED / "urban20")
    p.add_argument("--runs", type=Path, default=Path("runs/study"), help="where the runs' checkpoints go")
    p.add_argument("--results", type=Path, default=RESULTS, help="where study.{json,md,png} and study/ go")
    p.add_argument("--only", nargs="*", help="variants to run (default: all)")
    p.add_argument("--seeds", nargs="*", type=int, help="of their seeds, those to run (default: all)")
    p.add_argument("--steps", type=int, help=f"steps per run (default {BUDGET.steps}); more extends every run")
    p.add_argument("--partial", action="store_true", help="report although some planned runs are not measured")
    args = p.parse_args(argv)
    budget = dataclasses.replace(BUDGET, steps=args.steps) if args.steps else BUDGET
    unknown = sorted(set(args.only or ()) - set(VARIANTS))
    if unknown:
        p.error(f"--only {' '.join(unknown)}: no such variant (the study's: {', '.join(VARIANTS)})")
    runs = planned_runs(args.only, args.seeds)
    if args.seeds is not None and not runs:
        p.error(f"--seeds {' '.join(map(str, args.seeds))}: none of the chosen variants has such a seed")
    measured, _ = budget_paths(args.results, budget)
    if args.phase in ("train", "measure", "all"):
        from ..training.data import list_images, load_rgb
        from ..training.encoder_update import EVALUATION_FOLDERS, refuse_evaluation_data

        refuse_evaluation_data(p, args.data, (*EVALUATION_FOLDERS, args.kodak, args.urban))
        from .evaluate import evaluation_sets, freeze_run, measure_anchors, measure_images
        from .train import run_precision, train_run

        sets = evaluation_sets(args.kodak, args.urban)
        anchors_path = args.results / "study" / "anchors.json"
        if args.phase != "train" and not anchors_path.exists():
            _log("measuring JPEG and WebP on the evaluation sets")
            _write_json(anchors_path, {name: measure_anchors(paths) for name, paths in sets.items()})
        _log(f"{len(runs)} runs; budget {budget.to_dict()}")
        images = [load_rgb(path, 512) for path in list_images(args.data)]
        _log(f"{len(images)} training images loaded")
        for variant, seed in runs:
            name = run_name(variant, seed)
            if measurement(measured / f"{name}.json", variant, budget) is not None:
                continue  # done at this budget, although its checkpoint may have gone on to a larger one
            trained, seconds = train_run(variant, seed, budget, images, args.runs / name, log=_log)
            if args.phase == "train":
                continue
            _log(f"{name}: trained in {seconds / 60:.1f} min; measuring")
            weights = freeze_run(trained, args.runs / name / "model.safetensors")
            config = variant.model_config(budget)
            result = {
                "run": name,
                "variant": variant.name,
                "seed": seed,
                "config": config.to_dict(),
                "budget": budget.to_dict(),
                "train_seconds": round(seconds, 1),
                "precision": run_precision(args.runs / name),
                "sets": {
                    set_name: {
                        "data": portable_path(getattr(args, "kodak" if set_name == "kodak" else "urban")),
                        "per_image": measure_images(weights, paths, budget.qualities),
                    }
                    for set_name, paths in sets.items()
                },
            }
            _write_json(measured / f"{name}.json", result)
            _log(f"{name}: measured")
    if args.phase == "time":
        from ..bench.images import load_rgb
        from .evaluate import time_codec

        image = load_rgb(args.kodak / "kodim23.png")
        timings_path = args.results / "study" / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        for variant, seed in runs:
            name = run_name(variant, seed)
            weights = args.runs / name / "model.safetensors"
            if seed == variant.seeds[0] and weights.exists() and variant.name not in timings:
                timings[variant.name] = time_codec(weights, image)
                _log(f"{variant.name}: {timings[variant.name]}")
                _write_json(timings_path, timings)
        chosen = list({variant.name: variant for variant, _ in runs}.values())
        if any(v.name not in timings.get(TRAIN_STEP_KEY, {}) for v in chosen):  # side by side, all of them again
            from ..training.data import list_images
            from ..training.data import load_rgb as load_training
            from .train import step_seconds

            crops = [load_training(path, 512) for path in list_images(args.data)[:64]]
            timings[TRAIN_STEP_KEY] = step_seconds(chosen, budget, crops)
            timings[f"{TRAIN_STEP_KEY}_machine"] = machine_description()
            _log(f"seconds per training step: {timings[TRAIN_STEP_KEY]}")
            _write_json(timings_path, timings)
    if args.phase in ("report", "all"):
        from .report import write_report

        try:
            write_report(args.results, planned_runs(), budget, partial=args.partial)  # the whole study, --only or not
        except MissingRunsError as exc:
            p.exit(1, f"{p.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
