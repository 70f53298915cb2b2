"""The reference images of the benchmarks: finding them, reading them as 8-bit RGB, refusing what would be clipped.

:func:`list_images` lists a folder's lossless images (:data:`IMAGE_SUFFIXES`), :func:`load_rgb` reads one as
the ``H x W x 3`` uint8 RGB array every adapter of :mod:`pillow_jac.bench.codecs` takes, and
:func:`check_images` refuses by their headers, before any work, the files :func:`load_rgb` would refuse
(:class:`ImageInputError`). :func:`find_shared` finds the data sets and anchors under ``shared/``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInputError",
    "list_images",
    "limit_argument",
    "load_rgb",
    "check_images",
    "input_error",
    "find_shared",
]

#: reference images are read from these; WebP is taken as it is (../shared/data/urban20 holds lossless WebP)
IMAGE_SUFFIXES = (".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
#: modes whose samples are wider than 8 bits: integer (16 or 32 bits) and float
_WIDE_MODES = ("I", "F")
#: raw modes of 16- and 32-bit samples that Pillow opens under an 8-bit mode ("RGB;16B" of a 16-bit RGB PNG);
#: BMP's packed 5-6-5 pixels ("BGR;16") are not among them
_WIDE_RAWMODE = re.compile(r";(16[BLN]|32)")


class ImageInputError(ValueError):
    """An input image the benchmarks cannot measure faithfully (its message names the file)."""


def list_images(directory: str | Path, limit: int | None = None) -> list[Path]:
    """Lossless images at the top level of ``directory`` (subfolders are not searched), sorted by name.

    Args:
        directory: the folder of images (:data:`IMAGE_SUFFIXES`).
        limit: at most this many, the first by name; ``None`` for all.

    Raises:
        FileNotFoundError: no such folder, or no image at its top level (the message names a subfolder
            that holds some, when one does).
        ValueError: ``limit`` below 1.
    """
    directory = Path(directory)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for every image), got {limit}")
    if not directory.is_dir():
        raise FileNotFoundError(f"no such image directory: {directory}")
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        below = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        where = ""
        if below:
            where = (
                f"; {len(below)} in its subfolders (e.g. {below[0].relative_to(directory)}), which are not "
                "searched: give the folder that holds the images"
            )
        raise FileNotFoundError(f"no PNG/PPM/BMP/TIFF/WebP images in {directory}{where}")
    return paths[:limit] if limit is not None else paths


def limit_argument(text: str) -> int:
    """The ``--limit`` of the benchmarks (an argparse type): how many images :func:`list_images` takes, at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value} (leave --limit out for every image)")
    return value


def _wide_samples(im: Image.Image) -> str | None:
    """How an opened image holds samples wider than 8 bits, or None: its mode, else its decoder's raw mode."""
    if im.mode.split(";")[0] in _WIDE_MODES:
        return f"mode {im.mode}"
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else args
        if isinstance(rawmode, str) and _WIDE_RAWMODE.search(rawmode):
            return f"mode {im.mode} read from {rawmode} samples"
        if tile[0] == "ppm" and isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], int):
            if args[1] > 255:  # PPM/PGM maximum value: above 255 the samples take two bytes
                return f"mode {im.mode} read from samples up to {args[1]}"
    return None


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as an ``H x W x 3`` uint8 RGB array, for measuring codecs on 8-bit RGB.

    Grey and palette images are expanded to RGB. An image whose alpha is not opaque everywhere is measured on
    its colour planes alone: a warning on stderr names it (every codec is given the same RGB planes, so the
    comparison between codecs holds; the colour under transparent pixels counts as any other).

    Raises:
        ImageInputError: the file is not an image Pillow reads, or has samples wider than 8 bits (16-bit or
            32-bit integers, floats): converting those to 8 bits would clip them.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            wide = _wide_samples(im)
            if wide is not None:
                raise ImageInputError(
                    f"{path}: {wide}: samples wider than 8 bits, which 8-bit RGB would clip; the benchmarks "
                    "measure 8-bit images: convert it to 8 bits per sample"
                )
            if im.has_transparency_data:
                alpha = im.convert("RGBA").getchannel("A")
                if alpha.getextrema() != (255, 255):
                    print(
                        f"warning: {path}: mode {im.mode} with transparency: measured on its colour planes, "
                        "alpha dropped",
                        file=sys.stderr,
                        flush=True,
                    )
            return np.asarray(im.convert("RGB"))
    except ImageInputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # unreadable or not an image
        raise ImageInputError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from None


def check_images(paths: Sequence[Path]) -> None:
    """Refuse, before any work, every image :func:`load_rgb` would refuse by its header: one error names them all.

    Only the header is read (no pixels), so a long run over a large folder does not stop at its tenth image
    for a 16-bit file it could have named at the start.

    Raises:
        ImageInputError: a file is not an image Pillow reads, or has samples wider than 8 bits.
    """
    problems = []
    for path in paths:
        try:
            with Image.open(path) as im:
                wide = _wide_samples(im)
            if wide is not None:
                problems.append(f"{path}: {wide}: samples wider than 8 bits, which 8-bit RGB would clip")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            problems.append(f"{path}: cannot be read as an image ({type(e).__name__}: {e})")
    if problems:
        raise ImageInputError(
            "\n".join(problems) + "\nthe benchmarks measure 8-bit images: convert these (or leave them out)"
        )


def input_error(prog: str, error: Exception) -> int:
    """Print a benchmark's input error as the command's error, without a traceback; argparse's exit status 2."""
    print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    return 2


def find_shared(relative: str) -> Path | None:
    """Find ``shared/<relative>`` beside or above the working directory or the package checkout.

    Example:
        >>> find_shared("no/such/thing") is None
        True
    """
    roots = [Path.cwd(), *Path.cwd().parents[:2], *Path(__file__).resolve().parents[2:4]]
    for root in roots:
        candidate = root / "shared" / relative
        if candidate.exists():
            return candidate
    return None
