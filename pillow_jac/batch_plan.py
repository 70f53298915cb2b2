"""What a batch converts (``jac batch``, with or without Ray): its files, their outputs, its attempts, its progress.

:func:`plan_batch` names every input's output and sets aside the inputs that would share one (``a.png`` and
``a.jpg``, or names that differ only in case where the output folder does not tell them apart), which fail
while the others convert; :func:`plan` refuses them instead; :func:`batch_inputs` lists a folder's images;
:data:`ATTEMPTS` bounds how often a file whose worker dies is tried; :class:`Progress` is the progress line.
Which outputs a resumed batch skips is :mod:`pillow_jac.resume_checks`'s.
Each file is converted by :func:`pillow_jac.conversion.convert_file`.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from .conversion import PROG
from .decoded_output import MARKED_SUFFIXES
from .source_record import SourceRecord

__all__ = [
    "ATTEMPTS",
    "batch_inputs",
    "file_options",
    "plan",
    "plan_batch",
    "Progress",
    "shown_name",
]

#: How often a batch tries a file whose worker process (or Ray worker) dies while converting it: a file that
#: kills two workers (too large for memory, say) is reported as failed and the others go on.
ATTEMPTS = 2


def batch_inputs(
    in_dir: Path, to: str, recursive: bool, *, out_dir: Path | None = None, unreadable: list | None = None
) -> list[Path]:
    """The files of ``in_dir`` a batch converts: every image Pillow decodes (``to="jac"``) or every ``.jac``.

    Hidden files and folders (names starting with ``.``: macOS's ``._NAME`` companions, ``.thumbnails``,
    temporary files) are not part of the batch, nor is ``out_dir`` where it lies inside ``in_dir`` (its outputs
    would be converted again by the next run). An image is chosen by its extension, among the formats Pillow
    can decode here (:func:`_decodable_extensions`). A link that leads nowhere is listed, so that it is reported
    as failed, not passed over; folders reached through links are not entered. A folder that cannot be read
    (``in_dir`` or, with ``recursive``, one below it) is added to ``unreadable`` with its error, where given,
    rather than passed over in silence.
    """
    exts = _decodable_extensions() if to == "jac" else {".jac"}
    real_in = Path(os.path.realpath(in_dir))
    outputs = Path(os.path.realpath(out_dir)) if out_dir is not None else None  # links resolved on both sides
    skip = outputs if outputs is not None and outputs != real_in and outputs.is_relative_to(real_in) else None
    found = []
    for root, folders, names in os.walk(in_dir, onerror=None if unreadable is None else unreadable.append):
        folder = Path(root)
        relative = folder.relative_to(in_dir)
        if any(part.startswith(".") for part in relative.parts) or (
            skip is not None and (real_in / relative).is_relative_to(skip)
        ):
            folders[:] = []  # nor anything below it
            continue
        # names os.walk gives as files: files, links to files and links that lead nowhere (a link to a folder
        # is among the folders, and not entered)
        found.extend(folder / name for name in names if Path(name).suffix.lower() in exts and not name.startswith("."))
        if not recursive:
            break
    return sorted(p for p in found if p.is_file() or (p.is_symlink() and not p.exists()))


def _decodable_extensions() -> set[str]:
    """The extensions of the formats Pillow can decode here (``.jac`` aside).

    Not those it only identifies: its stub formats (BUFR, GRIB, HDF5, and WMF without a handler), MPEG, and
    EPS where Ghostscript is not installed, so a video or a data file beside the photographs is no failure.
    """
    from PIL import EpsImagePlugin, Image, ImageFile

    Image.init()
    decodable = set()
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None or ext == ".jac" or fmt == "MPEG":
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        if fmt == "EPS" and not EpsImagePlugin.has_ghostscript():
            continue
        decodable.add(ext)
    return decodable


def plan(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    to: str = "jac",
    *,
    recursive: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> dict[Path, Path]:
    """The input and output path of every file a batch converts; two inputs for one output are refused.

    As :func:`plan_batch`, whose arguments it takes, but where two inputs would be written to one output
    (``a.png`` and ``a.jpg``, or names that differ only in case where the output folder does not tell them
    apart) it raises instead of leaving them out.

    Returns:
        ``{input: output}`` in the order the files are submitted, all paths absolute.

    Raises:
        ValueError: ``inputs`` is not a folder nor a list, has no images, a path is outside ``base_dir``,
            ``out_dir`` is a file, two inputs would be written to the same output, an output exists that
            another file made, or a folder below ``inputs`` cannot be read (:func:`plan_batch`).
    """
    jobs, clashes = plan_batch(inputs, out_dir, to, recursive=recursive, base_dir=base_dir)
    if clashes:
        src, (_, why) = next(iter(clashes.items()))
        raise ValueError(f"{src}: {why}")
    return jobs


def plan_batch(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    to: str = "jac",
    *,
    recursive: bool = False,
    base_dir: str | os.PathLike | None = None,
    record: SourceRecord | None = None,
) -> tuple[dict[Path, Path], dict[Path, tuple[Path, str]]]:
    """The files a batch converts (``jac batch``, with or without Ray), and those it cannot.

    Args:
        inputs: a folder (its images as :func:`batch_inputs` selects them: every image Pillow decodes, by
            extension, for ``to="jac"``, every ``.jac`` file for ``to="png"``; for ``to="jac"``, a PNG, JPEG or TIFF
            that a decode wrote is left out with a warning, since it is no original) or an iterable of file
            paths (taken as given).
        out_dir: the output folder (it need not exist yet).
        to: ``"jac"`` or ``"png"``.
        recursive: include a folder's subfolders (mirrored in ``out_dir``).
        base_dir: for a list of paths, the folder whose layout ``out_dir`` mirrors (every path must be inside
            it); by default each output is ``out_dir`` / the input's name.
        record: ``out_dir``'s record of sources, when the caller has read it (to ask it
            :meth:`~pillow_jac.source_record.SourceRecord.changed` later); by default it is read here.

    Returns:
        ``({input: output}, {input: (output, why)})``: the files to convert, in the order they are submitted,
        and the inputs that would share an output with another (``a.png`` and ``a.jpg``; names that differ only in
        case where the output folder does not tell them apart, as on macOS and Windows), none of which is
        converted, the inputs whose output exists and was made from another file
        (:class:`~pillow_jac.source_record.SourceRecord`), and the folders below a folder given that cannot be
        read; all paths absolute.

    Raises:
        ValueError: ``inputs`` is not a folder nor a list, has no images, a path is outside ``base_dir``,
            or ``out_dir`` is a file.
    """
    if to not in ("jac", "png"):
        raise ValueError(f"to must be 'jac' or 'png', not {to!r}")
    out = Path(os.path.abspath(out_dir))
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out_dir}: not a directory (the output folder)")
    unreadable: list[OSError] = []
    if isinstance(inputs, (str, os.PathLike)):
        in_dir = Path(os.path.abspath(inputs))
        if not in_dir.is_dir():
            raise ValueError(f"{inputs}: {'not a directory' if in_dir.exists() else 'no such directory'}")
        sources, base = batch_inputs(in_dir, to, recursive, out_dir=out, unreadable=unreadable), in_dir
        for error in unreadable:
            if Path(os.path.abspath(error.filename)) == in_dir:
                raise ValueError(f"{inputs}: cannot read the folder: {error.strerror}")
        if to == "jac":
            sources = _originals(sources, shown_name(inputs))
        if not sources and not unreadable:
            raise ValueError(f"{inputs}: no {'images' if to == 'jac' else '.jac files'} found")
    else:
        sources = list(dict.fromkeys(Path(os.path.abspath(p)) for p in inputs))  # a file listed twice: once
        base = Path(os.path.abspath(base_dir)) if base_dir is not None else None
        if not sources:
            raise ValueError("no input files given")
    outputs: dict[Path, Path] = {}
    by_output: dict[Path, list[Path]] = {}
    by_folded: dict[str, list[Path]] = {}  # by the output's name folded as file systems that ignore case fold it
    for src in sources:
        if base is None:
            relative = Path(src.name)
        else:
            try:
                relative = src.relative_to(base)
            except ValueError:
                raise ValueError(f"{src} is not inside {base}") from None
        dst = out / relative.with_suffix("." + to)
        outputs[src] = dst
        by_output.setdefault(dst, []).append(src)
        by_folded.setdefault(_folded(str(dst)), []).append(src)
    clashes: dict[Path, tuple[Path, str]] = {}
    for dst, srcs in by_output.items():
        if len(srcs) > 1:
            for src in srcs:
                others = ", ".join(_beside(o, src) for o in srcs if o != src)
                why = f"{others} would also be written to {dst.name}; neither is converted (convert one alone)"
                clashes[src] = (dst, why)
    sensitive: dict[Path, bool | None] = {}
    for srcs in by_folded.values():
        names = {outputs[s] for s in srcs}
        if len(names) < 2:
            continue
        folder = outputs[srcs[0]].parent
        if folder not in sensitive:
            sensitive[folder] = _case_sensitive(folder)
        if sensitive[folder]:
            continue
        why = (
            "names that differ only in case: one file there"
            if sensitive[folder] is False
            else "names that differ only in case, and whether the output folder tells them apart is unknown"
        )
        for src in srcs:
            if src not in clashes:
                others = ", ".join(_beside(o, src) for o in srcs if outputs[o] != outputs[src])
                said = f"{others} would also be written to {outputs[src].name} ({why}); neither is converted"
                clashes[src] = (outputs[src], said)
    made_from = SourceRecord(out) if record is None else record
    for src, dst in outputs.items():  # an output another file made (another folder's a.png) is not replaced
        why_not = None if src in clashes else made_from.conflict(src, dst)
        if why_not is not None:
            clashes[src] = (dst, why_not)
    for error in unreadable:  # a folder below the input folder: each is reported as a file that failed
        folder = Path(os.path.abspath(error.filename))
        why = f"cannot read this folder ({error.strerror}): the images in it are not converted"
        clashes[folder] = (out / folder.relative_to(base), why)
    jobs = {src: dst for src, dst in outputs.items() if src not in clashes}
    return jobs, clashes


def _beside(path: Path, src: Path) -> str:
    """``path`` as a message about ``src`` names it: its name alone when both are in one folder."""
    return path.name if path.parent == src.parent else str(path)


def _originals(sources: list[Path], shown: Callable[[Path], str]) -> list[Path]:
    """``sources`` less the PNG, JPEG and TIFF files a decode wrote (warned of): encoding them again loses quality.

    So a folder converted to ``.jac`` and back in place (``jac batch D D --to jac``, then ``--to png``) can be
    converted again: ``b.png`` decoded beside its original ``b.jpg`` is not taken for a second original.
    """
    from .decoded_output import written_by_a_decode

    kept = []
    for src in sources:
        if src.suffix.lower() in MARKED_SUFFIXES and written_by_a_decode(src):
            warnings.warn(
                f"{shown(src)}: written by a decode of a .jac file, not an original; not encoded", stacklevel=3
            )
        else:
            kept.append(src)
    return kept


def check_encoder(to: str, model: str | None) -> None:
    """For a batch to ``.jac``, refuse a ``model`` (or ``JAC_WEIGHTS``) that cannot encode here once, before any file.

    Raises:
        ModelNotInstalledError: :func:`pillow_jac.generations.encoder`'s (else every file would fail alike).
    """
    if to == "jac":
        from .generations import encoder

        encoder(model)


def file_options(to: str, *, target_size, target_psnr, preview, strip: bool, model: str | None) -> dict:
    """The options every file of a batch is converted with beyond quality and effort (``convert_file``'s ``extra``).

    ``strip`` and ``model`` are options of the encoder, given only with ``to="jac"``.

    Example:
        >>> file_options("png", target_size=None, target_psnr=None, preview=False, strip=True, model=None)
        {'target_size': None, 'target_psnr': None, 'preview': False}
    """
    extra = {"target_size": target_size, "target_psnr": target_psnr, "preview": preview}
    return {**extra, "strip": strip, "model": model} if to == "jac" else extra


def _folded(name: str) -> str:
    """``name`` with each character in upper case where that is one character (simple case mapping).

    File systems that ignore case compare names so (NTFS upper-cases each character by a table): ``ς``, ``σ``
    and ``Σ`` are one letter there, while ``ß`` and ``ss`` stay two names, as ``str.upper``'s full mapping
    (``ß`` -> ``SS``) or ``casefold`` would not have it.

    Example:
        >>> _folded("Straße.jac") == _folded("STRAßE.jac"), _folded("ς") == _folded("σ"), _folded("ß") == _folded("ss")
        (True, True, False)
    """
    return "".join(up if len(up := c.upper()) == 1 else c for c in name)


def _case_sensitive(folder: Path) -> bool | None:
    """Whether names that differ only in case name different files in ``folder`` or the folder above it that exists.

    False on macOS's and Windows' usual file systems; None when it cannot be found out (the folder cannot be
    written). It writes and removes a hidden empty file there, and is called only for two outputs whose names
    differ only in case.
    """
    while not folder.is_dir():
        if folder.parent == folder:
            return None
        folder = folder.parent
    try:
        fd, name = tempfile.mkstemp(prefix=".jac-case-", dir=folder)
    except OSError:
        return None
    try:
        os.close(fd)
        other = os.path.join(folder, os.path.basename(name).swapcase())
        return not os.path.exists(other)
    finally:
        os.unlink(name)


def shown_name(folder: str | os.PathLike) -> Callable[[str | os.PathLike], str]:
    """How a batch names a file of ``folder`` to the user: under the folder as it was typed (``photos/a.png``).

    :func:`plan` gives the workers absolute paths; the progress lines and errors name files as the user did.
    """
    typed, absolute = Path(folder), os.path.abspath(folder)
    return lambda src: str(typed / os.path.relpath(src, absolute))


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, stream: IO[str], enabled: bool = True) -> None:
        self.total, self.done, self.stream, self.enabled = total, 0, stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.start = time.monotonic()

    def warn(self, name: str, message: str) -> None:
        """A warning about one file, on a line of its own (printed also when progress is off)."""
        name = _one_line_name(name)
        self._clear()
        print(f"{PROG}: warning: {name}: {message}", file=self.stream)

    def step(self, name: str, error: str | None = None, note: str | None = None) -> None:
        """One more file done.

        ``error``: its one-line error, printed on a line of its own; ``note``: words after its name on the
        progress line, such as ``already done``.
        """
        self.done += 1
        name = _one_line_name(name)
        if error is not None:
            self._clear()
            print(f"{PROG}: {name}: {error}", file=self.stream)
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        if self.tty:
            width = 30
            filled = width * self.done // max(1, self.total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total}  {elapsed:.1f}s")
            if self.done == self.total:
                self.stream.write("\n")
        elif error is None:
            self.stream.write(f"[{self.done}/{self.total}] {name}{f' ({note})' if note else ''}\n")
        self.stream.flush()

    def close(self) -> None:
        """End a bar left part-way (a stopped batch), so that what is printed next starts a line of its own."""
        if self.tty and 0 < self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 60 + "\r")


def _one_line_name(name: str) -> str:
    r"""``name`` with its line breaks and other control characters escaped, so that one file takes one line.

    Example:
        >>> _one_line_name("a\nb.png"), _one_line_name("été.png")
        ('a\\nb.png', 'été.png')
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)
