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

The images are those at the top level of ``--data`` (PNG, PPM, BMP, TIFF, WebP; subfolders are not
searched), with 8-bit samples: a 16-bit or float image, a file that is not an image, or two files whose
names differ only in their extension are refused before anything is measured. An averaged point's PSNR
(MS-SSIM) is the mean over all its images, or undefined (n/a, and left out of that curve and its
BD-rates) when one image's is not finite: decoded exactly (PSNR infinite) or too small for MS-SSIM.

Times are informational: each codec first encodes and decodes a small crop untimed (its start-up), then
every point is timed once. Progress goes to stderr. Each measured point is also appended to
``cache.jsonl``; ``--resume`` reuses the points of an interrupted run, matched on codec, settings (for
``.jac`` also the model, weights hash, device, pillow_jac's code, torch's version and thread count),
parameter, image name and pixels, and measured with
MS-SSIM when it is wanted now. ``results.json`` holds the codecs of ``--codecs`` only: to add a codec to a
run, list all of them again with ``--resume``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import log, metrics
from .codecs import DEFAULT_CODECS, Codec, get_codecs
from .images import ImageInputError, find_shared, input_error, limit_argument, list_images, load_rgb
from .rd_curves import DEFAULT_PUBLISHED, average, bd_table, default_published, load_published
from .rd_report import _is_jac, plot, write_markdown

__all__ = [
    "main",
    "run",
    "measure",
    "warm_up",
    "average",
    "bd_table",
    "default_published",
    "load_published",
    "write_markdown",
    "plot",
]


def _jac_device(codec: Codec) -> str:
    """The device a ``.jac`` codec runs on: its own, else ``JAC_DEVICE``, else cpu, as the engine resolves it."""
    choice = codec.settings.get("device")
    try:
        from pillow_jac.engine import resolve_device

        return str(resolve_device(choice))
    except Exception:  # noqa: BLE001  (an unknown or absent device: encoding will report it)
        return str(choice if choice is not None else os.environ.get("JAC_DEVICE", "cpu"))


def _jac_model(codec: Codec) -> dict[str, str]:
    """The model id, weights hash (hex) and encoder hash a ``.jac`` codec encodes with, or ``{"error": ...}``.

    The encoder hash tells an encoder update (the same decoder and ``weights_hash``) from the encoder before
    it, so that cached results of the old encoder are measured again.
    """
    try:
        from pillow_jac.engine import get_engine

        engine = get_engine(codec.settings.get("device"), codec.settings.get("weights"))
    except Exception as e:  # noqa: BLE001  (recorded, and the fingerprint stays best effort; encoding will report)
        return {"error": type(e).__name__}
    return metrics.model_record(engine)


def code_digest() -> str:
    """A digest of pillow_jac's own code and tables (every ``.py`` and ``.json`` file of the package).

    Part of a ``.jac`` codec's identity: a change to the encoder, the container or the search that no hash
    of the weights sees must not reuse results measured before it.
    """
    import pillow_jac

    root = Path(pillow_jac.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json") and p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _identity(codec: Codec) -> dict[str, Any]:
    """What a codec's results depend on beyond its settings.

    Every codec's: pillow_jac's code (:func:`code_digest`: the adapters of ``bench/codecs.py`` and the measures
    of ``bench/metrics.py`` are part of it). A ``.jac`` codec's also: its ``model`` and ``device``, torch's
    version, its thread count (the effort search's gradients are summed in an order that depends on it) and
    whether the search runs under bf16 autocast (a CPU's native bf16 decides it: pillow_jac/model/precision.py).
    """
    if not _is_jac(codec.name):
        return {"code": code_digest()}
    import torch

    from pillow_jac.model.precision import bf16_autocast_pays

    device = _jac_device(codec)
    try:
        bf16 = bf16_autocast_pays(device)
    except (RuntimeError, ValueError):  # a device torch does not know: encoding will report it
        bf16 = None
    return {
        "model": _jac_model(codec), "device": device, "code": code_digest(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "bf16_search": bf16,
    }  # fmt: skip


def _fingerprint(codec: Codec, identity: dict[str, Any]) -> str:
    """What identifies a codec's results across runs.

    Its label, settings and :func:`_identity`, and the versions of the packages that make or measure the
    numbers (:func:`_versions`).
    """
    parts: dict[str, Any] = {"label": codec.label, "settings": codec.settings, **identity, "versions": _versions()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pixels_hash(image: np.ndarray) -> str:
    """A digest of an image's shape and pixels: the cache's key to an image's content."""
    digest = hashlib.sha256(repr((image.shape, str(image.dtype))).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()[:16]


#: the side of the crop :func:`warm_up` codes
WARM_UP_SIDE = 64


def warm_up(codec: Codec, image: np.ndarray) -> None:
    """One untimed encode and decode of ``image``'s top-left crop (at most 64 x 64) in the middle of the ladder.

    A codec's first call also pays its start-up (a library's initialisation, the ``.jac`` model's weights):
    :func:`run` calls this once per codec before its first timed point, so that no point's time includes it.
    """
    crop = np.ascontiguousarray(image[:WARM_UP_SIDE, :WARM_UP_SIDE])
    codec.decode(codec.encode(crop, codec.ladder[len(codec.ladder) // 2]))


def measure(codec: Codec, image: np.ndarray, parameter: float, with_ms_ssim: bool = True) -> dict[str, float]:
    """Encode and decode one image at one ladder value; bytes, bpp, PSNR, MS-SSIM and times.

    The times are of this one call: call :func:`warm_up` first, or the codec's start-up is in them.
    """
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


#: installed distributions whose versions ``results.json`` records (read from their metadata: not every
#: one has a ``__version__``)
RECORDED_PACKAGES = ("torch", "constriction", "pytorch-msssim", "pillow-heif", "imagecodecs")


def _versions() -> dict[str, str]:
    """The versions of Python, pillow_jac and the packages that make or measure the numbers (absent ones left out)."""
    from pillow_jac import __version__ as pillow_jac_version

    out = {
        "python": platform.python_version(),
        "pillow_jac": pillow_jac_version,
        "numpy": np.__version__,
        "pillow": Image.__version__,
    }
    for package in RECORDED_PACKAGES:
        try:
            out[package.replace("-", "_")] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _check_names(paths: Sequence[Path]) -> None:
    """Refuse images whose names differ only in their extension: results and cache key images by name."""
    by_stem: dict[str, list[Path]] = {}
    for path in paths:
        by_stem.setdefault(path.stem, []).append(path)
    clashes = [group for group in by_stem.values() if len(group) > 1]
    if clashes:
        named = "; ".join(" and ".join(str(p) for p in group) for group in clashes)
        raise ImageInputError(
            f"images whose names differ only in their extension ({named}): results are keyed by the name "
            "without it; rename or remove one of each"
        )


def _load_images(paths: Sequence[Path]) -> list[tuple[str, np.ndarray]]:
    """``(name, rgb)`` of every image, or one :class:`ImageInputError` naming every file that cannot be measured."""
    _check_names(paths)
    images, problems = [], []
    for path in paths:
        try:
            images.append((path.stem, load_rgb(path)))
        except ImageInputError as e:
            problems.append(str(e))
    if problems:
        raise ImageInputError("\n".join(problems))
    return images


def _recorded_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A codec's settings as ``results.json`` records them: a weights file named portably."""
    out = dict(settings)
    if out.get("weights"):
        out["weights"] = metrics.portable_path(out["weights"])
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

    Raises:
        ImageInputError: an image cannot be measured (not an image, samples wider than 8 bits) or two
            names differ only in their extension; nothing is measured then.
        FileNotFoundError: no images at the top level of ``data``.
    """
    paths = list_images(data, limit)
    images = _load_images(paths)
    out.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}  # codecs whose library is missing here: recorded, so that no comparison is lost unseen
    codecs = get_codecs(
        codec_names, jac_qualities=jac_qualities, jac_device=jac_device, jac_weights=jac_weights, skipped=skipped
    )
    if ladders:
        codecs = [c.with_ladder(ladders[c.name]) if c.name in ladders else c for c in codecs]
    if with_ms_ssim and not metrics.ms_ssim_available():
        log("note: pytorch-msssim is not installed: no MS-SSIM (pip install pytorch-msssim)")
        with_ms_ssim = False
    cache_path = out / "cache.jsonl"
    cache: dict[tuple, dict[str, Any]] = {}
    if resume and cache_path.exists():
        unused = 0
        for line in cache_path.read_text().splitlines():
            try:
                rec = json.loads(line)
                if not set(_POINT_KEYS) <= rec.keys():
                    raise KeyError("a point's measurements")
                cache[(rec["codec"], rec["key"], float(rec["param"]), rec["image"], rec["pixels"])] = rec
            except (ValueError, KeyError, TypeError, AttributeError):  # damaged, or written by an older version
                unused += 1
        log(f"resume: {len(cache)} cached points in {cache_path}" + (f", {unused} lines unused" if unused else ""))
    elif cache_path.exists():
        cache_path.unlink()
    digests = [_pixels_hash(image) for _, image in images]
    results: dict[str, Any] = {
        "meta": {
            "data": metrics.portable_path(data),
            "images": len(images),
            "image_names": [n for n, _ in images],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": metrics.machine_description(),
            "versions": _versions(),
            "ms_ssim": with_ms_ssim,
            "skipped": skipped,
        },
        "codecs": {},
    }
    total = sum(len(c.ladder) for c in codecs) * len(images)
    done = 0
    start = time.perf_counter()
    with cache_path.open("a") as cache_file:
        for ci, codec in enumerate(codecs, 1):
            identity = _identity(codec)
            key = _fingerprint(codec, identity)
            warmed = False
            per_image: dict[str, list[dict[str, Any]]] = {}
            for ii, ((name, image), digest) in enumerate(zip(images, digests, strict=True), 1):
                t0 = time.perf_counter()
                points = []
                for param in codec.ladder:
                    rec = cache.get((codec.name, key, float(param), name, digest))
                    if rec is not None and with_ms_ssim and not rec.get("with_ms_ssim"):
                        rec = None  # measured without MS-SSIM: measured again
                    reused = rec is not None
                    if rec is None:
                        if not warmed:
                            warm_up(codec, images[0][1])
                            warmed = True
                        rec = {"codec": codec.name, "key": key, "param": float(param), "image": name}
                        rec.update(pixels=digest, with_ms_ssim=with_ms_ssim)
                        rec.update(measure(codec, image, param, with_ms_ssim))
                        cache_file.write(json.dumps(rec) + "\n")
                        cache_file.flush()
                    point = {k: v for k, v in rec.items() if k not in _CACHE_ONLY}
                    if reused:
                        point["reused"] = True  # from an earlier run: its times are that run's
                    if not with_ms_ssim:
                        point["ms_ssim"] = math.nan  # as the run asked, also where the cached point has one
                    points.append(point)
                    done += 1
                per_image[name] = points
                elapsed = time.perf_counter() - start
                eta = elapsed / done * (total - done) if done else 0.0
                bpps = ", ".join(f"{p['bpp']:.3f}" for p in points)
                log(
                    f"[{ci}/{len(codecs)} {codec.name}] {name} ({ii}/{len(images)}) {time.perf_counter() - t0:.1f} s; "
                    f"bpp {bpps}; elapsed {elapsed:.0f} s, eta {eta:.0f} s"
                )
            entry: dict[str, Any] = {
                "label": codec.label,
                "parameter": codec.parameter,
                "ladder": list(codec.ladder),
                "settings": _recorded_settings(codec.settings),
            }
            entry.update(identity)
            entry.update(per_image=per_image, average=average(per_image))
            results["codecs"][codec.name] = entry
    if published is None:
        published = default_published(data, published_dir, [(name, image.shape) for name, image in images])
    results["published"] = load_published(published_dir, published)
    measured = {name: c["average"] for name, c in results["codecs"].items()}
    results["bd_rate"] = bd_table(measured, results["published"])
    for name in measured:  # each higher encoder effort of .jac against the same anchors
        if name.startswith("jac-"):
            results.setdefault("bd_rate_by_codec", {})[name] = bd_table(measured, results["published"], test=name)
    (out / "results.json").write_text(metrics.json_text(results))
    write_markdown(out / "rd.md", results)
    plotted = plot(out / "rd.png", results, max_bpp)
    log(f"wrote {out / 'results.json'}, {out / 'rd.md'}" + (f", {out / 'rd.png'}" if plotted else ""))
    return results


#: the keys of a cache line that are not the point's
_CACHE_ONLY = ("codec", "key", "image", "pixels", "with_ms_ssim")
#: what :func:`measure` returns: a cache line lacking one is not used
_POINT_KEYS = ("bytes", "bpp", "psnr", "ms_ssim", "encode_s", "decode_s")


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
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder of 8-bit PNG, PPM, BMP, TIFF or WebP images, its top level only: subfolders are not "
        "searched (default: shared/data/kodak)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/rd"), help="output directory")
    parser.add_argument("--limit", type=limit_argument, default=None, help="use only the first N images (N >= 1)")
    parser.add_argument(
        "--codecs",
        help=f"comma-separated (default {','.join(DEFAULT_CODECS)}, those of them whose library is installed; one "
        "named here that cannot run makes the exit status 1)",
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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the matching points of OUT/cache.jsonl; results.json holds only the codecs of --codecs, "
        "so to add a codec to a run list every codec",
    )
    parser.add_argument("--max-bpp", type=float, default=2.0, help="x range of the plot")
    args = parser.parse_args(argv)

    data = args.data or find_shared("data/kodak")
    if data is None:
        parser.error("no --data given and no shared/data/kodak found")
    anchors = args.anchors or find_shared("anchors/kodak")
    names = None if args.published is None else [p for p in args.published.split(",") if p]
    try:
        list_images(data, args.limit)  # a wrong --data is an error message, before torch is imported
    except FileNotFoundError as e:
        return input_error(parser.prog, e)
    if args.threads:
        from pillow_jac.passive_torch import torch  # the codec's OpenMP wait policy, as users get it

        torch.set_num_threads(args.threads)
    try:
        results = run(
            data=data,
            out=args.out,
            codec_names=[c for c in (args.codecs or ",".join(DEFAULT_CODECS)).split(",") if c],
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
    except ImageInputError as e:
        return input_error(parser.prog, e)
    if args.codecs and results["meta"]["skipped"]:
        for name, why in results["meta"]["skipped"].items():
            print(f"{parser.prog}: error: {name} was asked for and not measured: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
