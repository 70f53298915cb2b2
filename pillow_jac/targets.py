"""Rate and quality targets: encode to a file size or to a PSNR instead of a quality.

A file stores its quality to 1/256 (the JHDR ``quality`` field, SPEC.md section 3.2), and any stored
value is a valid quality: this module searches that value, as cwebp's ``-size`` and ``-psnr`` do.

* ``target_size`` (bytes): the largest quality whose **whole file** (container, metadata, alpha and
  preview included) is at most that size, or a lower one whose file is within :data:`SIZE_TOLERANCE` of the
  bytes left for the image (at least :data:`SIZE_TOLERANCE_BYTES`) below it, where the search stops (it still
  tries quality 8 when the sizes it has seen say that fits too). The result is never larger;
  when even quality 1 is larger, :class:`ValueError` (there is no fallback: a file over the size asked
  for is never returned).
* ``target_psnr`` (dB): the smallest quality whose **decoded file** reaches at least that PSNR, on its
  8-bit colour planes (RGB, or the grey plane of L and LA; alpha is lossless and not counted). When
  quality 8 does not, and no quality tried does, :class:`ValueError`. The search takes the PSNR to rise
  with the quality; on small images (photo crops of up to about 128x192: a 96x128 crop of kodim20 has 38.09
  dB at quality 4 and 37.95 at 4.137), and on flat or smooth ones (a sky, a plain colour: a 96x128 grey image
  reached 54.4 dB at quality 7.78 and 49.7 dB at quality 8), it need not. Where the PSNR falls just above a
  quality that falls short, the search steps past the dip in strides that double (from
  :data:`~pillow_jac.target_search._FIRST_STRIDE`/256); still, a lower quality that reaches the target, or
  one below 8 that reaches a target 8 misses, may go unfound.

How, at effort 0:

1. g_a runs once. The quality only scales its output (``y = g_a(x) * gain(q)``, CODING.md section 1.2 and
   :meth:`~pillow_jac.model.mbt2018.JointAutoregressiveHierarchicalPrior.gains`), so every candidate costs
   h_a and what follows, never g_a again.
2. Size: the model's own rate estimate (the -log2 likelihood of the rounded latents under the float
   hyperprior and context model, what training minimises; on the 24 Kodak images within 0.3% of the
   coded size at qualities 4 and 8 and 0.4-2.3% above it at quality 1, for a third of the cost of coding) brackets
   the target by a secant search on log(size). Real encodes (the exact entropy coder: the bytes of the
   file) then confirm and close the bracket by the same secant
   search on the real sizes (bisecting when a step would leave the bracket), until the fitting file is
   within :data:`SIZE_TOLERANCE` of the target (or :data:`SIZE_TOLERANCE_BYTES`) or the next quality
   (1/256 up) is over it.
3. PSNR: the decoded pixels depend only on the latents, which the encoder knows, so the synthesis g_s of
   the rounded latents gives the decoded file's pixels without any entropy coding (the same steps as
   :func:`pillow_jac.codec.decode`). A secant search on PSNR closes the bracket to :data:`PSNR_TOLERANCE`
   or to one step; the chosen quality is then coded once.

Effort 1 to 3: the effort-0 search gives a quality (or, when effort 0 cannot meet the target at all,
quality 1 for a size and 8 for a PSNR, which only a refined file may meet); latent refinement then runs
there and at up to :data:`MAX_REFINEMENTS` - 1 qualities predicted by the secant through the refined
files' sizes (or PSNRs), the usual slope while there is only one. The refined file that meets the
target at the highest quality (size) or with the fewest bytes (PSNR) is returned, for a PSNR only when
it is smaller than effort 0's file and for a size only when its PSNR is not below the effort-0 file's;
otherwise the effort-0 file, which meets it. When neither does,
:class:`ValueError` gives both figures.

Every file returned is what :func:`pillow_jac.codec.encode` writes at the quality it reports (the same
bytes). :class:`TargetResult` reports the cost: model estimates, encodes, syntheses, refinements.

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
from typing import TYPE_CHECKING

from . import codec_inputs, codec_steps, container, interpreter_exit
from .constants import QUALITY_DENOMINATOR, QUALITY_MIN, validate_effort
from .target_search import (
    MAX_REFINEMENTS,
    PSNR_TOLERANCE,
    Q16_MAX,
    Q16_MIN,
    SIZE_TOLERANCE,
    SIZE_TOLERANCE_BYTES,
    Candidates,
    TargetNotMetError,
    _below,
    psnr,
    refine_for_psnr,
    refine_for_size,
    search_psnr,
    search_size,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "TargetNotMetError",
    "TargetResult",
    "encode_to_target",
    "parse_size",
    "validate_targets",
    "psnr",
    "SIZE_TOLERANCE",
    "SIZE_TOLERANCE_BYTES",
    "PSNR_TOLERANCE",
    "MAX_REFINEMENTS",
]

#: a size with an optional unit: k, M, G (powers of 1000) or Ki, Mi, Gi (powers of 1024), then an optional B
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kKmMgG])([iI])?)?[bB]?")


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
        encodes: files built from coded streams, the returned one included. At effort 1-3, an image of up to
            :data:`~pillow_jac.constants.EFFORT_REAL_CHECK_PIXELS` pixels whose refinement changed a latent
            also codes its plain and its refined latents to choose between them (the effort's real check,
            :func:`pillow_jac.image_transforms.symbols`), and its file reuses the chosen streams: those
            codings are not counted here, so ``encodes`` is a lower bound on the entropy coder's runs there.
        syntheses: g_s runs (PSNR searches).
        refinements: latent refinements (effort 1-3), one per quality refined. A size search encodes each
            refined file; a PSNR search synthesizes each (``syntheses``) and encodes only those that reach the
            target.
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


@interpreter_exit.counted
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
    exif: bytes | Image.Exif | None = None,
    xmp: bytes | str | None = None,
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
        exif: EXIF block to store (bytes or a :class:`PIL.Image.Exif`).
        xmp: XMP packet to store (bytes or a ``str``); all three as :func:`pillow_jac.codec.encode` takes them.
        preview: also store a preview (True, or its long side; SPEC.md section 5.4); its bytes count in
            ``target_size``.

    Returns:
        The file and the search's cost.

    Raises:
        TypeError: an argument of the wrong type, as :func:`pillow_jac.codec.encode` says.
        ValueError: both or neither target, a bad value, ``target_size`` below what quality 1 gives, or
            ``target_psnr`` above what quality 8 reaches (at ``effort``: with refinement too). A size below
            what the container and metadata alone take is refused before the model loads.
    """
    start = time.perf_counter()
    size_goal, psnr_goal = validate_targets(target_size, target_psnr)
    effort = validate_effort(effort)
    arr, layout = codec_inputs.as_array(image)
    fields = codec_inputs.file_fields(  # every argument checked before the model loads
        arr, layout, icc_profile=icc_profile, exif=exif, xmp=xmp, model=model, preview=preview
    )
    if size_goal is not None:  # the header's fields have fixed sizes: a placeholder decoder counts as the real one
        empty = container.JacFile.create(
            quality=QUALITY_MIN, z_stream=b"", y_stream=b"", model_id="x", weights_hash=bytes(8), **fields
        )
        overhead = len(container.serialize(empty))
        if size_goal < overhead:
            raise TargetNotMetError(
                f"a size target of {size_goal} bytes is too small: the container, metadata, alpha and preview alone "
                f"take {overhead} bytes"
            )
    engine = codec_steps.encoder_engine(device, weights, model)
    fields.update(model_id=engine.model_id, weights_hash=engine.weights_hash)
    c = Candidates(arr, layout, engine, fields)
    reached = None
    refined = False
    if size_goal is not None:
        try:
            q16, data = search_size(c, size_goal)
        except TargetNotMetError as plain_error:  # even quality 1 is too large at effort 0: refinement may fit
            if not effort:
                raise
            q16, data = Q16_MIN, None
            unmet = plain_error
        if effort:
            better = refine_for_size(c, size_goal, q16, effort)
            if better is not None and data is not None and c.psnr(better[0], effort) < c.psnr(q16, 0):
                better = None  # the refinements ran out below the effort-0 file's quality: that file is better
            if better is not None:
                (q16, data), refined = better, True
            elif data is None:
                raise TargetNotMetError(f"{unmet}; {len(c.encode(Q16_MIN, effort))} bytes at effort {effort}") from None
    else:
        try:
            q16, reached = search_psnr(c, psnr_goal)
        except TargetNotMetError as plain_error:  # even quality 8 falls short at effort 0: refinement may reach it
            if not effort:
                raise
            q16, reached = Q16_MAX, None
            unmet = plain_error
        data = None
        if effort:
            better = refine_for_psnr(c, psnr_goal, q16, effort)
            if better is None and reached is None:
                raise TargetNotMetError(
                    f"{unmet}; {_below(c.psnr(Q16_MAX, effort), psnr_goal)} dB at effort {effort}"
                ) from None
            if better is not None and (reached is None or len(better[1]) < len(data := c.encode(q16))):
                (q16, data, reached), refined = better, True  # a refined file, smaller than effort 0's
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
