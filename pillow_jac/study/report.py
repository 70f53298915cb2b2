"""Summarise the study's measured runs: ``benchmarks/results/study.{json,md,png}`` (docs/study.md).

Every comparison is a Bjøntegaard delta rate (:func:`pillow_jac.bench.metrics.bd_rate`, PCHIP over
the PSNR range both curves cover) of curves averaged over a set's images. Against the joint model,
each seed of a variant is compared with the joint model of the same seed; the spread between the
joint model's own two seeds is the noise floor of the study.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.metrics import bd_quality, bd_rate, json_text
from .variants import BUDGET, VARIANTS, Budget, Variant, run_name

__all__ = ["mean_curve", "summarise", "write_report", "budget_paths", "MissingRunsError"]

ANCHORS = ("jpeg420", "webp")
SETS = ("kodak", "urban20")


#: the key of timings.json that holds each variant's seconds per training step (study.train.step_seconds)
TRAIN_STEP_KEY = "train_step_s"


def mean_curve(per_image: dict[str, list[dict]]) -> list[dict[str, float]]:
    """The per-image points averaged parameter by parameter (bpp, PSNR and the z/y rates), sorted by bpp."""
    by_param: dict[float, list[dict]] = {}
    for points in per_image.values():
        for point in points:
            by_param.setdefault(float(point["param"]), []).append(point)
    keys = [k for k in ("bpp", "psnr", "z_bpp", "y_bpp") if k in next(iter(by_param.values()))[0]]
    curve = [{"param": p, **{k: float(np.mean([q[k] for q in pts])) for k in keys}} for p, pts in by_param.items()]
    return sorted(curve, key=lambda point: point["bpp"])


def _bd_psnr(anchor: list[dict], test: list[dict]) -> float:
    """BD-PSNR, dB: the test curve's PSNR minus the anchor's at equal rate, over the rates both cover."""
    return bd_quality(
        [p["bpp"] for p in anchor], [p["psnr"] for p in anchor], [p["bpp"] for p in test], [p["psnr"] for p in test]
    )


def _bd(anchor: list[dict], test: list[dict]) -> float:
    return bd_rate(
        [p["bpp"] for p in anchor], [p["psnr"] for p in anchor], [p["bpp"] for p in test], [p["psnr"] for p in test]
    )


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean, lowest and highest of the finite values, and ``n``, how many there are.

    A seed without its pair is NaN and left out.
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "n": 0, "values": values}
    return {"mean": float(np.mean(finite)), "min": min(finite), "max": max(finite), "n": len(finite), "values": values}


#: the fewest variants with two seeds that the seed noise is pooled over: fewer give no rule
MIN_POOLED_VARIANTS = 5
#: Student's t at 97.5% by degrees of freedom (the variants pooled), for a two-sided 95% threshold
_T_975 = {5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _seed_spread(curves: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, float]]:
    """Per set, the seed noise pooled over every variant with two seeds (not the joint model's pair alone).

    ``rms``: the root mean square of each variant's seed 1 against its seed 0 (BD-rate, points); a comparison
    of one seed with another model's same seed varies as much. ``two_seed_se``: ``rms / sqrt 2``, the
    standard error of a mean over two seeds of such comparisons; ``threshold``: Student's t at 97.5% for as
    many degrees of freedom as variants pooled, times ``two_seed_se``. A difference is read as one only where
    both seeds have the sign of their mean and the mean exceeds ``threshold`` (docs/study.md). Fewer than
    :data:`MIN_POOLED_VARIANTS` variants give no rule: the root mean square of two pairs can be off severalfold.
    """
    spread = {}
    for set_name in SETS:
        pairs = [
            _bd(curves[f"{v.name}-s0"][set_name], curves[f"{v.name}-s1"][set_name])
            for v in VARIANTS.values()
            if all(set_name in curves.get(f"{v.name}-s{s}", {}) for s in (0, 1))
        ]
        pairs = [d for d in pairs if math.isfinite(d)]
        if len(pairs) >= MIN_POOLED_VARIANTS:
            rms = float(np.sqrt(np.mean(np.square(pairs))))
            se = rms / math.sqrt(2)
            t = _T_975[min(len(pairs), max(_T_975))]
            spread[set_name] = {"rms": rms, "two_seed_se": se, "threshold": t * se, "variants": len(pairs)}
    return spread


class MissingRunsError(ValueError):
    """Not every planned run is measured at the budget.

    A report would show what it has: no noise floor, or variants with a seed missing.
    """


def budget_paths(results: Path, budget: Budget) -> tuple[Path, str]:
    """Where a budget's measured runs go, and the stem of its report files.

    The study's own budget (:data:`~pillow_jac.study.variants.BUDGET`) keeps ``study/measured`` and
    ``study.{json,md,png}``; another keeps ``study/measured-<steps>`` and ``study-<steps>.*``, so that the
    results of both budgets stay side by side.

    Example:
        >>> budget_paths(Path("r"), BUDGET)[1], budget_paths(Path("r"), Budget(steps=8000))[1]
        ('study', 'study-8000')
    """
    if budget.to_dict() == BUDGET.to_dict():
        return results / "study" / "measured", "study"
    return results / "study" / f"measured-{budget.steps}", f"study-{budget.steps}"


def summarise(
    runs: dict[str, dict], anchors: dict[str, dict], timings: dict[str, dict], budget: Budget = BUDGET
) -> dict[str, Any]:
    """Per variant and set: BD-rates (against the joint model, JPEG and WebP), z share, cost and times."""
    from ..model.mbt2018 import ModelConfig  # here: the study's other commands start without torch
    from .evaluate import model_cost

    curves = {name: {s: mean_curve(r["sets"][s]["per_image"]) for s in r["sets"]} for name, r in runs.items()}
    anchor_curves = {s: {c: mean_curve(v[c]["per_image"]) for c in ANCHORS if c in v} for s, v in anchors.items()}
    out: dict[str, Any] = {"budget": budget.to_dict(), "variants": {}, "noise": {}}
    out["float32_runs"] = sorted(name for name, r in runs.items() if r.get("precision", "bf16") != "bf16")
    for set_name in SETS:  # the joint model's seed-to-seed difference: the noise floor
        pair = [curves.get(f"joint-s{s}", {}).get(set_name) for s in (0, 1)]
        if all(pair):
            out["noise"][set_name] = _bd(pair[0], pair[1])
            out["noise_psnr"] = {**out.get("noise_psnr", {}), set_name: _bd_psnr(pair[0], pair[1])}
    out["seed_spread"] = _seed_spread(curves)
    for variant in VARIANTS.values():
        seeds = [s for s in variant.seeds if run_name(variant, s) in runs]
        if not seeds:
            continue
        first = runs[run_name(variant, seeds[0])]
        row: dict[str, Any] = {
            "label": variant.label,
            "question": variant.question,
            "seeds": seeds,
            "config": first["config"],
            "cost": model_cost(ModelConfig(**first["config"])),  # from the architecture, as counted now
            "timing": timings.get(variant.name),
            "train_step_s": timings.get(TRAIN_STEP_KEY, {}).get(variant.name),
            "sets": {},
        }
        for set_name in SETS:
            mine = {s: curves[run_name(variant, s)].get(set_name) for s in seeds}
            if not all(mine.values()):
                continue
            entry: dict[str, Any] = {"curve": {s: mine[s] for s in seeds}}
            if variant.name != "joint":
                against, against_psnr = [], []
                for s in seeds:  # the same seed's joint model only: another seed's would add the seed spread
                    joint = curves.get(f"joint-s{s}", {}).get(set_name)
                    against.append(_bd(joint, mine[s]) if joint else math.nan)
                    against_psnr.append(_bd_psnr(joint, mine[s]) if joint else math.nan)
                entry["bd_vs_joint"] = _spread(against)
                entry["bd_psnr_vs_joint"] = _spread(against_psnr)
            for codec in anchor_curves.get(set_name, {}):
                entry[f"bd_vs_{codec}"] = _spread([_bd(anchor_curves[set_name][codec], mine[s]) for s in seeds])
            shares = {}
            for point_index, level in enumerate(("low", "middle", "high")):
                values = []
                for s in seeds:
                    points = sorted(mine[s], key=lambda p: p["param"])
                    if point_index < len(points) and "z_bpp" in points[point_index]:
                        point = points[point_index]
                        values.append(100.0 * point["z_bpp"] / point["bpp"])
                if values:
                    shares[level] = _spread(values)
            entry["z_share_percent"] = shares
            row["sets"][set_name] = entry
        out["variants"][variant.name] = row
    out["anchors"] = {
        s: {c: {"label": anchors[s][c]["label"], "curve": v} for c, v in cs.items()} for s, cs in anchor_curves.items()
    }
    return out


def _signed(spread: dict | None, digits: int, unit: str = "") -> str:
    """``+1.2%`` for one value, ``+1.2% (+0.5 to +1.9)`` for several, ``n/a`` for none."""
    if not spread or not math.isfinite(spread.get("mean", math.nan)):
        return "n/a"
    text = f"{spread['mean']:+.{digits}f}{unit}"
    if spread.get("n", len(spread["values"])) > 1:
        text += f" ({spread['min']:+.{digits}f} to {spread['max']:+.{digits}f})"
    if spread.get("n", len(spread["values"])) < len(spread["values"]):
        text += f" [{spread['n']} of {len(spread['values'])} seeds]"
    return text


def _pct(spread: dict | None) -> str:
    return _signed(spread, 1, "%")


def _db(spread: dict | None) -> str:
    return _signed(spread, 2)


def _share(spread: dict | None) -> str:
    return "n/a" if not spread else f"{spread['mean']:.1f}%"


def _float32_note(summary: dict[str, Any]) -> str:
    """Which runs trained in float32, all or in part (on a CPU without native bf16, where it is faster), if any."""
    runs = summary.get("float32_runs")
    return f" (float32 for all or part of {', '.join(runs)}: a CPU without native bf16)" if runs else ""


def markdown(summary: dict[str, Any]) -> str:
    """The tables of ``study.md``."""
    budget = summary["budget"]
    lines = [
        "# The study: ablations of the mbt2018 model at an equal budget",
        "",
        f"Every variant trained from scratch: {budget['steps']} steps of {budget['batch']} crops of "
        f"{budget['crop']}x{budget['crop']} from `../shared/data/train`, Adam at {budget['lr']:g} after "
        f"{budget['warmup']} warm-up steps, one variable-rate model over the lambda ladder "
        f"{', '.join(f'{v:g}' for v in budget['lambdas'])} (one quality per crop), weight average "
        f"{budget['ema']:g}, bf16 autocast on a CPU{_float32_note(summary)}. "
        "Measured with real files at qualities "
        f"{', '.join(f'{q:g}' for q in budget['qualities'])}. Written by `python -m pillow_jac.study`; "
        "read with docs/study.md. BD-rate: negative is fewer bits at equal PSNR, over the PSNR range both "
        "curves cover; BD-PSNR: positive is more dB at equal rate, over the rates both cover (n/a: no "
        "overlap). Two seeds are shown as mean (lowest to highest); each seed is compared with the joint "
        "model of the same seed only.",
        "",
    ]
    if summary.get("missing_runs"):
        lines += [f"Partial: not measured at this budget: {', '.join(summary['missing_runs'])}.", ""]
    for set_name in SETS:
        noise = summary["noise"].get(set_name)
        lines += [f"## {set_name}", ""]
        if noise is not None:
            lines += [
                f"Noise floor: the joint model's seed 1 against its seed 0 is {noise:+.1f}% BD-rate, "
                f"{summary['noise_psnr'][set_name]:+.2f} dB BD-PSNR.",
                "",
            ]
        pooled = summary.get("seed_spread", {}).get(set_name)
        if pooled:
            lines += [
                f"Seed spread pooled over the {pooled['variants']} variants with two seeds: seed 1 against "
                f"seed 0 is {pooled['rms']:.1f} points BD-rate (root mean square); a two-seed mean comparison "
                f"has a standard error of about {pooled['two_seed_se']:.1f} points, so a difference is read as "
                f"one where both seeds have the sign of the mean and the mean exceeds {pooled['threshold']:.1f} "
                "points (Student's t at 97.5%).",
                "",
            ]
        lines += [
            "| variant | seeds | BD-rate vs joint | BD-PSNR vs joint (dB) | BD vs JPEG 4:2:0 | BD vs WebP "
            "| z share low / mid / high |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in summary["variants"].items():
            entry = row["sets"].get(set_name)
            if not entry:
                continue
            shares = entry["z_share_percent"]
            against_joint = _pct(entry.get("bd_vs_joint")) if name != "joint" else "0 (anchor)"
            psnr_joint = _db(entry.get("bd_psnr_vs_joint")) if name != "joint" else "0 (anchor)"
            lines.append(
                f"| {row['label']} | {len(row['seeds'])} | {against_joint} | {psnr_joint} "
                f"| {_pct(entry.get('bd_vs_jpeg420'))} | {_pct(entry.get('bd_vs_webp'))} "
                f"| {' / '.join(_share(shares.get(level)) for level in ('low', 'middle', 'high'))} |"
            )
        lines.append("")
        lines += [
            "Operating points (mean over the images; first seed): bpp / PSNR dB at each measured quality.",
            "",
            "| variant | " + " | ".join(f"q{q:g}" for q in budget["qualities"]) + " |",
            "|---|" + "---|" * len(budget["qualities"]),
        ]
        for row in summary["variants"].values():
            entry = row["sets"].get(set_name)
            if entry:
                curve = sorted(entry["curve"][row["seeds"][0]], key=lambda p: p["param"])
                lines.append(
                    f"| {row['label']} | " + " | ".join(f"{p['bpp']:.3f} / {p['psnr']:.2f}" for p in curve) + " |"
                )
        lines.append("")
    lines += [
        "## Cost",
        "",
        "Parameters and multiply-adds per input pixel (convolutions and GDN; the context model at its causal "
        "taps only, as the decoder runs it); "
        "encode and decode of kodim23 (768x512) at quality 4 with 2 threads, median of 3, on an idle machine; "
        "seconds per training step (a batch of the budget's crops, its precision) timed side by side, all "
        "variants in turn, on one machine (`python -m pillow_jac.study time`).",
        "",
        "| variant | parameters | encoder MACs/px | decoder MACs/px | encode s | decode s | train s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["variants"].values():
        cost, timing = row["cost"], row.get("timing") or {}
        lines.append(
            f"| {row['label']} | {cost['parameters'] / 1e6:.2f} M | {cost['encoder_macs_per_pixel'] / 1e3:.1f} k "
            f"| {cost['decoder_macs_per_pixel'] / 1e3:.1f} k | {timing.get('encode_s', math.nan):.2f} "
            f"| {timing.get('decode_s', math.nan):.2f} | {row.get('train_step_s') or math.nan:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(path: Path, summary: dict[str, Any]) -> bool:
    """RD curves of every variant's first seed and the anchors, one panel per set."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(SETS), figsize=(14, 6))
    colors = plt.get_cmap("tab10").colors
    for ax, set_name in zip(axes, SETS, strict=True):
        for i, (name, row) in enumerate(summary["variants"].items()):
            entry = row["sets"].get(set_name)
            if not entry:
                continue
            for seed, curve in entry["curve"].items():
                style = {"color": colors[i % 10], "marker": "o", "linewidth": 2.2 if name == "joint" else 1.3}
                label = row["label"] if seed == row["seeds"][0] else None
                ax.plot(
                    [p["bpp"] for p in curve],
                    [p["psnr"] for p in curve],
                    label=label,
                    alpha=1.0 if seed == row["seeds"][0] else 0.4,
                    **style,
                )
        for j, anchor in enumerate(summary["anchors"].get(set_name, {}).values()):
            curve = [p for p in anchor["curve"] if p["bpp"] <= 2.0]
            ax.plot(
                [p["bpp"] for p in curve],
                [p["psnr"] for p in curve],
                "--",
                color=("gray", "black")[j % 2],
                label=anchor["label"],
            )
        ax.set_title(set_name)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR RGB (dB)")
        ax.set_xlim(0, 2.0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def measurement(path: Path, variant: Variant, budget: Budget) -> dict[str, Any] | None:
    """The run measured in ``path`` if it is of ``variant``'s model at ``budget``, else None (measured again).

    A run measured at another budget, or with another configuration than the variant now has (a variant whose
    context window or mixture changed under the same name), does not stand for it.
    """
    from ..model.mbt2018 import ModelConfig

    if not path.exists():
        return None
    run = json.loads(path.read_text())
    if run["budget"] != budget.to_dict():
        return None
    stored, planned = ModelConfig(**run["config"]).to_dict(), variant.model_config(budget).to_dict()
    if json.dumps(stored, sort_keys=True) != json.dumps(planned, sort_keys=True):  # as JSON: a list is a tuple
        return None
    return run


def write_report(
    results: Path, runs: list[tuple[Variant, int]], budget: Budget = BUDGET, partial: bool = False
) -> dict[str, Any]:
    """Read the runs measured at ``budget`` and write the budget's report.

    The files are ``results/study.{json,md,png}`` for the study's own budget (:func:`budget_paths`).

    Raises:
        MissingRunsError: a planned run is not measured at ``budget`` (unless ``partial``).
    """
    folder = results / "study"
    measured_dir, stem = budget_paths(results, budget)
    measured = {}
    for variant, seed in runs:
        if (run := measurement(measured_dir / f"{run_name(variant, seed)}.json", variant, budget)) is not None:
            measured[run_name(variant, seed)] = run
    missing = [run_name(v, s) for v, s in runs if run_name(v, s) not in measured]
    if missing and not partial:
        raise MissingRunsError(
            f"{len(missing)} of {len(runs)} planned runs are not measured at {budget.steps} steps "
            f"({', '.join(missing)}): measure them first, or report with --partial"
        )
    anchors = json.loads((folder / "anchors.json").read_text()) if (folder / "anchors.json").exists() else {}
    timings = json.loads((folder / "timings.json").read_text()) if (folder / "timings.json").exists() else {}
    summary = summarise(measured, anchors, timings, budget)
    summary["missing_runs"] = missing
    (results / f"{stem}.json").write_text(json_text(summary) + "\n")
    (results / f"{stem}.md").write_text(markdown(summary))
    plot(results / f"{stem}.png", summary)
    return summary
