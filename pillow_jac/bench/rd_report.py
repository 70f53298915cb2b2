"""The report of a rate-distortion run (:mod:`pillow_jac.bench.rd`): ``rd.md`` and the ``rd.png`` plot.

Both read only the ``results`` dictionary :func:`pillow_jac.bench.rd.run` writes to ``results.json``:
the mean curve of every measured codec, the published curves, and the BD-rate table (Bjøntegaard's
piecewise cubic interpolation, :mod:`pillow_jac.bench.metrics`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["write_markdown", "plot", "caption", "effort_gains"]


def _is_jac(name: str) -> bool:
    return name == "jac" or name.startswith("jac-")


def _fmt(value: float, spec: str = ".2f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.1f}%"


#: metric keys as the report names them
_METRIC_NAMES = {"psnr": "PSNR", "ms_ssim": "MS-SSIM"}


def _container_share(jac: dict[str, Any]) -> str:
    """The bytes of a ``.jac`` file that are not the image's, and their share of the mean file at the lowest quality.

    The file of empty streams with the measured model's id and hash (the container of SPEC.md section 3, no
    metadata), against the mean of ``jac``'s real file sizes at its lowest quality: `` (110 bytes an image:
    2.5% of the mean file at quality 1, less above)``; empty where the results record no file sizes.

    Example:
        >>> point = {"param": 1.0, "bytes": 4400}
        >>> _container_share({"model": {"model_id": "demo", "weights_hash": "00" * 8},
        ...                   "per_image": {"a": [point, {"param": 2.0, "bytes": 9000}]}})
        ' (110 bytes an image: 2.5% of the mean file at quality 1, less above)'
    """
    from pillow_jac import container

    points = [p for ps in jac.get("per_image", {}).values() for p in ps if "bytes" in p]
    if not points:
        return ""
    lowest = min(p["param"] for p in points)
    sizes = [p["bytes"] for p in points if p["param"] == lowest]
    model = jac.get("model") or {}
    empty = container.JacFile.create(
        width=1,
        height=1,
        layout="RGB",
        quality=lowest,
        model_id=model.get("model_id", "x"),
        weights_hash=bytes.fromhex(model.get("weights_hash", "00" * 8)),
        z_stream=b"",
        y_stream=b"",
    )
    overhead = len(container.serialize(empty))
    share = 100 * overhead * len(sizes) / sum(sizes)
    return f" ({overhead} bytes an image: {share:.1f}% of the mean file at quality {lowest:g}, less above)"


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    """The averaged curves and the BD-rate table as markdown."""
    meta = results["meta"]
    lines = [
        "# Rate-distortion results",
        "",
        f"{meta['images']} image(s) from `{meta['data']}`, {meta['date']}. Means over images of bpp (real file "
        "sizes), PSNR and MS-SSIM on 8-bit RGB. MS-SSIM dB is `-10 log10(1 - MS-SSIM)` of the mean.",
        "",
    ]
    if results["published"] and "jac" in results["codecs"]:
        lines += [
            "Published curves count what their authors counted: the learned codecs' their streams' bytes, BPG's its "
            "files. `.jac`'s bpp counts its whole file, container included"
            f"{_container_share(results['codecs']['jac'])}.",
            "",
        ]
    if meta["images"] != 24 and results["published"]:
        lines += [
            "Published curves are averages over all 24 Kodak images: BD-rates against them are only indicative "
            f"for these {meta['images']} images.",
            "",
        ]
    for name, why in meta.get("skipped", {}).items():
        lines += [f"Not measured: {name} ({why}).", ""]
    points = [p for c in results["codecs"].values() for ps in c.get("per_image", {}).values() for p in ps]
    reused = sum(1 for p in points if p.get("reused"))
    if reused:
        lines += [
            f"{reused} of {len(points)} points were measured by an earlier run and reused (`--resume`): their "
            "encode and decode times are that run's, taken under its load.",
            "",
        ]
    if any(p.get("undefined") for c in results["codecs"].values() for p in c["average"]):
        lines += [
            "Each point's means are over the same images: where one image's PSNR or MS-SSIM is not finite, the "
            "point's is n/a and the point is left out of that curve and its BD-rates (notes under the tables).",
            "",
        ]
    labels = {name: c["label"] for name, c in results["codecs"].items()}
    labels.update({name: c["label"] for name, c in results["published"].items()})
    tables = [("jac", results["bd_rate"]), *results.get("bd_rate_by_codec", {}).items()]
    for test, bd in tables:
        if not bd:
            continue
        title = ".jac" if test == "jac" else labels.get(test, test)
        lines += [
            f"## BD-rate of {title}",
            "",
            "Negative: .jac needs fewer bits for the same quality. Piecewise cubic (PCHIP) interpolation of "
            "log-rate over the quality range both curves cover; n/a where the ranges do not overlap.",
            "",
            "| anchor | kind | BD-rate PSNR | BD-rate MS-SSIM | PSNR range compared (dB) |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for row in bd:
            lo, hi = row["psnr_overlap"]
            overlap = f"{_fmt(lo)}-{_fmt(hi)}" if math.isfinite(lo) and math.isfinite(hi) and hi > lo else "none"
            lines.append(
                f"| {labels.get(row['anchor'], row['anchor'])} | {row['kind']} | {_pct(row['psnr'])} "
                f"| {_pct(row['ms_ssim'])} | {overlap} |"
            )
        lines.append("")
    lines += _effort_gain(results, labels)
    lines += ["## Averaged curves", ""]
    for codec in results["codecs"].values():
        lines += [f"### {codec['label']}", ""]
        model = codec.get("model") or {}
        if "model_id" in model:
            lines += [f"Model `{model['model_id']}`, weights `{model['weights_hash'][:16]}`, on {codec['device']}.", ""]
        lines += [
            f"| {codec['parameter']} | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) | encode (s) | decode (s) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        notes = []
        for p in codec["average"]:
            lines.append(
                f"| {p['param']:g} | {_fmt(p['bpp'], '.4f')} | {_fmt(p['psnr'])} | {_fmt(p['ms_ssim'], '.4f')} "
                f"| {_fmt(p['ms_ssim_db'])} | {_fmt(p['encode_s'], '.3f')} | {_fmt(p['decode_s'], '.3f')} |"
            )
            for metric, gap in (p.get("undefined") or {}).items():
                names = ", ".join(f"`{n}`" for n in gap["images"])
                notes.append(
                    f"- {codec['parameter']} {p['param']:g}: {_METRIC_NAMES.get(metric, metric)} n/a, "
                    f"{len(gap['images'])} of {p['images']} image(s) {gap['why']}: {names}."
                )
        lines += ["", *notes, ""] if notes else [""]
    path.write_text("\n".join(lines))


def effort_gains(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """For each ``jac-eN`` codec of a run that also measured ``jac``: its gain per added second of encoding.

    ``{name: {"encode_s", "added_s", "bd_rate", "gain_per_second"}}``: the mean encode time over every image and
    quality of this run, the seconds added to ``jac``'s (effort 0), its PSNR BD-rate against ``jac`` (percent,
    negative: smaller files) and ``-bd_rate / added_s``. Times and BD-rates are of the same run, so their ratio
    is of one machine under one load.
    """

    def mean_encode(codec: dict[str, Any]) -> float:
        times = [p["encode_s"] for points in codec.get("per_image", {}).values() for p in points]
        return sum(times) / len(times) if times else math.nan

    codecs = results["codecs"]
    if "jac" not in codecs:
        return {}
    base = mean_encode(codecs["jac"])
    gains = {}
    for name, bd in results.get("bd_rate_by_codec", {}).items():
        row = next((r for r in bd if r["anchor"] == "jac"), None)
        if not name.startswith("jac-e") or name not in codecs or row is None:
            continue
        encode_s = mean_encode(codecs[name])
        added = encode_s - base
        gain = -row["psnr"] / added if added > 0 and math.isfinite(row["psnr"]) else math.nan
        gains[name] = {"encode_s": encode_s, "added_s": added, "bd_rate": row["psnr"], "gain_per_second": gain}
    return gains


def _effort_gain(results: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The report's section of :func:`effort_gains` (none without an effort to compare)."""
    gains = effort_gains(results)
    if not gains:
        return []
    base = next(iter(gains.values()))
    lines = [
        "## Gain per added second of encoding",
        "",
        "BD-rate (PSNR) against effort 0 for each second the mean encode adds to effort 0's "
        f"({_fmt(base['encode_s'] - base['added_s'], '.3f')} s), means over every image and quality of this run.",
        "",
        "| codec | mean encode (s) | added (s) | BD-rate vs effort 0 | gain per added second |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, g in gains.items():
        per_second = "n/a" if not math.isfinite(g["gain_per_second"]) else f"{g['gain_per_second']:.2f}%"
        lines.append(
            f"| {labels.get(name, name)} | {_fmt(g['encode_s'], '.3f')} | {_fmt(g['added_s'], '.3f')} "
            f"| {_pct(g['bd_rate'])} | {per_second} |"
        )
    return [*lines, ""]


def caption(results: dict[str, Any]) -> str:
    """The plot's title: the images measured and, when published curves are drawn, what the dashed ones are.

    Example:
        >>> caption({"meta": {"images": 2, "data": "../shared/data/urban20"}, "published": {}})
        '2 image(s) from urban20'
    """
    meta = results["meta"]
    text = f"{meta['images']} image(s) from {Path(meta['data']).name}"
    if results.get("published"):
        text += "; dashed: published results (24 Kodak images)"
    return text


def plot(path: Path, results: dict[str, Any], max_bpp: float = 2.0) -> bool:
    """PSNR and MS-SSIM (dB) against bpp; published curves dashed. False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr, flush=True)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    curves = []  # (label, bpp, {key: values}, style)
    others = [name for name in results["codecs"] if not _is_jac(name)]
    searched = [name for name in results["codecs"] if _is_jac(name) and name != "jac"]  # jac-e1, jac-e2, ...
    # one colour per curve: the measured anchors', then the published curves' (tab20 where tab10 runs out)
    colors = plt.get_cmap("tab10" if len(others) + len(results["published"]) <= 10 else "tab20").colors
    for name, codec in results["codecs"].items():
        pts = codec["average"]
        style: dict[str, Any] = {"marker": "o", "markersize": 3.5, "linewidth": 1.4}
        if name == "jac":
            style.update(linewidth=2.6, color="black", zorder=5)
        elif _is_jac(name):  # a grey and a dash pattern of its own for each effort level
            k = searched.index(name) % 3
            style.update(
                linewidth=2.2, color=("dimgray", "darkgray", "#505050")[k], linestyle=("-", "-.", ":")[k], zorder=4
            )
        else:
            style["color"] = colors[others.index(name) % len(colors)]
        values = {key: [p[key] for p in pts] for key in ("psnr", "ms_ssim_db")}
        curves.append((codec["label"], [p["bpp"] for p in pts], values, style))
    for i, curve in enumerate(results["published"].values()):
        style = {"linestyle": "--", "marker": "x", "markersize": 4, "linewidth": 1.2}
        style["color"] = colors[(len(others) + i) % len(colors)]
        values = {"psnr": curve["psnr"], "ms_ssim_db": curve["ms_ssim_db"]}
        curves.append((curve["label"], curve["bpp"], values, style))
    for ax, key, ylabel in ((axes[0], "psnr", "PSNR RGB (dB)"), (axes[1], "ms_ssim_db", "MS-SSIM RGB (dB)")):
        ys: list[float] = []
        for label, bpp, values, style in curves:
            pairs = [(r, v) for r, v in zip(bpp, values[key] or [], strict=False) if v is not None and math.isfinite(v)]
            if not pairs:
                continue
            ax.plot([r for r, _ in pairs], [v for _, v in pairs], label=label, **style)
            ys += [v for r, v in pairs if r <= max_bpp]
        ax.set_xlim(0, max_bpp)
        if ys:
            ax.set_ylim(max(min(ys) - 1, 0), max(ys) + 1)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5, loc="lower right")
    fig.suptitle(caption(results))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
