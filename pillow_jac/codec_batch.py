"""Bulk coding: one forward pass of g_a or g_s for several images of the same padded size.

:func:`encode_batch` and :func:`decode_batch` (also ``pillow_jac.codec.encode_batch`` and ``decode_batch``) give
the files and pixels of :func:`encode` and :func:`decode`, image by image:
only the float transforms (g_a and h_a, g_s; Minnen et al. 2018, fig. 1) run batched, and every image's latents
are coded on their own by the exact latent coder (CODING.md section 3). Images larger than one stripe of the
per-image path (:data:`pillow_jac.stripes.STRIPE_PIXELS`) are coded one at a time, where the stripes bound
their memory. The README's "Bulk conversion on a GPU" gives the measured throughput.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Iterable, Iterator

import numpy as np

from . import codec_steps as steps
from . import container, interpreter_exit
from .codec import decode_with, encode_with, file_bytes
from .codec_inputs import as_array, check_model, color_planes, file_fields, has_buffer
from .constants import DEFAULT_EFFORT, DEFAULT_QUALITY, validate_effort, validate_quality

__all__ = ["encode_batch", "decode_batch"]


def batchable(latent_shape: tuple[int, int]) -> bool:
    """Whether images of this latent shape run batched: those that the per-image path computes as one stripe.

    Larger images (above about 2 padded megapixels, :data:`pillow_jac.stripes.STRIPE_PIXELS`, also when
    they are wide enough for a stripe of the per-image path's fewest rows to hold more) go through the
    per-image path of :func:`encode` and :func:`decode` one at a time, where the stripes bound their memory.

    Example:
        >>> batchable((32, 48)), batchable((8, 1100))
        (True, False)
    """
    from .stripes import FACTOR, STRIPE_PIXELS, stripe_rows_for

    rows, columns = latent_shape
    return rows <= stripe_rows_for(columns) and rows * columns * FACTOR * FACTOR <= STRIPE_PIXELS


def _batch_groups(keys: list, batch_size: int) -> list[list[int]]:
    """Indices grouped by equal key, in order of first appearance, cut into runs of at most ``batch_size``.

    Example:
        >>> _batch_groups(["a", "b", "a", "a", "b"], 2)
        [[0, 2], [3], [1, 4]]
    """
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [members[i : i + batch_size] for members in groups.values() for i in range(0, len(members), batch_size)]


def _check_batch_size(batch_size) -> int:
    """``batch_size`` as an int of at least 1 (numpy integers too; not bools or floats)."""
    try:
        size = None if isinstance(batch_size, bool) else operator.index(batch_size)
    except TypeError:
        size = None
    if size is None or size < 1:
        raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    return size


#: for images and files: the dimensions of an array of numbers that is one item, not a list, and what to say of it
_ONE = {
    "images": ((2, 3), "one image is a list of one, an (N, H, W, C) array is N images, and N grey images are a "
               "list of (H, W) arrays"),
    "files": ((1, 2, 3), "one file is a list of one (its bytes as a 1-D array too; an array of pixels is no file)"),
}  # fmt: skip


def _items(things, what: str, single: tuple[type, ...]) -> tuple[Iterable, bool]:
    """``things`` to iterate over, and whether they come from an iterator; one item given for a list is refused.

    One image is a PIL image or an array of numbers with 2 or 3 dimensions (an ``(N, H, W, C)`` array is N
    images); one file is an array of numbers with 1 dimension (its bytes) too. An object with the buffer
    protocol other than an array (``bytes``, ``memoryview``, ``mmap.mmap``, ``array.array``:
    :func:`~pillow_jac.codec_inputs.has_buffer`), a file object (iterated, it would give its lines) and one of
    ``single`` are one item; a 1-D array of paths or objects is a list. The items of an iterator (a generator)
    are to be read as they come: a generator may refill one buffer for every item it yields.
    """
    buffer = not isinstance(things, (list, tuple, np.ndarray)) and has_buffer(things)
    if isinstance(things, single) or buffer or hasattr(things, "getbands") or hasattr(things, "read"):  # a file object
        raise TypeError(f"{what} must be a list (one item is a list of one), got {type(things).__name__}")
    if not isinstance(things, (list, tuple, np.ndarray)) and hasattr(things, "__array__"):
        try:
            things = np.asarray(things)  # a torch tensor, say: iterated, it would give one "image" per row
        except RuntimeError as exc:  # a tensor that requires grad, as codec_inputs.as_array says of one image
            raise TypeError(f"cannot read a {type(things).__name__} as an array: {exc}") from exc
    dimensions, hint = _ONE[what]
    if isinstance(things, np.ndarray) and things.dtype.kind in "biuf" and things.ndim in dimensions:
        raise TypeError(f"{what} must be a list, got an array of shape {things.shape}: {hint}")
    return things, not isinstance(things, (list, tuple, np.ndarray))


@contextlib.contextmanager
def _naming_item(index: int, *errors: type[BaseException]) -> Iterator[None]:
    """Mark an error of ``errors`` raised in the block with the batch item it concerns.

    The error gets ``batch_index`` and, on Python 3.11+, a note; it is raised on as it is.
    """
    try:
        yield
    except errors as exc:
        exc.batch_index = index  # type: ignore[attr-defined]
        if hasattr(exc, "add_note"):
            exc.add_note(f"(item {index} of the batch)")
        raise


def _analyze_batch(colors: list[np.ndarray], quality: float, engine, effort: int) -> list[tuple]:
    """The per-image analysis for images of one latent shape, each one stripe: g_a, the gains and h_a in one pass.

    Effort above 0 then refines each image's latents on its own, starting from its slice of the batch. Each
    image's ``(latents, streams or None)``, as :func:`pillow_jac.image_transforms.symbols` returns them.
    """
    transforms = steps.transforms()
    y = transforms.analyze(engine, colors)
    y, z = transforms.hyper_analyze(engine, y, quality, sum(c.shape[0] * c.shape[1] for c in colors))
    return [
        transforms.symbols(engine, y[i : i + 1], None if z is None else z[i : i + 1], quality, effort, color)
        for i, color in enumerate(colors)
    ]


@interpreter_exit.counted
def encode_batch(
    images,
    quality: float | None = DEFAULT_QUALITY,
    *,
    effort: int | None = DEFAULT_EFFORT,
    device=None,
    weights=None,
    model: str | None = None,
    batch_size: int = 8,
) -> list[bytes]:
    """Compress several images, running g_a and h_a for up to ``batch_size`` images of one padded size at once.

    Images are grouped by their latent shape (width and height rounded up to a multiple of 64, as
    padded); each group runs the analysis transforms in passes of at most ``batch_size`` images, then
    every image is entropy coded on its own by the exact latent coder. An image larger than one
    stripe of the per-image path (about 2 padded megapixels) is encoded alone, as :func:`encode` does. Every
    image is read into an array first (a generator's images copied as they come, so a generator may refill one
    buffer), and the files are returned together, so memory grows with the number of images: give a large set
    in chunks. The transforms' working memory
    is about ``batch_size`` times that of one image of the group.

    The files are those :func:`encode` writes without metadata: no ICC profile, EXIF, XMP or
    preview. With ``batch_size=1`` they are the same bytes. A batched convolution may sum in another
    order than a single one, so on the CPU a few latents can round the other way than in
    :func:`encode` (the file is valid and decodes exactly as any other; tests/test_batch.py
    states the measured difference).

    Args:
        images: a list of arrays or PIL images, as :func:`encode` takes them (any mix of sizes and layouts), or
            one ``(N, H, W, C)`` array; one image is a list of one.
        quality: 1 (smallest) to 8 (best), the same for every image (None: the default, as in :func:`encode`).
        effort: 0 to 3, as in :func:`encode` (refinement runs per image); None: the default.
        device: torch device (default: ``JAC_DEVICE`` or cpu).
        weights: a weights file to encode with, as in :func:`encode`.
        model: ``model_id`` of the installed generation to encode with (default: the newest).
        batch_size: images per forward pass, at least 1.

    Returns:
        The files, in the order of ``images``; an empty list for no images, without loading a model.

    Raises:
        TypeError: ``images`` is one image rather than a list of them.
        ValueError: a bad option, or an image :func:`encode` refuses; the exception's ``batch_index`` (and,
            on Python 3.11 and later, its note) names the image.

    Example:
        >>> import numpy as np
        >>> from pillow_jac.codec import decode
        >>> files = encode_batch([np.zeros((20, 30, 3), np.uint8), np.zeros((40, 9), np.uint8)], quality=2)
        >>> [decode(f).shape for f in files]
        [(20, 30, 3), (40, 9)]
    """
    images, pulled = _items(images, "images", (str, os.PathLike))
    q = container.quantize_quality(validate_quality(DEFAULT_QUALITY if quality is None else quality))
    effort = validate_effort(DEFAULT_EFFORT if effort is None else effort)
    batch_size = _check_batch_size(batch_size)
    check_model(model)
    arrays, fields = [], []
    for i, image in enumerate(images):
        with _naming_item(i, TypeError, ValueError):
            arr, layout = as_array(image)
            if pulled:  # copied as it comes: the generator may write its next image into the same buffer
                arr = arr.copy()
            fields.append(file_fields(arr, layout, icc_profile=None, exif=None, xmp=None, model=None, preview=False))
        arrays.append((arr, layout))
    if not arrays:
        return []
    engine = steps.encoder_engine(device, weights, model)
    shapes = [container.latent_shapes(arr.shape[1], arr.shape[0])[0] for arr, _ in arrays]
    out: list[bytes | None] = [None] * len(arrays)
    keys = [shape if batchable(shape) else ("alone", i) for i, shape in enumerate(shapes)]
    for members in _batch_groups(keys, batch_size):
        if not batchable(shapes[members[0]]):
            (i,) = members
            out[i] = encode_with(engine, *arrays[i], q, effort, fields[i])
            continue
        colors = [color_planes(*arrays[i]) for i in members]
        height, width = arrays[members[0]][0].shape[:2]
        with steps.allocation_errors_as_memory_errors(width, height):
            for i, symbols in zip(members, _analyze_batch(colors, q, engine, effort), strict=True):
                z_stream, y_stream = steps.streams_of(engine, *symbols)
                out[i] = file_bytes(fields[i], q, engine, z_stream, y_stream)
    return out


def decode_batch(files, *, device=None, weights=None, batch_size: int = 8) -> list[np.ndarray]:
    """Decompress several files, running g_s for up to ``batch_size`` images of one padded size at once.

    Files are grouped by generation (the decoder the file names) and latent shape; every file's latents
    are decoded on their own by the exact latent coder (they are the same as
    :func:`~pillow_jac.codec.decode_symbols` gives), then each group runs the synthesis transform in passes
    of at most ``batch_size`` images, in stripes that hold as many pixels together as one image's stripe
    (:mod:`pillow_jac.stripes`), so that the memory does not grow with ``batch_size``.
    A file larger than one stripe of the per-image path (about 2 padded megapixels) is decoded alone, as
    :func:`decode` does. With ``batch_size=1`` the arrays equal :func:`decode`'s; batched, a
    convolution may sum in another order, so on the CPU a few pixels can differ by one level
    (tests/test_batch.py states the measured difference).

    Args:
        files: a list of ``.jac`` bytes (any bytes-like object :func:`decode` takes), paths or parsed
            :class:`~pillow_jac.container.JacFile` objects, mixed freely; one file is a list of one.
        device: torch device (default: ``JAC_DEVICE`` or cpu).
        weights: a weights file holding the generation of every file, as in :func:`decode` (default: the
            installed generation each file names).
        batch_size: images per forward pass, at least 1.

    Returns:
        One uint8 array per file, in the order of ``files``, shaped as :func:`decode` returns it.

    Raises:
        TypeError: ``files`` is one file rather than a list, or an item is none of the above.
        OSError, ValueError: as :func:`decode` raises them (a damaged file is both). Every file is read, checked
            and given its decoder first, in order, then decoded; nothing is returned when one fails, and the
            exception's ``batch_index`` (and, on Python 3.11 and later, its note) names the file. A stream that
            does not decode is found when its group is decoded, after the groups before it: the latents are
            not all decoded first, since a batch of many large files would hold them all at once.
    """
    files, _ = _items(files, "files", (str, os.PathLike, container.JacFile))
    batch_size = _check_batch_size(batch_size)
    parsed, engines = [], []
    for i, data in enumerate(files):
        with _naming_item(i, OSError, ValueError, TypeError):
            jac, engine = steps.file_and_decoder(data, device, weights)
            engines.append(engine)
        parsed.append(jac)
    return _decode_parsed(parsed, engines, batch_size)


@interpreter_exit.counted
def _decode_parsed(parsed: list, engines: list, batch_size: int) -> list[np.ndarray]:
    """:func:`decode_batch` of files read, checked and given their decoders."""
    out: list[np.ndarray | None] = [None] * len(parsed)
    keys = [
        (id(engine), jac.header.y_shape) if batchable(jac.header.y_shape) else ("alone", i)
        for i, (jac, engine) in enumerate(zip(parsed, engines, strict=True))
    ]
    for members in _batch_groups(keys, batch_size):
        engine = engines[members[0]]
        if not batchable(parsed[members[0]].header.y_shape):
            (i,) = members
            with _naming_item(i, OSError, ValueError):
                out[i] = decode_with(parsed[i], engine, steps.alpha_plane(parsed[i]))
            continue
        y_hats, alphas = [], []
        headers = [parsed[i].header for i in members]
        with steps.allocation_errors_as_memory_errors(headers[0].width, headers[0].height):
            for i in members:
                with _naming_item(i, OSError, ValueError, MemoryError):
                    alphas.append(steps.alpha_plane(parsed[i]))  # first, as decode() checks it
                    y_hats.append(steps.decode_latents(parsed[i], engine)[1])
            sizes = [(h.height, h.width) for h in headers]
            rgbs = steps.transforms().synthesize(engine, y_hats, [h.quality for h in headers], sizes)
        for i, h, rgb, alpha in zip(members, headers, rgbs, alphas, strict=True):
            out[i] = steps.to_layout(rgb, h.layout, alpha)
    return out
