"""Which source each output of a batch was made from, so that a later batch does not replace it with another's.

``jac batch A out`` and then ``jac batch B out`` both write ``out/a.jac`` when both folders hold an ``a.png``;
by name, time and size alone (:func:`pillow_jac.resume_checks.is_done`) the second run cannot tell its ``a.png``
from the first's, and would replace the output made from A (perhaps the only copy of that picture left). A
batch therefore notes, in a hidden file of its output folder (:data:`RECORD_NAME`, one JSON line per converted
file: the output's path in the folder, the source's path, size and modification time as they were before it
was read, and once the output is made its own size and modification time; a record read with
more than two lines per output is rewritten with the last of each, and a line that does not read, cut by a crash,
not UTF-8 or longer than any record's, is skipped), what each output was made from, and
refuses to replace an output made from another file. A source moved or renamed with its folder (the same size
and modification time) is the same file. A ``.jac`` output with no line (made by ``jac encode``, by a batch
into another folder, or one that came as a ``.jac``) is taken as made from another file: the batch neither
replaces it nor skips its source as done (:meth:`SourceRecord.conflict`). So that a batch stopped between writing
an output and noting it does not leave such a ``.jac``, each conversion is noted as begun before it starts
(:func:`note_started`): an output whose last line says so is its source's, converted again.

The record also tells a source that changed since its output was made although it is no newer than the output
(an older copy put in its place with ``cp -p``, say), and an output made with other settings than a batch
asks for now (a quality where a PSNR or size target is asked for, another effort): a resumed batch converts
either again (:meth:`SourceRecord.changed`).

A finished line also notes the output's size and modification time once written (``made``), and its source's
are those :func:`note_started` took before the conversion read the source (a source saved again meanwhile is
then converted again, not taken for the one the output was made from). Where a finished line's source and
output are, by size and time, the files there when an output is judged, their times are not compared
(:meth:`SourceRecord.vouched`, :func:`vouches`): a source dated in the future (by a camera with a wrong clock,
or unpacked from another time zone) is newer than any output, and would otherwise be converted again by every
run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

from .files import write_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock (one batch a folder at a time there)
    fcntl = None  # type: ignore[assignment]

__all__ = ["RECORD_NAME", "SourceRecord", "file_identity", "note_made", "note_skipped", "note_started", "vouches"]

#: the record's name in an output folder (hidden: a batch does not take it, or the folder's outputs, as inputs)
RECORD_NAME = ".jac-sources"
#: lines at which a record with more than two lines per output is rewritten with one when read
_COMPACT_AT = 1000
#: what a line notes of a file (the source's, and the output's ``made``): :func:`_stat_identity`'s fields
_IDENTITY = ("size", "mtime_ns")


def _key(out_dir: str | os.PathLike, dst: str | os.PathLike) -> str:
    """An output's line key: its path in ``out_dir``, with ``/`` between folders."""
    return Path(os.path.relpath(dst, out_dir)).as_posix()


def file_identity(src: str | os.PathLike) -> dict[str, int]:
    """What tells a file from another once moved or renamed: its size and modification time (OSError)."""
    return _stat_identity(os.stat(src))


def _stat_identity(st: os.stat_result) -> dict[str, int]:
    """:func:`file_identity` of a file as ``os.stat`` gave ``st``."""
    return dict(zip(_IDENTITY, (st.st_size, st.st_mtime_ns), strict=True))


def _matches(entry: object, identity: dict[str, int]) -> bool:
    """Whether ``entry`` (a record's line, or its ``made``) notes a file of this ``identity``."""
    return isinstance(entry, dict) and all(entry.get(field) == value for field, value in identity.items())


def _same_file(entry: dict, src: str | os.PathLike) -> bool | None:
    """Whether ``src`` is, by size and time, the file ``entry`` records; None when it cannot be read."""
    try:
        identity = file_identity(src)
    except OSError:
        return None
    return _matches(entry, identity)


def vouches(vouched: Mapping | None, source: os.stat_result, output: os.stat_result) -> bool:
    """Whether ``vouched`` (:meth:`SourceRecord.vouched`) names the ``source`` and ``output`` as stat-ed now.

    Then the output is the one made from the source as it is, and their times need not be compared
    (:func:`pillow_jac.resume_checks.is_done`); a source or output saved, touched or replaced since is not.
    """
    if not isinstance(vouched, Mapping):
        return False
    return all(_matches(vouched.get(name), _stat_identity(st)) for name, st in (("source", source), ("made", output)))


def note_made(
    out_dir: str | os.PathLike,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    settings: dict | None = None,
    *,
    source: Mapping | None = None,
    made: Mapping | None = None,
) -> None:
    """Add to ``out_dir``'s record that ``dst`` was made from ``src`` (OSError where it cannot: see :func:`_note`).

    ``settings``: what the batch made it with (:func:`pillow_jac.resume_checks.batch_settings`), or None.
    ``source``: the source's size and modification time as :func:`note_started` took them, before the
    conversion read it (a batch gives them: a source saved again since is not the one ``dst`` was made from;
    empty where it could not be read then, so the output is converted again by the next batch); None takes
    them now, for a source no conversion is reading. The line also notes ``dst``'s size and modification time
    as written (``made``), by which :meth:`SourceRecord.vouched` knows it later: as the conversion gave them
    (:func:`pillow_jac.conversion.convert_file`, where it wrote ``dst``: an output replaced before this call is
    not taken for the one made), else as found now (none where ``dst`` cannot be read).
    """
    more: dict = {} if settings is None else {"settings": settings}
    if made is not None:
        more["made"] = dict(made)
    else:
        with contextlib.suppress(OSError):
            more["made"] = file_identity(dst)
    _note(out_dir, [(src, dst, source)], more)


def note_skipped(
    out_dir: str | os.PathLike,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    settings: dict | None,
    *,
    source: Mapping,
    vouched: Mapping | None,
) -> None:
    """End the line :func:`note_started` added for an output a worker then judged done (it wrote nothing).

    ``source``: the identity :func:`note_started` returned for ``src``, never the source as it is now (saved
    again after it was sent, it is not the one ``dst`` was made from). ``vouched``: what the record vouched
    for when the file was sent (:meth:`SourceRecord.vouched`); its ``made`` is kept where its source is
    ``source``, so a source dated in the future stays done, and left out otherwise (their times then decide).
    """
    more: dict = {} if settings is None else {"settings": settings}
    if source and isinstance(vouched, Mapping) and _matches(vouched.get("source"), dict(source)):
        more["made"] = dict(vouched["made"])
    _note(out_dir, [(src, dst, source)], more)


def note_started(out_dir: str | os.PathLike, jobs: Mapping) -> dict:
    """Add to ``out_dir``'s record that each output of ``jobs`` (``{source: output}``) is about to be made.

    Written before the conversions start (on Ray, for each file as it is sent). A batch stopped between
    writing an output and :func:`note_made` (killed, a power cut) leaves this line last: a later batch takes the
    output as its source's (no conflict) and converts it again (:meth:`SourceRecord.changed`), where a ``.jac``
    with no line would be another file's.

    Returns:
        ``{source: identity}`` for each source of ``jobs``: its size and modification time as read here, before
        any conversion reads it, for :func:`note_made` (``{}`` for one that cannot be read, which has no line).
    """
    identities: dict = {}
    for src in jobs:
        try:
            identities[src] = file_identity(src)
        except OSError:  # the conversion reports it
            identities[src] = {}
    _note(out_dir, [(src, dst, identities[src]) for src, dst in jobs.items() if identities[src]], {"pending": True})
    return identities


def _note(out_dir: str | os.PathLike, made: Iterable[tuple], more: dict) -> None:
    """Append a line per ``(source, output, identity)`` of ``made`` in one write.

    ``identity``: the source's size and modification time (None: as it is now; a source that cannot be read
    then has no line).

    Raises:
        OSError: the record cannot be written (its folder read-only for this user, a full disk): the batch stops.
    """
    lines = []
    for src, dst, identity in made:
        if identity is None:
            try:
                identity = file_identity(src)
            except OSError:  # the conversion reports it
                continue
        entry = {"output": _key(out_dir, dst), "source": os.fspath(src), **identity, **more}
        lines.append(json.dumps(entry) + "\n")  # ASCII: json.dumps escapes the rest
    if not lines:  # nothing to add (a batch with nothing left to do, in a folder it may not write)
        return
    path = Path(out_dir) / RECORD_NAME
    try:
        with _locked(path) as f:
            f.write("".join(lines).encode("ascii"))
    except OSError as e:  # a later batch would refuse an output missing from the record, so the batch stops
        why = e.strerror or str(e)
        raise OSError(
            e.errno,
            f"cannot add to the batch's record of the outputs it made ({why}): a later batch "
            "into this folder would refuse what it does not record, so this one stops",
            str(path),
        ) from e


#: what flock raises where a file system keeps no locks (an NFS mount without its lock service, some FUSE ones)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


#: how often a record replaced while an append waited is opened again (then taken as it is: a file system whose
#: inode numbers change under an open file would otherwise never let go)
_REOPENS = 8


def _lock(f: IO[bytes]) -> bool:
    """Hold ``f`` alone (``flock``) until it is closed; False where its file system keeps no locks (none held)."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except OSError as e:
        if e.errno in _NO_LOCKS:  # unlocked: safe while one batch at a time writes there
            return False
        raise
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    """The record at ``path`` opened to append (and read, as bytes), held alone (``flock``) until the block ends.

    Several batches may write into one folder (drivers of shards, ``benchmarks/ray.md``): a compaction
    (:meth:`SourceRecord._compact`) rewrites the record under this lock, so a line appended meanwhile is neither
    lost in the old file nor left out of the new one. A file replaced while this waited is opened again.

    Raises:
        OSError: the record is not a regular file (a link to a device, a named pipe): nothing is written into it.
    """
    for tries_left in range(_REOPENS, -1, -1):
        f = open(path, "a+b")
        try:
            _check_regular(f, path)
            if fcntl is not None and _lock(f) and tries_left:
                try:
                    replaced = os.fstat(f.fileno()).st_ino != os.stat(path).st_ino  # compacted while this waited
                except FileNotFoundError:  # removed meanwhile: made again
                    replaced = True
                if replaced:
                    continue
            yield f
            return
        finally:
            f.close()  # and unlocked


def _other_settings(entry: dict, settings: dict | None) -> bool:
    """Whether a record's line ``entry`` was made with other ``settings`` (:meth:`SourceRecord.changed`)."""
    made_with = entry.get("settings")
    if settings is None or not isinstance(made_with, dict):
        return False
    now = json.loads(json.dumps(settings))  # as the record reads back
    if "quality" in made_with:
        made_with = {**made_with, "quality": _stored_quality(made_with["quality"])}
    return any(made_with[name] != value for name, value in now.items() if name in made_with)


def _stored_quality(quality: object) -> object:
    """A recorded quality as a file stores it (to 1/256); a record may hold it unrounded, as it was given."""
    from .container import quantize_quality

    if not isinstance(quality, (int, float)) or isinstance(quality, bool):
        return quality  # None: a size or PSNR target
    try:
        return quantize_quality(quality)
    except (ValueError, OverflowError):  # not a quality a file can store: compared as it is
        return quality


#: the longest line a record's reader takes: a line holds two paths and a few numbers, so a longer one is no
#: record's, and it is skipped without being held
_LINE_LIMIT = 1 << 20


def _record_lines(f: IO[bytes]) -> Iterator[bytes]:
    """The lines of a record open for reading, each of at most :data:`_LINE_LIMIT` bytes.

    A longer line is read past in pieces and skipped, so that reading holds one line whatever the file holds.
    """
    while line := f.readline(_LINE_LIMIT + 1):
        if len(line) > _LINE_LIMIT:
            while not line.endswith(b"\n") and (line := f.readline(_LINE_LIMIT)):
                pass
            continue
        yield line


def _last_lines(lines: Iterable[bytes]) -> tuple[dict[str, dict], int]:
    """Each output's last line of a record's ``lines`` (a file's, read one at a time), and how many lines it has.

    A line that is not a record's is skipped, and the others count: one cut by a crash, or one with a byte that
    is not UTF-8 (written into the record by another program, or a disk's error).
    """
    made: dict[str, dict] = {}
    count = 0
    for line in lines:
        count += 1
        try:
            entry = json.loads(line.decode("utf-8"))  # UnicodeDecodeError is a ValueError
            made[str(entry["output"])] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return made, count


def _read_record(path: Path) -> tuple[dict[str, dict], int]:
    """:func:`_last_lines` of the record at ``path``; OSError where there is none or it is not a regular file.

    Opened without waiting for a writer (a named pipe would block the batch for ever) and read only if it is a
    regular file (a link to ``/dev/zero`` never ends).
    """
    with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
        _check_regular(f, path)
        return _last_lines(_record_lines(f))


def _check_regular(f: IO[bytes], path: Path) -> None:
    """Raise OSError unless the record ``f`` opened at ``path`` is a regular file (a device or a pipe never ends)."""
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        raise OSError(errno.EINVAL, "the record is not a regular file", str(path))


class SourceRecord:
    """The record of the output folder ``out_dir`` as it is when read (once, here); :func:`note_made` adds to it."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.made: dict[str, dict]
        try:
            self.made, lines = _read_record(self.out_dir / RECORD_NAME)
        except OSError:  # none yet, or unreadable: nothing is known (so no output counts as this batch's)
            self.made, lines = {}, 0
        if lines > max(_COMPACT_AT, 2 * len(self.made)):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the record with one line per output, the last (each conversion again added one).

        Read again under the record's lock (:func:`_locked`), with what other batches appended since.
        """
        path = self.out_dir / RECORD_NAME
        try:
            with _locked(path) as f:
                f.seek(0)
                latest, _ = _last_lines(_record_lines(f))
                text = "".join(json.dumps(entry) + "\n" for entry in latest.values())
                write_atomic(path, lambda out: out.write(text.encode("ascii")))
        except OSError:  # a folder that cannot be written: the record stays as it is
            pass

    def changed(
        self, src: str | os.PathLike, dst: str | os.PathLike, settings: dict | None = None, identity: dict | None = None
    ) -> bool:
        """Whether ``dst`` was made from ``src`` as it was not now, or with other ``settings`` than these.

        As it was not now: with another size or modification time (``identity``: the source's, as
        :func:`note_started` read it, so that the file judged is the one noted; else read here). An output
        recorded without settings is not judged by them, nor by a setting its line does not name (one a batch
        started recording later). A
        source recorded under another path (its folder moved or renamed, or reached through a link) that is
        the same file by size and time is judged as this one.

        ``src`` and ``dst`` are absolute paths, as :func:`pillow_jac.batch_plan.plan_batch` gives them.
        """
        entry = self.made.get(_key(self.out_dir, dst))
        if entry is None:
            return False
        same = _same_file(entry, src) if not identity else _matches(entry, identity)
        if entry.get("source") != os.fspath(src) and same is not True:
            return False  # made from another file (conflict() says so), not this one moved or renamed
        if entry.get("pending"):
            return True  # its conversion began and was not recorded as done: whatever is there is redone
        if _other_settings(entry, settings):
            return True
        return same is False  # one that cannot be read: the conversion reports it

    def vouched(self, dst: str | os.PathLike, settings: dict | None = None) -> dict | None:
        """What the record vouches ``dst`` was made from: ``{"source": identity, "made": identity}``, or None.

        From its last line where that is finished (not :func:`note_started`'s alone), made with these
        ``settings`` (as :meth:`changed` judges them) and notes the output as written (``made``): the source's
        size and modification time before the conversion read it, and the output's once written. Nothing is
        read here: whoever judges the output compares these with the files as they are then (:func:`vouches`,
        in :func:`pillow_jac.resume_checks.is_done`), so a source saved again after this was asked is not
        taken for the one the output was made from.
        """
        entry = self.made.get(_key(self.out_dir, dst))
        if entry is None or entry.get("pending") or _other_settings(entry, settings):
            return None
        made = entry.get("made")
        if not isinstance(made, dict):
            return None
        return {"source": {f: entry.get(f) for f in _IDENTITY}, "made": {f: made.get(f) for f in _IDENTITY}}

    def conflict(self, src: Path, dst: Path) -> str | None:
        """Why ``src`` may not be converted into ``dst``: it exists and was made from another file; else None.

        A ``.jac`` there with no line was made from another file as far as anyone can tell (by ``jac encode``,
        by an earlier batch into another folder, or it came as a ``.jac``): it may be the only copy of its
        picture, and its size and time tell nothing of its source, so it is neither replaced nor taken as done.
        A PNG with no line is replaced only where a decode wrote it (:func:`pillow_jac.conversion.decode_file`).
        """
        entry = self.made.get(_key(self.out_dir, dst))
        if not dst.exists():
            return None
        if entry is None:
            if dst.suffix.lower() != ".jac":
                return None
            return (
                f"{dst.name} is there, and no batch into this folder made it from this file (it is not in the "
                f"folder's {RECORD_NAME}): remove it (or write to another folder) to convert this one"
            )
        if entry.get("source") == str(src):
            return None
        if _same_file(entry, src) is not False:  # the same file, moved or renamed with its folder; or unreadable,
            return None  # which the conversion reports
        return (
            f"{dst.name} there was made from another file, {entry.get('source')}: "
            "remove it (or write to another folder) to convert this one"
        )
