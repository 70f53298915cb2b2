"""Converting one file: image -> ``.jac`` and ``.jac`` -> image, as ``jac`` and the Ray workers do it.

The per-file work that the command line (:mod:`pillow_jac.cli`) and the distributed batch
(:mod:`pillow_jac.distributed`) share, on the public API only (``PIL.Image.open``, ``Image.save``,
:func:`pillow_jac.container.read`, :func:`pillow_jac.decode`, :func:`pillow_jac.files.write_file`): an output
is encoded in memory, then written (atomically, unless it has other hard links); an output is never
its input; ``-`` stands for standard input or output; and errors come as one line (:func:`one_line`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import IO, Any, NamedTuple

from . import container
from .constants import DEFAULT_EFFORT, METADATA_FIELDS
from .files import check_target, write_file
from .preview import asked as asked_preview
from .quiet_warnings import first_line, recording
from .source_image import exif_orientation, storable, turned_while_loading, upright
from .source_record import file_identity

__all__ = [
    "STDIO",
    "ConversionError",
    "encode_file",
    "exif_orientation",
    "decode_file",
    "read_jac",
    "Converted",
    "convert_file",
    "convert_noting_warnings",
    "first_line",
    "one_line",
    "show_warning",
    "source_name",
]


class ConversionError(Exception):
    """An error whose message is meant for the user as it is (one line, with the path it concerns)."""


def _pillow_format_for(path: Path) -> str:
    from PIL import Image

    ext = path.suffix.lower()
    if not ext:
        raise ConversionError(f"{path}: output has no file extension to choose a format from (e.g. .png)")
    Image.preinit()  # the common formats' plugins; all of them (50 ms more) only for another extension
    fmt = Image.EXTENSION.get(ext)
    if fmt is None:
        Image.init()
        fmt = Image.EXTENSION.get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ConversionError(f"{path}: Pillow cannot write '{ext}' files")
    return fmt


#: the file name that stands for standard input (as an input) or standard output (as an output)
STDIO = "-"


def _is_stdio(path: Path | str) -> bool:
    return str(path) == STDIO


def _stdout() -> IO[bytes]:
    """Standard output for image data; a terminal is refused (before any encoding), as compressors do."""
    if sys.stdout is None:
        raise ConversionError(f"{STDIO}: there is no standard output")
    out = sys.stdout.buffer
    if out.isatty():
        raise ConversionError(f"{STDIO}: refusing to write image data to a terminal; redirect or pipe it")
    return out


def _stdin() -> IO[bytes]:
    """Standard input as a binary stream; a terminal is refused, as compressors do (nobody types an image)."""
    if sys.stdin is None:
        raise ConversionError(f"{STDIO}: there is no standard input")
    source = sys.stdin.buffer
    if source.isatty():
        raise ConversionError(f"{STDIO}: refusing to read image data from a terminal; redirect or pipe it")
    return source


#: what standard input may hold beyond the largest image's pixels (metadata, a format's own overhead)
STDIN_METADATA_BYTES = 64 << 20


def _read_stdin() -> bytes:
    """All of standard input (:func:`_stdin`), refused once it holds more than any image Pillow would open.

    The bound is 8 bytes (16-bit RGBA) for each pixel of the largest image Pillow opens
    (``2 * Image.MAX_IMAGE_PIXELS``, its decompression-bomb error), plus :data:`STDIN_METADATA_BYTES`: endless input
    (``cat /dev/zero |``) fails there instead of taking the machine's memory. Without Pillow's limit
    (``MAX_IMAGE_PIXELS = None``) there is none.
    """
    from PIL import Image

    source = _stdin()
    if Image.MAX_IMAGE_PIXELS is None:
        return source.read()
    limit = 16 * int(Image.MAX_IMAGE_PIXELS) + STDIN_METADATA_BYTES
    pieces, size = [], 0
    while piece := source.read(min(1 << 24, limit + 1 - size)):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            raise ConversionError(
                f"{STDIO}: standard input holds more than {limit >> 20} MiB, more than any image Pillow opens "
                "(Image.MAX_IMAGE_PIXELS)"
            )
    return b"".join(pieces)


def _emit(dst: Path, data: bytes, out: IO[bytes] | None) -> None:
    """Write a complete output: to ``out`` (standard output) when given, else to ``dst`` (:func:`write_file`)."""
    if out is None:
        write_file(dst, data)
        return
    view = memoryview(data)
    try:
        while view:  # a pipe whose reader left part-way takes part of a large write without an error
            written = out.write(view)
            if not written:
                raise OSError(errno.EAGAIN, "took none of the bytes written to it")
            view = view[written:]
        out.flush()
    except OSError as e:  # named, as jac info names it (EPIPE stays a BrokenPipeError: jac ends quietly)
        raise OSError(e.errno, e.strerror or str(e), "standard output") from e


def _check_output(src: Path, dst: Path) -> None:
    """Refuse to write over the input: the same file, whatever the path (links, ``..``, hard links)."""
    if _is_stdio(src) or _is_stdio(dst):
        return
    try:
        same = os.path.samefile(src, dst)
    except OSError:  # one of them does not exist (a missing input is reported when it is read)
        same = False
    if same:
        raise ConversionError(f"{dst}: the output is the input file; choose another output")


def encode_file(
    src: Path,
    dst: Path,
    quality: float,
    *,
    effort: int = DEFAULT_EFFORT,
    strip: bool = False,
    device: str | None = None,
    force: bool = False,
    model: str | None = None,
    target_size: int | None = None,
    target_psnr: float | None = None,
    preview: bool | int = False,
    name_source: bool = True,
) -> int:
    """Encode any image Pillow can read to ``dst`` (``.jac``); return the bytes written.

    ``target_size`` or ``target_psnr`` replace ``quality`` (:mod:`pillow_jac.targets`); ``preview`` (True, or
    its long side in pixels) also stores a preview (SPEC.md section 5.4). ``src`` or ``dst`` :data:`STDIO`
    reads standard input or writes standard output. Of an animated or multi-page input (GIF, APNG, TIFF...)
    only the first frame is encoded, with a warning: ``SRC has N frames; only the first is encoded``
    (``N frames; ...`` without ``name_source``, for a batch that names the file itself). An EXIF orientation
    that the output would not keep (``strip``, or a TIFF, whose tags are not carried as EXIF) is applied to
    the pixels, so the image still shows upright.

    Raises:
        ConversionError: ``dst`` is ``src``, its name does not end in ``.jac`` and ``force`` is false, standard
            output is a terminal, or standard input holds no image Pillow reads; with ``name_source``, also
            an error of reading or encoding ``src`` whose message does not name it (a truncated file, a mode
            the format cannot store, a target that cannot be met): ``SRC: message``.
        OSError: ``dst`` cannot be written (a folder, a missing folder), found before reading ``src``
            (:func:`pillow_jac.files.check_target`).
    """
    from PIL import Image

    from .constants import UnsupportedModeError
    from .JacImagePlugin import JacImageFile
    from .target_search import TargetNotMetError

    _check_output(src, dst)
    out = _stdout() if _is_stdio(dst) else None
    if out is None and dst.suffix.lower() != ".jac" and not force:
        raise ConversionError(f"{dst}: a JAC file's name should end in .jac (use --force to write it anyway)")
    if out is None:
        check_target(dst)
    try:
        with _naming(src, name_source, (Image.DecompressionBombError,)):
            im = Image.open(io.BytesIO(_read_stdin()) if _is_stdio(src) else src)
            if turned_while_loading(im):  # from memory: Pillow maps a file's samples at the turned size
                im.fp.seek(0)  # what Pillow opened (a pipe's bytes it read already), not the path again
                data = im.fp.read()
                im.close()
                im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as e:
        if not _is_stdio(src):
            raise
        raise ConversionError(f"{STDIO}: standard input is not an image Pillow can read") from e
    with im:
        with _naming(src, name_source, (OSError, ValueError, SyntaxError)):  # reading the image
            im = storable(im, source_name(src) if name_source else None, strip)
        options: dict[str, Any] = {"quality": quality, "effort": effort, "device": device, "model": model}
        if target_size is not None or target_psnr is not None:
            del options["quality"]
            options.update(target_size=target_size, target_psnr=target_psnr)
        if asked_preview(preview):
            options["preview"] = preview
        if strip:
            options.update(icc_profile=None, exif=None, xmp=None)
        encoded = io.BytesIO()
        with _naming(src, name_source, (UnsupportedModeError, TargetNotMetError)):  # what this image cannot be
            im.save(encoded, format=JacImageFile.format, **options)
    data = encoded.getvalue()
    _emit(dst, data, out)
    return len(data)


@contextlib.contextmanager
def _naming(src: Path, name_it: bool, kinds: tuple[type[BaseException], ...]):
    """Errors of ``kinds`` about ``src`` as :class:`ConversionError` ``SRC: message`` (when ``name_it``).

    Pillow's errors of reading (a truncated file) and the codec's about the image (a mode JAC cannot
    store, a target that cannot be met) do not name the file; an ``OSError`` with a file name already does.
    """
    try:
        yield
    except ConversionError:
        raise
    except kinds as e:
        if not name_it or getattr(e, "filename", None):
            raise
        raise ConversionError(f"{src}: {one_line(e)}") from e


def source_name(src: Path | str) -> str | Path:
    """How a warning names the source: its path, or "standard input"."""
    return "standard input" if _is_stdio(src) else src


def read_jac(path: Path, *, on_unknown: Any = None) -> tuple[container.JacFile, int]:
    """Read a ``.jac`` file's container (no torch): ``(file, its size in bytes)``.

    ``path`` :data:`STDIO` reads standard input; ``on_unknown`` is :func:`pillow_jac.container.read`'s.

    Raises:
        ConversionError: the file is malformed (the message names ``path``).
    """
    try:
        if _is_stdio(path):
            counted = _Counted(_stdin())  # read as the container asks: a non-JAC input stops at its signature
            return container.read(counted, on_unknown=on_unknown), counted.count
        with open(path, "rb") as fp:
            st = os.fstat(fp.fileno())
            if stat.S_ISREG(st.st_mode):
                return container.read(fp, on_unknown=on_unknown), st.st_size
            counted = _Counted(fp)  # a pipe, a FIFO, /dev/stdin: its size is what was read
            return container.read(counted, on_unknown=on_unknown), counted.count
    except container.JacFormatError as e:
        raise ConversionError(f"{path}: {e}") from e


class _Counted:
    """A binary stream (read only, not seekable) that counts the bytes read from it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.count = raw, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data


def decode_file(
    src: Path, dst: Path, *, device: str | None = None, force: bool = False, name_source: bool = True
) -> None:
    """Decode ``src`` (``.jac``) and save it in the format ``dst``'s extension names, with its metadata.

    ``src`` :data:`STDIO` reads standard input; ``dst`` :data:`STDIO` writes PNG to standard output. Before
    anything is decoded, ``dst`` is checked: a ``.jac`` name is refused (a decode would encode it again), a
    path that cannot be written is reported, and an existing image that no decode wrote is not replaced unless
    ``force`` (:func:`_check_not_an_original`). How the pixels are written: :mod:`pillow_jac.decoded_output`.

    Raises:
        ConversionError: the file is malformed or its stream does not decode (the message names ``src``; with
            ``name_source`` false, a stream's error comes as the codec raised it, for a batch that names files
            itself).
    """
    from PIL import Image

    from . import decoded_output
    from .codec import CodecError, decode
    from .entropy_coding import EntropyCodingError
    from .save_metadata import without_orientation
    from .size_limit import check_declared_size

    _check_output(src, dst)
    out = _stdout() if _is_stdio(dst) else None
    fmt = "PNG" if out is not None else _pillow_format_for(dst)
    if out is None:
        if fmt == "JAC":
            raise ConversionError(
                f"{dst}: a decode does not write .jac files; copy the file, or re-encode it with jac encode"
            )
        check_target(dst)
    jac, _ = read_jac(src)  # first: a missing or damaged input is reported as such, not as a problem of the output
    if out is None and not force:
        _check_not_an_original(src, dst)
    kinds = (CodecError, EntropyCodingError, container.JacFormatError, MemoryError)  # the file's own errors
    with _naming(src, name_source, kinds):
        check_declared_size(*jac.size, error=CodecError, warn=True)  # as Image.open would
        pixels = decode(jac, device=device)
    im = Image.frombytes(jac.mode, jac.size, memoryview(pixels).cast("B"))  # decode returns a contiguous array
    try:
        im = decoded_output.for_format(im, fmt)
    except ValueError as e:
        raise ConversionError(f"{dst}: {e}") from None
    # Save options Pillow's writers understand; each writer ignores the ones it does not.
    options: dict[str, Any] = {name: bytes(value) for name in METADATA_FIELDS if (value := getattr(jac, name))}
    if "icc_profile" in options and decoded_output.profile_for(options["icc_profile"], fmt, im.mode) is None:
        del options["icc_profile"]
    if fmt in ("JPEG", "WEBP", "AVIF"):
        options["quality"] = 95
    name = "" if out is not None else dst.name  # what Pillow's writers read from a path (save_keeping_what_fits)
    if fmt == "ICO":
        options["sizes"] = decoded_output.icon_sizes(im.size)
    with recording(always=True) as first_save:  # given out below unless the image is saved again
        data, kept = decoded_output.save_keeping_what_fits(im, fmt, decoded_output.marked_options(fmt, options), name)
    if fmt in ("ICO", "ICNS"):  # icons of their sizes only: ICO up to 256 pixels a side, ICNS square ones
        size = decoded_output.read_back(data, exif=False).get("size", im.size)
        if size != im.size:
            shown = f"{size[0]}x{size[1]}"
            warnings.warn(f"{fmt} holds icons: the {im.width}x{im.height} image reads back at {shown}", stacklevel=2)
    orientation = _stored_orientation(options)
    if orientation != 1 and _stored_orientation(decoded_output.read_back(data), xmp=False) != orientation:
        # the output lost the turn (a format without EXIF, or EXIF it refused; an XMP tiff:Orientation alone
        # turns it for Pillow but not for browsers and most viewers): the pixels are turned instead, as jac
        # encode turns them for a .jac that would lose it, so that the image still shows upright
        options = without_orientation(options)
        turned = upright(im, orientation)
        if fmt == "ICO":
            options["sizes"] = decoded_output.icon_sizes(turned.size)
        data, kept = decoded_output.save_keeping_what_fits(
            turned, fmt, decoded_output.marked_options(fmt, options), name
        )
    else:
        for caught in first_save:
            warnings.warn(caught.message, stacklevel=2)
    stored = {"icc_profile": "icc_profile", "exif": "exif", "xmp": "pnginfo" if fmt == "PNG" else "xmp"}
    given = [n for n, option in stored.items() if getattr(jac, n) and option in kept]
    decoded_output.warn_of_what_was_not_stored(data, fmt, given)
    _emit(dst, data, out)


def _stored_orientation(info: dict[str, Any], xmp: bool = True) -> int:
    """The EXIF orientation (1 to 8) that ``info``'s ``exif`` (and with ``xmp`` its XMP) gives a viewer; else 1."""
    from PIL import Image

    from .save_metadata import carried_orientation

    stub = Image.new("L", (1, 1))
    stub.info = {key: info[key] for key in (("exif", "xmp") if xmp else ("exif",)) if info.get(key)}
    orientation = carried_orientation(stub)
    return orientation if orientation in range(1, 9) else 1


def _check_not_an_original(src: Path, dst: Path) -> None:
    """Refuse to replace an image that a decode did not write: it may be what ``src`` was made from.

    ``jac encode photo.png photo.jac`` then ``jac decode photo.jac photo.png``, or ``jac batch IN IN --to jac``
    then ``jac batch IN IN --to png``, would otherwise replace each original with its lossy decode, whatever
    the files' times say (an original copied back without its time is newer than its ``.jac``). A PNG, JPEG or TIFF
    that a decode wrote carries its mark (:func:`pillow_jac.decoded_output.written_by_a_decode`) and is
    replaced; what is written into rather than replaced (a device, a named pipe) is not opened.
    """
    if not os.path.isfile(dst):  # no output yet, or a device or pipe (a missing input is reported when it is read)
        return
    from .decoded_output import MARKED_SUFFIXES, written_by_a_decode

    if not written_by_a_decode(dst):
        marked = dst.suffix.lower() in MARKED_SUFFIXES
        why = (
            "carries no mark of a decode (a decode by an earlier pillow_jac carries none either)"
            if marked
            else "is not a PNG, JPEG or TIFF, the formats in which a decode leaves its mark"
        )
        raise ConversionError(
            f"{dst}: exists and {why}, so it may be the image {src.name} was made from; "
            "not replaced (--force replaces it)"
        )


class Converted(NamedTuple):
    """What :func:`convert_file` made: the input's and the output's sizes, and the output as written."""

    in_bytes: int
    out_bytes: int
    #: the output's size and modification time, taken where it was written, as a batch's record of sources
    #: notes it (:func:`pillow_jac.source_record.note_made`)
    made: dict[str, int]


def convert_file(
    src: str,
    dst: str,
    to: str,
    quality: float,
    effort: int,
    device: str | None,
    extra: dict | None = None,
    *,
    force: bool = False,
) -> Converted:
    """Convert one file as a batch does.

    ``extra``: more :func:`encode_file` options (``target_size``, ``target_psnr``, ``preview``). Decoding
    (``to="png"``) replaces only a PNG that a decode wrote, unless ``force`` is true.
    """
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    if to == "jac":
        encode_file(Path(src), Path(dst), quality, effort=effort, device=device, name_source=False, **(extra or {}))
    else:
        decode_file(Path(src), Path(dst), device=device, force=force, name_source=False)
    made = file_identity(dst)
    return Converted(os.path.getsize(src), made["size"], made)


def convert_noting_warnings(*args: Any, **kwargs: Any) -> tuple[Converted | Exception, list[str]]:
    """:func:`convert_file`, with its error (if any) and its warnings returned instead of raised or printed.

    Returns:
        ``(result, warnings)``: what it made (:class:`Converted`) or the exception, and the first line of each
        warning, so that a batch reports them with the file's name (also from worker processes, which print
        nothing).
    """
    with recording() as caught:  # the filters in force stay (a fresh registry)
        try:
            result: Converted | Exception = convert_file(*args, **kwargs)
        except Exception as e:
            result = e
    return result, [first_line(str(w.message)) or w.category.__name__ for w in caught]


#: the program name that prefixes the progress bar's error lines
PROG = "jac"


def show_warning(
    message: Warning | str, category: type[Warning], *args: Any, source: str | Path | None = None, **kwargs: Any
) -> None:
    """``warnings.showwarning`` for the command line: one line, ``jac: warning: ...``, on stderr.

    ``source``: the file a command converts (:func:`source_name`), put before a warning that does not name it
    (Pillow's own, a corrupt EXIF block say), so that a script's log of many commands says which file it was.
    """
    text = first_line(str(message)) or category.__name__
    if source is not None and not text.startswith((f"{source}: ", f"{source} ")):  # the codec's name it first
        text = f"{source}: {text}"
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def one_line(e: BaseException) -> str:
    """``e`` in one line; errors of types that carry no message of ours (internal errors) say their type."""
    if isinstance(e, OSError) and e.filename and e.strerror:  # "x: Not a directory", not "[Errno 20] ..."
        return f"{e.filename}: {e.strerror}"
    try:
        text = first_line(str(e))
    except Exception:  # a broken __str__
        text = ""
    if not text or not isinstance(e, (ConversionError, OSError, ValueError, SyntaxError)):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text
