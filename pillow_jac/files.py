"""Writing files so that a failure never destroys the target: a temporary file, then a rename.

:meth:`PIL.Image.Image.save` opens (and so truncates) an existing target before any plugin's
writer runs, so no Pillow plugin can keep an old file safe if encoding then fails.
:func:`pillow_jac.save` (:mod:`pillow_jac.image_saving`) is the safe way to replace a file with a ``.jac``;
it, the CLI and the imageio plugin write every output through :func:`write_file`. Into the file object Pillow
hands the plugin, :func:`write_into` writes the encoded bytes so that a full disk fails before any of them is
written, where it can.

Example:
    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "out.bin")
    >>> write_file(path, b"new")
    >>> def fails(f):
    ...     f.write(b"half")
    ...     raise OSError("disk full")
    >>> try:
    ...     write_atomic(path, fails)
    ... except OSError:
    ...     pass
    >>> open(path, "rb").read()  # the old file is intact
    b'new'
    >>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import re
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["write_file", "write_atomic", "check_target", "write_into", "file_position"]


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic on POSIX and Windows (:func:`os.replace`): readers see the old file or the
    complete new one, never a partial one. On any error the temporary file is removed and ``path``
    is untouched.

    Permissions are those :func:`open` gives: an existing file keeps its mode (and one that may not be
    written is refused), a new one gets ``0o666`` less the umask. The temporary file is made with the
    existing file's mode (less the umask), so it is never readable by more users than the file it
    replaces. Its data reaches the disk (:func:`os.fsync`) before the rename, and the rename before the
    call returns, so a crash or a power cut leaves the old file or the new one, not an empty one. A
    symbolic link at ``path`` is kept and the file it points to is replaced. The temporary file's name is
    short (``.jac-``, the writer's process id, ``-``, 8 hex digits, ``.tmp``), so any name the file system allows
    for ``path`` works, errors name ``path``, and one that a killed process left is told from one being written
    (:func:`remove_orphaned_temporaries`).

    What exists at ``path`` but is not a regular file (``/dev/null``, a named pipe), and a path to a
    process's open file (``/dev/stdout``, ``/dev/fd/N``, ``/proc/...``: whatever it leads to), is appended
    to directly: a rename would replace it, and a shell's ``>>`` behind ``/dev/stdout`` must keep what it
    holds.

    Raises:
        OSError: ``path`` cannot be written (the error's ``filename`` is ``path``), or ``write`` raised it.
    """
    if _is_special(path):
        with _about(Path(path), None), open(path, "ab") as f:  # appending: a shell's ">>" is not truncated
            write(f)
        return
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    mode = _existing_mode(path)
    fd, tmp = _create_temporary(path, 0o666 if mode is None else mode)
    try:
        with _about(path, tmp):
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                _sync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)  # the bits the umask took from the temporary file
            os.replace(tmp, path)
    except BaseException:
        _remove_temporary(tmp)
        raise
    _sync_folder(path.parent)


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Put the complete ``data`` at ``path``: replaced through :func:`write_atomic`, or written in place.

    In place where a replacement would lose something, as Pillow's and imageio's own writers write every
    file: a file with other hard links (they would keep the old bytes), and a writable file in a folder
    that takes no new file. In place, the space is reserved before the first byte is written where the
    file system can reserve it, so a full disk leaves the old file as it was. :func:`check_target` passes
    for every path this writes.

    Raises:
        OSError: ``path`` cannot be written (the error's ``filename`` is ``path``).
    """
    if _is_special(path) or not _in_place(path):  # a special path is appended to: see write_atomic
        write_atomic(path, lambda f: f.write(data))
        return
    with _about(Path(path), None), open(path, "r+b") as f:
        if data and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(f.fileno(), 0, len(data))
            except OSError as e:
                if e.errno in _NO_SPACE:
                    raise
        f.write(data)
        f.truncate()
        f.flush()
        _sync(f.fileno())


def _in_place(path: str | os.PathLike) -> bool:
    """Whether :func:`write_file` writes the existing regular file at ``path`` in place (see there)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if st.st_nlink > 1:
        return True
    folder = os.path.dirname(os.path.realpath(path))
    return not os.access(folder, os.W_OK | os.X_OK) and os.access(path, os.W_OK)


def _sync(fd: int) -> None:
    """``os.fsync(fd)``; a file system that cannot sync (``EINVAL``, ``ENOTSUP``) is no error, a failed write is."""
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL)):
            raise


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable where the platform can (a folder cannot be opened on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse to sync a folder; the rename is done all the same
    finally:
        os.close(fd)


def check_target(path: str | os.PathLike) -> None:
    """Raise now what :func:`write_atomic` would raise at the end for a ``path`` it cannot replace; create nothing.

    So a long encode is not run for nothing: a folder at ``path`` (:class:`IsADirectoryError`), a missing
    folder to put it in (:class:`FileNotFoundError`), a parent that is a file (:class:`NotADirectoryError`), an
    existing file one may not write, or a folder that takes no new file (:class:`PermissionError`: the file is
    replaced through a new one beside it); each names ``path``. What is written into rather than replaced (a
    device, a pipe, ``/dev/stdout``) passes.
    """
    path = os.fsdecode(os.fspath(path))  # a bytes path as a str one
    if _is_special(path):
        return
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)

    def error(code: int, kind: type[OSError]) -> OSError:
        return kind(code, os.strerror(code), os.fsdecode(os.fspath(path)))

    if os.path.isdir(target):
        raise error(errno.EISDIR, IsADirectoryError)
    parent = target.parent
    if not os.path.isdir(parent):
        if os.path.exists(parent):
            raise error(errno.ENOTDIR, NotADirectoryError)
        raise error(errno.ENOENT, FileNotFoundError)
    _existing_mode(target)
    if not os.access(parent, os.W_OK | os.X_OK) and not _in_place(target):
        raise PermissionError(errno.EACCES, _NO_NEW_FILE, path)


#: the reason given when a file's folder refuses the new file that replaces it
_NO_NEW_FILE = "Permission denied to make a file in its folder (the output is written to a new file there, then moved)"


#: paths that name one of a process's open files, whatever it is (``/dev/stdout`` may be a regular file);
#: not the folders these lead through (``/proc/self/cwd/x.jac`` is an ordinary path)
_OPEN_FILE_PATH = re.compile(r"/dev/(stdin|stdout|stderr)|/dev/fd/\d+|/proc/(self|thread-self|\d+)(/task/\d+)?/fd/\d+")


def _is_special(path: str | os.PathLike) -> bool:
    """Whether ``path`` is written into rather than replaced.

    So are a device, a pipe or a socket (links followed), and a path :data:`_OPEN_FILE_PATH` matches.
    """
    if _OPEN_FILE_PATH.fullmatch(os.path.abspath(path)):
        return True
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))


def _existing_mode(path: Path) -> int | None:
    """The permission bits of the file at ``path``, None if there is none; a file one may not write is refused."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(st.st_mode) and not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return st.st_mode & 0o777


def _create_temporary(path: Path, mode: int) -> tuple[int, str]:
    """Create a file with a new short name in ``path``'s folder (``mode`` less the umask); return fd and name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(path.parent, f".jac-{_host_tag()}-{os.getpid()}-{os.urandom(4).hex()}.tmp")
        try:
            with _about(path, tmp):
                return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
        except PermissionError as e:
            if e.filename != str(path):
                raise
            raise PermissionError(e.errno, _NO_NEW_FILE, str(path)) from e
        except BaseException:
            # Python checks for Ctrl-C (and a batch worker's cancellation) as os.open returns: the file
            # exists then, but the caller never learns its name, so it is removed here
            _remove_temporary(tmp)
            raise
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


#: a temporary file's name: the writer's host (:func:`_host_tag`; none in names of pillow_jac before it), its
#: process id, and 8 random hex digits
_TEMPORARY_NAME = re.compile(r"\.jac-(?:([0-9a-f]{8})-)?([0-9]+)-[0-9a-f]{8}\.tmp")


@functools.cache
def _host_tag() -> str:
    """8 hex digits of this machine's name: a process id says whether a writer runs only on its own machine."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def remove_orphaned_temporaries(folder: str | os.PathLike) -> int:
    """Remove the temporary files in ``folder`` that a process which no longer runs left; return how many.

    A process killed while :func:`write_atomic` writes (SIGKILL, the out-of-memory killer) cannot remove its
    temporary file; its name holds the writer's machine and process id. Only this machine's are judged (in a
    folder that several machines write to, another's writer may be running). Call it once the writers have been
    waited for (a process that has died but is not yet reaped still counts as running). POSIX only (0 elsewhere).
    """
    if os.name != "posix":
        return 0
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = _TEMPORARY_NAME.fullmatch(name)
        if match is None or match.group(1) not in (None, _host_tag()):
            continue
        try:
            os.kill(int(match.group(2)), 0)
            continue  # it runs (or is another user's)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed += 1
    return removed


def _remove_temporary(tmp: str) -> None:
    """Remove a temporary file on the way out of an error; one that is already gone is no error."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)


@contextlib.contextmanager
def _about(path: Path, tmp: str | None) -> Iterator[None]:
    """Restate an :class:`OSError` of the block about ``path``.

    Only one that names the temporary file ``tmp`` or no file (a full disk); others pass as they are.
    """
    try:
        yield
    except OSError as e:
        if e.errno is None or e.filename not in (None, tmp):
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from e


#: errors of a file system that cannot hold the data: reported before writing, when they can be
_NO_SPACE = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name))


def write_into(fp: IO[bytes], data: bytes, filename: str | bytes) -> None:
    """Write ``data`` into the file object Pillow gives a plugin: a full disk raises here, leaving no partial data.

    Pillow still cleans up when the plugin's save raises. Where the file system can reserve space
    (``os.posix_fallocate``), it is reserved first, so a full disk fails before any byte is written. The data is
    then flushed, so that a late error (buffered bytes that do not fit) surfaces in the save call rather than
    when Pillow closes the file. If writing fails after all, what was written is truncated away where the file
    allows it.
    """
    flush = getattr(fp, "flush", None)
    if flush is not None:
        flush()  # bytes the caller wrote before go first
    start, fd = file_position(fp)
    if fd is not None and _appends(fd):
        _append(fd, data, start, filename)
        return
    if fd is not None and data and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, start, len(data))
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise _named(e, filename) from None
            # other errors: this file (a pipe, a device, some network file systems) cannot reserve space
    try:
        fp.write(data)
        if flush is not None:
            flush()
    except OSError:
        if start is not None:
            try:
                fp.seek(start)
                fp.truncate()
            except (OSError, ValueError):
                pass
        raise


def _append(fd: int, data: bytes, start: int, filename: str | bytes) -> None:
    """Write ``data`` at the end of a file opened for appending (a shell's ``>>``), or none of it.

    Space cannot be reserved there (reserving extends the file, and the write then lands after the reserved
    zeros), and a buffered write that fails keeps its bytes to write them again when the file closes. So the
    data goes straight to the descriptor, and a failure cuts the file back to where it ended.
    """
    view, done = memoryview(data), 0
    try:
        while done < len(view):
            done += os.write(fd, view[done:])
    except OSError as e:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        if e.errno in _NO_SPACE:
            raise _named(e, filename) from None
        raise


def _named(e: OSError, filename: str | bytes) -> OSError:
    """``e`` naming the file the plugin writes (a descriptor's error names none)."""
    return OSError(e.errno, e.strerror, os.fsdecode(filename) if filename else None)


def file_position(fp: IO[bytes]) -> tuple[int | None, int | None]:
    """``(offset, fd)``: where in the regular file behind ``fp`` its next write lands; ``(None, None)`` if unknown.

    Unknown for what is not a regular file (BytesIO, a pipe, a socket), and for any object but Python's
    own file objects: a wrapper's positions are not its file's (``gzip.open``, ``bz2.open``, ``lzma.open``:
    ``tell()`` counts the bytes before compression, and nothing may reach the file until it closes). A
    file opened for appending writes at its end, whatever its position says (a shell's ``>>``).
    """
    # NamedTemporaryFile: its file inside (tempfile is not imported here: without it there is no such wrapper)
    if isinstance(fp, getattr(sys.modules.get("tempfile"), "_TemporaryFileWrapper", ())):
        fp = fp.file
    if not isinstance(fp, (io.FileIO, io.BufferedWriter, io.BufferedRandom)):
        return None, None
    try:
        start, fd = fp.tell(), fp.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, None
        if _appends(fd):
            return st.st_size, fd
        if os.lseek(fd, 0, os.SEEK_CUR) != start:
            return None, None
    except (AttributeError, OSError, ValueError):  # closed, or not seekable (a pipe behind a file object)
        return None, None
    return start, fd


def _appends(fd: int) -> bool:
    """Whether ``fd`` was opened with ``O_APPEND`` (False where the platform cannot say)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
