"""The release gate for a retrained decoder: does it beat the current generation on Kodak and urban20?

A retrained decoder becomes a new generation only if it beats the current one by at least 5% BD-rate
on Kodak **and** on urban20 (docs/training_on_a_gpu.md, "After"). This measures both,
side by side in one run, with real files (``bench.rd``, effort 0, qualities 1-8, PSNR on 8-bit RGB),
and prints the BD-rate of the candidate against the current generation on each set::

    python -m pillow_jac.training.gate runs/gpu/measure.safetensors

The exit status is 0 when every set clears the bar (``--bar``, percent) with curves that meet over at
least :data:`MIN_OVERLAP` of the current generation's PSNR span, 1 otherwise; ``gate.json`` under
``--out`` records the curves, the verdict and what was measured (:func:`measured_model`), and
``python -m pillow_jac.training.release`` releases only a model that a whole-set ``gate.json`` passed.
The current generation is measured again rather
than read from ``benchmarks/results``: those runs may be of other settings, and only figures of one
run on one machine compare. Each ``bench.rd`` run resumes from its cache under ``--out``, so an
interrupted gate continues where it stopped.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

#: how much smaller the candidate's files must be at equal PSNR, in percent of BD-rate, on every set
BAR_PERCENT = 5.0
#: the bar of an encoder update (same decoder, files of the same generation): smaller files on every set, by more
#: than the rounding of a curve's averages; ``gate --bar 0.5`` measures a tuned encoder for it
ENCODER_BAR_PERCENT = 0.5
#: the least share of the current generation's PSNR span that both curves must cover: BD-rate averages only over
#: the common range, so a candidate whose ladder moved could otherwise pass on a sliver at one end of it
MIN_OVERLAP = 0.5
QUALITIES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
SETS = {"kodak": Path("../shared/data/kodak"), "urban20": Path("../shared/data/urban20")}


def curve(results: dict[str, Any]) -> tuple[list[float], list[float]]:
    """``(bpp, psnr)`` of the ``jac`` codec's average curve in a ``bench.rd`` result."""
    points = results["codecs"]["jac"]["average"]
    return [p["bpp"] for p in points], [p["psnr"] for p in points]


def measured_model(tensors: dict, metadata: dict[str, str]) -> dict[str, str]:
    """What a gate verdict holds for: the candidate's decoder, whatever its release number, and its encoder.

    The decoder hash with the ``model_id`` left out (a candidate is frozen with ``--release 0`` to be gated,
    then again with its release number to be released) and the encoder hash (weights_hashes.py, SPEC.md 9.3).
    """
    from ..weights_hashes import decoder_hash, encoder_hash

    return {
        "decoder": decoder_hash(tensors, {**metadata, "model_id": ""}),
        "encoder": encoder_hash(tensors, metadata),
    }


def clears(bd_rate_percent: float, bar: float) -> bool:
    """Whether a BD-rate (percent, negative: smaller files) clears a bar of ``bar`` percent; NaN never does."""
    return math.isfinite(bd_rate_percent) and bd_rate_percent <= -bar


def overlap(stable_psnr: list[float], candidate_psnr: list[float]) -> float:
    """The share of the stable curve's PSNR span that the candidate's curve covers too (0 where they do not meet).

    Example:
        >>> overlap([28.0, 33.0, 38.0], [30.0, 35.0, 40.0])
        0.8
        >>> overlap([28.0, 38.0], [37.8, 46.0]) < MIN_OVERLAP
        True
    """
    low, high = max(min(stable_psnr), min(candidate_psnr)), min(max(stable_psnr), max(candidate_psnr))
    span = max(stable_psnr) - min(stable_psnr)
    return max(0.0, high - low) / span if span > 0 else 0.0


def shortfall(bd_rate_percent: float, share: float, bar: float) -> str | None:
    """Why one set's curves do not pass a bar of ``bar`` percent, or None where they pass.

    A set passes where its BD-rate clears the bar (:func:`clears`) and the two curves meet over at least
    :data:`MIN_OVERLAP` of the current generation's PSNR span (:func:`overlap`): a BD-rate averaged over
    a sliver of the span says nothing of the curve.

    Example:
        >>> shortfall(-6.0, 0.8, 5.0) is None
        True
        >>> shortfall(-6.0, 0.2, 5.0)[:29]
        'the curves meet over 20% of t'
        >>> shortfall(-4.0, 0.8, 5.0)
        '-4.00% BD-rate is not past -5%'
    """
    if not clears(bd_rate_percent, bar):
        return f"{bd_rate_percent:+.2f}% BD-rate is not past -{bar:g}%"
    if share < MIN_OVERLAP:
        return (
            f"the curves meet over {share:.0%} of the current generation's PSNR span, under the "
            f"{MIN_OVERLAP:.0%} a BD-rate must average over"
        )
    return None


def check_verdict(
    verdict: dict[str, Any], model: dict[str, str], stable: dict[str, str] | None, bar: float = BAR_PERCENT
) -> None:
    """Raise ValueError unless ``verdict`` (a ``gate.json``) passed the release bar for ``model``.

    Both :func:`measured_model` forms: ``model`` of the weights being released and ``stable`` of the
    generation they follow (or whose encoder they replace). The verdict must be of whole sets (no
    ``--limit``), of the evaluation sets :data:`SETS` at every quality of :data:`QUALITIES`, against that
    very generation, with a bar at least ``bar`` (:data:`BAR_PERCENT` for a new generation,
    :data:`ENCODER_BAR_PERCENT` for an encoder update), and each set's BD-rate, computed again from the
    curves it records, must clear that bar: a ``gate.json`` of another bar, other folders, fewer qualities
    or an older stable generation says nothing about this release.
    """
    from ..bench.metrics import bd_rate, portable_path

    if not verdict.get("passes"):
        raise ValueError("the gate did not pass: a new generation must beat the current one on every set")
    if verdict.get("limit") is not None:
        raise ValueError(f"the gate measured {verdict['limit']} image(s) a set (--limit): run it on the whole sets")
    if verdict.get("model") != model:
        raise ValueError("the gate measured another model than this one: gate the weights being released")
    if verdict.get("stable_model") != stable:
        raise ValueError("the gate measured against another generation than the current one: gate it again")
    measured_bar = verdict.get("bar_percent")
    if not isinstance(measured_bar, (int, float)) or not measured_bar >= bar:
        raise ValueError(f"the gate's bar was {measured_bar}%: this release needs at least {bar:g}% on every set")
    if verdict.get("qualities") != list(QUALITIES):
        raise ValueError(f"the gate measured qualities {verdict.get('qualities')}: a release needs all of 1-8")
    sets = verdict.get("sets") or {}
    if set(sets) != set(SETS):
        raise ValueError(f"the gate measured the sets {sorted(sets)}: a release needs {sorted(SETS)}")
    for name, measured in sets.items():
        if measured.get("data") != portable_path(SETS[name]):
            raise ValueError(f"the gate's {name} was {measured.get('data')}, not {portable_path(SETS[name])}")
        curves = measured.get("curves", {})
        try:
            bd = bd_rate(*(curves[w][k] for w in ("stable", "candidate") for k in ("bpp", "psnr")))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the gate's {name} curves are missing or unreadable") from None
        reason = shortfall(bd, overlap(curves["stable"]["psnr"], curves["candidate"]["psnr"]), bar)
        if reason is not None:
            raise ValueError(f"the gate's {name} set does not pass: {reason}")


def gate(
    candidate: Path,
    stable: Path,
    sets: dict[str, Path],
    out: Path,
    *,
    qualities=QUALITIES,
    bar: float = BAR_PERCENT,
    limit: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Measure ``stable`` and ``candidate`` on each set; return the verdict (also written to ``out/gate.json``).

    Raises:
        ValueError: ``sets`` is empty (a verdict on no set would pass).
    """
    from .. import files
    from ..bench import metrics, rd
    from ..weights import load_weights

    if not sets:
        raise ValueError("the gate needs at least one set to measure")

    verdict: dict[str, Any] = {
        "candidate": metrics.portable_path(candidate),
        "model": measured_model(*load_weights(candidate)),
        "stable": metrics.portable_path(stable),
        "stable_model": measured_model(*load_weights(stable)),
        "bar_percent": bar,
        "qualities": list(qualities),
        "limit": limit,
        "sets": {},
    }
    for name, data in sets.items():
        curves = {}
        for which, weights in (("stable", stable), ("candidate", candidate)):
            log(f"{name}: measuring the {which} weights")
            results = rd.run(
                data, out / name / which, codec_names=["jac"], limit=limit, jac_qualities=list(qualities),
                jac_weights=str(weights), published=[], with_ms_ssim=False, resume=True,
            )  # fmt: skip
            curves[which] = curve(results)
        bd = metrics.bd_rate(*curves["stable"], *curves["candidate"])
        share = overlap(curves["stable"][1], curves["candidate"][1])
        verdict["sets"][name] = {
            "data": metrics.portable_path(data),
            "images": results["meta"]["images"],
            "bd_rate_percent": bd,
            "overlap": share,
            "passes": shortfall(bd, share, bar) is None,
            "curves": {which: {"bpp": c[0], "psnr": c[1]} for which, c in curves.items()},
        }
    verdict["passes"] = all(s["passes"] for s in verdict["sets"].values())
    out.mkdir(parents=True, exist_ok=True)
    text = (metrics.json_text(verdict) + "\n").encode()
    files.write_atomic(out / "gate.json", lambda f: f.write(text))
    return verdict


def main(argv: list[str] | None = None) -> int:
    """``python -m pillow_jac.training.gate CANDIDATE``: 0 when it clears the bar on every set, else 1."""
    from .. import generations

    p = argparse.ArgumentParser(prog="python -m pillow_jac.training.gate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "candidate", type=Path,
        help="the retrained model's frozen weights (freeze --release 0), or a tuned encoder's full file "
        "(encoder_tune's best.safetensors, with --bar 0.5)",
    )  # fmt: skip
    p.add_argument("--stable", type=Path, help="the weights to beat (default: the installed newest generation)")
    p.add_argument("--kodak", type=Path, default=SETS["kodak"])
    p.add_argument("--urban", type=Path, default=SETS["urban20"])
    p.add_argument("--out", type=Path, default=Path("runs/gate"))
    p.add_argument("--bar", type=float, default=BAR_PERCENT, help="percent of BD-rate to gain on every set")
    p.add_argument("--qualities", default=",".join(f"{q:g}" for q in QUALITIES))
    p.add_argument("--limit", type=int, help="the first N images of each set only (a quick look, not a verdict)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    stable = args.stable or generations.encoder(None).path
    qualities = [float(q) for q in args.qualities.split(",")]
    verdict = gate(
        args.candidate, stable, {"kodak": args.kodak, "urban20": args.urban}, args.out,
        qualities=qualities, bar=args.bar, limit=args.limit,
    )  # fmt: skip
    for name, s in verdict["sets"].items():
        mark = "passes" if s["passes"] else "fails"
        print(f"{name} ({s['images']} images): BD-rate {s['bd_rate_percent']:+.2f}% against the stable weights: {mark}")
        reason = shortfall(s["bd_rate_percent"], s["overlap"], args.bar)
        if reason is not None:
            print(f"  {reason}")
    if args.limit:
        print(f"a quick look at {args.limit} image(s) a set (--limit): no verdict; run it without --limit")
        return 1
    print(f"bar: at most -{args.bar:g}% on every set; {'release it' if verdict['passes'] else 'do not release'}")
    return 0 if verdict["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
