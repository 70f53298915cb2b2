"""The searches behind :mod:`pillow_jac.targets`: one image's candidate files by quality, and the secant searches.

:class:`Candidates` runs g_a once and gives, per quality (to 1/256), the latents, the model's rate estimate,
the real file and the decoded PSNR. :func:`search_size` and :func:`search_psnr` are the effort-0 searches,
:func:`refine_for_size` and :func:`refine_for_psnr` the refinement at effort 1 to 3; :mod:`pillow_jac.targets`
describes what each guarantees.
"""

from __future__ import annotations

import math

import numpy as np

from . import codec_inputs, codec_steps, container
from .constants import QUALITY_DENOMINATOR, QUALITY_MAX, QUALITY_MIN, Y_PER_Z

__all__ = [
    "TargetNotMetError",
    "Candidates",
    "psnr",
    "search_size",
    "search_psnr",
    "refine_for_size",
    "refine_for_psnr",
    "size_tolerance",
    "SIZE_TOLERANCE",
    "SIZE_TOLERANCE_BYTES",
    "PSNR_TOLERANCE",
    "MAX_ESTIMATES",
    "MAX_EVALUATIONS",
    "MAX_REFINEMENTS",
]


class TargetNotMetError(ValueError):
    """A size or PSNR target that no quality meets: even quality 1 is larger, or quality 8 falls short."""


#: the smallest and largest stored quality values (quality times 256)
Q16_MIN = round(QUALITY_MIN * QUALITY_DENOMINATOR)
Q16_MAX = round(QUALITY_MAX * QUALITY_DENOMINATOR)
#: a size search stops once the file is this close below the target (a fraction of it, or
#: SIZE_TOLERANCE_BYTES for small files); one step of 1/256 in quality changes the size by about 0.15%
SIZE_TOLERANCE = 0.003
#: the tolerance of small files, in bytes (the streams grow in 4-byte words)
SIZE_TOLERANCE_BYTES = 16
#: a PSNR search stops once the file is this close above the target (dB); one step of 1/256 is about 0.007 dB
#: on Kodak (25.1 to 38.0 dB over qualities 1 to 8)
PSNR_TOLERANCE = 0.02
#: most rate estimates in a size search's bracketing phase
MAX_ESTIMATES = 6
#: most real encodes (size) or syntheses (PSNR) before the search settles for its best result
MAX_EVALUATIONS = 10
#: most refined encodes at effort 1-3
MAX_REFINEMENTS = 3
#: typical slopes on Kodak, the first step's guess: log(size) and PSNR (dB) per 1/256 of quality
_LOG_SIZE_SLOPE = 0.4 / QUALITY_DENOMINATOR
_PSNR_SLOPE = 2.0 / QUALITY_DENOMINATOR
#: dB that stands for an exact decode in the secant search (8-bit PSNR of a 65535^2 RGB image one level
#: off in one sample is about 149 dB)
_PSNR_CAP = 200.0
#: the first step (1/256 of quality) away from a one-sided bracket whose secant points back into it, doubled at
#: each such step: on small images the PSNR can fall just above a quality that falls short of the target
_FIRST_STRIDE = 16
#: bits per pixel taken for quality 4 in the first guess, which moves from quality 4 by log(bpp / _BPP_AT_4) over
#: _LOG_SIZE_SLOPE (kodim01's bpp at quality 4; the Kodak mean there is about 0.47, benchmarks/results/rd.md)
_BPP_AT_4 = 0.75
#: bytes the coded streams take beyond the model's estimate (the range coder's final words, the escapes and the
#: integer tables' coarser probabilities, which cost a little at every latent position): about 4 bytes and
#: 0.035 a latent position (16x16 pixels) at qualities 1 to 8, from 3-8 bytes at 128x128 to 25-73 at 768x512
#: (Kodak crops and training photos); a fixed excess would send a small image's first real encode far below its target
_ESTIMATE_EXCESS = 4.0
_ESTIMATE_EXCESS_PER_LATENT = 0.035
#: latent rows per piece of the rate estimate (bounds its temporaries on large images)
_ESTIMATE_ROWS = 64
#: z rows of halo on each side for the float h_s of the rate estimate: more than its reach (1 row above, 2
#: below: pillow_jac.latent_coding), and kept so, since float sums depend on the stripes and a target's
#: quality on the estimate
_H_S_HALO = 4


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of one shape (all samples together); ``inf`` when equal.

    Example:
        >>> a = np.zeros((2, 2), np.uint8)
        >>> round(psnr(a, a + 1), 4)
        48.1308
    """
    diff = reference.astype(np.float64) - decoded.astype(np.float64)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 * 255.0 / mse)


class Candidates:
    """One image prepared for many qualities: g_a's output once, then latents, estimates and files per quality.

    The steps are those of :func:`pillow_jac.codec.encode` and :func:`pillow_jac.codec.decode` (a test
    checks that the files are the same bytes), with g_a shared between qualities.
    """

    def __init__(self, arr: np.ndarray, layout: str, engine, file_fields: dict) -> None:
        from . import image_transforms  # imported with the engine (pillow_jac.codec_steps.guarded_engine)

        self.transforms = image_transforms
        self.arr, self.layout, self.engine, self.file_fields = arr, layout, engine, file_fields
        self.color = codec_inputs.color_planes(arr, layout)
        self.height, self.width = self.color.shape[:2]
        self.y0 = image_transforms.analyze(engine, [self.color])
        self.overhead = len(self._file(Q16_MIN, b"", b""))
        self._latents: dict[tuple[int, int], tuple] = {}
        self.estimates = self.encodes = self.syntheses = self.refinements = 0

    def threads(self):
        """One torch thread for a small image on the CPU, as the codec runs it."""
        return self.transforms.torch_work(self.height * self.width, self.engine)

    # -- latents and files -------------------------------------------------------------------------
    def latents(self, q16: int, effort: int = 0) -> tuple[np.ndarray | None, np.ndarray]:
        """``(z_hat, y_hat)`` at quality ``q16 / 256`` (the last few are kept)."""
        return self._symbols(q16, effort)[0]

    def _symbols(self, q16: int, effort: int) -> tuple:
        """The latents at quality ``q16 / 256`` and their streams or None (``image_transforms.symbols``)."""
        key = (q16, effort)
        if key not in self._latents:
            self._latents = {k: v for k, v in list(self._latents.items())[-3:]}
            self._latents[key] = self._compute_latents(q16, effort)
        return self._latents[key]

    def _compute_latents(self, q16: int, effort: int):
        quality = q16 / QUALITY_DENOMINATOR
        y, z = self.transforms.hyper_analyze(self.engine, self.y0, quality, self.height * self.width)
        self.refinements += bool(effort)
        return self.transforms.symbols(self.engine, y, z, quality, effort, self.color)

    def _file(self, q16: int, z_stream: bytes, y_stream: bytes) -> bytes:
        jac = container.JacFile.create(
            quality=q16 / QUALITY_DENOMINATOR, z_stream=z_stream, y_stream=y_stream, **self.file_fields
        )
        return container.serialize(jac)

    def encode(self, q16: int, effort: int = 0) -> bytes:
        """The file at quality ``q16 / 256``: a real encode (exact entropy coding)."""
        z_stream, y_stream = codec_steps.streams_of(self.engine, *self._symbols(q16, effort))
        self.encodes += 1
        return self._file(q16, z_stream, y_stream)

    # -- the model's rate estimate -----------------------------------------------------------------
    def estimate(self, q16: int) -> float:
        """The float model's estimate of the file's size in bytes at quality ``q16 / 256``."""
        import torch

        z_hat, y_hat = self.latents(q16)
        model, device = self.engine.model, self.engine.device
        bits = 0.0
        with torch.inference_mode(), self.threads():
            y = torch.from_numpy(y_hat).to(device).float()[None]
            z = None
            if z_hat is not None:
                z = torch.from_numpy(z_hat).to(device).float()[None]
                bits += float(-model.z_density.likelihood(z).log2().sum())
            rows = y.shape[2]
            for a in range(0, rows, _ESTIMATE_ROWS):  # latent rows [a, b), a multiple of Y_PER_Z
                b = min(rows, a + _ESTIMATE_ROWS)
                psi = phi = None
                if z is not None:
                    za, zb = a // Y_PER_Z, -(-b // Y_PER_Z)
                    lo, hi = max(0, za - _H_S_HALO), min(z.shape[2], zb + _H_S_HALO)
                    psi = model.h_s(z[:, :, lo:hi])[:, :, Y_PER_Z * (za - lo) :, : y.shape[3]][:, :, : b - a]
                if self.engine.config.context:  # the causal mask reaches context_size // 2 rows up
                    top = max(0, a - self.engine.config.context_size // 2)
                    phi = model.context(y[:, :, top:b])[:, :, a - top :]
                params = model.entropy_parameters(model.entropy_inputs(psi, phi))
                bits += float(-model.y_likelihood(y[:, :, a:b], params).log2().sum())
        self.estimates += 1
        positions = y_hat.shape[-2] * y_hat.shape[-1]
        return self.overhead + bits / 8 + _ESTIMATE_EXCESS + _ESTIMATE_EXCESS_PER_LATENT * positions

    # -- decoded pixels ----------------------------------------------------------------------------
    def psnr(self, q16: int, effort: int = 0) -> float:
        """PSNR of the file at quality ``q16 / 256`` as :func:`pillow_jac.codec.decode` decodes it."""
        _, y_hat = self.latents(q16, effort)
        size = (self.height, self.width)
        (rgb,) = self.transforms.synthesize(self.engine, [y_hat], [q16 / QUALITY_DENOMINATOR], [size])
        self.syntheses += 1
        decoded = codec_steps.to_layout(rgb, self.layout, None)
        return psnr(self.arr[:, :, 0] if decoded.ndim == 2 else self.arr[:, :, :3], decoded)


def _clamp(q16: float) -> int:
    return int(min(Q16_MAX, max(Q16_MIN, q16)))


def _secant(k0: int, v0: float, k1: int | None, v1: float | None, goal: float, slope: float) -> float:
    """Where the line through ``(k0, v0)`` and ``(k1, v1)`` meets ``goal``; ``slope`` through the first alone.

    ``slope`` is also used when the two points do not rise (the values grow with the quality).
    """
    if k1 is not None and v1 is not None and k1 != k0 and (v1 - v0) / (k1 - k0) > 0:
        slope = (v1 - v0) / (k1 - k0)
    return k0 + (goal - v0) / slope


def _next_guess(points: dict[int, float], lo: int | None, hi: int | None, goal: float, slope: float) -> float:
    """A safeguarded secant step: through the bracket's ends, bisecting if it leaves the bracket.

    ``lo < hi`` are the bracket's ends (either may be unknown yet); the values rise with the quality. With
    one end known, the line goes through it and the point nearest ``goal`` of the others. The line is never
    drawn through two points off the bracket: sizes that stay level for a few qualities (a small file grows
    4 bytes at a time) or a PSNR that dips made such a line point back at an end, and the search then crept
    up 1/256 of a quality per encode.
    """
    ends = [q for q in (lo, hi) if q is not None]
    if len(ends) == 2:
        guess = _secant(lo, points[lo], hi, points[hi], goal, slope)
    else:
        anchor = ends[0] if ends else min(points, key=lambda q: abs(points[q] - goal))
        others = sorted((q for q in points if q != anchor), key=lambda q: abs(points[q] - goal))
        other = others[0] if others else None
        guess = _secant(anchor, points[anchor], other, None if other is None else points[other], goal, slope)
    if lo is not None and hi is not None and not lo < guess < hi:
        guess = (lo + hi) / 2
    return guess


def _next_inside(guess: float, lo: int | None, hi: int | None, tried: set[int], prefer_low: bool) -> int | None:
    """An untried quality strictly between the bracket ends ``lo`` and ``hi``, nearest ``guess``."""
    low = Q16_MIN if lo is None else lo + 1
    high = Q16_MAX if hi is None else hi - 1
    if low > high:
        return None
    if math.isnan(guess):
        guess = (low + high) / 2
    guess = min(high, max(low, guess))  # an infinite guess too (a target of 1e308 dB): the nearest end
    k = math.floor(guess) if prefer_low else math.ceil(guess)
    for step in range(high - low + 1):
        for candidate in (k - step, k + step) if prefer_low else (k + step, k - step):
            if low <= candidate <= high and candidate not in tried:
                return candidate
    return None


def _below(value: float, target: float) -> str:
    """``value`` (below ``target``) with enough decimals to show that it is below (at least two)."""
    for digits in range(2, 10):
        shown = f"{value:.{digits}f}"
        if float(shown) < target:
            return shown
    return repr(value)


def size_tolerance(target: int, overhead: int = 0) -> float:
    """How far below ``target`` (bytes) a size search may stop: a share of the bytes left for the image.

    ``overhead``: the file's bytes that do not depend on the quality (container, metadata, alpha, preview).
    A share of the whole target would take that share from the image alone: 20 KB of EXIF and a 21 KB target
    left the image 10% fewer bytes than a fitting quality gave it.
    """
    return max(SIZE_TOLERANCE * max(target - overhead, 0), SIZE_TOLERANCE_BYTES)


def search_size(c: Candidates, target: int) -> tuple[int, bytes]:
    """The largest quality (q16) whose file is at most ``target`` bytes, and that file."""
    goal, tolerance = math.log(target), size_tolerance(target, c.overhead)
    aim = math.log(max(1.0, target - tolerance / 2))  # a little below the target, inside the tolerance
    # 1. bracket with the model's estimate: secant on log(size), starting from a typical bits per pixel
    bpp = max(target - c.overhead, 1) * 8 / (c.height * c.width)
    k = _clamp(Q16_MAX / 2 + math.log(bpp / _BPP_AT_4) / _LOG_SIZE_SLOPE)
    points: dict[int, float] = {}
    lo = hi = None  # the estimate fits at lo, not at hi
    for _ in range(MAX_ESTIMATES):
        points[k] = math.log(c.estimate(k))
        if points[k] <= goal:
            lo = k if lo is None else max(lo, k)
        else:
            hi = k if hi is None else min(hi, k)
        if lo == Q16_MAX or hi == Q16_MIN or (lo is not None and hi is not None and hi - lo <= 2):
            break
        if lo is not None and target - math.exp(points[lo]) <= tolerance / 2:
            break
        nxt = _next_inside(_next_guess(points, lo, hi, aim, _LOG_SIZE_SLOPE), lo, hi, set(points), True)
        if nxt is None:
            break
        k = nxt
    start = lo if lo is not None else Q16_MIN
    slope = _LOG_SIZE_SLOPE  # log(size) per step near the start, from the two nearest estimates
    if len(points) > 1:
        a, b = sorted(sorted(points, key=lambda q: abs(q - start))[:2])
        if points[b] > points[a]:
            slope = (points[b] - points[a]) / (b - a)
    # 2. confirm and close the bracket with real encodes (the file's bytes)
    k = start
    real: dict[int, float] = {}
    best: tuple[int, bytes] | None = None
    lo = hi = None
    while True:
        data = c.encode(k)
        real[k] = math.log(len(data))
        if len(data) <= target:
            if best is None or k > best[0]:
                best = (k, data)
            lo = best[0]
        else:
            hi = k if hi is None else min(hi, k)
        if hi == Q16_MIN:
            raise TargetNotMetError(
                f"a size target of {target} bytes is too small: even quality {QUALITY_MIN:g} gives {len(data)} bytes"
                f" ({c.overhead} of them container, metadata, alpha and preview)"
            )
        if lo == Q16_MAX or (lo is not None and hi is not None and hi - lo <= 1):
            break
        if best is not None and target - len(best[1]) <= tolerance:
            break
        if c.encodes >= MAX_EVALUATIONS and best is not None:
            break
        # nothing fits after all those encodes: the smallest quality settles it
        guess = Q16_MIN if c.encodes >= MAX_EVALUATIONS else _next_guess(real, lo, hi, aim, slope)
        nxt = _next_inside(guess, lo, hi, set(real), True)
        if nxt is None:
            break
        k = nxt
    assert best is not None  # the loop ends with a fitting file or raises
    if best[0] < Q16_MAX and hi is None:  # stopped within the tolerance, but quality 8 may fit as well
        below = sorted(q for q in real if q < best[0])
        if below and real[best[0]] > real[below[-1]]:  # the slope of the real sizes just below
            slope = (real[best[0]] - real[below[-1]]) / (best[0] - below[-1])
        if real[best[0]] + slope * (Q16_MAX - best[0]) <= goal:
            data = c.encode(Q16_MAX)
            if len(data) <= target:
                best = (Q16_MAX, data)
    return best


def search_psnr(c: Candidates, target: float) -> tuple[int, float]:
    """The smallest quality (q16) whose decoded file reaches ``target`` dB, and its PSNR."""
    aim = target + PSNR_TOLERANCE / 2  # a little above the target, inside the tolerance
    values: dict[int, float] = {}
    lo = hi = None  # lo falls short of the target, hi reaches it
    k = Q16_MAX // 2
    stride = _FIRST_STRIDE
    while True:
        values[k] = c.psnr(k)
        if values[k] >= target:
            hi = k if hi is None else min(hi, k)
        else:
            lo = k if lo is None else max(lo, k)
        if lo == Q16_MAX and hi is None:
            best = (
                ""
                if len(values) == 1
                else f" (the best of the {len(values)} tried: {_below(max(values.values()), target)} dB)"
            )
            reached = _below(values[lo], target)
            raise TargetNotMetError(
                f"a PSNR target of {target:g} dB is not reached: quality {QUALITY_MAX:g} reaches {reached} dB{best}"
            )
        if lo == Q16_MAX or hi == Q16_MIN or (lo is not None and hi is not None and abs(hi - lo) <= 1):
            break
        if hi is not None and values[hi] - target <= PSNR_TOLERANCE:
            break
        if c.syntheses >= MAX_EVALUATIONS and hi is not None:
            break
        # nothing reaches it after all those syntheses: the largest quality settles it
        finite = {q: min(v, _PSNR_CAP) for q, v in values.items()}  # a lossless decode is inf dB
        guess = Q16_MAX if c.syntheses >= MAX_EVALUATIONS else _next_guess(finite, lo, hi, aim, _PSNR_SLOPE)
        if hi is None and guess <= lo + 1:  # the PSNR fell above lo: step past the dip, not one 1/256 at a time
            guess, stride = lo + stride, 2 * stride
        elif lo is None and guess >= hi - 1:  # it rose below hi: step down past it
            guess, stride = hi - stride, 2 * stride
        nxt = _next_inside(guess, lo, hi, set(values), False)
        if nxt is None:
            break
        k = nxt
    assert hi is not None  # the loop ends with a quality that reaches the target or raises
    return hi, values[hi]


def refine_for_size(c: Candidates, target: int, k0: int, effort: int) -> tuple[int, bytes] | None:
    """The refined file that fits ``target`` at the highest quality tried, starting at ``k0``; or None."""
    best: tuple[int, bytes] | None = None
    over: int | None = None  # the lowest quality whose refined file is too large
    k, sizes = k0, {}  # log(size) of the refined files by quality
    aim = math.log(max(1.0, target - size_tolerance(target, c.overhead) / 2))
    for _ in range(MAX_REFINEMENTS):
        data = c.encode(k, effort)
        sizes[k] = math.log(len(data))
        if len(data) <= target:
            if best is None or k > best[0]:
                best = (k, data)
            if target - len(data) <= size_tolerance(target, c.overhead) or k == Q16_MAX:
                break
        else:
            over = k if over is None else min(over, k)
        # refinement moved the size at this quality: the secant through the refined files says how far to move
        # from here (the usual slope while there is one)
        guess = _next_guess(sizes, None if best is None else best[0], over, aim, _LOG_SIZE_SLOPE)
        nxt = _next_inside(guess, None if best is None else best[0], over, set(sizes), True)
        if nxt is None:
            break
        k = nxt
    return best


def refine_for_psnr(c: Candidates, target: float, k0: int, effort: int) -> tuple[int, bytes, float] | None:
    """The smallest refined file that reaches ``target`` dB, starting at ``k0``; or None."""
    best: tuple[int, bytes, float] | None = None
    below: int | None = None  # the highest quality whose refined file falls short
    reached: int | None = None  # the lowest quality whose refined file reaches the target
    k, values = k0, {}  # PSNR of the refined files by quality
    for _ in range(MAX_REFINEMENTS):
        value = c.psnr(k, effort)
        values[k] = min(value, _PSNR_CAP)
        if value >= target:
            data = c.encode(k, effort)
            reached = k if reached is None else min(reached, k)
            if best is None or len(data) < len(best[1]):
                best = (k, data, value)
            if value - target <= PSNR_TOLERANCE or k == Q16_MIN:
                break
        else:
            below = k if below is None else max(below, k)
        guess = _next_guess(values, below, reached, target + PSNR_TOLERANCE / 2, _PSNR_SLOPE)
        nxt = _next_inside(guess, below, reached, set(values), False)
        if nxt is None:
            break
        k = nxt
    return best
