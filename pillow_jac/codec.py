"""Where the container and the model meet: numpy images <-> ``.jac`` bytes.

The public API (what the Pillow and imageio plugins and the CLI call):

* :func:`encode` ``(image, quality=None, *, icc_profile=None, exif=None, xmp=None, effort=0, device=None,
  weights=None, model=None, target_size=None, target_psnr=None, preview=False) -> bytes``; ``image`` is a
  uint8 array ``(H, W)`` (L), ``(H, W, 2)`` (LA), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), or a PIL image
  in one of those modes; quality None is :data:`~pillow_jac.constants.DEFAULT_QUALITY`.
* :func:`decode` ``(data, *, device=None, weights=None) -> numpy.ndarray``; ``data`` is ``bytes``, a path
  or a parsed :class:`pillow_jac.container.JacFile`; the array has the layout of the encoded image.
* ``encode_batch`` and ``decode_batch``: the same for many images, the float transforms batched
  (:mod:`pillow_jac.codec_batch`, imported on first use).

The colour planes go through the network (gray images as three equal planes, returned as
``round(0.299 R + 0.587 G + 0.114 B)``); alpha is stored losslessly beside them
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

import os
from typing import TYPE_CHECKING

import numpy as np

from . import container, interpreter_exit
from .codec_inputs import as_array, check_model, color_planes, file_fields
from .constants import (
    ALPHA_LAYOUTS,
    DEFAULT_EFFORT,
    DEFAULT_QUALITY,
    GRAY_LAYOUTS,
    validate_effort,
)
from .size_limit import check_declared_size

if TYPE_CHECKING:
    from PIL import Image

_BATCH_API = ("encode_batch", "decode_batch")  # in pillow_jac/codec_batch.py, imported on first use (__getattr__)
__all__ = ["encode", "decode", "encode_symbols", "decode_symbols", "CodecError", *_BATCH_API]


class CodecError(ValueError, OSError):
    """A file cannot be decoded by this installation (wrong model, corrupt stream).

    A :class:`ValueError`, and an :class:`OSError` as Pillow reports an image it cannot decode.
    """


def _transforms():
    """:mod:`pillow_jac.image_transforms` (imported with torch, by :func:`_get_engine` first)."""
    from . import image_transforms

    return image_transforms


def _encode_latents(engine, z_hat: np.ndarray | None, y_hat: np.ndarray) -> tuple[bytes, bytes]:
    """The coded streams ``(z, y)`` of integer latents (CODING.md section 3), counted as torch work."""
    with _torch().inference_mode(), interpreter_exit.working():
        return engine.latents.encode(z_hat, y_hat)


def _torch():
    import torch

    return torch


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
            this many bytes, or one within 0.3% below it (:mod:`pillow_jac.targets`).
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
            target, or both targets; a target that even quality 1 (size) or 8 (PSNR) cannot meet.
    """
    arr, layout = as_array(image)
    effort = DEFAULT_EFFORT if effort is None else effort
    if target_size is not None or target_psnr is not None:
        if quality is not None:
            raise ValueError("give quality or a target (target_size, target_psnr), not both")
        from .targets import encode_to_target

        return encode_to_target(
            arr, target_size=target_size, target_psnr=target_psnr, effort=effort, device=device, weights=weights,
            model=model, icc_profile=icc_profile, exif=exif, xmp=xmp, preview=preview,
        ).data  # fmt: skip
    q16 = container.quality_to_u16(DEFAULT_QUALITY if quality is None else quality)  # validated here, once
    q = container.u16_to_quality(q16)
    effort = validate_effort(effort)
    fields = file_fields(arr, layout, icc_profile=icc_profile, exif=exif, xmp=xmp, model=model, preview=preview)
    engine = _encoder_engine(device, weights, model)
    z_hat, y_hat = _analyze(color_planes(arr, layout), q, engine, effort)
    z_stream, y_stream = _encode_latents(engine, z_hat, y_hat)
    jac = container.JacFile.create(
        q16=q16,
        model_id=engine.model_id,
        weights_hash=engine.weights_hash,
        z_stream=z_stream,
        y_stream=y_stream,
        **fields,
    )
    return container.serialize(jac)


def _analyze(color: np.ndarray, quality: float, engine, effort: int = 0) -> tuple[np.ndarray | None, np.ndarray]:
    """g_a and h_a on the padded image, then rounding (or refinement): the latents ``(z_hat, y_hat)``."""
    transforms = _transforms()
    y = transforms.analyze(engine, [color])
    y, z = transforms.hyper_analyze(engine, y, quality, color.shape[0] * color.shape[1])
    return transforms.symbols(engine, y, z, quality, effort, color)


def encode_symbols(
    image, quality: float = DEFAULT_QUALITY, *, effort: int = 0, device=None, weights=None, model: str | None = None
):
    """The integer latents ``(z_hat, y_hat)`` that :func:`encode` writes for ``image``."""
    arr, layout = as_array(image)
    q = container.quantize_quality(quality)
    return _analyze(color_planes(arr, layout), q, _encoder_engine(device, weights, model), validate_effort(effort))


def _parse(data) -> container.JacFile:
    """A parsed file from a :class:`~pillow_jac.container.JacFile`, bytes-like data, or a path."""
    if isinstance(data, container.JacFile):
        return data
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            return container.read_file(f)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected .jac bytes, a path or a parsed JacFile, got {type(data).__name__}")
    return container.parse(bytes(data))


class ModelNotInstalledError(CodecError):
    """The generation a file names (``model_id`` and ``weights_hash``) is not installed (SPEC.md 9.1)."""


def _get_engine(device, weights):
    """:func:`pillow_jac.engine.get_engine`, the codec's torch modules imported first, where a fork waits.

    Every path that runs the model gets its engine here first, so a fork in another thread never copies a
    half-imported torch module's held import lock, nor a half-built engine (pillow_jac/forksafe.py).
    """
    from .forksafe import setting_up

    with setting_up():
        from . import image_transforms, latent_coding, stripes  # noqa: F401 - imported now, under the guard
        from .engine import get_engine
        from .model import refine  # noqa: F401
    interpreter_exit.watch()  # after torch's import, so the exit waits for daemon threads before torch's handlers
    with interpreter_exit.working():
        return get_engine(device, weights)


def _engine_for(jac: container.JacFile, device, weights):
    """The engine of the generation the file names: the installed one, or the ``weights`` file given."""
    from . import generations

    h = jac.header
    if weights is None:
        try:
            weights = generations.find(h.model_id, h.weights_hash).path
        except generations.ModelNotInstalledError as exc:
            raise ModelNotInstalledError(str(exc)) from None
    engine = _get_engine(device, weights)
    if h.model_id != engine.model_id or h.weights_hash != engine.weights_hash:
        raise ModelNotInstalledError(
            f"this file needs decoder {h.model_id!r} (weights {h.weights_hash.hex()}), but the weights file "
            f"given holds {engine.model_id!r} ({engine.weights_hash.hex()})"
        )
    return engine


def _encoder_engine(device, weights, model):
    """The engine that encodes: the ``weights`` file, else the installed generation ``model``, else the newest."""
    from . import generations

    check_model(model)
    if weights is None:
        try:
            weights = generations.encoder(model).path
        except generations.ModelNotInstalledError as exc:
            raise ModelNotInstalledError(str(exc)) from None
    engine = _get_engine(device, weights)
    if model is not None and engine.model_id != model:
        raise ValueError(f"the weights file {weights} holds {engine.model_id!r}, not the model {model!r} asked for")
    if not engine.can_encode:
        raise ModelNotInstalledError(f"{engine.model_id!r} is installed as a decoder only: it cannot encode")
    return engine


def decode_symbols(data, *, device=None, weights=None) -> tuple[np.ndarray | None, np.ndarray]:
    """The integer latents ``(z_hat, y_hat)`` of a file (``z_hat`` is None without hyperprior).

    These are exact: the same on every machine, device and thread count (CODING.md section 3).
    """
    jac = _parse(data)
    check_declared_size(jac.header.width, jac.header.height, error=CodecError)
    engine = _engine_for(jac, device, weights)
    return _decode_latents(jac, engine)


def _decode_latents(jac: container.JacFile, engine):
    torch = _torch()
    h = jac.header
    with torch.inference_mode(), _transforms().torch_work(h.height * h.width, engine):
        return engine.latents.decode(jac.z_stream, jac.y_stream, h.z_shape, h.y_shape)


def decode(data, *, device=None, weights=None) -> np.ndarray:
    """Decompress ``.jac`` bytes, a ``.jac`` file's path, or a parsed :class:`~pillow_jac.container.JacFile`.

    Returns:
        uint8 array: ``(H, W, 3)`` for RGB, ``(H, W, 4)`` RGBA, ``(H, W)`` L, ``(H, W, 2)`` LA.

    Raises:
        ValueError: the file is malformed (:class:`~pillow_jac.container.JacFormatError`), was made
            with other weights (:class:`CodecError`), is larger than twice ``PIL.Image.MAX_IMAGE_PIXELS``
            (:class:`CodecError`) or its streams are corrupt.
    """
    jac = _parse(data)
    check_declared_size(jac.header.width, jac.header.height, error=CodecError)
    engine = _engine_for(jac, device, weights)
    h = jac.header
    alpha = _alpha_of(jac)
    _, y_hat = _decode_latents(jac, engine)
    (rgb,) = _transforms().synthesize(engine, [y_hat], [h.quality], [(h.height, h.width)])
    return _to_layout(rgb, h.layout, alpha)


def _alpha_of(jac: container.JacFile) -> np.ndarray | None:
    """The lossless alpha plane of a file, ``(H, W)`` uint8, or None (SPEC.md section 5.1)."""
    h = jac.header
    if h.layout not in ALPHA_LAYOUTS:
        return None
    raw = container.decompress_alpha(jac.alpha_method, jac.alpha, h.width, h.height)
    return np.frombuffer(raw, np.uint8).reshape(h.height, h.width)


def _to_layout(rgb: np.ndarray, layout: str, alpha: np.ndarray | None) -> np.ndarray:
    """Decoded colour planes (and alpha) as the array of the file's layout.

    Grey is ``(299 R + 587 G + 114 B + 500) // 1000`` (CODING.md section 1.4).
    """
    if layout in GRAY_LAYOUTS:  # in place in uint32 (at most 255500): two planes of temporaries, no more
        gray = rgb[:, :, 0].astype(np.uint32)
        gray *= 299
        term = rgb[:, :, 1].astype(np.uint32)
        term *= 587
        gray += term
        term[...] = rgb[:, :, 2]
        term *= 114
        gray += term
        gray += 500
        gray //= 1000
        color = gray.astype(np.uint8)
    else:
        color = rgb
    if alpha is None:
        return np.ascontiguousarray(color)
    out = np.empty((*color.shape[:2], (1 if color.ndim == 2 else color.shape[2]) + 1), np.uint8)
    out[:, :, :-1] = color.reshape(*color.shape[:2], -1)
    out[:, :, -1] = alpha
    return out


def __getattr__(name: str):
    if name in _BATCH_API:
        from . import codec_batch

        return getattr(codec_batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
