r"""Bulk throughput: images/s and peak GPU memory of :func:`~pillow_jac.codec_batch.encode_batch` and ``decode_batch``.

Usage (from the repository root)::

    python -m pillow_jac.bench.throughput --device cuda --sizes 768x512,4000x3000 --batch 1,4,8
    python -m pillow_jac.bench.throughput --device cpu --sizes 256x192 --batch 1,4 --images 4

For every size (width x height) the benchmark makes ``--images`` different images of that size (the
source image tiled with mirroring, each shifted by a few pixels) and, for every batch size, times one
:func:`~pillow_jac.codec_batch.encode_batch` call over all of them and one
:func:`~pillow_jac.codec_batch.decode_batch` call over the files it wrote, after an untimed warm-up call of
the same batch size (model loading, CUDA kernels). On CUDA, ``torch.cuda.max_memory_allocated`` is
reset before each timed call and read after it: the peak GPU memory of that call, weights included.

Sizes too large to batch (more than one stripe of the per-image path, about 2 padded megapixels:
:func:`pillow_jac.codec_batch.batchable`) are coded one at a time whatever the batch size, so they are
timed once, at batch size 1, over ``--large-images`` images.

Each batched row also says how exactly batching reproduces the per-image path on that device: how
many of its files are the bytes that batch size 1 wrote, and the fraction of pixel values (and the
largest difference) by which ``decode_batch`` of the batch-size-1 files differs from their decode at
batch size 1. Batch size 1 is measured first; when it is not among the batch sizes, its files and
decodes are made untimed for this comparison.

Writes ``throughput.json`` and ``throughput.md`` to ``--out`` (default ``bench_out/throughput``) after
every row, so a run stopped by a time limit keeps the rows it finished; the source image is named
relative to the repository (or by its file name), never by absolute path.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import codec_batch, container
from . import log, metrics
from .images import ImageInputError, find_shared, input_error, load_rgb
from .metrics import portable_path
from .speed import tile_image

__all__ = ["main", "run", "markdown", "parse_sizes", "make_images", "DEFAULT_SIZES", "DEFAULT_BATCHES"]

#: about 0.4 and 12 megapixels
DEFAULT_SIZES = ((768, 512), (4000, 3000))
DEFAULT_BATCHES = (1, 4, 8)
#: where the reports go without ``--out`` (git-ignored)
DEFAULT_OUT = Path("bench_out/throughput")
MIB = 1 << 20


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``(width, height)`` pairs from ``"768x512,4000x3000"``.

    Example:
        >>> parse_sizes("768x512, 4000x3000")
        [(768, 512), (4000, 3000)]
    """
    sizes = []
    for part in text.split(","):
        if part.strip():
            width, _, height = part.strip().lower().partition("x")
            sizes.append((int(width), int(height)))
    return sizes


def make_images(source: np.ndarray, width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` different ``height x width`` RGB images: ``source`` tiled with mirroring, shifted by 7 pixels each.

    Example:
        >>> images = make_images(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), 6, 5, 2)
        >>> [im.shape for im in images], bool((images[0] != images[1]).any())
        ([(5, 6, 3), (5, 6, 3)], True)
    """
    tiled = tile_image(source, width + 7 * count, height + 7 * count)
    return [np.ascontiguousarray(tiled[7 * i : 7 * i + height, 7 * i : 7 * i + width]) for i in range(count)]


def _synthetic(height: int = 512, width: int = 768) -> np.ndarray:
    """A smooth colour image with some noise, for machines without the Kodak images."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [128 + 90 * np.sin(0.03 * (c + 1) * xx + c) * np.cos(0.05 * yy + c) for c in range(3)]
    return np.clip(np.stack(planes, axis=2) + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)


def _timed(function, device):
    """``(result, seconds, peak GPU bytes or None)`` of ``function()`` on ``device``."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = function()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return result, seconds, torch.cuda.max_memory_allocated(device) if cuda else None


def run(
    source: np.ndarray,
    sizes: Sequence[tuple[int, int]],
    batches: Sequence[int],
    device,
    images: int = 8,
    large_images: int = 2,
    quality: float = 4.0,
    on_row: Any = None,
) -> list[dict[str, Any]]:
    """One row per (size, batch size) measured, batch size 1 first; see the module doc.

    ``on_row``: called with the rows so far after each one, so that a run stopped by a time limit keeps
    what it measured.
    """
    rows: list[dict[str, Any]] = []
    for width, height in sizes:
        y_shape, _ = container.latent_shapes(width, height)
        batched = codec_batch.batchable(y_shape)
        count = images if batched else large_images
        pictures = make_images(source, width, height, count)
        measured = sorted(set(batches), key=lambda b: (b != 1, b)) if batched else [1]
        reference: tuple[list[bytes], list[np.ndarray]] | None = None
        if 1 not in measured:  # the rows are compared with batch size 1: its files and decodes, untimed
            files = codec_batch.encode_batch(pictures, quality, device=device, batch_size=1)
            reference = files, codec_batch.decode_batch(files, device=device, batch_size=1)
        for batch in measured:
            warm = pictures[: min(batch, count)]
            codec_batch.decode_batch(
                codec_batch.encode_batch(warm, quality, device=device, batch_size=batch), device=device
            )
            files, encode_s, encode_peak = _timed(
                lambda b=batch, p=pictures: codec_batch.encode_batch(p, quality, device=device, batch_size=b), device
            )
            decoded, decode_s, decode_peak = _timed(
                lambda b=batch, f=files: codec_batch.decode_batch(f, device=device, batch_size=b), device
            )
            row: dict[str, Any] = {
                "size": f"{width}x{height}",
                "megapixels": round(width * height / 1e6, 2),
                "batch": batch,
                "batched": batched,
                "images": count,
                "encode_seconds": encode_s,
                "encode_images_per_second": count / encode_s,
                "encode_peak_gpu_mib": None if encode_peak is None else encode_peak / MIB,
                "decode_seconds": decode_s,
                "decode_images_per_second": count / decode_s,
                "decode_peak_gpu_mib": None if decode_peak is None else decode_peak / MIB,
                "mean_file_bytes": sum(len(f) for f in files) / count,
            }
            if batch == 1:
                reference = files, decoded
            else:
                same_input = codec_batch.decode_batch(reference[0], device=device, batch_size=batch)
                differ = [a.astype(np.int16) - b for a, b in zip(same_input, reference[1], strict=True)]
                row["files_identical_to_batch_1"] = sum(a == b for a, b in zip(files, reference[0], strict=True))
                row["pixel_values_differing_from_batch_1"] = sum(int((d != 0).sum()) for d in differ) / sum(
                    d.size for d in differ
                )
                row["largest_pixel_difference"] = max(int(np.abs(d).max()) for d in differ)
            rows.append(row)
            if on_row is not None:
                on_row(rows)
            gpu = "" if encode_peak is None else f", peak GPU {encode_peak / MIB:.0f} / {decode_peak / MIB:.0f} MiB"
            log(
                f"{width}x{height} batch {batch}{'' if batched else ' (one at a time)'}: "
                f"encode {count / encode_s:.2f} images/s, decode {count / decode_s:.2f} images/s{gpu}"
            )
    return rows


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    meta = report["meta"]
    lines = [
        "# Bulk throughput (encode_batch / decode_batch)",
        "",
        f"`{meta['command']}`",
        "",
        f"Device: {meta['device']}. Machine: {meta['machine']}. torch {meta['torch']}, model {meta['model_id']}, "
        f"quality {meta['quality']:g}, source image {meta['source']}, {meta['date']}.",
        "",
        "Peak GPU memory is `torch.cuda.max_memory_allocated` during the timed call, weights included. "
        "Sizes above one stripe (about 2 padded megapixels) are coded one at a time and timed at batch size 1. "
        "*identical* counts the files equal to batch size 1's; *pixels differing* compares decode_batch of the "
        "batch-size-1 files with their decode at batch size 1.",
        "",
        "| size | MP | batch | images | encode images/s | decode images/s | peak GPU MiB encode / decode "
        "| identical | pixels differing (max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        batch = str(r["batch"]) if r["batched"] else "1 (one at a time)"
        identical, differing = r.get("files_identical_to_batch_1"), r.get("pixel_values_differing_from_batch_1")
        identical = "-" if identical is None else f"{identical}/{r['images']}"
        differing = "-" if differing is None else f"{differing:.2e} ({r['largest_pixel_difference']})"
        lines.append(
            f"| {r['size']} | {r['megapixels']:g} | {batch} | {r['images']} | {r['encode_images_per_second']:.2f} "
            f"| {r['decode_images_per_second']:.2f} | {_cell(r['encode_peak_gpu_mib'], '.0f')} / "
            f"{_cell(r['decode_peak_gpu_mib'], '.0f')} | {identical} | {differing} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m pillow_jac.bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES), help="e.g. 768x512,4000x3000")
    parser.add_argument(
        "--batch", type=lambda s: [int(v) for v in s.split(",") if v.strip()], default=list(DEFAULT_BATCHES),
        help="batch sizes, e.g. 1,4,8 (1 is measured first and the others are compared with it; without 1, its "
        "files are made untimed for the comparison)",
    )  # fmt: skip
    parser.add_argument("--images", type=int, default=8, help="images per batchable size (default 8)")
    parser.add_argument("--large-images", type=int, default=2, help="images per size too large to batch (default 2)")
    parser.add_argument("--quality", type=float, default=4.0, help="quality (default 4)")
    parser.add_argument("--image", type=Path, default=None, help="source image (default: kodim01, else synthetic)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where throughput.{{json,md}} go (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    if min(args.batch, default=0) < 1 or args.images < 1 or args.large_images < 1:
        parser.error("batch sizes and image counts must be at least 1")
    import torch

    from ..engine import get_engine, resolve_device

    device = resolve_device(args.device)
    batches = sorted(set(args.batch), key=lambda b: (b != 1, b))
    image = args.image or find_shared("data/kodak/kodim01.png")
    try:
        source = load_rgb(image) if image is not None else _synthetic()
    except ImageInputError as e:
        return input_error(parser.prog, e)
    source_name = portable_path(image) if image is not None else "synthetic"
    shown = ["python -m pillow_jac.bench.throughput", "--device", str(device)]
    shown += ["--sizes", ",".join(f"{w}x{h}" for w, h in args.sizes), "--batch", ",".join(map(str, batches))]
    shown += ["--images", str(args.images), "--large-images", str(args.large_images), "--quality", f"{args.quality:g}"]
    if args.image is not None:
        shown += ["--image", source_name]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    report = {
        "meta": {
            "device": name,
            "machine": metrics.machine_description(),
            "torch": torch.__version__,
            "model_id": get_engine(device).model_id,
            "quality": args.quality,
            "source": source_name,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(shown),
        },
        "rows": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict[str, Any]]) -> None:  # after every row: a time limit keeps what was measured
        report["rows"] = rows
        (args.out / "throughput.json").write_text(metrics.json_text(report) + "\n")
        (args.out / "throughput.md").write_text(markdown(report))

    write(run(source, args.sizes, batches, device, args.images, args.large_images, args.quality, on_row=write))
    log(f"wrote {args.out / 'throughput.json'} and {args.out / 'throughput.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
