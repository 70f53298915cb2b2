"""What a batch converts (``jac batch``, with or without Ray): its files, their outputs, its attempts, its progress.

:func:`plan` names every input's output (refusing two inputs that would write one output, names that differ
only in case where the output folder does not tell them apart, and an output that is an input);
:func:`batch_inputs` lists a folder's images; :data:`ATTEMPTS` bounds how often a file whose worker dies is
tried; :class:`Progress` is the progress line. Each file is converted by
:func:`pillow_jac.conversion.convert_file`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from .conversion import PROG

__all__ = ["ATTEMPTS", "batch_inputs", "plan", "Progress", "shown_name"]

#: How often a batch tries a file whose worker process (or Ray worker) dies while converting it: a file that
#: kills two workers (too large for memory, say) is reported as failed and the others go on.
ATTEMPTS = 2


def batch_inputs(in_dir: Path, to: str, recursive: bool) -> list[Path]:
    """The files of ``in_dir`` a batch converts: every image Pillow reads (``to="jac"``) or every ``.jac``.

    Hidden files and folders (names starting with ``.``: macOS's ``._NAME`` companions, ``.thumbnails``,
    temporary files) are not part of the batch.
    """
    from PIL import Image

    if to == "jac":
        Image.init()
        exts = {e for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and e != ".jac"}
    else:
        exts = {".jac"}
    pattern = "**/*" if recursive else "*"
    return sorted(
        p
        for p in in_dir.glob(pattern)
        if p.suffix.lower() in exts
        and not any(part.startswith(".") for part in p.relative_to(in_dir).parts)
        and p.is_file()
    )


def plan(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    to: str = "jac",
    *,
    recursive: bool = False,
    base_dir: str | os.PathLike | None = None,
) -> dict[Path, Path]:
    """The input and output path of every file a batch converts (``jac batch``, with or without Ray).

    Args:
        inputs: a folder (its images as :func:`batch_inputs` selects them: every file Pillow reads by
            extension for ``to="jac"``, every ``.jac`` file for ``to="png"``) or an iterable of file paths
            (taken as given).
        out_dir: the output folder (it need not exist yet).
        to: ``"jac"`` or ``"png"``.
        recursive: include a folder's subfolders (mirrored in ``out_dir``).
        base_dir: for a list of paths, the folder whose layout ``out_dir`` mirrors (every path must be inside
            it); by default each output is ``out_dir`` / the input's name.

    Two outputs whose names differ only in case are refused where the output folder does not tell them apart
    (macOS, Windows), as the same output.

    Returns:
        ``{input: output}`` in the order the files are submitted, all paths absolute.

    Raises:
        ValueError: ``inputs`` is not a folder nor a list, has no images, a path is outside ``base_dir``,
            ``out_dir`` is a file, or two inputs would be written to the same output.
    """
    if to not in ("jac", "png"):
        raise ValueError(f"to must be 'jac' or 'png', not {to!r}")
    out = Path(os.path.abspath(out_dir))
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out_dir}: not a directory (the output folder)")
    if isinstance(inputs, (str, os.PathLike)):
        in_dir = Path(os.path.abspath(inputs))
        if not in_dir.is_dir():
            raise ValueError(f"{inputs}: {'not a directory' if in_dir.exists() else 'no such directory'}")
        sources, base = batch_inputs(in_dir, to, recursive), in_dir
        if not sources:
            raise ValueError(f"{inputs}: no {'images' if to == 'jac' else '.jac files'} found")
    else:
        sources = [Path(os.path.abspath(p)) for p in inputs]
        base = Path(os.path.abspath(base_dir)) if base_dir is not None else None
        if not sources:
            raise ValueError("no input files given")
    jobs: dict[Path, Path] = {}
    written: dict[Path, Path] = {}
    folded: dict[str, Path] = {}  # by the output's name folded as file systems that ignore case fold it
    sensitive: dict[Path, bool | None] = {}
    for src in sources:
        if base is None:
            relative = Path(src.name)
        else:
            try:
                relative = src.relative_to(base)
            except ValueError:
                raise ValueError(f"{src} is not inside {base}") from None
        dst = out / relative.with_suffix("." + to)
        other, why = written.get(dst), ""
        key = _folded(str(dst))
        if other is None and key in folded:
            if dst.parent not in sensitive:
                sensitive[dst.parent] = _case_sensitive(dst.parent)
            if not sensitive[dst.parent]:
                other = folded[key]
                why = (
                    " (names that differ only in case: one file there)"
                    if sensitive[dst.parent] is False
                    else " (names that differ only in case, and whether the output folder tells them apart could "
                    "not be found out)"
                )
        if other is not None:
            raise ValueError(f"{src} and {other} would both be written to {dst}{why}")
        jobs[src] = dst
        written[dst] = src
        folded.setdefault(key, src)
    return jobs


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
        self._clear()
        print(f"{PROG}: warning: {name}: {message}", file=self.stream)

    def step(self, name: str, error: str | None = None, note: str | None = None) -> None:
        """One more file done.

        ``error``: its one-line error, printed on a line of its own; ``note``: words after its name on the
        progress line, such as ``already done``.
        """
        self.done += 1
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

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 60 + "\r")
