"""One adapter per codec: ``encode(rgb, q) -> bytes`` and ``decode(bytes) -> rgb``, with a quality ladder.

Every adapter takes and returns ``H x W x 3`` uint8 RGB arrays and produces a complete file (container
headers included), so ``8 * len(data) / (H * W)`` is the real bit rate. Each codec has its own
parameter and ladder, ordered from the smallest files to the best quality:

=============  ======================================  ============================================
name           implementation                          parameter (ladder)
=============  ======================================  ============================================
``jac``        :mod:`pillow_jac.codec`                 quality 1..8, fractions allowed
``jac-e1``     the same at encoder effort 1 (2, 3)     (not in the default set: slow)
``jpeg420``    Pillow, libjpeg-turbo, 4:2:0, optimise  quality 5..95
``jpeg444``    Pillow, libjpeg-turbo, 4:4:4, optimise  quality 5..95
``webp``       Pillow, libwebp, lossy, method 6        quality 0..95
``avif``       Pillow's AVIF (libavif), 4:4:4, speed 6 quality 5..90; falls back to pillow-heif,
                                                       then imagecodecs
``avif420``    the same in 4:2:0 (not in the default set)
``jpeg2000``   Pillow, OpenJPEG, JP2, 9/7 + MCT        target bits per pixel 0.05..4 (rate ladder)
``heic``       pillow-heif, libheif + x265, 4:4:4      quality 10..70
``heic420``    the same in 4:2:0 (not in the default set)
``jxl``        imagecodecs (libjxl), effort 7          Butteraugli distance 25..0.5; falls back to
                                                       pillow-jxl-plugin (quality 5..95)
=============  ======================================  ============================================

A codec whose library is missing is skipped by :func:`get_codecs` with a note on stderr; the
optional libraries are imported only when their adapter is built.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, features

from pillow_jac.constants import MAX_EFFORT

__all__ = [
    "Codec",
    "CodecUnavailable",
    "DEFAULT_CODECS",
    "ALL_CODECS",
    "JAC_QUALITIES",
    "get_codec",
    "get_codecs",
]

# Ladders span about 0.05-3.5 bpp on Kodak (the published learned-codec curves cover 0.07-3 bpp).
#: JPEG quality ladder (and the pillow-jxl-plugin fallback's)
PERCENT_LADDER: tuple[float, ...] = (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: WebP quality ladder (quality 0 is still about 0.09 bpp on Kodak)
WEBP_LADDER: tuple[float, ...] = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: AVIF quality ladder (libavif's quality 0..100)
AVIF_LADDER: tuple[float, ...] = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
#: HEIC quality ladder (x265 through libheif: quality 70 is already about 3 bpp on Kodak)
HEIC_LADDER: tuple[float, ...] = (10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70)
#: JPEG 2000 target rates in bits per pixel
J2K_LADDER: tuple[float, ...] = (0.05, 0.08, 0.12, 0.2, 0.3, 0.45, 0.65, 0.9, 1.3, 1.9, 2.8, 4.0)
#: JPEG XL Butteraugli distances, largest (smallest files) first
JXL_DISTANCES: tuple[float, ...] = (25.0, 15.0, 10.0, 7.0, 5.0, 3.5, 2.5, 1.8, 1.2, 0.8, 0.5)
#: the integer qualities of ``.jac``
JAC_QUALITIES: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 7, 8)

#: codecs measured when none are named, in table order
DEFAULT_CODECS: tuple[str, ...] = ("jac", "jpeg420", "jpeg444", "webp", "avif", "jpeg2000", "heic", "jxl")
#: ``.jac`` at a higher encoder effort (``jac-e2`` is effort 2)
JAC_EFFORT_CODECS: tuple[str, ...] = tuple(f"jac-e{e}" for e in range(1, MAX_EFFORT + 1))
#: every name :func:`get_codec` knows
ALL_CODECS: tuple[str, ...] = (*DEFAULT_CODECS, "avif420", "heic420", *JAC_EFFORT_CODECS)


class CodecUnavailable(RuntimeError):
    """The library a codec needs is not installed (or lacks the needed encoder)."""


@dataclass(frozen=True)
class Codec:
    """A codec adapter.

    Attributes:
        name: short key (``"jpeg420"``); also the results' key.
        label: human-readable name with the library and its version.
        parameter: what the ladder values mean (``"quality"``, ``"target bpp"``, ``"distance"``).
        ladder: the parameter values to measure, from the smallest files to the best quality.
        encode: ``(rgb uint8 H x W x 3, parameter) -> bytes`` (a complete file).
        decode: ``bytes -> rgb uint8 H x W x 3``.
        extension: file extension of what ``encode`` writes, with the dot.
        settings: the fixed encoder settings, for the record.
    """

    name: str
    label: str
    parameter: str
    ladder: tuple[float, ...]
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    extension: str
    settings: dict[str, object] = field(default_factory=dict)

    def with_ladder(self, ladder: Iterable[float]) -> Codec:
        """A copy of this adapter with another ladder."""
        return replace(self, ladder=tuple(ladder))


# -- helpers -------------------------------------------------------------------------------------


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _pillow_save(rgb: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_check_rgb(rgb), "RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pillow_load(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _require(feature: str, what: str) -> str:
    if not features.check(feature):
        raise CodecUnavailable(f"this Pillow was built without {what}")
    return str(features.version(feature) or "?")


# -- builders ------------------------------------------------------------------------------------


def _jpeg(subsampling: str) -> Codec:
    _require("jpg", "JPEG")
    version = features.version("libjpeg_turbo") or features.version("jpg")
    code = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[subsampling]
    settings = {"subsampling": subsampling, "optimize": True}

    def encode(rgb: np.ndarray, quality: float) -> bytes:
        return _pillow_save(rgb, "JPEG", quality=int(round(quality)), subsampling=code, optimize=True)

    name = "jpeg" + subsampling.replace(":", "")
    label = f"JPEG {subsampling} (Pillow, libjpeg-turbo {version})"
    return Codec(name, label, "quality", PERCENT_LADDER, encode, _pillow_load, ".jpg", settings)


def _webp() -> Codec:
    version = _require("webp", "WebP")

    def encode(rgb: np.ndarray, quality: float) -> bytes:
        return _pillow_save(rgb, "WEBP", quality=int(round(quality)), method=6, lossless=False)

    label = f"WebP (Pillow, libwebp {version})"
    return Codec("webp", label, "quality", WEBP_LADDER, encode, _pillow_load, ".webp", {"method": 6})


def _avif(subsampling: str) -> Codec:
    name = "avif" if subsampling == "4:4:4" else "avif" + subsampling.replace(":", "")
    settings: dict[str, object] = {"subsampling": subsampling, "speed": 6}
    if features.check("avif"):
        version = features.version("avif")

        def encode(rgb: np.ndarray, quality: float) -> bytes:
            return _pillow_save(rgb, "AVIF", quality=int(round(quality)), subsampling=subsampling, speed=6)

        label = f"AVIF {subsampling} (Pillow, libavif {version})"
        return Codec(name, label, "quality", AVIF_LADDER, encode, _pillow_load, ".avif", settings)
    try:
        import pillow_heif
    except ImportError:
        pillow_heif = None
    if pillow_heif is not None and pillow_heif.libheif_info().get("AVIF"):
        chroma = int(subsampling.replace(":", ""))

        def encode_heif(rgb: np.ndarray, quality: float) -> bytes:
            return _heif_encode(rgb, quality, chroma, "AVIF")

        label = f"AVIF {subsampling} (pillow-heif, {pillow_heif.libheif_info()['AVIF']})"
        return Codec(name, label, "quality", AVIF_LADDER, encode_heif, _heif_decode, ".avif", settings)
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if imagecodecs is not None and imagecodecs.AVIF.available:
        formats = imagecodecs.AVIF.PIXEL_FORMAT  # its enum: the integers 444, 422, 420 are no keys of it
        pixelformat = {"4:4:4": formats.YUV444, "4:2:2": formats.YUV422, "4:2:0": formats.YUV420}[subsampling]

        def encode_ic(rgb: np.ndarray, quality: float) -> bytes:
            return bytes(
                imagecodecs.avif_encode(_check_rgb(rgb), int(round(quality)), speed=6, pixelformat=pixelformat)
            )

        def decode_ic(data: bytes) -> np.ndarray:
            return np.asarray(imagecodecs.avif_decode(data))[:, :, :3]

        label = f"AVIF {subsampling} (imagecodecs {imagecodecs.__version__})"
        return Codec(name, label, "quality", AVIF_LADDER, encode_ic, decode_ic, ".avif", settings)
    raise CodecUnavailable("no AVIF encoder: Pillow lacks AVIF and neither pillow-heif nor imagecodecs provides one")


def _jpeg2000() -> Codec:
    version = _require("jpg_2000", "JPEG 2000 (OpenJPEG)")
    settings = {"container": "jp2", "irreversible": True, "mct": 1, "quality_mode": "rates"}

    def encode(rgb: np.ndarray, bpp: float) -> bytes:
        # OpenJPEG's "rates" are compression ratios against the raw 24-bit image
        return _pillow_save(
            rgb, "JPEG2000", quality_mode="rates", quality_layers=[24.0 / bpp], irreversible=True, mct=1
        )

    label = f"JPEG 2000 (Pillow, OpenJPEG {version})"
    return Codec("jpeg2000", label, "target bpp", J2K_LADDER, encode, _pillow_load, ".jp2", settings)


def _heif_encode(rgb: np.ndarray, quality: float, chroma: int, fmt: str) -> bytes:
    import pillow_heif

    rgb = _check_rgb(rgb)
    heif = pillow_heif.from_bytes(mode="RGB", size=(rgb.shape[1], rgb.shape[0]), data=rgb.tobytes())
    buffer = io.BytesIO()
    heif.save(buffer, format=fmt, quality=int(round(quality)), chroma=chroma)
    return buffer.getvalue()


def _heif_decode(data: bytes) -> np.ndarray:
    import pillow_heif

    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
    return np.asarray(heif)[:, :, :3]


def _heic(subsampling: str) -> Codec:
    try:
        import pillow_heif
    except ImportError:
        raise CodecUnavailable("pillow-heif is not installed (pip install pillow-heif)") from None
    info = pillow_heif.libheif_info()
    if not info.get("HEIF"):
        raise CodecUnavailable("pillow-heif has no HEVC encoder")
    chroma = int(subsampling.replace(":", ""))
    name = "heic" if subsampling == "4:4:4" else "heic" + str(chroma)

    def encode(rgb: np.ndarray, quality: float) -> bytes:
        return _heif_encode(rgb, quality, chroma, "HEIF")

    label = f"HEIC {subsampling} (pillow-heif, libheif {info.get('libheif')}, {info['HEIF']})"
    settings = {"chroma": chroma, "encoder": info["HEIF"]}
    return Codec(name, label, "quality", HEIC_LADDER, encode, _heif_decode, ".heic", settings)


def _jxl() -> Codec:
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if imagecodecs is not None and imagecodecs.JPEGXL.available:
        version = next((v for v in imagecodecs.version().split(", ") if v.startswith("libjxl")), "libjxl")

        def encode(rgb: np.ndarray, distance: float) -> bytes:
            return bytes(imagecodecs.jpegxl_encode(_check_rgb(rgb), distance=distance, effort=7))

        def decode(data: bytes) -> np.ndarray:
            return np.asarray(imagecodecs.jpegxl_decode(data))[:, :, :3]

        label = f"JPEG XL (imagecodecs, {version}, effort 7)"
        return Codec("jxl", label, "distance", JXL_DISTANCES, encode, decode, ".jxl", {"effort": 7})
    try:
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
    except ImportError:
        raise CodecUnavailable("neither imagecodecs (with libjxl) nor pillow-jxl-plugin is installed") from None

    def encode_pil(rgb: np.ndarray, quality: float) -> bytes:
        return _pillow_save(rgb, "JXL", quality=int(round(quality)), effort=7)

    return Codec("jxl", "JPEG XL (pillow-jxl-plugin)", "quality", PERCENT_LADDER, encode_pil, _pillow_load, ".jxl")


def _search_precision(device: str | None) -> str:
    """The precision the effort search runs in on ``device`` (pillow_jac/model/precision.py)."""
    try:
        from pillow_jac.engine import resolve_device
        from pillow_jac.model.precision import bf16_autocast_pays

        return "bf16" if bf16_autocast_pays(resolve_device(device)) else "float32"
    except Exception:  # noqa: BLE001  (an unknown or absent device: encoding will report it)
        return "unknown"


def _jac(qualities: Sequence[float] | None, device: str | None, weights: str | None = None, effort: int = 0) -> Codec:
    try:
        from pillow_jac import codec
    except ImportError as e:  # torch or constriction missing
        raise CodecUnavailable(f"pillow_jac.codec cannot be imported: {e}") from None
    if not (callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))):
        raise CodecUnavailable("pillow_jac.codec has no encode/decode yet")

    extra = {"weights": weights} if weights else {}

    def encode(rgb: np.ndarray, quality: float) -> bytes:
        return codec.encode(_check_rgb(rgb), float(quality), effort=effort, device=device, **extra)

    def decode(data: bytes) -> np.ndarray:
        out = np.asarray(codec.decode(data, device=device, **extra))
        return out if out.ndim == 3 else np.repeat(out[:, :, None], 3, axis=2)

    ladder = tuple(float(q) for q in (qualities or JAC_QUALITIES))
    label = "JAC (pillow_jac)" + (f", effort {effort}" if effort else "")
    label += f" on {device}" if device and device != "cpu" else ""
    settings: dict[str, object] = {"device": device, "weights": weights}
    if effort:  # effort 0 leaves "effort" out of the settings, so its cache fingerprint is that of the plain codec
        from pillow_jac.model.refine import schedule

        settings["effort"] = effort
        settings["search"] = schedule(effort)  # a new search is measured afresh
        settings["search_precision"] = _search_precision(device)  # bf16 where the device has it, else float32
    name = f"jac-e{effort}" if effort else "jac"
    return Codec(name, label, "quality", ladder, encode, decode, ".jac", settings)


def get_codec(
    name: str,
    *,
    jac_qualities: Sequence[float] | None = None,
    jac_device: str | None = None,
    jac_weights: str | None = None,
) -> Codec:
    """Build the adapter called ``name`` (one of :data:`ALL_CODECS`).

    Args:
        name: the codec's key.
        jac_qualities: the ``.jac`` ladder (default :data:`JAC_QUALITIES`).
        jac_device: torch device for ``.jac`` (default: the codec's, ``JAC_DEVICE`` or cpu).
        jac_weights: weights file for ``.jac`` (default: the codec's).

    Raises:
        CodecUnavailable: its library is not installed.
        KeyError: unknown name.
    """
    builders: dict[str, Callable[[], Codec]] = {
        "jpeg420": lambda: _jpeg("4:2:0"),
        "jpeg444": lambda: _jpeg("4:4:4"),
        "webp": _webp,
        "avif": lambda: _avif("4:4:4"),
        "avif420": lambda: _avif("4:2:0"),
        "jpeg2000": _jpeg2000,
        "heic": lambda: _heic("4:4:4"),
        "heic420": lambda: _heic("4:2:0"),
        "jxl": _jxl,
        "jac": lambda: _jac(jac_qualities, jac_device, jac_weights),
        **{
            f"jac-e{e}": (lambda e=e: _jac(jac_qualities, jac_device, jac_weights, effort=e))
            for e in range(1, MAX_EFFORT + 1)
        },
    }
    if name not in builders:
        raise KeyError(f"unknown codec {name!r}; known: {', '.join(ALL_CODECS)}")
    return builders[name]()


def get_codecs(
    names: Iterable[str] | None = None,
    *,
    jac_qualities: Sequence[float] | None = None,
    jac_device: str | None = None,
    jac_weights: str | None = None,
    verbose: bool = True,
    skipped: dict[str, str] | None = None,
) -> list[Codec]:
    """The adapters for ``names`` (default :data:`DEFAULT_CODECS`), skipping unavailable ones with a note.

    ``skipped``, where given, gets each unavailable codec's name and why.

    Example:
        >>> [c.name for c in get_codecs(["jpeg420", "webp"], verbose=False)]
        ['jpeg420', 'webp']
    """
    out = []
    for name in names or DEFAULT_CODECS:
        try:
            out.append(get_codec(name, jac_qualities=jac_qualities, jac_device=jac_device, jac_weights=jac_weights))
        except CodecUnavailable as e:
            if verbose:
                print(f"note: skipping {name}: {e}", file=sys.stderr)
            if skipped is not None:
                skipped[name] = str(e)
    return out
