"""Rate and distortion measures, and the Bjøntegaard delta rate (numpy only; scipy is not needed).

* :func:`bits_per_pixel` counts the real bytes of a file: headers included.
* :func:`psnr` is computed on 8-bit RGB, over all three channels together (as CompressAI reports
  ``psnr-rgb``), from the uint8 images, not from floats before rounding.
* :func:`ms_ssim` uses pytorch-msssim (optional) on 8-bit RGB with ``data_range=255``;
  :func:`ms_ssim_db` turns it into ``-10 log10(1 - MS-SSIM)`` decibels for curves and BD-rates.
* :func:`bd_rate` is the Bjøntegaard delta rate (VCEG-M33): the average difference of
  ``log(rate)`` between two rate-quality curves over the quality range both cover, interpolated
  either piecewise-cubically with a monotone Hermite spline (``"pchip"``, Fritsch and Carlson, as
  used by the newer JVET/AOM tools) or with one cubic polynomial (``"cubic"``, the original M33).
  :func:`bd_quality` is the matching delta quality (BD-PSNR) at equal rate.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "bits_per_pixel",
    "mse",
    "psnr",
    "ms_ssim",
    "ms_ssim_available",
    "ms_ssim_db",
    "pchip_slopes",
    "pchip_integral",
    "bd_rate",
    "bd_quality",
    "portable_path",
]


def cpu_model() -> str:
    """The CPU's model name where Linux says it, else the platform's processor string."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """What a results file records of the machine: CPU model, CPU count, Python and (where loaded) torch."""
    import os
    import platform
    import sys

    torch = sys.modules.get("torch")
    version = f", torch {torch.__version__}" if torch is not None else ""
    return f"{cpu_model()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}{version}"


def json_text(value: Any) -> str:
    """``value`` as RFC 8259 JSON text, indented by one, that every JSON reader takes.

    A float that is not finite (a BD-rate of curves that do not overlap, an undefined MS-SSIM) is written as
    ``null``; numpy scalars as numbers, anything else JSON has no type for as its text.
    """

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return json.dumps(plain(value), indent=1, allow_nan=False, default=str)  # a path as text


def model_record(model: Any) -> dict[str, str]:
    """What a results file records of the generation it measured: its id, weights hash (hex) and encoder hash.

    ``model``: an engine (:func:`pillow_jac.engine.get_engine`) or a :class:`pillow_jac.generations.Generation`.
    """
    return {"model_id": model.model_id, "weights_hash": model.weights_hash.hex(), "encoder_hash": model.encoder_hash}


def portable_path(path) -> str:
    """How a results file names an input: relative to the repository (``../shared/data/kodak``), else its name.

    Results files must not record where the data lay on the machine that made them.

    Example:
        >>> from pathlib import Path
        >>> import os
        >>> portable_path(Path(os.path.abspath(__file__)).parents[3] / "shared" / "data" / "kodak")
        '../shared/data/kodak'
        >>> portable_path("/somewhere/else/entirely/kodak")
        'kodak'
    """
    import os
    from pathlib import Path

    absolute = os.path.abspath(path)  # not resolve(): a linked data folder keeps the name it is reached by
    relative = os.path.relpath(absolute, Path(os.path.abspath(__file__)).parents[2])
    return relative if not relative.startswith(("../../", "..\\..\\")) else os.path.basename(absolute)


#: the smallest side pytorch-msssim accepts with its default 11-tap window and 5 scales
MS_SSIM_MIN_SIDE = 161


def bits_per_pixel(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of a file of ``num_bytes`` bytes holding a ``height`` x ``width`` image.

    Example:
        >>> bits_per_pixel(4800, 240, 160)
        1.0
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return 8.0 * num_bytes / (height * width)


def _as_uint8_pair(reference: np.ndarray, distorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(reference)
    b = np.asarray(distorted)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {a.dtype} and {b.dtype}")
    return a, b


def mse(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Mean squared error of two uint8 images of the same shape, over every sample.

    Example:
        >>> import numpy as np
        >>> mse(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 2, np.uint8))
        4.0
    """
    a, b = _as_uint8_pair(reference, distorted)
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr(reference: np.ndarray, distorted: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images; ``inf`` when they are identical.

    Args:
        reference: the original image, uint8, any shape (``H x W x 3`` for RGB).
        distorted: the decoded image, same shape and dtype.
        peak: the largest sample value.

    Returns:
        ``10 log10(peak^2 / MSE)`` over all samples (all channels together).

    Example:
        >>> import numpy as np
        >>> a = np.zeros((4, 4, 3), np.uint8)
        >>> round(psnr(a, a + 1), 4)  # MSE 1
        48.1308
    """
    m = mse(reference, distorted)
    if m == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / m)


def ms_ssim_available() -> bool:
    """Whether pytorch-msssim (and so torch) can be imported."""
    try:
        import pytorch_msssim  # noqa: F401
    except ImportError:
        return False
    return True


def ms_ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Multi-scale SSIM of two uint8 RGB images (``H x W x 3``), on the 0..255 range.

    Uses pytorch-msssim's five scales with its Gaussian 11-tap window, as CompressAI reports
    ``ms-ssim-rgb``. Returns ``nan`` for images with a side under :data:`MS_SSIM_MIN_SIDE`.

    Raises:
        ImportError: pytorch-msssim is not installed (``pip install pillow_jac[bench]``).
    """
    a, b = _as_uint8_pair(reference, distorted)
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).unsqueeze(0).to(torch.float32)

    with torch.no_grad():
        value = _ms_ssim(tensor(a), tensor(b), data_range=255.0, size_average=True)
    return float(value)


def ms_ssim_db(value: float) -> float:
    """MS-SSIM in decibels, ``-10 log10(1 - value)``: the usual axis for MS-SSIM curves and BD-rates.

    ``inf`` for 1 (identical images) and above, ``nan`` for ``nan`` (no MS-SSIM).

    Example:
        >>> round(ms_ssim_db(0.99), 6)
        20.0
        >>> ms_ssim_db(float("nan"))
        nan
    """
    if math.isnan(value):
        return math.nan
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


# -- piecewise cubic Hermite interpolation (Fritsch-Carlson, as scipy's PchipInterpolator) -------


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots of the monotone piecewise cubic Hermite interpolant.

    Interior knots take the weighted harmonic mean of the neighbouring secant slopes (zero where
    those change sign or one is zero); end knots use the shape-preserving three-point formula.
    Matches scipy's ``PchipInterpolator``.

    Args:
        x: strictly increasing knots, at least two.
        y: values at the knots.

    Example:
        >>> import numpy as np
        >>> pchip_slopes(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0])).tolist()
        [1.0, 1.0, 1.0]
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 2 or y.size != n:
        raise ValueError("need at least two knots and as many values")
    h = np.diff(x)
    if np.any(h <= 0):
        raise ValueError("knots must be strictly increasing")
    m = np.diff(y) / h
    if n == 2:
        return np.array([m[0], m[0]])
    d = np.zeros(n)
    w1 = 2 * h[1:] + h[:-1]
    w2 = h[1:] + 2 * h[:-1]
    same = (np.sign(m[:-1]) * np.sign(m[1:])) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / m[:-1] + w2 / m[1:])
    d[1:-1] = np.where(same, harmonic, 0.0)

    def edge(h0: float, h1: float, m0: float, m1: float) -> float:
        s = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(s) != np.sign(m0):
            return 0.0
        if np.sign(m0) != np.sign(m1) and abs(s) > abs(3 * m0):
            return 3 * m0
        return float(s)

    d[0] = edge(h[0], h[1], m[0], m[1])
    d[-1] = edge(h[-1], h[-2], m[-1], m[-2])
    return d


def pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral from ``lo`` to ``hi`` (inside ``[x[0], x[-1]]``) of the PCHIP interpolant.

    Example:
        >>> import numpy as np
        >>> pchip_integral(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]), 0.0, 2.0)
        2.0
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not x[0] - 1e-12 <= lo <= hi <= x[-1] + 1e-12:
        raise ValueError(f"integration range [{lo}, {hi}] outside the knots [{x[0]}, {x[-1]}]")
    d = pchip_slopes(x, y)
    total = 0.0
    for k in range(x.size - 1):
        a = max(lo, x[k])
        b = min(hi, x[k + 1])
        if b <= a:
            continue
        h = x[k + 1] - x[k]
        slope = (y[k + 1] - y[k]) / h
        c2 = (3 * slope - 2 * d[k] - d[k + 1]) / h
        c3 = (d[k] + d[k + 1] - 2 * slope) / (h * h)

        def antiderivative(s: float, k: int = k, c2: float = c2, c3: float = c3) -> float:
            return y[k] * s + d[k] * s**2 / 2 + c2 * s**3 / 3 + c3 * s**4 / 4

        total += antiderivative(b - x[k]) - antiderivative(a - x[k])
    return float(total)


def _curve(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points sorted by ``x``, points sharing an ``x`` merged by the mean of their ``y``."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError("rates and qualities must be 1-D sequences of the same length")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    ux, inverse = np.unique(xs, return_inverse=True)
    if ux.size != xs.size:
        ys = np.bincount(inverse, weights=ys) / np.bincount(inverse)
        xs = ux
    return xs, ys


def _log_rates(rates: Sequence[float]) -> np.ndarray:
    r = np.asarray(rates, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, np.log(np.where(r > 0, r, 1.0)), np.nan)


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    if method == "pchip":
        return pchip_integral(x, y, lo, hi)
    if method == "cubic":
        poly = np.polyint(np.polyfit(x, y, min(3, x.size - 1)))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    raise ValueError(f"unknown interpolation method {method!r}; use 'pchip' or 'cubic'")


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    method: str = "pchip",
) -> float:
    """Bjøntegaard delta rate of a test curve against an anchor, in percent.

    ``log(rate)`` is interpolated as a function of quality (PSNR or MS-SSIM dB) for each curve and
    averaged over the quality interval both curves cover; the result is ``exp(test - anchor) - 1``.
    Negative means the test codec needs fewer bits for the same quality.

    Args:
        anchor_rates: rates (bpp, or any unit shared with ``test_rates``) of the anchor curve.
        anchor_quality: the anchor's quality at each rate (higher is better).
        test_rates: rates of the tested curve.
        test_quality: its qualities.
        method: ``"pchip"`` (piecewise cubic, monotone Hermite) or ``"cubic"`` (one cubic polynomial,
            VCEG-M33; needs four points per curve to be cubic, fewer give a lower degree).

    Returns:
        The BD-rate in percent, or ``nan`` when a curve has fewer than two usable points or the
        quality ranges do not overlap.

    Example:
        >>> round(bd_rate([1, 2, 4, 8], [30, 33, 36, 39], [0.9, 1.8, 3.6, 7.2], [30, 33, 36, 39]), 6)
        -10.0
    """
    return _bd(anchor_quality, _log_rates(anchor_rates), test_quality, _log_rates(test_rates), method, True)


def bd_quality(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    method: str = "pchip",
) -> float:
    """Bjøntegaard delta quality (BD-PSNR when the quality is PSNR): test minus anchor at equal rate.

    Quality is interpolated as a function of ``log(rate)`` over the overlapping rate range.

    Example:
        >>> round(bd_quality([1, 2, 4], [30, 32, 34], [1, 2, 4], [30.5, 32.5, 34.5]), 6)
        0.5
    """
    return _bd(_log_rates(anchor_rates), anchor_quality, _log_rates(test_rates), test_quality, method, False)


def _bd(
    x_anchor: Sequence[float],
    y_anchor: Sequence[float],
    x_test: Sequence[float],
    y_test: Sequence[float],
    method: str,
    relative: bool,
) -> float:
    """Average ``y_test - y_anchor`` over the common ``x`` range; as a percentage of rate if ``relative``."""
    xa, ya = _curve(x_anchor, y_anchor)
    xt, yt = _curve(x_test, y_test)
    if xa.size < 2 or xt.size < 2:
        return math.nan
    lo = max(xa[0], xt[0])
    hi = min(xa[-1], xt[-1])
    if not hi > lo:
        return math.nan
    for name, x, y in (("anchor", xa, ya), ("test", xt, yt)):
        used = np.flatnonzero((x >= lo) & (x <= hi))
        stencil = slice(max(0, int(used[0]) - 1), int(used[-1]) + 2) if used.size else slice(0, 0)
        if bool((np.diff(y[stencil]) <= 0).any()):  # among the points the interpolation uses: a dominated one
            warnings.warn(
                f"the {name} curve is not increasing (a point costs more than one of higher quality): the "
                "interpolation runs through it, and the figure depends on it",
                stacklevel=3,
            )
        inside = int(used.size)
        if inside < 2:  # the study's curves have three points: two of them in the overlap is its usual case
            warnings.warn(
                f"only {inside} point{'s' if inside != 1 else ''} of the {name} curve in the range both curves cover "
                f"({lo:.3g} to {hi:.3g}): the figure rests on an interpolation of very few points",
                stacklevel=3,
            )
    delta = (_integral(xt, yt, lo, hi, method) - _integral(xa, ya, lo, hi, method)) / (hi - lo)
    return float((math.exp(delta) - 1.0) * 100.0) if relative else float(delta)
