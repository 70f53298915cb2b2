"""Where the container and the model meet: numpy images <-> ``.jac`` bytes.

The public API (what the Pillow and imageio plugins and the CLI call):

* :func:`encode` ``(image, quality=None, *, icc_profile=None, exif=None, xmp=None, effort=0, device=None,
  weights=None, model=None, target_size=None, target_psnr=None, preview=False) -> bytes``; ``image`` is a
  uint8 array ``(H, W)`` (L), ``(H, W, 2)`` (LA), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), or a PIL image
  in one of those modes; quality None is :data:`~pillow_jac.constants.DEFAULT_QUALITY`.
* :func:`decode` ``(data, *, device=None, weights=None) -> numpy.ndarray``; ``data`` is a bytes-like object
  (``bytes``, ``mmap.mmap``, a 1-D uint8 array...), a path or a parsed :class:`pillow_jac.container.JacFile`;
  the array has the layout of the encoded image.
* ``encode_batch`` and ``decode_batch``: the same for many images, the float transforms batched
  (:mod:`pillow_jac.codec_batch`, imported on first use).

The colour planes go through the network (gray images as three equal planes, returned as
``(299 R + 587 G + 114 B + 500) // 1000``, CODING.md section 1.4); alpha is stored losslessly beside them
(SPEC.md section 5). Images are padded to a multiple of 64 by repeating the edge pixels and
cropped back after decoding.

Example:
    >>> import numpy as np
    >>> rgb = np.zeros((20, 30, 3), np.uint8)
    >>> data = encode(rgb, quality=2)
    >>> decode(data).shape
    (20, 30, 3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import codec_steps as steps
from . import container, interpreter_exit
from .codec_inputs import as_array, color_planes, file_fields
from .codec_steps import CodecError, ModelNotInstalledError
from .constants import DEFAULT_EFFORT, DEFAULT_QUALITY, validate_effort
from .forksafe import setting_up

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

_BATCH_API = ("encode_batch", "decode_batch")  # in pillow_jac/codec_batch.py, imported on first use (__getattr__)
__all__ = [
    "encode", "decode", "encode_symbols", "decode_symbols", "CodecError", "ModelNotInstalledError", *_BATCH_API,
]  # fmt: skip


def encode(
    image,
    quality: float | None = None,
    *,
    icc_profile: bytes | None = None,
    exif: bytes | Image.Exif | None = None,
    xmp: bytes | str | None = None,
    effort: int | None = DEFAULT_EFFORT,
    device=None,
    weights=None,
    model: str | None = None,
    target_size: int | None = None,
    target_psnr: float | None = None,
    preview: bool | int = False,
) -> bytes:
    r"""Compress an image to ``.jac`` bytes.

    Args:
        image: uint8 array ``(H, W)``, ``(H, W, 2)``, ``(H, W, 3)`` or ``(H, W, 4)``, or a PIL image
            of mode L, LA, RGB or RGBA.
        quality: 1 (smallest) to 8 (best); fractions interpolate. Stored to 1/256. Default
            :data:`~pillow_jac.constants.DEFAULT_QUALITY`; not allowed with a target.
        icc_profile: ICC profile bytes, stored in an ancillary chunk.
        exif: EXIF bytes (as Pillow's ``im.info["exif"]``; a block starting with the TIFF header gains the
            ``Exif\0\0`` prefix) or a :class:`PIL.Image.Exif`, stored in an ancillary chunk.
        xmp: XMP packet bytes, or a ``str`` stored as UTF-8, in an ancillary chunk. For all three, ``b""`` or
            None stores none; they are checked as ``Image.save`` checks them
            (:func:`pillow_jac.save_metadata.metadata_bytes`), before any model work.
        effort: 0 (default, fastest) to 3: how hard the encoder searches for smaller files at the
            same quality (:mod:`pillow_jac.model.refine`); any effort decodes the same way. None: the default.
        device: torch device (default: ``JAC_DEVICE`` or cpu).
        weights: path of a weights file (default: the installed generation ``model``).
        model: ``model_id`` of the installed generation to encode with (default: the newest;
            :func:`pillow_jac.models` lists them).
        target_size: instead of ``quality``: the largest quality (to 1/256) whose whole file is at most
            this many bytes, or one within 0.3% of the image's bytes (at least 16) below it
            (:mod:`pillow_jac.targets`).
        target_psnr: instead of ``quality``: the smallest quality whose decoded file reaches this PSNR in dB.
        preview: True (or a long side in pixels) also stores a small WebP of the image (``prvw`` chunk,
            SPEC.md section 5.4) that Pillow's ``draft()`` and ``thumbnail()`` use instead of decoding;
            at most :data:`pillow_jac.preview.PREVIEW_SIZE` pixels on the long side by default;
            images no larger than that get none.

    Returns:
        The complete file.

    Raises:
        TypeError: ``image`` is not an array or PIL image; ``icc_profile``, ``exif``, ``xmp`` or ``model`` of
            another type than above.
        ValueError: a bad argument (an array of another dtype or shape among them); ``quality`` together with a
            target, or both targets; a target that even quality 1 (size) or 8 (PSNR) cannot meet; an image of
            more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, whose file the decoders would refuse (raise
            the limit to encode it).
    """
    arr, layout = as_array(image)
    effort = DEFAULT_EFFORT if effort is None else effort
    if target_size is not None or target_psnr is not None:
        if quality is not None:
            raise ValueError("give quality or a target (target_size, target_psnr), not both")
        with setting_up():  # a first import: a fork in another thread waits for it (pillow_jac/forksafe.py)
            from .targets import encode_to_target

        with steps.allocation_errors_as_memory_errors(arr.shape[1], arr.shape[0]):
            return encode_to_target(
                arr, target_size=target_size, target_psnr=target_psnr, effort=effort, device=device,
                weights=weights, model=model, icc_profile=icc_profile, exif=exif, xmp=xmp, preview=preview,
            ).data  # fmt: skip
    q16 = container.quality_to_u16(DEFAULT_QUALITY if quality is None else quality)  # validated here, once
    q = container.u16_to_quality(q16)
    effort = validate_effort(effort)
    fields = file_fields(arr, layout, icc_profile=icc_profile, exif=exif, xmp=xmp, model=model, preview=preview)
    return encode_with(steps.encoder_engine(device, weights, model), arr, layout, q, effort, fields)


@interpreter_exit.counted
def encode_with(engine, arr, layout: str, quality: float, effort: int, fields: dict) -> bytes:
    """The file of an image checked by :func:`~pillow_jac.codec_inputs.as_array`, encoded by ``engine``.

    ``quality`` is one a file stores (:func:`~pillow_jac.container.quantize_quality`), ``effort`` a valid
    one, ``fields`` the image's :func:`~pillow_jac.codec_inputs.file_fields`: the part of :func:`encode`
    after its checks, which :func:`~pillow_jac.codec_batch.encode_batch` shares for an image it runs alone.
    """
    with steps.allocation_errors_as_memory_errors(arr.shape[1], arr.shape[0]):
        symbols = steps.analyze_image(color_planes(arr, layout), quality, engine, effort)
        z_stream, y_stream = steps.streams_of(engine, *symbols)
    return file_bytes(fields, quality, engine, z_stream, y_stream)


def file_bytes(fields: dict, quality: float, engine, z_stream: bytes, y_stream: bytes) -> bytes:
    """The ``.jac`` file of coded streams and an image's :func:`~pillow_jac.codec_inputs.file_fields`."""
    jac = container.JacFile.create(
        quality=quality, model_id=engine.model_id, weights_hash=engine.weights_hash, z_stream=z_stream,
        y_stream=y_stream, **fields,
    )  # fmt: skip
    return container.serialize(jac)


@interpreter_exit.counted
def encode_symbols(
    image,
    quality: float | None = None,
    *,
    effort: int | None = DEFAULT_EFFORT,
    device=None,
    weights=None,
    model: str | None = None,
):
    """The integer latents ``(z_hat, y_hat)`` that :func:`encode` writes for ``image`` (None: the default)."""
    arr, layout = as_array(image)
    q = container.quantize_quality(DEFAULT_QUALITY if quality is None else quality)
    effort = validate_effort(DEFAULT_EFFORT if effort is None else effort)
    engine = steps.encoder_engine(device, weights, model)
    with steps.allocation_errors_as_memory_errors(arr.shape[1], arr.shape[0]):
        latents, _ = steps.analyze_image(color_planes(arr, layout), q, engine, effort)
        return latents


def decode_symbols(data, *, device=None, weights=None) -> tuple[np.ndarray | None, np.ndarray]:
    """The integer latents ``(z_hat, y_hat)`` of a file (``z_hat`` is None without hyperprior).

    These are exact: the same on every machine, device and thread count (CODING.md section 3). Only the
    container and the two streams are read: a damaged alpha plane, which :func:`decode` refuses, is not
    looked at.
    """
    return _latents(*steps.file_and_decoder(data, device, weights, alpha=False))


@interpreter_exit.counted
def _latents(jac, engine) -> tuple[np.ndarray | None, np.ndarray]:
    with steps.allocation_errors_as_memory_errors(jac.header.width, jac.header.height):
        return steps.decode_latents(jac, engine)


def decode(data, *, device=None, weights=None) -> np.ndarray:
    """Decompress ``.jac`` bytes, a ``.jac`` file's path, or a parsed :class:`~pillow_jac.container.JacFile`.

    The bytes may be any bytes-like object of one dimension, contiguous, with 1-byte items: ``bytes``,
    ``bytearray``, ``memoryview``, ``mmap.mmap``, ``array.array("B")``, a 1-D uint8 numpy array such as
    ``numpy.fromfile(path, numpy.uint8)`` (:func:`~pillow_jac.codec_inputs.buffer_bytes`).

    Returns:
        uint8 array: ``(H, W, 3)`` for RGB, ``(H, W, 4)`` RGBA, ``(H, W)`` L, ``(H, W, 2)`` LA.

    Raises:
        ValueError: the file is malformed (:class:`~pillow_jac.container.JacFormatError`), was made
            with other weights (:class:`CodecError`), is larger than twice ``PIL.Image.MAX_IMAGE_PIXELS``
            (:class:`CodecError`) or its streams are corrupt; a buffer of items of more than one byte (an
            int32 or float64 array) or not contiguous.
        OSError: a path that cannot be read (:class:`FileNotFoundError`, :class:`IsADirectoryError`...).
        TypeError: ``data`` of another type (a file object: read it, or give its path), or a buffer of other
            than one dimension (an array of pixels: decode takes a file's bytes).
        MemoryError: decoding the image's size needs more memory than there is.
    """
    jac, alpha = steps.checked_file(data)
    return decode_with(jac, steps.decoder_engine(jac, device, weights), alpha)


@interpreter_exit.counted
def decode_with(jac, engine, alpha: np.ndarray | None) -> np.ndarray:
    """The pixels of a parsed file, decoded by its engine, with its alpha plane (codec_steps.alpha_plane) or None.

    The part of :func:`decode` after its checks (:func:`~pillow_jac.codec_steps.checked_file`), which
    :func:`~pillow_jac.codec_batch.decode_batch` shares for a file it decodes alone.
    """
    h = jac.header
    with steps.allocation_errors_as_memory_errors(h.width, h.height):
        _, y_hat = steps.decode_latents(jac, engine)
        (rgb,) = steps.transforms().synthesize(engine, [y_hat], [h.quality], [(h.height, h.width)])
    return steps.to_layout(rgb, h.layout, alpha)


def __getattr__(name: str):
    if name in _BATCH_API:
        from . import codec_batch

        return getattr(codec_batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
