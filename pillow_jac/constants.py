"""Every constant that affects the bytes of a ``.jac`` file or the pixels decoded from one.

Changing any value here changes the format: bump :data:`FORMAT_VERSION` (format_spec/SPEC.md,
section "Versions") and regenerate the test vectors. Standard library only: the container imports it.
"""

from __future__ import annotations

import decimal
import numbers
import operator

#: 8-byte signature (SPEC.md section 2). Byte 1 is 'J', so no TGA-style reader can claim it.
MAGIC = b"\x8bJAC\r\n\x1a\n"
#: the format's name in Pillow (``Image.open(...).format``, ``save(..., format=...)``), its file name extension
#: (SPEC.md section 2) and its MIME type
FORMAT_NAME = "JAC"
EXTENSION = ".jac"
MIME_TYPE = "image/x-jac"
#: (major, minor) of the container and coding rules this package writes (SPEC.md section 9).
FORMAT_VERSION = (1, 0)

#: CompressAI's lambda ladder, one per integer quality 1..8 (loss = lambda * 255^2 * MSE + bpp): the default
#: ladder of a new model and of a manifest that has none. Each model's own ladder is ``config.lambdas`` in its
#: manifest (release 6: 0.0004 ... 0.18, log-spaced).
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.18)
#: the quality range a JHDR may hold (SPEC.md section 3.2: q16 from 256 to 2048); a format constant, not
#: the length of a ladder, so that no encoder update can widen what a reader accepts
QUALITY_MIN = 1.0
QUALITY_MAX = 8.0
#: qualities are stored as round(quality * QUALITY_DENOMINATOR) in a u16 (SPEC.md section 3).
QUALITY_DENOMINATOR = 256

#: the smallest Gaussian scale the model may predict (CODING.md section 2.1).
SCALE_MIN = 0.11
#: the largest scale in the scale table.
SCALE_MAX = 256.0
#: number of log-spaced scale levels of the scale table.
SCALE_LEVELS = 64
#: means are snapped to multiples of 1/MEAN_STEPS before coding (CODING.md section 2.2).
MEAN_STEPS = 16
#: every coding table is a list of integer frequencies summing to 2**CDF_PRECISION.
CDF_PRECISION = 16
#: probability mass left in each tail of a Gaussian table before the escape symbols.
TAIL_MASS = 1e-7
#: escape codes: magnitude classes (Elias-gamma exponents) coded with a flat table of this many entries.
ESCAPE_CLASSES = 24

#: a Gaussian-mixture latent is coded with a window of 2 * MIXTURE_HALF_WIDTH + 1 values around its heaviest
#: component's integer mean, plus the two escapes (CODING.md section 4.3).
MIXTURE_HALF_WIDTH = 16
#: mixture weights are integers summing to 2**MIXTURE_WEIGHT_BITS (CODING.md section 4.2).
MIXTURE_WEIGHT_BITS = 16
#: entries of the mixture's exponential table: logit differences 0 .. MIXTURE_EXP_ENTRIES - 1, in
#: activation steps (2**-ACTIVATION_BITS); larger differences use the last entry (CODING.md section 4.2).
MIXTURE_EXP_ENTRIES = 4096

#: encoder effort levels: gradient steps of latent refinement per tile (pillow_jac/model/refine.py).
#: Effort changes which latents an encoder writes, never how a file decodes (CODING.md section 1.2).
EFFORT_ITERATIONS = (0, 8, 24, 80)
MAX_EFFORT = len(EFFORT_ITERATIONS) - 1
#: images of up to this many pixels keep their refined latents only if the real file is better than effort
#: 0's (pillow_jac/image_transforms.py): the search's estimate does not see that the streams grow in 4-byte words
EFFORT_REAL_CHECK_PIXELS = 256 * 256
#: effort used when the caller gives none
DEFAULT_EFFORT = 0

#: the devices the codec runs on, as a ``device`` argument or ``JAC_DEVICE`` names them (pillow_jac/engine.py)
DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
#: how such a name is spelt (a regular expression for ``re.fullmatch``)
DEVICE_PATTERN = r"(cpu|cuda)(:[0-9]+)?|auto"

#: fixed-point fractional bits of the integer network activations and outputs (CODING.md section 3).
ACTIVATION_BITS = 8
#: bound of every integer activation: |a| < 2**ACTIVATION_LIMIT_BITS.
ACTIVATION_LIMIT_BITS = 20

#: pixels per latent row and column of y: g_a's four stride-2 stages (CODING.md section 1.1).
DOWNSAMPLING = 16
#: pixels per row and column of z (h_a's two more stride-2 stages): inputs are padded to this multiple.
ALIGN = 64
#: rows (and columns) of y per row of z
Y_PER_Z = ALIGN // DOWNSAMPLING

#: hard limits a decoder enforces before allocating anything (SPEC.md section 8).
MAX_DIMENSION = 65535
MAX_CHUNK_BYTES = 1 << 30

#: quality used when the caller gives none (API default, not stored specially in files).
DEFAULT_QUALITY = 4.0


def validate_quality(quality: float) -> float:
    """Return ``quality`` as a float in ``[1, 8]`` or raise ``ValueError`` explaining the scale.

    Only numbers are qualities (a :class:`decimal.Decimal` among them): a string, bytes or a bool is refused
    rather than converted.

    Example:
        >>> validate_quality(4)
        4.0
        >>> validate_quality("4")
        Traceback (most recent call last):
        ...
        ValueError: quality must be a number from 1 to 8, got '4'
    """
    shown = repr(quality) if len(repr(quality)) <= 40 else repr(quality)[:37] + "..."
    if isinstance(quality, bool) or not isinstance(quality, (numbers.Real, decimal.Decimal)):
        raise ValueError(f"quality must be a number from {QUALITY_MIN:g} to {QUALITY_MAX:g}, got {shown}")
    try:
        q = float(quality)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"quality must be a number from {QUALITY_MIN:g} to {QUALITY_MAX:g}, got {shown}") from None
    if not QUALITY_MIN <= q <= QUALITY_MAX:  # also rejects NaN
        hint = " (JAC qualities are not JPEG's 0-100 scale)" if q > QUALITY_MAX else ""
        raise ValueError(
            f"quality must be from {QUALITY_MIN:g} (smallest files) to {QUALITY_MAX:g} (best quality), "
            f"fractions allowed; got {shown}{hint}"
        )
    return q


def validate_effort(effort: int) -> int:
    """Return ``effort`` as an int in ``0..MAX_EFFORT`` or raise ``ValueError``.

    Any integer type is accepted (``numpy.int64`` too, whatever :func:`operator.index` takes), but not ``bool``.

    Example:
        >>> import numpy as np
        >>> validate_effort(2), validate_effort(np.int64(1))
        (2, 1)
    """
    try:
        value = None if isinstance(effort, bool) else operator.index(effort)
    except TypeError:
        value = None
    if value is None or not 0 <= value <= MAX_EFFORT:
        raise ValueError(f"effort must be an integer from 0 (fastest) to {MAX_EFFORT} (smallest files), got {effort!r}")
    return value


# Container (SPEC.md sections 3-5 and 8). Chunk types are 4 bytes: an uppercase first letter marks a
# critical chunk (a decoder that does not know it rejects the file), a lowercase one an ancillary chunk.
CHUNK_JHDR = b"JHDR"  #: header, first chunk, fixed size
CHUNK_ZSTR = b"ZSTR"  #: range-coder stream of the hyper-latent z
CHUNK_YSTR = b"YSTR"  #: range-coder stream of the latent y
CHUNK_ALPH = b"ALPH"  #: alpha plane (layouts RGBA and LA only)
CHUNK_JEND = b"JEND"  #: empty, last chunk
CHUNK_ICCP = b"iccp"  #: ICC profile
CHUNK_EXIF = b"exif"  #: EXIF block
CHUNK_XMP = b"xmp "  #: XMP packet
#: the metadata a file carries, by the name it has as a ``JacFile`` field, a save option and an ``im.info`` key
#: (the ``iccp``, ``exif`` and ``xmp `` chunks, SPEC.md section 5.2)
METADATA_FIELDS = ("icc_profile", "exif", "xmp")
#: preview chunk (SPEC.md section 5.4): a small image in a format Pillow decodes, never the image itself.
CHUNK_PRVW = b"prvw"
#: ``prvw`` format byte 0: a JPEG (JFIF) file.
PREVIEW_JPEG = 0
#: ``prvw`` format byte 1: a WebP (RIFF) file.
PREVIEW_WEBP = 1
#: byte length of the JHDR chunk's data.
JHDR_LENGTH = 54
#: JHDR fields naming the decoder (SPEC.md section 3.2): ``model_id``, 1 to this many printable ASCII
#: characters padded with NULs, and ``weights_hash``, this many bytes (a weights manifest holds it as hex)
MODEL_ID_BYTES = 16
WEIGHTS_HASH_BYTES = 8
#: the ``layout`` of a weights file's manifest (SPEC.md section 9.2): the whole model, or a kept generation's decoder
WEIGHTS_LAYOUTS = ("full", "decoder")


def is_model_id(text: str) -> bool:
    """Whether ``text`` can be a ``model_id``: 1 to :data:`MODEL_ID_BYTES` printable ASCII characters.

    Example:
        >>> is_model_id("mbt-128-192-r006"), is_model_id(""), is_model_id("r\u00e9lease")
        (True, False, False)
    """
    return 1 <= len(text) <= MODEL_ID_BYTES and all(0x20 <= ord(ch) <= 0x7E for ch in text)


def is_release_number(text: object) -> bool:
    """Whether a manifest's ``release`` is a whole number in ASCII digits (``"²"`` is a digit to ``str.isdigit``).

    Example:
        >>> is_release_number("6"), is_release_number("\u00b2"), is_release_number(6)
        (True, False, False)
    """
    return isinstance(text, str) and text.isascii() and text.isdigit()


#: JHDR layout code -> Pillow mode (the code is the index).
LAYOUTS = ("RGB", "L", "RGBA", "LA")


class UnsupportedModeError(ValueError, OSError):
    """An image mode JAC cannot store: a :class:`ValueError`, and an :class:`OSError` as Pillow's writers raise.

    ``Image.save(..., "PNG")`` of a mode PNG cannot hold raises ``OSError: cannot write mode F as PNG``; a
    save loop that catches ``OSError`` catches this too.
    """


def wide_colour_key(mode: str, key: object) -> bool:
    """Whether ``key``, a ``mode`` image's colour key, is a 16-bit one that no 8-bit pixel matches.

    The key is PIL's ``info["transparency"]`` (PNG's tRNS). Pillow reads a 16-bit PNG's samples as 8 bits but
    keeps its tRNS colour at 16: the key matches no pixel of an RGB image (RGBA from it would be opaque
    everywhere), and L -> LA keys on its low byte (other pixels transparent).

    Example:
        >>> wide_colour_key("RGB", (4660, 0, 0)), wide_colour_key("L", 4096), wide_colour_key("L", 12)
        (True, True, False)
    """
    if mode == "RGB":
        return isinstance(key, tuple) and any(isinstance(v, int) and v > 255 for v in key)
    return mode in ("1", "L") and isinstance(key, int) and key > 255


#: layouts with an alpha plane (an ``ALPH`` chunk), and layouts returned as one grey plane (SPEC.md section 5).
ALPHA_LAYOUTS = ("RGBA", "LA")
GRAY_LAYOUTS = ("L", "LA")
#: channels of an array -> its layout
LAYOUT_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
#: ALPH method byte 0: zlib stream (RFC 1950) of the raw row-major H*W uint8 alpha plane.
ALPHA_METHOD_ZLIB = 0

#: the share of a test vector's colour or grey samples (at least two) that the reference decoder may give one
#: level off the vector's pixels on another machine (g_s is float32, whose summation order differs; alpha is
#: exact); a changed rounding rule moves a fifth to a half of them
VECTOR_OFF_BY_ONE_SHARE = 0.01
