"""The curves of a rate-distortion run (:mod:`pillow_jac.bench.rd`): averages, published curves, BD-rate tables.

Per-image points are averaged, published curves loaded, and the BD-rate table made (Bjøntegaard, VCEG-M33;
piecewise cubic interpolation, :mod:`pillow_jac.bench.metrics`).

A point's metric is a mean over every image of the point, as its bpp is, or n/a when one of them has none
(an image reproduced exactly has an infinite PSNR): means over different image sets would skew the BD-rates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import log, metrics

__all__ = ["DEFAULT_PUBLISHED", "PUBLISHED_LABELS", "average", "bd_table", "default_published", "load_published"]

#: published curves shown by default (file stems in shared/anchors/kodak)
DEFAULT_PUBLISHED = ("paper-mbt2018", "compressai-mbt2018_mse_cuda", "bpg_444_x265_ycbcr")
PUBLISHED_LABELS = {
    "paper-mbt2018": "mbt2018, paper",
    "compressai-mbt2018_mse_cuda": "mbt2018, CompressAI",
    "compressai-mbt2018-mean_mse_cuda": "mbt2018-mean, CompressAI",
    "mbt2018-vbr-ans": "mbt2018 VBR, CompressAI",
    "bpg_444_x265_ycbcr": "BPG 4:4:4 (x265)",
    "vtm": "VTM",
    "av1": "AV1",
    "jpeg": "JPEG",
    "webp": "WebP",
    "jpeg2000": "JPEG 2000",
}


def _mean_of_all(values: Sequence[float]) -> float:
    """The mean of every value, or ``nan`` when there are none or one is not finite."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()) if arr.size and np.isfinite(arr).all() else math.nan


#: why an image's metric is not finite, as ``average`` records it
UNDEFINED_WHY = {
    "psnr": "decoded exactly (PSNR infinite)",
    "ms_ssim": f"without MS-SSIM (a side under {metrics.MS_SSIM_MIN_SIDE} px)",
}


def average(per_image: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Average one codec's points over the images, ladder value by ladder value.

    Every mean of a point is over the same images, so that its bpp and its quality describe one image
    set: a point's PSNR (MS-SSIM) is ``nan`` when one of its images' is not finite (an image decoded
    exactly has an infinite PSNR; one with a side under 161 px has no MS-SSIM), and the point then
    leaves that curve and its BD-rates (:func:`pillow_jac.bench.metrics.bd_rate` skips it).

    Args:
        per_image: ``{image name: [point, ...]}``, each point with ``param``, ``bpp``, ``psnr``,
            ``ms_ssim``, ``encode_s`` and ``decode_s``.

    Returns:
        One point per ladder value, sorted by mean bpp, with the means, ``ms_ssim_db`` (the dB of the
        mean MS-SSIM), ``images`` (how many images had that value) and, where a metric is undefined,
        ``undefined``: ``{metric: {"images": [names], "why": ...}}``. MS-SSIM is listed there only when
        some of the point's images have one (a run without MS-SSIM has none at all).

    Example:
        >>> flat = [{"param": 90, "bpp": 0.1, "psnr": math.inf, "ms_ssim": 1.0, "encode_s": 0, "decode_s": 0}]
        >>> busy = [{"param": 90, "bpp": 2.0, "psnr": 40.0, "ms_ssim": 0.99, "encode_s": 0, "decode_s": 0}]
        >>> point = average({"flat": flat, "busy": busy})[0]
        >>> point["bpp"], point["psnr"], point["undefined"]["psnr"]["images"]
        (1.05, nan, ['flat'])
    """
    by_param: dict[float, list[tuple[str, dict[str, Any]]]] = {}
    for name, points in per_image.items():
        for p in points:
            by_param.setdefault(float(p["param"]), []).append((name, p))
    out = []
    for param, named in by_param.items():
        points = [p for _, p in named]
        row: dict[str, Any] = {"param": param, "images": len(points)}
        for key in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s"):
            row[key] = _mean_of_all([p[key] for p in points])
        row["ms_ssim_db"] = metrics.ms_ssim_db(row["ms_ssim"])
        undefined = {}
        for key, why in UNDEFINED_WHY.items():
            names = [name for name, p in named if not math.isfinite(p[key])]
            if names and (key == "psnr" or len(names) < len(named)):
                undefined[key] = {"images": names, "why": why}
        if undefined:
            row["undefined"] = undefined
        out.append(row)
    return sorted(out, key=lambda r: r["bpp"])


#: the images the published curves of ``shared/anchors/kodak`` average over: their names and sizes (rows, columns)
KODAK_IMAGES = {f"kodim{i:02d}": ((512, 768), (768, 512)) for i in range(1, 25)}


def default_published(
    data: Path, anchors: Path | None, images: Sequence[tuple[str, tuple[int, ...]]] = ()
) -> list[str]:
    """The published curves compared by default: :data:`DEFAULT_PUBLISHED` for the set they were measured on.

    Published curves are means over their own image set (``shared/anchors/kodak``: the 24 Kodak
    images), so they are compared only when ``data`` is that set (a folder of the anchors' name) and each of
    ``images`` (name, shape) is one of its images at its full size (:data:`KODAK_IMAGES`; a subset is
    compared, with the report's caveat).

    Example:
        >>> default_published(Path("shared/data/kodak"), Path("shared/anchors/kodak")) == list(DEFAULT_PUBLISHED)
        True
        >>> default_published(Path("shared/data/urban20"), Path("shared/anchors/kodak"))
        []
        >>> default_published(Path("shared/data/kodak"), Path("shared/anchors/kodak"), [("kodim01", (128, 192, 3))])
        []
    """
    if anchors is None or Path(data).resolve().name != Path(anchors).resolve().name:
        return []
    if Path(anchors).resolve().name == "kodak":
        others = [name for name, shape in images if tuple(shape[:2]) not in KODAK_IMAGES.get(name, ())]
        if others:
            log(f"note: {others[0]} is not a Kodak image at its full size: the published Kodak curves are left out")
            return []
    return list(DEFAULT_PUBLISHED)


def load_published(directory: Path | None, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Published curves ``{stem: {label, bpp, psnr, ms_ssim_db}}`` from ``directory/<stem>.json``."""
    out: dict[str, dict[str, Any]] = {}
    if directory is None:
        return out
    for name in names:
        path = directory / f"{name}.json"
        if not path.is_file():
            log(f"note: no published curve {path}")
            continue
        results = json.loads(path.read_text())["results"]
        ssim = results.get("ms-ssim-rgb")
        out[name] = {
            "label": PUBLISHED_LABELS.get(name, json.loads(path.read_text()).get("name", name)) + " (published)",
            "bpp": [float(v) for v in results["bpp"]],
            "psnr": [float(v) for v in results["psnr-rgb"]],
            "ms_ssim_db": [metrics.ms_ssim_db(float(v)) for v in ssim] if ssim else None,
        }
    return out


def _curve(points: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    return [p["bpp"] for p in points], [p[key] for p in points]


def bd_table(
    measured: dict[str, list[dict[str, Any]]],
    published: dict[str, dict[str, Any]],
    test: str = "jac",
    method: str = "pchip",
) -> list[dict[str, Any]]:
    """BD-rates of the ``test`` codec against every other measured codec and every published curve.

    Returns:
        Rows ``{anchor, kind, psnr, ms_ssim, psnr_overlap}``: BD-rates in percent (negative: ``test``
        needs fewer bits) for PSNR and MS-SSIM dB (``nan`` when a curve lacks it or the ranges do
        not overlap), and the PSNR interval ``[lo, hi]`` the PSNR BD-rate averages over (of the
        points with a finite PSNR, the only ones the BD-rate uses).
    """
    rows: list[dict[str, Any]] = []
    if test not in measured:
        return rows
    t_rate, t_psnr = _curve(measured[test], "psnr")
    _, t_ssim = _curve(measured[test], "ms_ssim_db")
    anchors: list[tuple[str, str, list[float], list[float], list[float] | None]] = []
    for name, points in measured.items():
        if name != test:
            rate, psnr = _curve(points, "psnr")
            anchors.append((name, "measured", rate, psnr, _curve(points, "ms_ssim_db")[1]))
    for name, curve in published.items():
        anchors.append((name, "published", curve["bpp"], curve["psnr"], curve["ms_ssim_db"]))
    for name, kind, rate, psnr, ssim in anchors:
        row = {
            "anchor": name,
            "kind": kind,
            "psnr": metrics.bd_rate(rate, psnr, t_rate, t_psnr, method),
            "ms_ssim": metrics.bd_rate(rate, ssim, t_rate, t_ssim, method) if ssim else math.nan,
        }
        finite, t_finite = [v for v in psnr if math.isfinite(v)], [v for v in t_psnr if math.isfinite(v)]
        lo = max(min(finite), min(t_finite)) if finite and t_finite else math.nan
        hi = min(max(finite), max(t_finite)) if finite and t_finite else math.nan
        row["psnr_overlap"] = [lo, hi]
        rows.append(row)
    return rows
