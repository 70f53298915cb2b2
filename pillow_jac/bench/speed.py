r"""Speed and memory benchmark: ``.jac``, the classical codecs and CompressAI's mbt2018, in one run.

Usage (from the repository root)::

    python -m pillow_jac.bench.speed --image ../shared/data/kodak/kodim01.png \
        --compressai-python ../bench-venv/bin/python
    python -m pillow_jac.bench.speed --sizes --max-mem 12G

Every measurement (one codec, one operation, one thread count, one device) runs in a fresh Python subprocess
(:mod:`pillow_jac.bench.isolated`), so that its peak memory (``VmHWM`` on Linux, else ``getrusage``'s
``ru_maxrss``) is its own. The child first encodes and decodes a 64x64 crop (loading the weights, warming
caches), records its peak RSS so far as the *baseline*, then times ``--repeat`` calls on the real input; the
report gives the median and the fastest call, the baseline and the peak RSS (the peak minus the baseline is
what the operation itself needed). The parent also samples the child's RSS with psutil (when installed) and
kills it above ``--max-mem``.

``.jac`` is measured with 1 and 2 torch threads (``--threads``) on the CPU and, when CUDA is
available, on the GPU. The classical codecs do not use torch: they run once, with their libraries'
default threading. CompressAI's ``JointAutoregressiveHierarchicalPriors(N=128, M=192)`` with random
weights (``torch.manual_seed(0)``, ``update(force=True)``, then ``compress``/``decompress``) is measured
in the same run when ``compressai`` imports, in this interpreter or in the one given by
``--compressai-python`` (a separate virtualenv: CompressAI is never a dependency of pillow_jac); the
report prints the ratios CompressAI time / ``.jac`` time.

``--sizes`` times ``.jac`` alone at about 0.4, 2, 8 and 24 megapixels (the image tiled with mirroring),
skipping a size whose memory, extrapolated from the previous size, would exceed ``--max-mem``.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import MAX_EFFORT
from . import log, metrics
from .codecs import ALL_CODECS, get_codec
from .images import ImageInputError, check_images, find_shared, input_error, load_rgb
from .isolated import MIB, measure_in_subprocess
from .metrics import portable_path

__all__ = ["main", "measure_in_subprocess", "tile_image", "parse_memory", "SPEED_PARAMS", "SIZES"]

#: the ladder value each codec is timed at (about the middle of its useful range on Kodak)
SPEED_PARAMS: dict[str, float] = {
    "jac": 4,
    "jpeg420": 75,
    "jpeg444": 75,
    "webp": 75,
    "avif": 60,
    "avif420": 60,
    "jpeg2000": 1.0,
    "heic": 40,
    "heic420": 40,
    "jxl": 1.8,
    **{f"jac-e{e}": 4 for e in range(1, MAX_EFFORT + 1)},
}
#: codecs timed by default besides .jac
DEFAULT_SPEED_CODECS = ("jac", "jpeg420", "webp", "avif", "jpeg2000", "heic", "jxl")
#: image sizes of ``--sizes``: about 0.4, 2, 8 and 24 megapixels
SIZES: tuple[tuple[int, int], ...] = ((768, 512), (1728, 1152), (3456, 2304), (6000, 4000))


def parse_memory(text: str) -> int:
    """Bytes of memory from ``"12G"``, ``"800M"``, ``"1.5GiB"`` or a plain number: K, M, G and T are powers of 1024.

    Binary, as memory is counted (``12G`` is ``12 * 2**30``): a size target
    (:func:`pillow_jac.targets.parse_size`) reads ``k``, ``M`` and ``G`` as powers of 1000.

    Example:
        >>> parse_memory("1.5G") == 3 * 2**29, parse_memory("12k")
        (True, 12288)
    """
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "KMGT" else t
    return int(float(number) * scale)


def tile_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` repeated with mirroring (no seams) to ``height x width``.

    Example:
        >>> import numpy as np
        >>> tile_image(np.arange(6, dtype=np.uint8).reshape(1, 2, 3), 5, 2)[:, :, 0].tolist()
        [[0, 3, 3, 0, 0], [0, 3, 3, 0, 0]]
    """
    h, w = image.shape[:2]
    block = np.concatenate([image, image[:, ::-1]], axis=1)
    block = np.concatenate([block, block[::-1]], axis=0)
    reps = (math.ceil(height / (2 * h)), math.ceil(width / (2 * w))) + (1,) * (image.ndim - 2)
    return np.ascontiguousarray(np.tile(block, reps)[:height, :width])


def _encode_decode(
    base: dict[str, Any],
    image_path: Path,
    pixels: int,
    work: Path,
    python: str,
    max_mem: int | None,
    tag: str,
) -> dict[str, dict[str, Any]]:
    stream = work / f"{tag}.bin"
    stream.unlink(missing_ok=True)
    enc = measure_in_subprocess(
        {**base, "op": "encode", "input": str(image_path), "output": str(stream)}, python, max_mem
    )
    _report(tag, "encode", enc)
    if "error" in enc or not stream.exists():
        return {"encode": enc, "decode": {"error": "no bitstream"}}
    dec = measure_in_subprocess({**base, "op": "decode", "input": str(stream), "pixels": pixels}, python, max_mem)
    _report(tag, "decode", dec)
    return {"encode": enc, "decode": dec}


def _report(tag: str, op: str, rec: dict[str, Any]) -> None:
    if "error" in rec:
        log(f"  {tag} {op}: {rec['error']}")
    else:
        log(
            f"  {tag} {op}: median {rec['median_s']:.3f} s (min {rec['min_s']:.3f} s), peak RSS "
            f"{rec['peak_rss'] / MIB:.0f} MiB (baseline {rec['baseline_rss'] / MIB:.0f} MiB), {rec['bpp']:.3f} bpp"
        )


def _compressai_python(requested: str | None) -> str | None:
    """The interpreter that can import compressai: ``requested``, else this one if it can, else None.

    An interpreter that cannot be run (a wrong ``--compressai-python``) is noted on stderr as one that lacks
    compressai: the run goes on without CompressAI and keeps the other codecs' measurements.
    """
    # a path relative to here (``../bench-venv/bin/python``) is made absolute, as the probe and the measurements
    # run in another folder; its links are kept (a virtualenv's python is one); a bare name is looked up on PATH
    if requested and os.sep in requested:
        requested = os.path.abspath(requested)
    candidates = [requested] if requested else [sys.executable]
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-c", "import compressai.models, sys; print(compressai.__version__)"],
                capture_output=True,
                text=True,
                cwd=tempfile.gettempdir(),
            )
        except OSError as e:  # no such file, not executable, not a program: as compressai not importing
            log(f"note: compressai does not import in {python}: cannot run it ({type(e).__name__}: {e})")
            continue
        if probe.returncode == 0:
            log(f"CompressAI {probe.stdout.strip()} via {python}")
            return python
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        log(f"note: compressai does not import in {python}: {last}")
    if not requested:
        log("note: pass --compressai-python PATH (a virtualenv with compressai) to time CompressAI's mbt2018")
    return None


def _fmt_s(rec: dict[str, Any]) -> str:
    return rec.get("error", "n/a")[:40] if "median_s" not in rec else f"{rec['median_s']:.3f}"


def _fmt_mem(rec: dict[str, Any]) -> str:
    if "peak_rss" not in rec:
        return "n/a"
    text = f"{rec['peak_rss'] / MIB:.0f} ({rec['baseline_rss'] / MIB:.0f})"
    if "cuda_peak_allocated" in rec:
        text += f", GPU {rec['cuda_peak_allocated'] / MIB:.0f}"
    return text


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    return a["median_s"] / b["median_s"] if "median_s" in a and "median_s" in b and b["median_s"] > 0 else math.nan


def run_codecs(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Time every codec on one image; returns the report dict (also printed as markdown)."""
    image_path = Path(args.image)
    image = load_rgb(image_path)
    pixels = image.shape[0] * image.shape[1]
    cpu_image = work / "input.npy"
    np.save(cpu_image, image)
    rows: list[dict[str, Any]] = []
    available = []
    for name in args.codecs:
        try:
            get_codec(name)
            available.append(name)
        except Exception as e:  # noqa: BLE001  (CodecUnavailable, or a broken optional library)
            log(f"note: skipping {name}: {e}")
    params = {**SPEED_PARAMS, **dict(args.param)}
    devices = _devices(args.devices)
    for name in available:
        settings = [(d, t) for d in devices for t in args.threads] if name.startswith("jac") else [("cpu", 0)]
        for device, threads in settings:
            tag = f"{name}-{device}-{threads}t"
            log(f"{tag} (param {params[name]:g})")
            base = {"codec": name, "param": params[name], "threads": threads or 1, "device": device}
            base["repeat"] = args.repeat
            result = _encode_decode(base, cpu_image, pixels, work, sys.executable, args.max_mem, tag)
            rows.append({"codec": name, "device": device, "threads": threads or None, "param": params[name], **result})
    cai_python = None if args.no_compressai else _compressai_python(args.compressai_python)
    if cai_python:
        for device in devices:
            for threads in args.threads:
                tag = f"compressai-{device}-{threads}t"
                log(f"{tag} (mbt2018 N={args.N} M={args.M}, random weights)")
                base = {"codec": "compressai", "threads": threads, "device": device, "repeat": args.cai_repeat}
                base.update(N=args.N, M=args.M, param=0)
                result = _encode_decode(base, cpu_image, pixels, work, cai_python, args.max_mem, tag)
                rows.append({"codec": "compressai", "device": device, "threads": threads, "param": None, **result})
    ratios = []
    for row in rows:
        if row["codec"] != "compressai":
            continue
        jac = next(
            (
                r
                for r in rows
                if r["codec"] == "jac" and r["device"] == row["device"] and r["threads"] == row["threads"]
            ),
            None,
        )
        if jac is not None:
            ratios.append(
                {
                    "device": row["device"],
                    "threads": row["threads"],
                    "encode": _ratio(row["encode"], jac["encode"]),
                    "decode": _ratio(row["decode"], jac["decode"]),
                }
            )
    return {
        "image": portable_path(image_path),
        "width": image.shape[1],
        "height": image.shape[0],
        "rows": rows,
        "ratios": ratios,
    }


def _devices(text: str) -> list[str]:
    if text != "auto":
        return [d for d in text.split(",") if d]
    try:
        import torch

        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    except ImportError:
        return ["cpu"]


def codecs_markdown(report: dict[str, Any], meta: dict[str, Any]) -> str:
    """The codec timing table and the CompressAI ratios as markdown."""
    lines = [
        "# Speed",
        "",
        f"`{report['image']}` ({report['width']}x{report['height']}); {meta['machine']}; {meta['date']}.",
        "Median of the timed calls after a warm-up (a small image, then one untimed call on this one), each "
        "measurement in a fresh process. Memory: peak RSS in MiB (baseline after imports and the small image's "
        "warm-up in parentheses).",
        "",
        "| codec | param | device | threads | bpp | encode (s) | decode (s) | encode peak MiB | decode peak MiB |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in report["rows"]:
        enc, dec = r["encode"], r["decode"]
        param = "-" if r["param"] is None else f"{r['param']:g}"
        bpp = f"{enc['bpp']:.3f}" if "bpp" in enc else "n/a"
        lines.append(
            f"| {r['codec']} | {param} | {r['device']} | {r['threads'] or '-'} | {bpp} | {_fmt_s(enc)} | "
            f"{_fmt_s(dec)} | {_fmt_mem(enc)} | {_fmt_mem(dec)} |"
        )
    if report["ratios"]:
        lines += ["", "CompressAI mbt2018 time / .jac time (same device and threads; above 1: .jac is faster):", ""]
        for q in report["ratios"]:
            lines.append(
                f"- {q['device']}, {q['threads']} thread(s): encode {q['encode']:.2f}x, decode {q['decode']:.2f}x"
            )
    return "\n".join(lines) + "\n"


def run_sizes(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Time ``.jac`` at growing image sizes, skipping those predicted to exceed ``--max-mem``."""
    source = load_rgb(args.image)
    device = _devices(args.devices)[-1] if args.devices == "auto" else args.devices.split(",")[0]
    rows = []
    previous: dict[str, Any] | None = None
    for width, height in args.size_list:
        pixels = width * height
        tag = f"jac-{width}x{height}"
        row: dict[str, Any] = {"width": width, "height": height, "megapixels": pixels / 1e6}
        if previous is not None and args.max_mem is not None:
            estimate = 0
            for op in ("encode", "decode"):
                rec = previous[op]
                if "peak_rss" in rec:
                    grow = max(rec["peak_rss"] - rec["baseline_rss"], 0) * pixels / previous["pixels"]
                    estimate = max(estimate, rec["baseline_rss"] + grow)
            if estimate > args.max_mem:
                row["skipped"] = f"estimated peak {estimate / MIB:.0f} MiB > --max-mem {args.max_mem / MIB:.0f} MiB"
                log(f"{tag}: skipped, {row['skipped']}")
                rows.append(row)
                continue
        log(f"{tag} ({pixels / 1e6:.2f} MP), quality {args.size_quality:g}, {args.size_threads} thread(s), {device}")
        path = work / f"tile-{width}x{height}.npy"
        np.save(path, tile_image(source, width, height))
        base = {"codec": "jac", "param": args.size_quality, "threads": args.size_threads, "device": device, "repeat": 1}
        result = _encode_decode(base, path, pixels, work, sys.executable, args.max_mem, tag)
        path.unlink(missing_ok=True)
        row.update(result)
        rows.append(row)
        if "peak_rss" in result["encode"]:
            previous = {**result, "pixels": pixels}
    return {
        "quality": args.size_quality,
        "threads": args.size_threads,
        "device": device,
        "max_mem": args.max_mem,
        "rows": rows,
    }


def sizes_markdown(report: dict[str, Any]) -> str:
    """The ``--sizes`` table as markdown."""
    lines = [
        f"## .jac at growing sizes (quality {report['quality']:g}, {report['threads']} thread(s), {report['device']})",
        "",
        "| size | MP | encode (s) | decode (s) | encode peak MiB | decode peak MiB | note |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in report["rows"]:
        size = f"{r['width']}x{r['height']}"
        if "skipped" in r:
            lines.append(f"| {size} | {r['megapixels']:.1f} | - | - | - | - | skipped: {r['skipped']} |")
            continue
        enc, dec = r["encode"], r["decode"]
        note = enc.get("error") or dec.get("error") or ""
        lines.append(
            f"| {size} | {r['megapixels']:.1f} | {_fmt_s(enc)} | {_fmt_s(dec)} | {_fmt_mem(enc)} | {_fmt_mem(dec)} "
            f"| {note} |"
        )
    return "\n".join(lines) + "\n"


def _parse_param(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if not value:
        raise argparse.ArgumentTypeError(f"expected CODEC=VALUE, got {text!r}")
    return name.strip(), float(value)


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        w, _, h = item.lower().partition("x")
        out.append((int(w), int(h)))
    return out


def _default_model() -> dict[str, Any]:
    """The generation the ``.jac`` codecs encode with (the default), as ``bench.rd`` records it."""
    from .. import generations

    try:
        gen = generations.encoder()
    except (LookupError, OSError) as e:  # recorded; encoding will report it
        return {"error": type(e).__name__}
    return metrics.model_record(gen)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m pillow_jac.bench.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=None, help="image to time (default: shared/data/kodak/kodim01.png)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/speed"), help="output directory")
    parser.add_argument(
        "--codecs", default=",".join(DEFAULT_SPEED_CODECS), help=f"comma-separated, from {','.join(ALL_CODECS)}"
    )
    parser.add_argument("--param", type=_parse_param, action="append", default=[], help="CODEC=VALUE to time at")
    parser.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    parser.add_argument("--devices", default="auto", help="cpu, cuda or both (default: cuda too when available)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (median reported)")
    parser.add_argument(
        "--max-mem",
        type=parse_memory,
        default=None,
        help="e.g. 12G; K, M, G, T are powers of 1024 (12G = 12 GiB) (default: half of the RAM)",
    )
    parser.add_argument("--compressai-python", default=None, help="interpreter of a virtualenv with compressai")
    parser.add_argument("--no-compressai", action="store_true", help="do not time CompressAI")
    parser.add_argument("--cai-repeat", type=int, default=1, help="timed calls for CompressAI (it is slow)")
    parser.add_argument("-N", type=int, default=128, help="CompressAI model N")
    parser.add_argument("-M", type=int, default=192, help="CompressAI model M")
    parser.add_argument("--sizes", action="store_true", help="time .jac at about 0.4, 2, 8 and 24 megapixels instead")
    parser.add_argument(
        "--size-list",
        type=_parse_sizes,
        default=list(SIZES),
        help="sizes for --sizes, e.g. 768x512,1728x1152,3456x2304,6000x4000",
    )
    parser.add_argument("--size-quality", type=float, default=4.0, help=".jac quality for --sizes")
    parser.add_argument("--size-threads", type=int, default=2, help="torch threads for --sizes")
    args = parser.parse_args(argv)

    if args.image is None:
        kodak = find_shared("data/kodak")
        if kodak is None:
            parser.error("no --image given and no shared/data/kodak found")
        args.image = str(kodak / "kodim01.png")
    if args.max_mem is None:
        args.max_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    args.codecs = [c for c in args.codecs.split(",") if c]
    try:
        check_images([Path(args.image)])
    except ImageInputError as e:
        return input_error(parser.prog, e)
    args.out.mkdir(parents=True, exist_ok=True)

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": metrics.machine_description(),
        "load_average": os.getloadavg(),
        "model": _default_model(),
    }
    with tempfile.TemporaryDirectory(prefix="jac-speed-") as tmp:
        if args.sizes:
            report = run_sizes(args, Path(tmp))
            text = sizes_markdown(report)
            name = "sizes"
        else:
            report = run_codecs(args, Path(tmp))
            text = codecs_markdown(report, meta)
            name = "speed"
    report["meta"] = meta
    (args.out / f"{name}.json").write_text(metrics.json_text(report) + "\n")
    (args.out / f"{name}.md").write_text(text)
    print(text)
    log(f"wrote {args.out / (name + '.json')} and {args.out / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
