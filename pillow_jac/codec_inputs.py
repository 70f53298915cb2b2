"""The checks and conversions of :func:`pillow_jac.codec.encode`'s arguments, before any model work.

An image (a uint8 array or a PIL image, :func:`as_array`) becomes a ``(H, W, C)`` array and its layout
(the JHDR ``layout``, SPEC.md section 3.2); its colour planes go through the network
(:func:`color_planes`) and its alpha is stored losslessly beside them (:func:`alpha_fields`, SPEC.md
section 5.1). The metadata follows the rule of Pillow's save path (:func:`metadata_fields`, SPEC.md section
5.2). A decode's file given as bytes-like data becomes ``bytes`` here (:func:`buffer_bytes`).
:mod:`pillow_jac.codec`, :mod:`pillow_jac.codec_batch`, :mod:`pillow_jac.codec_steps` and
:mod:`pillow_jac.targets` check their arguments here, so they refuse the same inputs with the same messages.
"""

from __future__ import annotations

import numpy as np

from . import container
from .constants import (
    ALPHA_LAYOUTS,
    GRAY_LAYOUTS,
    LAYOUT_BY_CHANNELS,
    LAYOUTS,
    UnsupportedModeError,
    wide_colour_key,
)
from .preview import asked as asked_preview
from .quiet_warnings import warn_at_caller
from .size_limit import check_declared_size

__all__ = [
    "as_array",
    "array_like",
    "has_buffer",
    "buffer_bytes",
    "metadata_fields",
    "check_model",
    "color_planes",
    "alpha_fields",
    "file_fields",
]


def as_array(image) -> tuple[np.ndarray, str]:
    """A uint8 ``(H, W, C)`` array and its layout from an array or a PIL image.

    A PIL image's colour key (``im.info["transparency"]``, PNG's tRNS) is not applied, with a warning: its
    alpha is not in its pixels (``Image.save`` applies it).

    Raises:
        TypeError: ``image`` is no array-like (None, a number, a str, encoded ``bytes``, a dict...).
        ValueError: an array (or a nested list) of another dtype or shape, or a PIL image of another mode
            (:class:`UnsupportedModeError`, also an :class:`OSError`).
    """
    if hasattr(image, "mode") and hasattr(image, "getbands"):
        if image.mode not in LAYOUTS:
            raise UnsupportedModeError(f"cannot encode mode {image.mode!r}: convert to RGB, RGBA, L or LA first")
        key = getattr(image, "info", {}).get("transparency")
        if key is not None and image.mode in ("L", "RGB"):  # PNG's tRNS colour key: alpha that the pixels lack
            if wide_colour_key(image.mode, key):
                why = "is a 16-bit one that no 8-bit pixel matches (Image.save leaves it out too)"
            else:
                why = f"is not applied: encode(image.convert('{image.mode}A')) or Image.save keeps it as alpha"
            warn_at_caller(f"the image's transparent colour {key!r} (im.info['transparency']) {why}")
        image = np.asarray(image)
    elif not array_like(image):
        raise TypeError(f"expected a uint8 numpy array or a PIL image, got {type(image).__name__}")
    try:
        arr = np.asarray(image)
    except RuntimeError as exc:  # a torch tensor that requires grad, say
        raise TypeError(f"cannot read a {type(image).__name__} as an array: {exc}") from exc
    if arr.dtype != np.uint8:
        if isinstance(image, (list, tuple)):  # numpy reads Python ints as int64, never uint8
            raise ValueError(
                f"expected uint8 pixels: a {type(image).__name__} reads as {arr.dtype}; "
                "give numpy.asarray(pixels, dtype=numpy.uint8)"
            )
        raise ValueError(f"expected a uint8 array, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in LAYOUT_BY_CHANNELS:
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in LAYOUT_BY_CHANNELS:  # torch's and many tools' layout
            hint = ": channels first? give pixels.transpose(1, 2, 0)"
        raise ValueError(f"expected an (H, W) or (H, W, 1-4) array, got shape {arr.shape}{hint}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError("the image is empty")
    return arr, LAYOUT_BY_CHANNELS[arr.shape[2]]


def array_like(image) -> bool:
    """Whether numpy reads ``image`` as an array of numbers.

    So it does an array or numpy scalar, an object with the array interface or the buffer protocol, and a (nested)
    list or tuple; not ``str``, ``bytes`` or ``bytearray`` (an encoded file's bytes are no pixels), None or a plain
    number.
    """
    if isinstance(image, (np.ndarray, np.generic, list, tuple)):
        return True
    if isinstance(image, (str, bytes, bytearray)):
        return False
    if any(hasattr(image, name) for name in ("__array__", "__array_interface__", "__array_struct__")):
        return True
    return has_buffer(image)


def has_buffer(obj) -> bool:
    """Whether ``obj`` has the buffer protocol (``bytes``, ``mmap.mmap``, ``array.array``, a numpy array...)."""
    try:
        memoryview(obj).release()
    except TypeError:
        return False
    return True


def buffer_bytes(data) -> bytes:
    """The bytes of a decode's file given as a bytes-like object (what a path or a parsed file is not).

    Any buffer of one dimension, contiguous, of 1-byte items: ``bytes``, ``bytearray``, ``memoryview``,
    ``mmap.mmap``, ``array.array("B")``, a 1-D uint8 numpy array (``numpy.fromfile(path, numpy.uint8)``). The
    buffer is released before this returns (an ``mmap`` may be closed after).

    Raises:
        TypeError: an object without the buffer protocol (a file object: read it, or give its path), or a
            buffer of other than one dimension (pixels, a scalar): no file's bytes.
        ValueError: a 1-D buffer of items of more than one byte, or one that is not contiguous; the message
            says what to pass instead.

    Example:
        >>> import numpy as np
        >>> buffer_bytes(np.frombuffer(b"JAC", np.uint8))
        b'JAC'
    """
    if isinstance(data, bytes):
        return data
    expected, name = "expected .jac bytes, a path or a parsed JacFile, got", type(data).__name__
    pixels = ": pixels? decode takes a .jac file's bytes, which encode(pixels) makes"
    if not has_buffer(data):
        if hasattr(data, "read"):
            hint = ": read it (f.read()), or give its path"
        elif isinstance(shape := getattr(data, "shape", None), tuple) and len(shape) in (2, 3):  # a torch tensor
            hint = pixels
        else:
            hint = ""
        raise TypeError(f"{expected} {name}{hint}")
    with memoryview(data) as view:
        if view.ndim != 1:
            hint = pixels if view.ndim in (2, 3) and view.itemsize == 1 else ": a file's bytes are one dimension"
            raise TypeError(
                f"{expected} {name} of shape {view.shape}{hint} (bytes, or numpy.fromfile(path, numpy.uint8))"
            )
        if view.itemsize != 1:
            raise ValueError(
                f"expected a .jac file's bytes, got {name} of {view.itemsize}-byte items ({view.format!r}): give "
                "bytes, or a uint8 array (numpy.fromfile(path, numpy.uint8))"
            )
        if not view.contiguous:
            raise ValueError(
                f"expected a .jac file's bytes in one contiguous run, got a strided {name}: give bytes(view) or "
                "numpy.ascontiguousarray(array)"
            )
        return view.tobytes()


def metadata_fields(icc_profile, exif, xmp) -> dict[str, bytes | None]:
    """The ``icc_profile``, ``exif`` and ``xmp`` to store, by the rule of Pillow's save path.

    :func:`pillow_jac.save_metadata.metadata_bytes`: bytes-like, ``exif`` also a :class:`PIL.Image.Exif`, ``xmp``
    also a ``str``; a TypeError otherwise, a ValueError for more than a chunk holds.
    """
    from .save_metadata import metadata_bytes

    given = {"icc_profile": icc_profile, "exif": exif, "xmp": xmp}
    return {name: metadata_bytes(value, name) for name, value in given.items()}


def check_model(model) -> None:
    """A ``model`` argument is a ``model_id`` (str) or None."""
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be a model_id (str) or None, got {type(model).__name__}")


def file_fields(arr: np.ndarray, layout: str, *, icc_profile, exif, xmp, model, preview) -> dict:
    """Every :meth:`~pillow_jac.container.JacFile.create` field of an image that needs no model, checked first.

    The metadata (:func:`metadata_fields`), the ``model`` argument's type, the size limit and the preview are
    checked (and the preview and alpha made) before any network runs, so a bad argument is refused at once:
    ``width``, ``height``, ``layout``, the alpha fields, the metadata and ``preview``.
    """
    metadata = metadata_fields(icc_profile, exif, xmp)
    check_model(model)
    height, width = arr.shape[:2]
    if max(height, width) > container.C.MAX_DIMENSION:
        raise ValueError(f"images are limited to {container.C.MAX_DIMENSION} pixels per side")
    # a file that decoders here would refuse (PIL.Image.MAX_IMAGE_PIXELS) is refused before the networks run
    check_declared_size(
        width, height, error=ValueError, why="decoders would refuse the file; raise the limit to encode it"
    )
    preview_chunk = None
    if asked_preview(preview):  # making it costs milliseconds
        from .preview import make_preview

        preview_chunk = make_preview(arr, layout, preview)
    return dict(
        width=width, height=height, layout=layout, **alpha_fields(arr, layout), **metadata, preview=preview_chunk
    )


def color_planes(arr: np.ndarray, layout: str) -> np.ndarray:
    """The ``(H, W, 3)`` planes that go through the network (gray repeated three times)."""
    return np.repeat(arr[:, :, :1], 3, axis=2) if layout in GRAY_LAYOUTS else arr[:, :, :3]


def alpha_fields(arr: np.ndarray, layout: str) -> dict:
    """The ``alpha`` and ``alpha_method`` of :meth:`~pillow_jac.container.JacFile.create` for an image."""
    if layout not in ALPHA_LAYOUTS:
        return {"alpha": None, "alpha_method": 0}
    height, width = arr.shape[:2]
    method, alpha = container.compress_alpha(np.ascontiguousarray(arr[:, :, -1]).tobytes(), width, height)
    return {"alpha": alpha, "alpha_method": method}
