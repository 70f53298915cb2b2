"""Benchmarks: rate-distortion and speed of ``.jac`` against classical codecs.

Nothing here is imported by the codec or the plugins. The optional dependencies (matplotlib,
pytorch-msssim, pillow-heif, imagecodecs, psutil) are imported lazily by the functions that need them,
so importing :mod:`pillow_jac.bench` costs only numpy and Pillow.

Modules:

* :mod:`pillow_jac.bench.metrics`: bpp, PSNR, MS-SSIM and the Bjøntegaard delta rate;
* :mod:`pillow_jac.bench.codecs`: one adapter per codec (``encode(rgb, q) -> bytes``, ``decode(bytes) -> rgb``);
* :mod:`pillow_jac.bench.images`: the reference images, listed and read as 8-bit RGB, wide samples refused;
* :mod:`pillow_jac.bench.rd`: ``python -m pillow_jac.bench.rd``, rate-distortion curves, tables and a plot;
* :mod:`pillow_jac.bench.speed`: ``python -m pillow_jac.bench.speed``, encode/decode times and peak memory.
"""

import sys


def log(message: str) -> None:
    """A benchmark's progress line, on standard error (standard output carries its results)."""
    print(message, file=sys.stderr, flush=True)
