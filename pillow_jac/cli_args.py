"""The ``jac`` command line's arguments: :func:`build_parser` and the types that check each value.

The commands and what they do are :mod:`pillow_jac.cli`'s; this module says what each command takes. A value
that does not fit is a usage error (exit status 2, argparse's convention) naming the option and the values
it takes.

Example:
    >>> args = build_parser().parse_args(["encode", "photo.png", "photo.jac", "-q", "2.5"])
    >>> args.command, args.quality
    ('encode', 2.5)
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from PIL import Image

from . import __version__
from .constants import (
    DEFAULT_QUALITY,
    DEVICE_CHOICES,
    DEVICE_PATTERN,
    MAX_EFFORT,
    QUALITY_MAX,
    QUALITY_MIN,
    validate_quality,
)
from .conversion import PROG, STDIO
from .preview import PREVIEW_SIZE

__all__ = ["build_parser", "PILLOWS_PIXEL_LIMIT"]

#: ``--max-image-pixels`` not given: Pillow's limit as the process has it
PILLOWS_PIXEL_LIMIT = object()


def _quality(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        allowed = f"{QUALITY_MIN:g} to {QUALITY_MAX:g}"
        raise argparse.ArgumentTypeError(f"quality must be a number from {allowed}, got {text!r}") from None
    try:
        return validate_quality(number)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size(text: str) -> int:
    """``--size``: bytes, or with k, M, G (powers of 1000) or KiB, MiB, GiB (:func:`pillow_jac.targets.parse_size`)."""
    from .targets import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _finite(text: str, expected: str, *, zero: bool = False) -> float:
    """``text`` as a finite number above 0 (or at least 0 with ``zero``); else an argparse error saying ``expected``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not ((0 <= value) if zero else (0 < value)) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
    return value


def _psnr(text: str) -> float:
    return _finite(text, "PSNR must be a positive number of dB")


def _positive_float(text: str) -> float:
    return _finite(text, "must be a number above 0")


def _fraction(text: str) -> float:
    return _finite(text, "must be a number of at least 0", zero=True)


def _pixel_limit(text: str) -> int | None:
    """``--max-image-pixels``: a whole number of pixels, 0 or ``none`` for no limit (None)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels, 0 or none for no limit, got {text!r}")
    return value or None


def _path(text: str) -> Path:
    """A file argument; ``-`` is standard input or output, and ``./-`` the file named ``-`` (Path drops ``./``).

    A name that ends in a separator names a folder, never a file (Path would drop the separator, and ``out.jac/``
    would replace the file ``out.jac``), as ``cp`` and ``cwebp`` refuse it.
    """
    if text.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise argparse.ArgumentTypeError(f"{text!r} ends in a separator: it names a folder, not a file")
    path = Path(text)
    return Path.cwd() / path if text != STDIO and str(path) == STDIO else path


def _device(text: str) -> str:
    """A ``--device``, spelt as :data:`~pillow_jac.constants.DEVICE_PATTERN` (whether it is there is known later)."""
    if re.fullmatch(DEVICE_PATTERN, text) is None:
        raise argparse.ArgumentTypeError(f"use {DEVICE_CHOICES}, got {text!r}")
    return text


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the ``jac`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Encode, decode and inspect JAC (.jac) learned-codec images.",
        epilog="Qualities run from 1 (smallest files) to 8 (best quality); fractions are allowed.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} (pillow_jac) {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_device(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device",
            default=None,
            type=_device,
            help=f"torch device: {DEVICE_CHOICES} (default: $JAC_DEVICE, else cpu)",
        )

    def add_pixel_limit(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--max-image-pixels",
            type=_pixel_limit,
            default=PILLOWS_PIXEL_LIMIT,
            metavar="N",
            help=f"Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS, default {Image.MAX_IMAGE_PIXELS}): "
            "an image above N pixels is warned about and one above twice N refused, read or written; 0 or none: "
            "no limit (for a trusted large image, such as a panorama; it also lifts the cap on what standard "
            "input may hold, 16 bytes a pixel of the limit)",
        )

    def add_quality(p: argparse.ArgumentParser) -> None:
        rate = p.add_mutually_exclusive_group()
        rate.add_argument(
            "-q",
            "--quality",
            type=_quality,
            default=None,  # DEFAULT_QUALITY once parsed (main): None tells that it was not given
            help=f"quality from {QUALITY_MIN:g} to {QUALITY_MAX:g}, fractions allowed (default {DEFAULT_QUALITY:g})",
        )
        rate.add_argument(
            "--size",
            type=_size,
            metavar="BYTES",
            help="instead of -q: the largest quality whose file fits in BYTES (50000, 50k, 1.5M, 48KiB), or one "
            "within 0.3%% of the image's bytes (at least 16) below; an error when even quality 1 does not fit",
        )
        rate.add_argument(
            "--psnr",
            type=_psnr,
            metavar="DB",
            help="instead of -q: the smallest quality whose decoded image reaches DB (PSNR on the 8-bit colour "
            "or grey planes, not alpha); an error when even quality 8 does not",
        )
        p.add_argument(
            "--preview",
            action="store_true",
            help=f"also store a WebP preview of at most {PREVIEW_SIZE} pixels (about 10-40 kB) that thumbnail() and "
            "file browsers read without decoding the image; only for images larger than that, which need one",
        )
        p.add_argument(
            "-e",
            "--effort",
            type=int,
            choices=range(MAX_EFFORT + 1),
            default=None,  # DEFAULT_EFFORT once parsed (main)
            help=f"encoder effort from 0 (fastest, default) to {MAX_EFFORT} (slowest); 1 and 2 give smaller files "
            "at the same quality (README, 'Effort'); 3 searches longest, for about 0.3%% more than 2 on Kodak",
        )

    p = sub.add_parser(
        "encode",
        help="encode an image to .jac",
        description="Encode any image Pillow reads to .jac. OUTPUT must end in .jac unless --force is given, "
        "and is never the input file.",
    )
    p.add_argument("input", type=_path, help="input image (PNG, JPEG, ...); - reads standard input")
    p.add_argument("output", type=_path, help="output .jac file; - writes standard output")
    add_quality(p)
    p.add_argument(
        "--strip",
        action="store_true",
        help="drop ICC profile, EXIF and XMP (kept by default); an EXIF orientation is applied to the pixels first",
    )
    p.add_argument("--force", action="store_true", help="write OUTPUT even if its name does not end in .jac")
    p.add_argument("--model", help="model_id of the decoder generation to encode for (default: the newest; jac models)")
    add_device(p)
    add_pixel_limit(p)

    p = sub.add_parser(
        "decode",
        help="decode a .jac file",
        description="Decode a .jac file to the format named by OUTPUT's extension (PNG recommended). "
        "ICC profile, EXIF and XMP are passed on where the output format supports them.",
    )
    p.add_argument("input", type=_path, help="input .jac file; - reads standard input")
    p.add_argument("output", type=_path, help="output image, e.g. out.png; - writes PNG to standard output")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUTPUT even if no decode wrote it (kept by default: it may be the image IN.jac was made from)",
    )
    add_device(p)
    add_pixel_limit(p)

    p = sub.add_parser("models", help="list the installed decoder generations (fast: runs no decoder)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "info",
        help="show .jac files' headers (fast: runs no decoder)",
        description="Show each file's header, sizes and the decoder it needs. A file that cannot be read is "
        "reported and the others are still shown; the status is then 1.",
    )
    p.add_argument("inputs", nargs="+", type=_path, metavar="FILE", help=".jac files; - reads standard input")
    p.add_argument("--json", action="store_true", help="print JSON: an object for one file, a list for several")

    p = sub.add_parser(
        "batch",
        help="convert a folder of images",
        description="Convert every image in IN_DIR to .jac (--to jac) or every .jac file to PNG (--to png).",
    )
    p.set_defaults(usage_error=p.error)  # main's checks of option pairs show `jac batch`'s usage, not jac's
    p.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder to read")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write (created if needed)")
    p.add_argument("--to", choices=("jac", "png"), required=True, help="output format")
    add_quality(p)
    p.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default=None,
        metavar="N",
        help="worker processes (default 1); with --ray, Ray workers (default: one per CPU of the cluster, "
        "or one per GPU where it has GPUs)",
    )
    p.add_argument("-r", "--recursive", action="store_true", help="include subfolders (mirrored in OUT_DIR)")
    p.add_argument(
        "--strip",
        action="store_true",
        help="with --to jac, drop ICC profile, EXIF and XMP (kept by default), applying an EXIF orientation to the "
        "pixels first",
    )
    p.add_argument(
        "--model", help="with --to jac, model_id of the decoder generation to encode for (default: the newest)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --to png, also replace images that no decode wrote (kept by default: they may be the "
        "originals the .jac files were made from; a PNG that a decode wrote is replaced)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_device(p)
    add_pixel_limit(p)
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help='convert on Ray workers (the ray extra: pip install -e ".[ray]" in a checkout): a new local '
        "instance, or ADDRESS 'auto' (this machine's cluster) or ray://HOST:PORT; every node must see IN_DIR "
        "and OUT_DIR at the same paths",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="convert every file again, also those whose output is done (an output is done when OUT_DIR's record "
        "says it was made from the source as it is now, with the -q, -e, --size and --psnr asked for)",
    )
    p.add_argument(
        "--worker-cpus",
        type=_positive_float,
        default=None,
        metavar="N",
        help="with --ray, CPUs each worker reserves and its torch threads (default 1); size it so that the "
        "workers of a node fit its memory (about 1.8 GB each at 12 MP, benchmarks/ray.md)",
    )
    p.add_argument(
        "--worker-gpus",
        type=_fraction,
        default=None,
        metavar="F",
        help="with --ray, share of a GPU each worker reserves (default: 1 where the cluster has GPUs and "
        "--device is not cpu; 0.25 puts four workers on a GPU)",
    )
    return parser
