"""The resume checks of a batch (``jac batch``, with or without Ray): which outputs a resumed batch skips.

:func:`is_done` tells a finished output from the files alone; :func:`batch_settings` is what a batch notes in
its output folder's record (:class:`~pillow_jac.source_record.SourceRecord`) for the settings that the files
cannot tell; :func:`done_before` is :func:`is_done` with a batch's options, as each file's worker asks it.
"""

from __future__ import annotations

import os
import stat

from . import container, generations
from .constants import DEFAULT_QUALITY, METADATA_FIELDS
from .decoded_output import carries_mark
from .preview import asked as asked_preview
from .preview import preview_size
from .quiet_warnings import ignoring
from .source_image import exif_orientation
from .source_record import vouches

__all__ = ["batch_settings", "done_before", "is_done"]


def is_done(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str,
    quality: float | None = DEFAULT_QUALITY,
    *,
    preview: bool | int = False,
    target_size: int | None = None,
    strip: bool = False,
    model: str | None = None,
    vouched: dict | None = None,
) -> bool:
    """Whether ``dst`` is a finished conversion of ``src``, which ``resume`` skips.

    It counts as done when it is a regular file at least as new as ``src`` (or of any time where ``vouched``,
    what the output folder's record vouches ``dst`` was made from,
    :meth:`~pillow_jac.source_record.SourceRecord.vouched`, names ``src`` and ``dst`` as they are stat-ed here,
    :func:`~pillow_jac.source_record.vouches`: a source dated in the future is newer than any output), of the
    same size in pixels (a picture of another size is not taken for it; one of the same size only the batch's
    record tells apart, :meth:`~pillow_jac.source_record.SourceRecord.conflict`), and:

    * for ``to="png"``: Pillow reads it as a PNG whose chunks check (``verify()``), so an empty or cut file
      left by a machine that crashed is converted again, and that a decode wrote (its ``Software`` chunk,
      :data:`~pillow_jac.decoded_output.DECODED_BY`), so an original is not taken for one;
    * for ``to="jac"``: the container parses (every chunk's CRC), its quality is ``quality`` (as stored, to
      1/256; None, for a size or PSNR target, checks none), it holds a preview exactly when ``preview``
      asks for one that is smaller than the image, of the size asked for, with ``target_size`` it is no
      larger, with ``strip`` it holds no ICC profile, EXIF or XMP (and without it, some where an encode would
      store some of what the source's header holds), and it was made by the generation that encodes
      ``model`` now (by default the default encoder, :func:`pillow_jac.generations.encoder`): its model_id and
      its hash, so a file of another generation under the same model_id is not taken for one.

    The effort, a PSNR target, a size target larger than before and ``strip`` for a source whose metadata
    follows its pixels cannot be told from the file: a batch judges them by its output folder's record
    (:func:`batch_settings`), and ``resume=False``
    (``jac batch --no-resume``) redoes every file whatever the record says.
    """
    from PIL import Image

    from .save_metadata import metadata_to_store

    try:
        out = os.stat(dst)
        if not stat.S_ISREG(out.st_mode):
            return False
        source = os.stat(src)  # both stat-ed where the output is judged, as the record's vouching is checked
        if out.st_mtime_ns < source.st_mtime_ns and not vouches(vouched, source, out):
            return False
        with ignoring(Image.DecompressionBombWarning):  # a large image warned when converted, not at every resume
            if to != "jac":
                with Image.open(dst, formats=["PNG"]) as im:
                    size, decoded = im.size, carries_mark(im)
                    im.verify()
                if not decoded:  # an image that no decode wrote (an original) is not a finished output
                    return False
                with open(src, "rb") as f:
                    header = container.read_header(f)
                return size == (header.width, header.height)
            jac = container.read(dst)
            with Image.open(src) as im:  # the header only
                # the encode may have turned it upright; the orientation only where the sizes ask (a PNG's
                # EXIF may follow its pixels: Pillow reads them all to find it)
                if jac.size != im.size and not (jac.size == im.size[::-1] and exif_orientation(im) in (5, 6, 7, 8)):
                    return False
                # what an encode without strip would store of what Pillow read with the header (a profile
                # that cannot describe the stored mode is not; a PNG's eXIf after its pixels is not looked for)
                source_metadata = any(metadata_to_store(im, {}, jac.header.layout).values())
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return False
    if quality is not None and jac.header.quality != container.quantize_quality(quality):
        return False
    if target_size is not None and out.st_size > target_size:
        return False
    kept_metadata = any(getattr(jac, name) for name in METADATA_FIELDS)
    if strip and kept_metadata or not strip and source_metadata and not kept_metadata:
        return False  # made with --strip, or without it (from a source that has metadata), the other asked for
    try:
        wanted = generations.encoder(model)
    except LookupError:  # no generation encodes here: the conversion reports it
        return False
    if (jac.header.model_id, jac.header.weights_hash) != (wanted.model_id, wanted.weights_hash):
        return False  # another generation's, or another of the same model_id (SPEC.md section 9.2)
    wants_preview = asked_preview(preview) and max(jac.size) > preview_size(preview)
    if wants_preview and jac.preview is not None:
        unpacked = container.unpack_preview(jac.preview)  # None: one that cannot be used
        return unpacked is not None and max(unpacked[1:3]) == preview_size(preview)  # the size asked for
    return wants_preview == (jac.preview is not None)


def batch_settings(to: str, quality: float, effort: int, extra: dict) -> dict | None:
    """What a batch's ``.jac`` outputs are made with that resuming must match (None for ``to="png"``).

    The quality as a file stores it (None with a size or PSNR target), the targets, the effort and ``strip``:
    an output made with other ones is converted again (:meth:`pillow_jac.source_record.SourceRecord.changed`),
    as :func:`is_done` alone cannot tell from the file (a PSNR target, the effort, a larger size target, an
    output made with ``strip`` for a batch without it).

    Example:
        >>> batch_settings("jac", 4.3, 0, {"target_size": None, "target_psnr": None, "strip": False})
        {'quality': 4.30078125, 'effort': 0, 'target_size': None, 'target_psnr': None, 'strip': False}
    """
    if to != "jac":
        return None
    size, psnr = extra.get("target_size"), extra.get("target_psnr")
    stored = None if size is not None or psnr is not None else container.quantize_quality(quality)
    settings = {"quality": stored, "effort": effort, "target_size": size, "target_psnr": psnr}
    return {**settings, "strip": bool(extra.get("strip"))}


def done_before(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, quality: float, extra: dict, vouched: dict | None = None
) -> bool:
    """Whether a resumed batch skips ``src``: :func:`is_done` with the batch's options.

    ``extra``: the batch's ``target_size``, ``target_psnr``, ``preview``, ``strip`` and ``model``; with a target
    the quality is not checked. ``vouched``: :func:`is_done`'s (what the output folder's record vouches ``dst``
    was made from, :meth:`~pillow_jac.source_record.SourceRecord.vouched`).
    """
    targeted = extra.get("target_size") is not None or extra.get("target_psnr") is not None
    return is_done(
        src,
        dst,
        to,
        None if targeted else quality,
        preview=extra.get("preview", False),
        target_size=extra.get("target_size"),
        strip=bool(extra.get("strip")),
        model=extra.get("model"),
        vouched=vouched,
    )
