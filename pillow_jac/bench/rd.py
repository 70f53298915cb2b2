r"""Rate-distortion benchmark: ``.jac`` against classical codecs and published curves.

Usage (from the repository root)::

    python -m pillow_jac.bench.rd --data ../shared/data/kodak --out bench_out/rd --limit 2 \
        --jac-qualities 1,1.5,2,3,4,5,6,7,8

Every codec of :mod:`pillow_jac.bench.codecs` that is installed encodes every image at every value of
its ladder; the decoded image is compared with the original (PSNR and MS-SSIM on 8-bit RGB) and the
rate is the real file size. Per image and per ladder value results go to ``results.json``; the
averages over images (mean bpp, mean PSNR, mean MS-SSIM, as CompressAI reports Kodak) go to the same
file and to ``rd.md``, with the BD-rates of ``.jac`` against every measured codec and every published
curve (PSNR and MS-SSIM dB, piecewise cubic interpolation). ``rd.png`` plots the curves, the published
ones (``shared/anchors/kodak/*.json``) dashed and labelled "published".

Progress goes to stderr. Each measured point is also appended to ``cache.jsonl``; ``--resume`` reuses
the points of an interrupted run (matched on codec, settings, weights hash, parameter and image).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import metrics
from .codecs import DEFAULT_CODECS, Codec, find_shared, get_codecs, list_images, load_rgb
from .rd_report import plot, write_markdown

__all__ = ["main", "run", "average", "bd_table", "default_published", "load_published", "write_markdown", "plot"]

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


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fingerprint(codec: Codec) -> str:
    """What identifies a codec's results across runs: label, settings, ladder-independent."""
    parts: dict[str, Any] = {"label": codec.label, "settings": codec.settings}
    if codec.name == "jac" or codec.name.startswith("jac-"):
        try:
            from pillow_jac.engine import get_engine

            engine = get_engine(codec.settings.get("device"), codec.settings.get("weights"))
            parts["model"] = [engine.model_id, engine.weights_hash.hex()]
        except Exception as e:  # noqa: BLE001  (the fingerprint is best effort; encoding will report)
            parts["model"] = f"unknown ({type(e).__name__})"
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def measure(codec: Codec, image: np.ndarray, parameter: float, with_ms_ssim: bool = True) -> dict[str, float]:
    """Encode and decode one image at one ladder value; bytes, bpp, PSNR, MS-SSIM and times."""
    t0 = time.perf_counter()
    data = codec.encode(image, parameter)
    t1 = time.perf_counter()
    decoded = codec.decode(data)
    t2 = time.perf_counter()
    if decoded.shape != image.shape:
        raise RuntimeError(f"{codec.name} decoded shape {decoded.shape}, expected {image.shape}")
    h, w = image.shape[:2]
    ssim = metrics.ms_ssim(image, decoded) if with_ms_ssim else math.nan
    return {
        "bytes": len(data),
        "bpp": metrics.bits_per_pixel(len(data), h, w),
        "psnr": metrics.psnr(image, decoded),
        "ms_ssim": ssim,
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
    }


def _finite_mean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def average(per_image: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Average one codec's points over the images, ladder value by ladder value.

    Args:
        per_image: ``{image name: [point, ...]}``, each point with ``param``, ``bpp``, ``psnr``,
            ``ms_ssim``, ``encode_s`` and ``decode_s``.

    Returns:
        One point per ladder value, sorted by mean bpp, with the means and ``ms_ssim_db`` (the dB of
        the mean MS-SSIM) and ``images`` (how many images had that value).
    """
    by_param: dict[float, list[dict[str, Any]]] = {}
    for points in per_image.values():
        for p in points:
            by_param.setdefault(float(p["param"]), []).append(p)
    out = []
    for param, points in by_param.items():
        row: dict[str, Any] = {"param": param, "images": len(points)}
        for key in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s"):
            row[key] = _finite_mean([p[key] for p in points])
        row["ms_ssim_db"] = metrics.ms_ssim_db(row["ms_ssim"]) if math.isfinite(row["ms_ssim"]) else math.nan
        out.append(row)
    return sorted(out, key=lambda r: r["bpp"])


def default_published(data: Path, anchors: Path | None) -> list[str]:
    """The published curves compared by default: :data:`DEFAULT_PUBLISHED` for the set they were measured on.

    Published curves are means over their own image set (``shared/anchors/kodak``: the 24 Kodak
    images), so they are compared only when ``data`` is that set (a folder of the anchors' name).

    Example:
        >>> default_published(Path("shared/data/kodak"), Path("shared/anchors/kodak")) == list(DEFAULT_PUBLISHED)
        True
        >>> default_published(Path("shared/data/urban20"), Path("shared/anchors/kodak"))
        []
    """
    if anchors is None or Path(data).resolve().name != Path(anchors).resolve().name:
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
            _log(f"note: no published curve {path}")
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
        not overlap), and the PSNR interval ``[lo, hi]`` the PSNR BD-rate averages over.
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
        lo = max(min(psnr), min(t_psnr)) if psnr and t_psnr else math.nan
        hi = min(max(psnr), max(t_psnr)) if psnr and t_psnr else math.nan
        row["psnr_overlap"] = [lo, hi]
        rows.append(row)
    return rows


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__, "pillow": Image.__version__}
    for module in ("torch", "pillow_heif", "imagecodecs", "pytorch_msssim", "constriction"):
        try:
            out[module] = str(__import__(module).__version__)
        except Exception:  # noqa: BLE001  (optional, any import failure means "absent")
            pass
    return out


def run(
    data: Path,
    out: Path,
    codec_names: Sequence[str] | None = None,
    limit: int | None = None,
    jac_qualities: Sequence[float] | None = None,
    jac_device: str | None = None,
    jac_weights: str | None = None,
    ladders: dict[str, Sequence[float]] | None = None,
    published_dir: Path | None = None,
    published: Sequence[str] | None = None,
    with_ms_ssim: bool = True,
    resume: bool = False,
    max_bpp: float = 2.0,
) -> dict[str, Any]:
    """Measure, average, compare and write ``results.json``, ``rd.md`` and ``rd.png`` under ``out``.

    ``published`` names the curves of ``published_dir`` to compare with (None: :func:`default_published`).

    Returns:
        The results dict written to ``results.json``.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = list_images(data, limit)
    codecs = get_codecs(codec_names, jac_qualities=jac_qualities, jac_device=jac_device, jac_weights=jac_weights)
    if ladders:
        codecs = [c.with_ladder(ladders[c.name]) if c.name in ladders else c for c in codecs]
    if with_ms_ssim and not metrics.ms_ssim_available():
        _log("note: pytorch-msssim is not installed: no MS-SSIM (pip install pytorch-msssim)")
        with_ms_ssim = False
    cache_path = out / "cache.jsonl"
    cache: dict[tuple, dict[str, Any]] = {}
    if resume and cache_path.exists():
        for line in cache_path.read_text().splitlines():
            try:
                rec = json.loads(line)
                cache[(rec["codec"], rec["key"], float(rec["param"]), rec["image"])] = rec
            except (ValueError, KeyError):
                continue
        _log(f"resume: {len(cache)} cached points in {cache_path}")
    elif cache_path.exists():
        cache_path.unlink()
    images = [(p.stem, load_rgb(p)) for p in paths]
    results: dict[str, Any] = {
        "meta": {
            "data": metrics.portable_path(data),
            "images": len(images),
            "image_names": [n for n, _ in images],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
            "versions": _versions(),
            "ms_ssim": with_ms_ssim,
        },
        "codecs": {},
    }
    total = sum(len(c.ladder) for c in codecs) * len(images)
    done = 0
    start = time.perf_counter()
    with cache_path.open("a") as cache_file:
        for ci, codec in enumerate(codecs, 1):
            key = _fingerprint(codec)
            per_image: dict[str, list[dict[str, Any]]] = {}
            for ii, (name, image) in enumerate(images, 1):
                t0 = time.perf_counter()
                points = []
                for param in codec.ladder:
                    rec = cache.get((codec.name, key, float(param), name))
                    if rec is None:
                        rec = {"codec": codec.name, "key": key, "param": float(param), "image": name}
                        rec.update(measure(codec, image, param, with_ms_ssim))
                        cache_file.write(json.dumps(rec) + "\n")
                        cache_file.flush()
                    points.append({k: v for k, v in rec.items() if k not in ("codec", "key", "image")})
                    done += 1
                per_image[name] = points
                elapsed = time.perf_counter() - start
                eta = elapsed / done * (total - done) if done else 0.0
                bpps = ", ".join(f"{p['bpp']:.3f}" for p in points)
                _log(
                    f"[{ci}/{len(codecs)} {codec.name}] {name} ({ii}/{len(images)}) {time.perf_counter() - t0:.1f} s; "
                    f"bpp {bpps}; elapsed {elapsed:.0f} s, eta {eta:.0f} s"
                )
            results["codecs"][codec.name] = {
                "label": codec.label,
                "parameter": codec.parameter,
                "ladder": list(codec.ladder),
                "settings": codec.settings,
                "per_image": per_image,
                "average": average(per_image),
            }
    if published is None:
        published = default_published(data, published_dir)
    results["published"] = load_published(published_dir, published)
    measured = {name: c["average"] for name, c in results["codecs"].items()}
    results["bd_rate"] = bd_table(measured, results["published"])
    for name in measured:  # each higher encoder effort of .jac against the same anchors
        if name.startswith("jac-"):
            results.setdefault("bd_rate_by_codec", {})[name] = bd_table(measured, results["published"], test=name)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    write_markdown(out / "rd.md", results)
    plotted = plot(out / "rd.png", results, max_bpp)
    _log(f"wrote {out / 'results.json'}, {out / 'rd.md'}" + (f", {out / 'rd.png'}" if plotted else ""))
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _parse_ladder(text: str) -> tuple[str, list[float]]:
    name, _, values = text.partition("=")
    if not values:
        raise argparse.ArgumentTypeError(f"expected CODEC=V1,V2,..., got {text!r}")
    return name.strip(), _floats(values)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m pillow_jac.bench.rd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="directory of PNG images (default: shared/data/kodak)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/rd"), help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--codecs", default=",".join(DEFAULT_CODECS), help=f"comma-separated (default {','.join(DEFAULT_CODECS)})"
    )
    parser.add_argument("--jac-qualities", type=_floats, default=None, help="e.g. 1,1.5,2,3,4,5,6,7,8")
    parser.add_argument("--jac-device", default=None, help="torch device for .jac (cpu, cuda, auto)")
    parser.add_argument("--jac-weights", default=None, help="weights file for .jac (default: the shipped one)")
    parser.add_argument(
        "--ladder", type=_parse_ladder, action="append", default=[], help="override a ladder: CODEC=V1,V2,..."
    )
    parser.add_argument("--anchors", type=Path, default=None, help="published curves (default: shared/anchors/kodak)")
    parser.add_argument(
        "--published",
        default=None,
        help="published curve names (file stems), comma-separated (default: "
        f"{','.join(DEFAULT_PUBLISHED)} when --data is the anchors' image set, none otherwise)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: times here are informational; see speed)"
    )
    parser.add_argument("--no-ms-ssim", action="store_true", help="skip MS-SSIM (faster)")
    parser.add_argument("--resume", action="store_true", help="reuse points in OUT/cache.jsonl")
    parser.add_argument("--max-bpp", type=float, default=2.0, help="x range of the plot")
    args = parser.parse_args(argv)

    data = args.data or find_shared("data/kodak")
    if data is None:
        parser.error("no --data given and no shared/data/kodak found")
    anchors = args.anchors or find_shared("anchors/kodak")
    names = None if args.published is None else [p for p in args.published.split(",") if p]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run(
        data=data,
        out=args.out,
        codec_names=[c for c in args.codecs.split(",") if c],
        limit=args.limit,
        jac_qualities=args.jac_qualities,
        jac_device=args.jac_device,
        jac_weights=args.jac_weights,
        ladders=dict(args.ladder),
        published_dir=anchors,
        published=names,
        with_ms_ssim=not args.no_ms_ssim,
        resume=args.resume,
        max_bpp=args.max_bpp,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
