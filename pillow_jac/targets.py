"""Rate and quality targets: encode to a file size or to a PSNR instead of a quality.

A file stores its quality to 1/256 (the JHDR ``quality`` field, SPEC.md section 3.2), and any stored
value is a valid quality: this module searches that value, as cwebp's ``-size`` and ``-psnr`` do.

* ``target_size`` (bytes): the largest quality whose **whole file** (container, metadata, alpha and
  preview included) is at most that size, or a lower one whose file is within :data:`SIZE_TOLERANCE`
  (at least :data:`SIZE_TOLERANCE_BYTES`) of it, where the search stops. The result is never larger;
  when even quality 1 is larger, :class:`ValueError` (there is no fallback: a file over the size asked
  for is never returned).
* ``target_psnr`` (dB): the smallest quality whose **decoded file** reaches at least that PSNR, on its
  8-bit colour planes (RGB, or the grey plane of L and LA; alpha is lossless and not counted). When even
  quality 8 does not, :class:`ValueError`.

How, at effort 0:

1. g_a runs once. The quality only scales its output (``y = g_a(x) * gain(q)``, SPEC.md section 3.2 and
   :meth:`~pillow_jac.model.mbt2018.JointAutoregressiveHierarchicalPrior.gains`), so every candidate costs
   h_a and what follows, never g_a again.
2. Size: the model's own rate estimate (the -log2 likelihood of the rounded latents under the float
   hyperprior and context model, what training minimises; within about 0.5% of the coded size, for a
   third of the cost of coding) brackets the target by a secant search on log(size). Real encodes (the
   exact entropy coder: the bytes of the file) then confirm and close the bracket by the same secant
   search on the real sizes (bisecting when a step would leave the bracket), until the fitting file is
   within :data:`SIZE_TOLERANCE` of the target (or :data:`SIZE_TOLERANCE_BYTES`) or the next quality
   (1/256 up) is over it.
3. PSNR: the decoded pixels depend only on the latents, which the encoder knows, so the synthesis g_s of
   the rounded latents gives the decoded file's pixels without any entropy coding (the same steps as
   :func:`pillow_jac.codec.decode`). A secant search on PSNR closes the bracket to :data:`PSNR_TOLERANCE`
   or to one step; the chosen quality is then coded once.

Effort 1 to 3: the effort-0 search gives a quality; latent refinement then runs there and at up to
:data:`MAX_REFINEMENTS` - 1 qualities predicted from how refinement moved the size (or the PSNR). The
refined file that meets the target at the highest quality (size) or with the fewest bytes (PSNR) is
returned; when none does, the effort-0 file, which meets it.

Every file returned is what :func:`pillow_jac.codec.encode` writes at the quality it reports (the same
bytes). :class:`TargetResult` reports the cost: model estimates, real encodes, syntheses, refinements.

Example:
    >>> import numpy as np
    >>> rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    >>> result = encode_to_target(rgb, target_size=3000)
    >>> len(result.data) <= 3000, result.size == len(result.data), 1 <= result.quality <= 8
    (True, True, True)
"""

from __future__ import annotations

import math
import numbers
import re
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import codec, container
from .constants import EFFORT_ITERATIONS, QUALITY_DENOMINATOR, QUALITY_MAX, QUALITY_MIN, validate_effort
from .interpreter_exit import counted

__all__ = [
    "TargetResult",
    "encode_to_target",
    "parse_size",
    "validate_targets",
    "SIZE_TOLERANCE",
    "SIZE_TOLERANCE_BYTES",
    "PSNR_TOLERANCE",
    "MAX_REFINEMENTS",
]

#: the smallest and largest stored quality values (quality times 256)
Q16_MIN = round(QUALITY_MIN * QUALITY_DENOMINATOR)
Q16_MAX = round(QUALITY_MAX * QUALITY_DENOMINATOR)
#: a size search stops once the file is this close below the target (a fraction of it, or
#: SIZE_TOLERANCE_BYTES for small files); one step of 1/256 in quality changes the size by about 0.15%
SIZE_TOLERANCE = 0.003
#: the tolerance of small files, in bytes (the streams grow in 4-byte words)
SIZE_TOLERANCE_BYTES = 16
#: a PSNR search stops once the file is this close above the target (dB); one step is about 0.005 dB
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
#: typical log(size) at quality 4 per log(bits per pixel), for the first guess
_BPP_AT_4 = 0.75
#: bytes the coded streams take beyond the model's estimate: 50 to 90 on Kodak at qualities 1.2 to 7.4
#: (the range coder's final words and the escapes), added to every estimate
_ESTIMATE_EXCESS = 70
#: a size with an optional unit: k, M, G (powers of 1000) or Ki, Mi, Gi (powers of 1024), then an optional B
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kKmMgG])([iI])?)?[bB]?")
#: latent rows per piece of the rate estimate (bounds its temporaries on large images)
_ESTIMATE_ROWS = 64
#: z rows of halo for the float h_s (as the exact one's, pillow_jac.latent_coding)
_H_S_HALO = 4


@dataclass
class TargetResult:
    """What :func:`encode_to_target` found, and what it cost.

    Attributes:
        data: the complete file.
        quality: its quality (a multiple of 1/256).
        size: ``len(data)``.
        psnr: PSNR of the decoded file in dB (computed by PSNR searches; None for size searches).
        refined: whether the latents were refined (effort 1-3); False when the effort-0 file was kept.
        estimates: rate estimates of the float model.
        encodes: real encodes (entropy coding), the returned one included.
        syntheses: g_s runs (PSNR searches).
        refinements: latent refinements (effort 1-3), each also a real encode.
        seconds: wall time of the whole search.
    """

    data: bytes
    quality: float
    size: int
    psnr: float | None = None
    refined: bool = False
    estimates: int = 0
    encodes: int = 0
    syntheses: int = 0
    refinements: int = 0
    seconds: float = 0.0


def parse_size(text: str | int) -> int:
    """A byte count from ``"50000"``, ``"50k"``, ``"1.5M"`` (powers of 1000) or ``"48KiB"`` (powers of 1024).

    A trailing ``B`` is allowed (``"50kB"``); units are case-insensitive.

    Example:
        >>> parse_size("50k"), parse_size("1.5M"), parse_size("2KiB"), parse_size(700)
        (50000, 1500000, 2048, 700)
    """
    if isinstance(text, numbers.Integral) and not isinstance(text, bool):
        return _check_size(int(text))
    match = _SIZE.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (bytes, or with k, M, G, KiB, MiB, GiB)")
    number, prefix, binary = match.groups()
    power = " kmg".index(prefix.lower()) if prefix else 0
    value = Fraction(number) * (1024 if binary else 1000) ** power  # exact: "32.2k" is 32200, not 32200.000000004
    if value.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return _check_size(int(value))


#: the largest target_size taken (8 PiB): beyond it sizes stop being exact as floats
MAX_TARGET_SIZE = 2**53


def _check_size(value: int) -> int:
    if not 1 <= value <= MAX_TARGET_SIZE:
        raise ValueError(f"target_size must be a positive number of bytes up to 2**53, got {value}")
    return value


def validate_targets(target_size, target_psnr) -> tuple[int | None, float | None]:
    """``(target_size, target_psnr)`` checked, one of them None.

    The size is a whole number of bytes (a string as :func:`parse_size` reads it), the PSNR a positive,
    finite number of dB.

    Raises:
        ValueError: neither or both are given, or the one given is not such a value.
    """
    if (target_size is None) == (target_psnr is None):
        raise ValueError("give exactly one of target_size and target_psnr")
    if target_size is not None:
        if isinstance(target_size, str):
            return parse_size(target_size), None
        real = isinstance(target_size, numbers.Real) and not isinstance(target_size, (bool, numbers.Integral))
        if real and math.isfinite(target_size) and int(target_size) == target_size:  # 50000.0, as the CLI takes it
            target_size = int(target_size)
        if isinstance(target_size, bool) or not isinstance(target_size, numbers.Integral):
            raise ValueError(
                f"target_size must be a whole number of bytes (or a string such as '50k'), got {target_size!r}"
            )
        return _check_size(int(target_size)), None
    if isinstance(target_psnr, bool) or not isinstance(target_psnr, numbers.Real):
        raise ValueError(f"target_psnr must be a number of dB, got {target_psnr!r}")
    psnr = float(target_psnr)
    if not (math.isfinite(psnr) and psnr > 0):
        raise ValueError(f"target_psnr must be a positive, finite number of dB, got {target_psnr!r}")
    return None, psnr


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


class _Candidates:
    """One image prepared for many qualities: g_a's output once, then latents, estimates and files per quality.

    The steps are those of :func:`pillow_jac.codec.encode` and :func:`pillow_jac.codec.decode` (a test
    checks that the files are the same bytes), with g_a shared between qualities.
    """

    def __init__(self, arr: np.ndarray, layout: str, engine, file_fields: dict) -> None:
        torch = codec._torch()
        from .stripes import analyze_in_stripes

        self.arr, self.layout, self.engine, self.file_fields = arr, layout, engine, file_fields
        self.color = codec._color_planes(arr, layout)
        self.height, self.width = self.color.shape[:2]
        (yh, yw), _ = container.latent_shapes(self.width, self.height)
        color, device = self.color, engine.device

        def pixel_rows(first: int, end: int):  # the padded image, as codec._analyze builds it
            return codec._padded_pixels([color], first, end, yw, device)

        self.pixel_rows = pixel_rows
        with torch.inference_mode(), self.threads():
            self.y0 = analyze_in_stripes(engine.model.g_a, pixel_rows, (yh, yw))
        self.overhead = len(self._file(Q16_MIN, b"", b""))
        self._latents: dict[tuple[int, int], tuple] = {}
        self.estimates = self.encodes = self.syntheses = self.refinements = 0

    def threads(self):
        return codec._threads_for(self.height * self.width, self.engine)

    # -- latents and files -------------------------------------------------------------------------
    def latents(self, q16: int, effort: int = 0) -> tuple[np.ndarray | None, np.ndarray]:
        """``(z_hat, y_hat)`` at quality ``q16 / 256`` (the last few are kept)."""
        key = (q16, effort)
        if key not in self._latents:
            self._latents = {k: v for k, v in list(self._latents.items())[-3:]}
            self._latents[key] = self._compute_latents(q16, effort)
        return self._latents[key]

    def _compute_latents(self, q16: int, effort: int):
        torch = codec._torch()

        model, quality = self.engine.model, q16 / QUALITY_DENOMINATOR
        with torch.inference_mode(), self.threads():
            y = self.y0 * model.gains(torch.tensor([quality], dtype=torch.float64)).to(self.y0)
            z = model.h_a(y) if self.engine.config.hyperprior else None
        if effort:
            from .model.refine import refine_latents

            self.refinements += 1
            with self.threads():
                y, z = refine_latents(
                    model, self.pixel_rows, y.clone(), None if z is None else z.clone(), quality,
                    (self.height, self.width), EFFORT_ITERATIONS[effort],
                )  # fmt: skip
        return (None if z is None else codec._rounded(z)), codec._rounded(y)

    def _file(self, q16: int, z_stream: bytes, y_stream: bytes) -> bytes:
        jac = container.JacFile.create(
            quality=q16 / QUALITY_DENOMINATOR, z_stream=z_stream, y_stream=y_stream, **self.file_fields
        )
        return container.serialize(jac)

    def encode(self, q16: int, effort: int = 0) -> bytes:
        """The file at quality ``q16 / 256``: a real encode (exact entropy coding)."""
        torch = codec._torch()
        z_hat, y_hat = self.latents(q16, effort)
        with torch.inference_mode():
            z_stream, y_stream = self.engine.latents.encode(z_hat, y_hat)
        self.encodes += 1
        return self._file(q16, z_stream, y_stream)

    # -- the model's rate estimate -----------------------------------------------------------------
    def estimate(self, q16: int) -> float:
        """The float model's estimate of the file's size in bytes at quality ``q16 / 256``."""
        torch = codec._torch()

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
            for a in range(0, rows, _ESTIMATE_ROWS):  # latent rows [a, b), a multiple of 4 (z rows a/4...)
                b = min(rows, a + _ESTIMATE_ROWS)
                psi = phi = None
                if z is not None:
                    za, zb = a // 4, -(-b // 4)
                    lo, hi = max(0, za - _H_S_HALO), min(z.shape[2], zb + _H_S_HALO)
                    psi = model.h_s(z[:, :, lo:hi])[:, :, 4 * (za - lo) :, : y.shape[3]][:, :, : b - a]
                if self.engine.config.context:  # the causal mask reaches context_size // 2 rows up
                    top = max(0, a - self.engine.config.context_size // 2)
                    phi = model.context(y[:, :, top:b])[:, :, a - top :]
                params = model.entropy_parameters(model.entropy_inputs(psi, phi))
                bits += float(-model.y_likelihood(y[:, :, a:b], params).log2().sum())
        self.estimates += 1
        return self.overhead + bits / 8 + _ESTIMATE_EXCESS

    # -- decoded pixels ----------------------------------------------------------------------------
    def psnr(self, q16: int, effort: int = 0) -> float:
        """PSNR of the file at quality ``q16 / 256`` as :func:`pillow_jac.codec.decode` decodes it."""
        _, y_hat = self.latents(q16, effort)
        rgb = codec._synthesize(self.engine, y_hat, q16 / QUALITY_DENOMINATOR, self.height, self.width)
        self.syntheses += 1
        decoded = codec._to_layout(rgb, self.layout, None)
        return psnr(self.arr[:, :, 0] if decoded.ndim == 2 else self.arr[:, :, :3], decoded)


# -- the searches -----------------------------------------------------------------------------------


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
    """A safeguarded secant step: through the two points nearest ``goal``, bisecting if it leaves the bracket.

    ``lo < hi`` are the bracket's ends (either may be unknown yet); the values rise with the quality.
    """
    near = sorted(points, key=lambda q: abs(points[q] - goal))[:2]
    other = near[1] if len(near) > 1 else None
    guess = _secant(near[0], points[near[0]], other, None if other is None else points[other], goal, slope)
    if lo is not None and hi is not None and not lo < guess < hi:
        guess = (lo + hi) / 2
    return guess


def _next_inside(guess: float, lo: int | None, hi: int | None, tried: set[int], prefer_low: bool) -> int | None:
    """An untried quality strictly between the bracket ends ``lo`` and ``hi``, nearest ``guess``."""
    low = Q16_MIN if lo is None else lo + 1
    high = Q16_MAX if hi is None else hi - 1
    if low > high:
        return None
    k = min(high, max(low, math.floor(guess) if prefer_low else math.ceil(guess)))
    for step in range(high - low + 1):
        for candidate in (k - step, k + step) if prefer_low else (k + step, k - step):
            if low <= candidate <= high and candidate not in tried:
                return candidate
    return None


def _size_tolerance(target: int) -> float:
    """How far below ``target`` (bytes) a size search may stop."""
    return max(SIZE_TOLERANCE * target, SIZE_TOLERANCE_BYTES)


def _search_size(c: _Candidates, target: int) -> tuple[int, bytes]:
    """The largest quality (q16) whose file is at most ``target`` bytes, and that file."""
    goal, tolerance = math.log(target), _size_tolerance(target)
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
            raise ValueError(
                f"target_size {target} bytes is too small: even quality {QUALITY_MIN:g} gives {len(data)} bytes"
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
    return best


def _search_psnr(c: _Candidates, target: float) -> tuple[int, float]:
    """The smallest quality (q16) whose decoded file reaches ``target`` dB, and its PSNR."""
    aim = target + PSNR_TOLERANCE / 2  # a little above the target, inside the tolerance
    values: dict[int, float] = {}
    lo = hi = None  # lo falls short of the target, hi reaches it
    k = Q16_MAX // 2
    while True:
        values[k] = c.psnr(k)
        if values[k] >= target:
            hi = k if hi is None else min(hi, k)
        else:
            lo = k if lo is None else max(lo, k)
        if lo == Q16_MAX:
            raise ValueError(
                f"target_psnr {target:g} dB is too high: even quality {QUALITY_MAX:g} reaches {values[lo]:.2f} dB"
            )
        if hi == Q16_MIN or (lo is not None and hi is not None and hi - lo <= 1):
            break
        if hi is not None and values[hi] - target <= PSNR_TOLERANCE:
            break
        if c.syntheses >= MAX_EVALUATIONS and hi is not None:
            break
        # nothing reaches it after all those syntheses: the largest quality settles it
        finite = {q: min(v, _PSNR_CAP) for q, v in values.items()}  # a lossless decode is inf dB
        guess = Q16_MAX if c.syntheses >= MAX_EVALUATIONS else _next_guess(finite, lo, hi, aim, _PSNR_SLOPE)
        nxt = _next_inside(guess, lo, hi, set(values), False)
        if nxt is None:
            break
        k = nxt
    assert hi is not None  # the loop ends with a quality that reaches the target or raises
    return hi, values[hi]


def _refine_for_size(c: _Candidates, target: int, k0: int, effort: int) -> tuple[int, bytes] | None:
    """The refined file that fits ``target`` at the highest quality tried, starting at ``k0``; or None."""
    best: tuple[int, bytes] | None = None
    over: int | None = None  # the lowest quality whose refined file is too large
    k, tried = k0, set()
    for _ in range(MAX_REFINEMENTS):
        data = c.encode(k, effort)
        tried.add(k)
        if len(data) <= target:
            if best is None or k > best[0]:
                best = (k, data)
            if target - len(data) <= _size_tolerance(target) or k == Q16_MAX:
                break
        else:
            over = k if over is None else min(over, k)
        # refinement moved the size at this quality; the usual slope says how far to move from here
        aim = math.log(max(1.0, target - _size_tolerance(target) / 2))
        guess = k + (aim - math.log(len(data))) / _LOG_SIZE_SLOPE
        nxt = _next_inside(guess, None if best is None else best[0], over, tried, True)
        if nxt is None:
            break
        k = nxt
    return best


def _refine_for_psnr(c: _Candidates, target: float, k0: int, effort: int) -> tuple[int, bytes, float] | None:
    """The smallest refined file that reaches ``target`` dB, starting at ``k0``; or None."""
    best: tuple[int, bytes, float] | None = None
    below: int | None = None  # the highest quality whose refined file falls short
    reached: int | None = None  # the lowest quality whose refined file reaches the target
    k, tried = k0, set()
    for _ in range(MAX_REFINEMENTS):
        value = c.psnr(k, effort)
        tried.add(k)
        if value >= target:
            data = c.encode(k, effort)
            reached = k if reached is None else min(reached, k)
            if best is None or len(data) < len(best[1]):
                best = (k, data, value)
            if value - target <= PSNR_TOLERANCE or k == Q16_MIN:
                break
        else:
            below = k if below is None else max(below, k)
        guess = k + (target + PSNR_TOLERANCE / 2 - value) / _PSNR_SLOPE
        nxt = _next_inside(guess, below, reached, tried, False)
        if nxt is None:
            break
        k = nxt
    return best


@counted
def encode_to_target(
    image,
    *,
    target_size: int | None = None,
    target_psnr: float | None = None,
    effort: int = 0,
    device=None,
    weights=None,
    model: str | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
    preview: bool | int = False,
) -> TargetResult:
    """Encode ``image`` at the quality that meets a size or a PSNR target (see the module doc).

    Args:
        image: as :func:`pillow_jac.codec.encode` takes it.
        target_size: the largest file size in bytes (everything in the file counts).
        target_psnr: the smallest PSNR of the decoded file in dB.
        effort: 0 to 3, as in :func:`pillow_jac.codec.encode`.
        device: torch device.
        weights: weights file.
        model: ``model_id`` of the installed generation to encode with.
        icc_profile: ICC profile to store.
        exif: EXIF block to store.
        xmp: XMP packet to store.
        preview: also store a preview (True, or its long side; SPEC.md section 5.4); its bytes count in
            ``target_size``.

    Returns:
        The file and the search's cost.

    Raises:
        ValueError: both or neither target, a bad value, ``target_size`` below what quality 1 gives, or
            ``target_psnr`` above what quality 8 reaches.
    """
    start = time.perf_counter()
    size_goal, psnr_goal = validate_targets(target_size, target_psnr)
    effort = validate_effort(effort)
    arr, layout = codec._as_array(image)
    height, width = arr.shape[:2]
    if max(height, width) > container.C.MAX_DIMENSION:
        raise ValueError(f"images are limited to {container.C.MAX_DIMENSION} pixels per side")
    engine = codec._encoder_engine(device, weights, model)
    preview_chunk = None
    if preview:
        from .preview import make_preview

        preview_chunk = make_preview(arr, layout, preview)
    fields = dict(
        width=width, height=height, layout=layout, model_id=engine.model_id, weights_hash=engine.weights_hash,
        **codec._alpha_fields(arr, layout), icc_profile=icc_profile, exif=exif, xmp=xmp, preview=preview_chunk,
    )  # fmt: skip
    if size_goal is not None:
        empty = container.JacFile.create(quality=QUALITY_MIN, z_stream=b"", y_stream=b"", **fields)
        overhead = len(container.serialize(empty))
        if size_goal < overhead:
            raise ValueError(
                f"target_size {size_goal} bytes is too small: the container, metadata, alpha and preview alone "
                f"take {overhead} bytes"
            )
    c = _Candidates(arr, layout, engine, fields)
    reached = None
    refined = False
    if size_goal is not None:
        q16, data = _search_size(c, size_goal)
        if effort:
            better = _refine_for_size(c, size_goal, q16, effort)
            if better is not None:
                (q16, data), refined = better, True
    else:
        q16, reached = _search_psnr(c, psnr_goal)
        data = None
        if effort:
            better = _refine_for_psnr(c, psnr_goal, q16, effort)
            if better is not None:
                (q16, data, reached), refined = better, True
        if data is None:
            data = c.encode(q16)
    return TargetResult(
        data=data,
        quality=q16 / QUALITY_DENOMINATOR,
        size=len(data),
        psnr=reached,
        refined=refined,
        estimates=c.estimates,
        encodes=c.encodes,
        syntheses=c.syntheses,
        refinements=c.refinements,
        seconds=time.perf_counter() - start,
    )
