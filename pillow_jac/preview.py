"""The gallery preview of a ``.jac`` file (SPEC.md section 5.4): made when saving, used by ``draft()``.

A preview is a small WebP (or JPEG) of the image in an optional ``prvw`` chunk, which
:meth:`pillow_jac.JacImagePlugin.JacImageFile.draft` (and so ``thumbnail()``) decodes with Pillow
instead of running the neural decoder. It is never the image: a decoder may ignore it.
Imports no torch.
"""

from __future__ import annotations

import contextlib
import io
import numbers
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

from PIL import Image, ImageFile, JpegImagePlugin, WebPImagePlugin

from . import container
from .constants import ALPHA_LAYOUTS, GRAY_LAYOUTS

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "PREVIEW_SIZE", "PREVIEW_QUALITY", "PREVIEW_MAX_SIZE", "make_preview", "preview_for", "preview_size",
    "usable_preview_size",
]  # fmt: skip

#: long side of the preview ``save(..., preview=True)`` writes (SPEC.md section 5.4): ``thumbnail((256, 256))``
#: asks ``draft()`` for twice its size (Pillow's ``reducing_gap``), so a 512-pixel preview serves it.
PREVIEW_SIZE = 512
#: WebP quality of the preview (on Kodak at 512 pixels: 18 kB at 50, 20.5 kB at 60, 23 kB at 70, on average)
PREVIEW_QUALITY = 60
#: the largest long side ``preview=N`` accepts
PREVIEW_MAX_SIZE = 4096


def preview_for(jac: container.JacFile, mode: str, size: tuple[int, int]) -> Image.Image | None:
    """The decoded preview of ``jac`` in ``mode`` if it can stand for the image reduced to fit in ``size``.

    For a mode with alpha, a preview without alpha (JPEG, or a WebP without an alpha plane) stands for
    the image only when the image's own alpha is 255 everywhere: converting it would make it opaque.
    """
    try:
        with _opened(jac, mode, size) as im:
            if im is None:
                return None
            im.load()
            return im.convert(mode) if im.mode != mode else im.copy()
    except _UNREADABLE:
        return None


def usable_preview_size(jac: container.JacFile) -> tuple[int, int] | None:
    """The size of the preview :func:`preview_for` would serve for some reduced size.

    What ``jac info`` reports. None for a file above twice Pillow's pixel limit, which a reader refuses (and
    whose alpha plane this would otherwise read whole).
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and jac.size[0] * jac.size[1] > 2 * limit:
        return None
    try:
        with _opened(jac, jac.header.layout, (1, 1)) as im:
            if im is None:
                return None
            im.load()  # a damaged body, behind a sound header, is refused by preview_for as well
            return im.size
    except _UNREADABLE:
        return None


#: what opening or decoding a damaged embedded image raises
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


@contextlib.contextmanager
def _opened(jac: container.JacFile, mode: str, size: tuple[int, int]) -> Iterator[Image.Image | None]:
    """The preview of ``jac`` opened (its pixels not yet decoded) if it can stand for the image in ``size``, else None.

    Raises what Pillow raises for a damaged embedded image (:data:`_UNREADABLE`).
    """
    unpacked = container.unpack_preview(jac.preview)
    if unpacked is None:
        yield None
        return
    image_format, width, height, data = unpacked
    full_width, full_height = jac.size
    scale = min(size[0] / full_width, size[1] / full_height, 1.0)
    if (
        (width >= full_width and height >= full_height)  # not smaller than the image
        or abs(width * full_height - height * full_width) > max(full_width, full_height)  # another aspect ratio
        or width < int(full_width * scale)  # than rounding to whole pixels gives, or smaller than asked for
        or height < int(full_height * scale)
    ):
        yield None
        return
    # Opened by its plugin's class, not Image.open: Image.open's bomb check would warn about a preview
    # declared smaller than the image whose embedded file is not (a forged one), and a second time about a
    # large image's preview, whose image Image.open checked already. A preview of another size than
    # declared is refused before its pixels are decoded, so no more than the image's size is ever decoded.
    if image_format == container.PREVIEW_JPEG:
        if ImageFile.LOAD_TRUNCATED_IMAGES and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            yield None  # cut short (no end of image): Pillow would fill it in with grey rather than refuse it
            return
        plugin = JpegImagePlugin.JpegImageFile  # reads the size from its frame header, decodes on load()
    elif getattr(WebPImagePlugin, "SUPPORTED", True) and _webp_size(data) == (width, height):
        plugin = WebPImagePlugin.WebPImageFile  # allocates its canvas when opened: the size is checked first
    else:
        yield None
        return
    with plugin(io.BytesIO(data)) as im:
        if im.size != (width, height):
            yield None
        elif "A" in mode and "A" not in im.mode and not _opaque(jac):
            yield None  # a preview without alpha (JPEG, lossy WebP) stands only for an opaque image
        else:
            yield im


def _opaque(jac: container.JacFile) -> bool:
    """Whether the alpha plane of ``jac`` (zlib, lossless: no neural decoder) is 255 everywhere.

    The reference writer's WebP preview of an image whose alpha is all 255 has no alpha (libwebp
    drops an opaque alpha plane), and stands for it exactly; another preview without alpha does not.
    The plane is read in pieces (:func:`pillow_jac.container.alpha_pieces`), never whole, and not past the
    first that is not opaque; a damaged one is not opaque (decoding the image reports it).
    """
    if jac.alpha is None:
        return False
    try:
        pieces = container.alpha_pieces(jac.alpha_method, jac.alpha, *jac.size)
        return all(piece.count(255) == len(piece) for piece in pieces)
    except container.JacDataError:
        return False


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP file's first chunk declares (RFC 9649 sections 2.5-2.7), or None if it says none."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # key frame start code, then 14-bit sizes
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if kind == b"VP8L" and data[20] == 0x2F:  # signature, then 14 bits each of width - 1 and height - 1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":  # 24 bits each of canvas width - 1 and height - 1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def asked(option: object) -> bool:
    """Whether a ``preview`` save option asks for a preview: anything but None and False (numpy's too).

    ``0`` asks for one (of a size :func:`preview_size` refuses), not for none: a falsy size is not "no".
    """
    import numpy as np  # here: opening a file (this module) needs no numpy

    return not (option is None or option is False or (isinstance(option, np.bool_) and not option))


def preview_size(size: bool | int) -> int:
    """The long side of the preview the ``preview`` save option asks for (True: :data:`PREVIEW_SIZE`).

    Raises:
        ValueError: ``size`` is not True or a whole number from 8 to :data:`PREVIEW_MAX_SIZE`.
    """
    import numpy as np  # here: opening a file (this module) needs no numpy

    if size is True or (isinstance(size, np.bool_) and bool(size)):  # numpy's True as Python's
        return PREVIEW_SIZE
    if (
        isinstance(size, (bool, np.bool_))
        or not isinstance(size, numbers.Integral)
        or not 8 <= size <= PREVIEW_MAX_SIZE
    ):
        msg = f"preview must be True or a long side from 8 to {PREVIEW_MAX_SIZE} pixels, got {size!r}"
        raise ValueError(msg)
    return int(size)


def make_preview(pixels: np.ndarray, layout: str, size: bool | int = True) -> bytes | None:
    """The ``prvw`` chunk data for an image: a WebP at most ``size`` pixels on the long side (SPEC.md 5.4).

    Made from the pixels given (not from the decoded image), resampled with Lanczos (alpha premultiplied),
    at :data:`PREVIEW_QUALITY`. L is stored as RGB and LA as RGBA, which WebP holds; a reader converts
    back to the file's mode.

    Args:
        pixels: uint8 array ``(H, W, C)`` in ``layout`` (as :func:`pillow_jac.codec.encode` holds it).
        layout: ``"L"``, ``"LA"``, ``"RGB"`` or ``"RGBA"``.
        size: the largest side of the preview, 8 to :data:`PREVIEW_MAX_SIZE`; True for :data:`PREVIEW_SIZE`.

    Returns:
        The chunk data, or None when the image is no larger than ``size`` (a preview would not be smaller).

    Raises:
        ValueError: ``size`` is not True or a whole number from 8 to :data:`PREVIEW_MAX_SIZE`.

    Example:
        >>> import numpy as np
        >>> data = make_preview(np.zeros((600, 900, 3), np.uint8), "RGB")
        >>> container.unpack_preview(data)[:3]
        (1, 512, 341)
    """
    size = preview_size(size)
    height, width = pixels.shape[:2]
    if max(width, height) <= size:
        return None
    im = Image.fromarray(pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
    scale = size / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if layout in GRAY_LAYOUTS:  # after resizing: each of the three equal planes resizes as the grey one
        im = im.convert("RGBA" if layout in ALPHA_LAYOUTS else "RGB")
    if layout in ALPHA_LAYOUTS and im.getextrema()[-1][0] == 255 and int(pixels[..., -1].min()) < 255:
        # resized to 255 everywhere, the alpha would be dropped by libwebp, and a preview without alpha stands only
        # for an opaque image (preview_for): the least opaque pixel's place keeps 254, so the alpha stays
        row, column = divmod(int(pixels[..., -1].argmin()), width)
        where = (min(target[0] - 1, int(column * scale)), min(target[1] - 1, int(row * scale)))
        im.putpixel(where, (*im.getpixel(where)[:3], 254))
    buffer = io.BytesIO()
    im.save(buffer, "WEBP", quality=PREVIEW_QUALITY)
    return container.pack_preview(container.PREVIEW_WEBP, *target, buffer.getvalue())
