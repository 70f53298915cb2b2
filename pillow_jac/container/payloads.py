"""The payloads of two chunks: the preview (``prvw``, SPEC.md section 5.4) and the alpha plane (``ALPH``)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from pillow_jac import constants as C

from .structure import _PREVIEW_FORMATS, PREVIEW_JPEG, PREVIEW_WEBP, PRVW_HEAD, JacDataError, _is_int  # noqa: F401 - the formats for the examples
from .writing import _check_bytes

# ---------------------------------------------------------------------------------------------
# Preview (SPEC.md section 5.4)


def pack_preview(image_format: int, width: int, height: int, image: bytes) -> bytes:
    r"""The data of a ``prvw`` chunk: format byte, width and height (u16), then the embedded image file.

    Args:
        image_format: :data:`PREVIEW_JPEG` or :data:`PREVIEW_WEBP`.
        width: the preview's width in pixels, 1 to 65535 (what its embedded file declares).
        height: the preview's height in pixels, 1 to 65535.
        image: the complete JPEG or WebP file.

    Raises:
        ValueError: an unknown format, a dimension out of range, or no image bytes.

    Example:
        >>> pack_preview(PREVIEW_WEBP, 512, 341, b"RIFF...")
        b'\x01\x02\x00\x01URIFF...'
    """
    if image_format not in _PREVIEW_FORMATS:
        raise ValueError(f"unknown preview format {image_format!r}: known formats are {_PREVIEW_FORMATS}")
    _check_dims(width, height)
    _check_bytes("preview image", image, optional=False)
    if not image:
        raise ValueError("the preview image is empty")
    return PRVW_HEAD.pack(image_format, width, height) + bytes(image)


def unpack_preview(data: bytes | None) -> tuple[int, int, int, bytes] | None:
    r"""``(format, width, height, image)`` of a ``prvw`` chunk's data, or None when it cannot be used.

    A preview is ancillary (SPEC.md section 5.4): a chunk too short, with an unknown format or a zero
    dimension is ignored, not an error, and the file decodes as if it had none.

    Example:
        >>> unpack_preview(pack_preview(PREVIEW_JPEG, 4, 3, b"\xff\xd8"))
        (0, 4, 3, b'\xff\xd8')
        >>> unpack_preview(b"\x07\x00\x04\x00\x03data") is None  # format 7 is unknown
        True
    """
    if data is None or len(data) <= PRVW_HEAD.size:
        return None
    image_format, width, height = PRVW_HEAD.unpack_from(data)
    if image_format not in _PREVIEW_FORMATS or width < 1 or height < 1:
        return None
    return image_format, width, height, bytes(data[PRVW_HEAD.size :])


# ---------------------------------------------------------------------------------------------
# Alpha plane


def _check_dims(width: int, height: int) -> int:
    for name, v in (("width", width), ("height", height)):
        if not (_is_int(v) and 1 <= v <= C.MAX_DIMENSION):
            raise ValueError(f"{name} must be from 1 to {C.MAX_DIMENSION}, got {v!r}")
    return width * height


def compress_alpha(raw: bytes, width: int, height: int) -> tuple[int, bytes]:
    r"""Compress a raw alpha plane for the ``ALPH`` chunk.

    Args:
        raw: ``height * width`` bytes, one per pixel, row-major, top row first.
        width: image width.
        height: image height.

    Returns:
        ``(method, payload)``: the method byte (always 0, zlib) and the payload that follows it,
        as :attr:`JacFile.alpha_method` and :attr:`JacFile.alpha`.

    Raises:
        ValueError: ``raw`` does not have ``width * height`` bytes.

    Example:
        >>> method, payload = compress_alpha(bytes(range(6)), 3, 2)
        >>> method, decompress_alpha(method, payload, 3, 2)
        (0, b'\x00\x01\x02\x03\x04\x05')
    """
    n = _check_dims(width, height)
    if len(raw) != n:
        raise ValueError(f"alpha plane has {len(raw)} bytes, expected {width}x{height} = {n}")
    return C.ALPHA_METHOD_ZLIB, zlib.compress(raw, 9)


def decompress_alpha(method: int, payload: bytes, width: int, height: int) -> bytes:
    r"""Decompress an ``ALPH`` payload to exactly ``width * height`` bytes.

    The output is bounded: decompression stops one byte past the expected size, so a zlib bomb
    costs no more memory than a valid plane.

    Args:
        method: the ``ALPH`` method byte.
        payload: the ``ALPH`` data after the method byte.
        width: image width.
        height: image height.

    Returns:
        The raw alpha plane, row-major, one byte per pixel.

    Raises:
        JacDataError: unknown method, or the payload is not one complete zlib stream of exactly
            ``width * height`` bytes.

    Example:
        >>> decompress_alpha(0, zlib.compress(b"\xff" * 4), 2, 2)
        b'\xff\xff\xff\xff'
    """
    return b"".join(alpha_pieces(method, payload, width, height, piece=width * height + 1))  # one piece


def alpha_pieces(method: int, payload: bytes, width: int, height: int, piece: int = 1 << 20) -> Iterator[bytes]:
    r"""The ``ALPH`` plane of :func:`decompress_alpha` in pieces of at most ``piece`` bytes, checked as it goes.

    Never more than ``piece`` bytes at a time: a reader that needs only a look at the plane (whether it is
    opaque, :func:`pillow_jac.preview.preview_for`) holds no more, and can stop early.

    Raises:
        JacDataError: as :func:`decompress_alpha`, once the piece that shows it is reached.

    Example:
        >>> list(alpha_pieces(0, zlib.compress(b"\xff" * 5), 5, 1, piece=2))
        [b'\xff\xff', b'\xff\xff', b'\xff']
    """
    n = _check_dims(width, height)
    if method != C.ALPHA_METHOD_ZLIB:
        raise JacDataError(f"unknown alpha method {method}")
    d = zlib.decompressobj()
    pending, produced = payload, 0
    while not d.eof:
        try:
            out = d.decompress(pending, min(piece, n + 1 - produced))
        except zlib.error as exc:
            raise JacDataError(f"corrupt alpha plane: {exc}") from None
        pending, produced = d.unconsumed_tail, produced + len(out)
        if produced > n:
            raise JacDataError(f"alpha plane decompresses to more than {width}x{height} = {n} bytes")
        if not out and not pending:  # the input is used up before the stream's end
            break
        if out:
            yield out
    if not d.eof:
        raise JacDataError("truncated alpha plane: the zlib stream does not end")
    if produced < n:
        raise JacDataError(f"alpha plane decompresses to {produced} bytes, expected {width}x{height} = {n}")
    if d.unused_data:
        raise JacDataError(f"{len(d.unused_data)} unexpected bytes after the alpha plane's zlib stream")
