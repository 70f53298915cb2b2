"""Pillow's decompression-bomb limit, applied to the image size a ``.jac`` header declares (SPEC.md 8.1).

A file of about 100 bytes can declare 65535 x 65535 pixels, and the range decoder decodes an empty
stream without complaint, so decoding would allocate tens of gigabytes before noticing. Every reader
of this package (the codec, the Pillow plugin, ``jac decode``) applies the rule ``Image.open`` applies
to any format, with Pillow's own limit, so that raising or removing Pillow's limit moves this one too:

* above ``PIL.Image.MAX_IMAGE_PIXELS`` pixels: a :class:`PIL.Image.DecompressionBombWarning`;
* above twice that: an error, before anything is allocated;
* no limit when ``MAX_IMAGE_PIXELS`` is None.

Only Pillow is imported here (no torch, no numpy).
"""

from __future__ import annotations

from PIL import Image


def check_declared_size(
    width: int,
    height: int,
    *,
    error: type[Exception] = Image.DecompressionBombError,
    warn: bool = False,
    why: str = "refusing a possible decompression bomb",
) -> None:
    """Raise ``error`` if ``width x height`` exceeds twice Pillow's pixel limit; with ``warn``, warn above it.

    The codec raises its ``CodecError``; the warning (attributed to the caller's line outside pillow_jac and
    Pillow) is given once a file: by ``Image.open`` for the plugin's files, by ``jac decode`` and by
    :func:`pillow_jac.decode` of bytes or a path. ``why`` ends the error's message.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = width * height
    if pixels > 2 * limit:
        raise error(
            f"image size {width}x{height} ({pixels} pixels) exceeds the limit of {2 * limit} pixels "
            f"(twice PIL.Image.MAX_IMAGE_PIXELS): {why}"
        )
    if warn and pixels > limit:
        from .quiet_warnings import warn_at_caller

        warn_at_caller(
            f"Image size ({pixels} pixels) exceeds limit of {limit} pixels, could be decompression bomb DOS attack.",
            Image.DecompressionBombWarning,
        )
