"""The float transforms g_a and g_s run over horizontal stripes, so memory stays bounded.

g_a and g_s hold up to ``N`` float channels at half resolution plus GDN's temporaries: about
400 bytes per pixel, 10 GB for a 24-megapixel photo if run in one piece. Run stripe by stripe,
their peak is set by the stripe size instead (:data:`STRIPE_PIXELS`).

Both are convolutional, so a stripe gives the same values as the whole image as long as each
stripe is extended by the transform's reach (a halo) and the halo is cropped away afterwards:

* g_s (four 5x5 stride-2 transposed convolutions, GDN acting per pixel): output rows
  ``[16a, 16b)`` depend only on latent rows ``a - 1 .. b + 1``, within a halo of two latent rows.
* g_a (four 5x5 stride-2 convolutions): latent rows ``[a, b)`` depend only on pixel rows
  ``16a - 30 .. 16b + 14``, so a halo of two latent rows (32 pixels).

The values equal those of the whole image up to float summation order (the convolution kernels
may block a smaller input differently); small images are a single stripe, computed as the
whole image. The transforms are the paper's (Minnen et al. 2018, fig. 1); the striping is ours.

Example:
    >>> import torch
    >>> from torch import nn
    >>> g_s = nn.Sequential(*(nn.ConvTranspose2d(2, 2, 5, 2, 2, 1) for _ in range(4)))
    >>> y = torch.randn(1, 2, 9, 3)
    >>> with torch.no_grad():
    ...     whole, striped = g_s(y), synthesize_in_stripes(g_s, y, stripe_rows=2)
    >>> bool((whole - striped).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .constants import DOWNSAMPLING
from .interpreter_exit import check

__all__ = ["STRIPE_PIXELS", "HALO_ROWS", "stripes", "stripe_rows_for", "synthesize_in_stripes", "analyze_in_stripes"]

#: pixels per stripe (about 0.8 GB of float temporaries at N = 128); images up to this size are one stripe.
#: A stripe has at least ``4 * HALO_ROWS`` latent rows plus its halo, so from about 16,384 pixels wide a
#: stripe is larger: 12 latent rows (192 pixel rows) of the whole width, about 5 GB at 65,535 pixels
STRIPE_PIXELS = 2**21
#: latent rows of halo on each side of a stripe (enough for g_s and for g_a, see the module docstring)
HALO_ROWS = 2
#: pixels per latent row and column
FACTOR = DOWNSAMPLING


def stripe_rows_for(latent_width: int, stripe_pixels: int | None = None) -> int:
    """Latent rows per stripe for a latent ``latent_width`` wide (at least 4 * HALO_ROWS).

    Example:
        >>> stripe_rows_for(48), stripe_rows_for(1000)
        (170, 8)
    """
    pixels = STRIPE_PIXELS if stripe_pixels is None else stripe_pixels
    return max(4 * HALO_ROWS, pixels // (FACTOR * FACTOR * latent_width))


def stripes(
    rows: int, stripe_rows: int, halo: int = HALO_ROWS, below: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """``(a, b, lo, hi)``: each stripe ``[a, b)`` of ``rows`` and its extent ``[lo, hi)`` with its halo.

    ``halo`` rows above the stripe and ``below`` (by default ``halo``) below it.

    Example:
        >>> list(stripes(5, 2, halo=1))
        [(0, 2, 0, 3), (2, 4, 1, 5), (4, 5, 3, 5)]
        >>> list(stripes(5, 2, 1, below=2))
        [(0, 2, 0, 4), (2, 4, 1, 5), (4, 5, 3, 5)]
    """
    below = halo if below is None else below
    for a in range(0, rows, stripe_rows):
        check()  # a daemon thread stops here when the interpreter exits (pillow_jac/interpreter_exit.py)
        b = min(rows, a + stripe_rows)
        yield a, b, max(0, a - halo), min(rows, b + below)


def synthesize_in_stripes(
    g_s: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    stripe_rows: int | None = None,
    sink: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """``g_s(y)`` for ``y`` of shape ``(B, M, Hy, Wy)``, one stripe of latent rows at a time.

    By default a stripe of the ``B`` images together holds :data:`STRIPE_PIXELS`, so a batch takes the memory of
    one image's stripe, not ``B`` times it.

    Args:
        g_s: the synthesis transform (16x upsampling).
        y: latents.
        stripe_rows: latent rows per stripe (default: :func:`stripe_rows_for`).
        sink: if given, called as ``sink(first_pixel_row, stripe_pixels)`` for each stripe instead
            of assembling the whole output (so the caller can convert and store it stripe by
            stripe); the function then returns None.

    Returns:
        ``(B, 3, 16 Hy, 16 Wy)`` float output, or None with a ``sink``.
    """
    rows = y.shape[2]
    stripe_rows = stripe_rows or stripe_rows_for(y.shape[3] * y.shape[0])  # a batch's images share the budget
    if sink is None and rows <= stripe_rows:
        return g_s(y)
    parts = []
    for a, b, lo, hi in stripes(rows, stripe_rows):
        x = g_s(y[:, :, lo:hi])
        x = x[:, :, FACTOR * (a - lo) : FACTOR * (b - lo)]
        if sink is None:
            parts.append(x)
        else:
            sink(FACTOR * a, x)
    return torch.cat(parts, dim=2) if sink is None else None


def analyze_in_stripes(
    g_a: Callable[[torch.Tensor], torch.Tensor],
    x: Callable[[int, int], torch.Tensor],
    latent_shape: tuple[int, int],
    stripe_rows: int | None = None,
) -> torch.Tensor:
    """``g_a`` of an image given as ``x(first_row, end_row) -> (1, 3, rows, 16 Wy)`` pixel rows.

    The image is only materialised one stripe (plus halo) at a time; the result is the whole
    ``(1, M, Hy, Wy)`` latent.
    """
    rows, width = latent_shape
    stripe_rows = stripe_rows or stripe_rows_for(width)
    parts = []
    for a, b, lo, hi in stripes(rows, stripe_rows):
        y = g_a(x(FACTOR * lo, FACTOR * hi))
        parts.append(y[:, :, a - lo : b - lo])
    return torch.cat(parts, dim=2)
