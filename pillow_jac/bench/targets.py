r"""Rate-target benchmark: how well and how cheaply ``target_size`` (and ``target_psnr``) hit their targets.

Usage (from the repository root)::

    python -m pillow_jac.bench.targets --data ../shared/data/kodak --limit 6 --psnr 30,34,38
    python -m pillow_jac.bench.targets --data ../shared/data/kodak --psnr 30,34,38 --out benchmarks/results

For every image of ``--data`` (the first ``--limit``) and every size target (default 10, 25, 50, 100
and 200 kB) it runs :func:`pillow_jac.targets.encode_to_target` and records the file size, the
quality found, the model estimates and real encodes the search used, and its time; each image also
gets one plain encode at quality 4, the time the searches are compared with. A *hit* is a file at
or below its target (the contract: every search that returns a file must hit; a target no quality meets
raises :class:`ValueError`, reported as *unreachable* and not counted as a search). The exit status is
1 when a completed search misses its target, else 0. The *shortfall* is how far below the
target the file is, as a percentage of the target; it is averaged over the searches that the
largest quality does not cap (a target above the quality-8 file can only fall short).

``--psnr`` adds PSNR targets (dB): a hit is a decoded PSNR at or above the target, and the
*overshoot* is how far above it is.

Writes ``targets.json`` and ``targets.md`` to ``--out`` (default ``bench_out/targets``; the second
command above writes the committed ``benchmarks/results/targets.*``). Inputs are named relative to the
repository (or by their folder's name), never by absolute path. The report's ``meta`` records the model
(:func:`pillow_jac.bench.metrics.model_record`) and the package versions, as ``bench.rd``'s does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import codec, codec_steps, targets
from ..constants import QUALITY_MAX
from . import log, metrics
from .images import ImageInputError, check_images, input_error, limit_argument, list_images, load_rgb
from .metrics import portable_path

__all__ = ["main", "run", "summarise", "markdown", "DEFAULT_SIZES"]

#: the size targets of the issue: five between 10 kB and 200 kB
DEFAULT_SIZES = (10_000, 25_000, 50_000, 100_000, 200_000)
#: plain encodes are timed at this quality
PLAIN_QUALITY = 4.0
#: where the reports go without ``--out`` (git-ignored; the committed ones are written by passing ``--out``)
DEFAULT_OUT = Path("bench_out/targets")


def run(
    data: Path, sizes: Sequence[int], psnrs: Sequence[float], limit: int | None = None, effort: int = 0
) -> list[dict[str, Any]]:
    """One row per (image, target): what the search found and what it cost."""
    rows: list[dict[str, Any]] = []
    paths = list_images(data, limit)
    check_images(paths)
    for path in paths:
        rgb = load_rgb(path)
        codec.encode(rgb[:64, :64], PLAIN_QUALITY)  # the model loaded and warm before anything is timed
        start = time.perf_counter()
        plain = codec.encode(rgb, PLAIN_QUALITY, effort=effort)
        plain_seconds = time.perf_counter() - start
        base = {"image": path.name, "pixels": rgb.shape[0] * rgb.shape[1], "plain_seconds": plain_seconds}
        log(f"{path.name}: plain encode at quality {PLAIN_QUALITY:g}: {len(plain)} bytes, {plain_seconds:.2f} s")
        goals = [("size", float(s)) for s in sizes] + [("psnr", float(p)) for p in psnrs]
        for kind, goal in goals:
            options = {"target_size": int(goal)} if kind == "size" else {"target_psnr": goal}
            row: dict[str, Any] = {**base, "kind": kind, "target": goal}
            try:
                result = targets.encode_to_target(rgb, effort=effort, **options)
            except ValueError as error:
                row.update(error=str(error))
                log(f"  {kind} {goal:g}: {error}")
                rows.append(row)
                continue
            row.update(
                size=result.size,
                quality=result.quality,
                psnr=result.psnr,
                estimates=result.estimates,
                encodes=result.encodes,
                syntheses=result.syntheses,
                refinements=result.refinements,
                seconds=result.seconds,
            )
            if kind == "size":
                row["hit"] = result.size <= goal
                row["shortfall_percent"] = 100.0 * (goal - result.size) / goal
                row["capped"] = result.quality == QUALITY_MAX
            else:
                row["hit"] = result.psnr >= goal
                row["overshoot_db"] = result.psnr - goal
                row["capped"] = result.quality == 1.0
            rows.append(row)
            log(
                f"  {kind} {goal:g}: {result.size} bytes, quality {result.quality:.4f}, {result.estimates} estimates, "
                f"{result.encodes} encodes, {result.syntheses} syntheses, {result.seconds:.2f} s"
            )
    return rows


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target: hits, mean shortfall (or overshoot), search cost and time against a plain encode.

    Example:
        >>> rows = [{"kind": "size", "target": 10.0, "hit": True, "shortfall_percent": 1.0, "capped": False,
        ...          "estimates": 3, "encodes": 1, "syntheses": 0, "seconds": 2.0, "plain_seconds": 1.0}]
        >>> s = summarise(rows)[0]
        >>> s["hits"], s["searches"], s["mean_shortfall_percent"], s["time_ratio"]
        (1, 1, 1.0, 2.0)
    """
    out = []
    for kind, goal in sorted({(r["kind"], r["target"]) for r in rows}, key=lambda g: (g[0] != "size", g[1])):
        group = [r for r in rows if r["kind"] == kind and r["target"] == goal]
        done = [r for r in group if "error" not in r]
        binding = [r for r in done if not r["capped"]]
        summary: dict[str, Any] = {
            "kind": kind,
            "target": goal,
            "searches": len(group),
            "hits": sum(1 for r in done if r["hit"]),
            "errors": len(group) - len(done),
            "capped": len(done) - len(binding),
            "mean_estimates": _mean([r["estimates"] for r in done]),
            "mean_encodes": _mean([r["encodes"] for r in done]),
            "mean_syntheses": _mean([r["syntheses"] for r in done]),
            "max_encodes": max((r["encodes"] for r in done), default=None),
            "mean_seconds": _mean([r["seconds"] for r in done]),
            "time_ratio": _mean([r["seconds"] / r["plain_seconds"] for r in done]),
        }
        if kind == "size":
            summary["mean_shortfall_percent"] = _mean([r["shortfall_percent"] for r in binding])
            summary["max_shortfall_percent"] = max((r["shortfall_percent"] for r in binding), default=None)
        else:
            summary["mean_overshoot_db"] = _mean([r["overshoot_db"] for r in binding])
            summary["max_overshoot_db"] = max((r["overshoot_db"] for r in binding), default=None)
        out.append(summary)
    return out


def _fmt(value: Any, digits: int = 2, before: str = "", after: str = "") -> str:
    """``value`` to ``digits`` places between ``before`` and ``after``; ``-`` alone where there is none.

    Example:
        >>> _fmt(0.0123, 3, "+", " dB"), _fmt(None, 3, "+", " dB"), _fmt(4, 0, "(", ")")
        ('+0.012 dB', '-', '(4)')
    """
    return "-" if value is None else f"{before}{value:.{digits}f}{after}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    meta = report["meta"]
    lines = [
        "# Rate and quality targets",
        "",
        f"`{meta['data']}`, {meta['images']} images, effort {meta['effort']}; {meta['machine']}; {meta['date']}.",
        f"Command: `{meta['command']}`",
        *_model_line(meta.get("model")),
        "",
        "A hit is a file at or below its size target (a decoded PSNR at or above its PSNR target); unreachable: the",
        "search raised ValueError (even quality 1 too large, or quality 8 not good enough). Shortfall: how far",
        "below the target, in % of it; overshoot: how far above, in dB; both averaged over the searches the",
        "quality range does not cap (capped: the quality-8 file is below the size target, or the quality-1 file",
        "above the PSNR target). Estimates: the model's rate estimate; encodes: files encoded (TargetResult.encodes);",
        "syntheses: g_s runs of a PSNR search. Time: the search against a plain encode of the same image at",
        f"quality {PLAIN_QUALITY:g} (the mean over images of each search's time over that image's plain encode).",
        "",
        "| target | hits | unreachable | capped | mean shortfall | max shortfall | estimates | encodes (max) "
        "| syntheses | time (s) | x plain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report["summary"]:
        if s["kind"] == "size":
            target = f"{s['target'] / 1000:g} kB"
            mean, worst = (_fmt(s[k], after="%") for k in ("mean_shortfall_percent", "max_shortfall_percent"))
        else:
            target = f"{s['target']:g} dB"
            mean, worst = (_fmt(s[k], 3, "+", " dB") for k in ("mean_overshoot_db", "max_overshoot_db"))
        lines.append(
            f"| {target} | {s['hits']}/{s['searches'] - s['errors']} | {s['errors']} | {s['capped']} "
            f"| {mean} | {worst} "
            f"| {_fmt(s['mean_estimates'], 1)} | {_fmt(s['mean_encodes'], 1)} {_fmt(s['max_encodes'], 0, '(', ')')} "
            f"| {_fmt(s['mean_syntheses'], 1)} | {_fmt(s['mean_seconds'])} | {_fmt(s['time_ratio'])} |"
        )
    return "\n".join([*lines, "", _totals_line(report["totals"]), ""])


def _model_line(model: dict[str, str] | None) -> list[str]:
    """The model the searches encoded with, as a line of the page (none for a report that records none)."""
    if not model:
        return []
    if "model_id" not in model:
        return [f"Model: not found ({model.get('error', 'unknown')})."]
    return [f"Model `{model['model_id']}`, weights `{model['weights_hash'][:16]}`."]


def _totals_line(totals: dict[str, Any]) -> str:
    """The size searches in one sentence: hits of the completed searches, the unreachable targets apart.

    Example:
        >>> _totals_line({"size_searches": 2, "size_hits": 2, "size_unreachable": 2, "mean_shortfall_percent": None,
        ...               "mean_estimates": 3.0, "mean_encodes": 1.5, "time_ratio": 2.0}).split("; ")[:2]
        ['All size searches: 2/2 hits, 2 unreachable', 'no search below quality 8']
    """
    unreachable = totals.get("size_unreachable", 0)
    text = f"All size searches: {totals['size_hits']}/{totals['size_searches']} hits"
    if unreachable:
        text += f", {unreachable} unreachable"
    if not totals["size_searches"]:
        return text + "."
    shortfall = totals["mean_shortfall_percent"]
    text += (
        "; no search below quality 8"
        if shortfall is None
        else f", mean shortfall {_fmt(shortfall)}% (searches below quality 8)"
    )
    return (
        f"{text}; {_fmt(totals['mean_estimates'], 1)} estimates and {_fmt(totals['mean_encodes'], 1)} encodes per "
        f"search, {_fmt(totals['time_ratio'])}x the time of a plain encode."
    )


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The size searches together (a target no quality meets counted apart), and the misses of any search."""
    size_rows = [r for r in rows if r["kind"] == "size" and "error" not in r]
    return {
        "size_searches": len(size_rows),
        "size_hits": sum(1 for r in size_rows if r["hit"]),
        "size_unreachable": sum(1 for r in rows if r["kind"] == "size" and "error" in r),
        "misses": sum(1 for r in rows if "error" not in r and not r["hit"]),
        "mean_shortfall_percent": _mean([r["shortfall_percent"] for r in size_rows if not r["capped"]]),
        "mean_estimates": _mean([r["estimates"] for r in size_rows]),
        "mean_encodes": _mean([r["encodes"] for r in size_rows]),
        "time_ratio": _mean([r["seconds"] / r["plain_seconds"] for r in size_rows]),
    }


def _model() -> dict[str, str]:
    """The generation :func:`pillow_jac.targets.encode_to_target` encodes with by default, as ``bench.rd`` records."""
    try:
        engine = codec_steps.encoder_engine(None, None, None)
    except Exception as e:  # noqa: BLE001  (recorded; the searches report it)
        return {"error": type(e).__name__}
    return metrics.model_record(engine)


def _numbers(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m pillow_jac.bench.targets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder of images (e.g. ../shared/data/kodak)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where targets.{{json,md}} go (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: [targets.parse_size(v) for v in s.split(",") if v.strip()],
        default=list(DEFAULT_SIZES),
        help="size targets, e.g. 10k,25k,50k,100k,200k (the default)",
    )
    parser.add_argument("--psnr", type=_numbers, default=[], help="PSNR targets in dB, e.g. 30,34,38 (default: none)")
    parser.add_argument("--limit", type=limit_argument, default=None, help="only the first N images (N >= 1)")
    parser.add_argument("--effort", type=int, default=0, help="encoder effort 0-3")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite targets.md from --out's targets.json")
    args = parser.parse_args(argv)
    if args.markdown_only:
        report = json.loads((args.out / "targets.json").read_text())
        (args.out / "targets.md").write_text(markdown(report))
        return 0
    if args.data is None:
        parser.error("--data is required (but for --markdown-only)")
    if not args.data.is_dir():
        parser.error(f"not a folder: {args.data}")
    from pillow_jac.passive_torch import torch  # the codec's OpenMP wait policy, as users get it

    from .rd import _versions

    try:
        rows = run(args.data, args.sizes, args.psnr, args.limit, args.effort)
    except ImageInputError as e:
        return input_error(parser.prog, e)
    shown = ["python -m pillow_jac.bench.targets", "--data", portable_path(args.data)]
    for flag, value in (("--limit", args.limit), ("--effort", args.effort or None)):
        if value is not None:
            shown += [flag, str(value)]
    if list(args.sizes) != list(DEFAULT_SIZES):
        shown += ["--sizes", ",".join(str(s) for s in args.sizes)]
    if args.psnr:
        shown += ["--psnr", ",".join(f"{p:g}" for p in args.psnr)]
    if args.out != DEFAULT_OUT:
        shown += ["--out", portable_path(args.out)]
    report = {
        "meta": {
            "data": portable_path(args.data),
            "images": len({r["image"] for r in rows}),
            "effort": args.effort,
            "machine": f"{metrics.machine_description()}, {torch.get_num_threads()} torch threads",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(shown),
            "model": _model(),
            "versions": _versions(),
            "size_tolerance": targets.SIZE_TOLERANCE,
            "size_tolerance_bytes": targets.SIZE_TOLERANCE_BYTES,
            "psnr_tolerance_db": targets.PSNR_TOLERANCE,
        },
        "summary": summarise(rows),
        "totals": _totals(rows),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "targets.json").write_text(metrics.json_text(report) + "\n")
    (args.out / "targets.md").write_text(markdown(report))
    log(f"wrote {args.out / 'targets.json'} and {args.out / 'targets.md'}")
    return 1 if report["totals"]["misses"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
