"""pillow_jac.save and write_atomic: a failed save leaves an existing file as it was; modes, names and errors."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_jac
from pillow_jac import files
from pillow_jac.constants import MAGIC
from pillow_jac.files import write_atomic


def test_save_replaces_only_when_complete(tmp_path):
    path = tmp_path / "photo.jac"
    pillow_jac.save(Image.new("RGB", (16, 8), "blue"), path, quality=3)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        pillow_jac.save(Image.new("I;16", (16, 8)), path)  # unsupported mode: the encoder refuses
    with pytest.raises(ValueError):
        pillow_jac.save(Image.new("RGB", (16, 8)), path, quality=75)  # not a JAC quality
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["photo.jac"]  # no temporary file left behind
    pillow_jac.save(Image.new("L", (5, 7), 200), path, quality=1)
    with Image.open(path) as im:
        assert (im.mode, im.size) == ("L", (5, 7))


def test_a_write_that_fails_leaves_the_existing_file_and_no_temporary(tmp_path):
    """write_atomic writes a temporary beside the file and renames it only once complete."""
    path = tmp_path / "photo.jac"
    path.write_bytes(b"the old file")

    def fails_half_way(f):
        f.write(b"part of a new file")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, fails_half_way)
    assert path.read_bytes() == b"the old file"
    assert os.listdir(tmp_path) == ["photo.jac"]


def test_pillow_save_to_an_existing_path_is_what_save_avoids(tmp_path):
    """Pillow truncates an existing target before the writer runs: why pillow_jac.save exists."""
    path = tmp_path / "photo.jac"
    pillow_jac.save(Image.new("RGB", (16, 8), "blue"), path)
    with pytest.raises(ValueError):
        Image.new("RGB", (16, 8)).save(path, quality=75)
    assert path.stat().st_size == 0


@pytest.fixture
def umask():
    """Set the process's umask for one test; restore it after."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002], ids=oct)
def test_new_files_get_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "new.jac"
    pillow_jac.save(Image.new("RGB", (8, 8)), path, quality=1)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    write_atomic(tmp_path / "new.bin", lambda f: f.write(b"x"))
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    path = tmp_path / "old.jac"
    path.write_bytes(b"old")
    path.chmod(0o604)
    pillow_jac.save(Image.new("RGB", (8, 8)), path, quality=1)
    assert path.stat().st_mode & 0o777 == 0o604
    assert path.read_bytes().startswith(MAGIC)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_read_only_file_is_refused_as_open_would(tmp_path, monkeypatch):
    path = tmp_path / "locked.bin"
    path.write_bytes(b"old")
    path.chmod(0o444)
    if os.geteuid() == 0:  # root may write anything: let os.access answer as for any other user
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: not (mode & os.W_OK) and access(p, mode, **k))
    with pytest.raises(PermissionError) as exc:
        write_atomic(path, lambda f: f.write(b"new"))
    assert exc.value.filename == str(path)
    assert path.read_bytes() == b"old"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_a_symlink_is_kept_and_its_target_replaced(tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target.name)
    write_atomic(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["link.bin", "real.bin"]


def test_long_names_work(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    path = tmp_path / ("n" * (limit - 4) + ".jac")
    pillow_jac.save(Image.new("RGB", (8, 8)), path, quality=1)
    assert path.read_bytes().startswith(MAGIC)
    assert os.listdir(tmp_path) == [path.name]


def test_errors_name_the_users_path(tmp_path):
    missing = tmp_path / "no" / "such" / "folder" / "out.jac"
    with pytest.raises(FileNotFoundError) as exc:
        pillow_jac.save(Image.new("RGB", (8, 8)), missing, quality=1)
    assert exc.value.filename == str(missing)
    assert ".tmp" not in str(exc.value)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(OSError) as exc:  # IsADirectoryError on POSIX, PermissionError on Windows
        write_atomic(folder, lambda f: f.write(b"x"))
    assert exc.value.filename == str(folder) and ".tmp" not in str(exc.value)
    limit = os.pathconf(tmp_path, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    too_long = tmp_path / ("n" * (limit + 1))
    with pytest.raises(OSError) as exc:
        write_atomic(too_long, lambda f: f.write(b"x"))
    assert exc.value.filename == str(too_long)
    assert sorted(os.listdir(tmp_path)) == ["a-folder"]


def test_a_write_error_without_a_file_names_the_users_path(tmp_path):
    path = tmp_path / "full.bin"

    def disk_full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as exc:
        write_atomic(path, disk_full)
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(path)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_special_files_are_written_into_not_replaced(tmp_path):
    """A named pipe (or /dev/null, /dev/stdout) has nothing to keep, and a rename would replace it with a file."""
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_atomic(fifo, lambda f: f.write(b"image data"))
    reader.join(timeout=30)
    assert received == [b"image data"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


@pytest.mark.skipif(os.name != "posix", reason="/dev/fd")
def test_dev_stdout_behind_a_shell_append_keeps_the_file(tmp_path):
    """``jac decode x.jac /dev/stdout >> log``: the path leads to a regular file, which is appended to, not replaced."""
    import subprocess
    import sys

    log = tmp_path / "log"
    log.write_bytes(b"earlier line\n")
    code = "from pillow_jac.files import write_atomic; write_atomic('/dev/stdout', lambda f: f.write(b'new'))"
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=60)
    assert log.read_bytes() == b"earlier line\nnew"
    with pytest.raises(OSError) as info:  # the error names the path, as for any other target
        write_atomic("/dev/full", lambda f: f.write(b"x" * 10))
    assert info.value.filename == "/dev/full"


def test_save_is_pillows_whole_save(tmp_path):
    """pillow_jac.save refuses several frames and keeps metadata that Pillow reads only with the pixels."""
    from PIL import PngImagePlugin

    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    with pytest.raises(ValueError, match="one image"):
        pillow_jac.save(frames[0], tmp_path / "a.jac", save_all=True, append_images=frames[1:])
    assert not (tmp_path / "a.jac").exists()
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>")
    Image.new("RGB", (8, 8)).save(tmp_path / "late.png", pnginfo=info)
    data = (tmp_path / "late.png").read_bytes()
    itxt = data.index(b"iTXt") - 4  # move the XMP chunk after the pixels, where some writers put it
    chunk_end = itxt + 12 + int.from_bytes(data[itxt : itxt + 4], "big")
    iend = data.index(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(data[:itxt] + data[chunk_end:iend] + data[itxt:chunk_end] + data[iend:])
    with Image.open(tmp_path / "late.png") as im:
        assert "xmp" not in im.info  # not until the pixels are read
        pillow_jac.save(im, tmp_path / "late.jac")
    with Image.open(tmp_path / "late.jac") as out:
        assert out.info["xmp"] == b"<x:xmpmeta/>"
    with Image.open(tmp_path / "late.png") as im:  # encode_image loads first too
        encoded = pillow_jac.JacImagePlugin.encode_image(im)
    with Image.open(io.BytesIO(encoded)) as out:
        assert out.info["xmp"] == b"<x:xmpmeta/>"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
def test_paths_through_proc_to_ordinary_files_are_replaced(tmp_path, monkeypatch):
    """Only paths that name an open file are written into; a folder reached through /proc is an ordinary path."""
    from pillow_jac.files import _is_special

    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.jac").write_bytes(b"old content")
    write_atomic("/proc/self/cwd/old.jac", lambda f: f.write(b"new"))
    assert (tmp_path / "old.jac").read_bytes() == b"new"
    assert _is_special("/dev/stdout") and _is_special("/proc/self/fd/1") and _is_special("/dev/fd/2")
    assert not _is_special("/dev/stdout.jac") and not _is_special(str(tmp_path / "old.jac"))


def test_an_interruption_as_the_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C (or a batch's cancellation) is raised as os.open returns: the new file is removed all the same."""
    from pillow_jac import files

    real_open = os.open

    def interrupted_open(*args, **kwargs):
        real_open(*args, **kwargs)
        raise KeyboardInterrupt  # where Python's check for pending signals after the call raises it

    monkeypatch.setattr(files.os, "open", interrupted_open)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "out.jac", lambda f: f.write(b"x"))
    assert os.listdir(tmp_path) == []


def test_save_checks_the_path_and_image_before_encoding(tmp_path, monkeypatch):
    """A folder, a missing folder or an image that is not a PIL image fail at once, leaving nothing behind."""
    import numpy as np

    from pillow_jac import codec

    def no_encode(*args, **kwargs):
        raise AssertionError("encoded before the output path was checked")

    monkeypatch.setattr(codec, "encode", no_encode)
    image = Image.new("RGB", (8, 8))
    (tmp_path / "folder.jac").mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        pillow_jac.save(image, tmp_path / "folder.jac", quality=1)
    assert caught.value.filename == str(tmp_path / "folder.jac")
    with pytest.raises(FileNotFoundError) as caught:
        pillow_jac.save(image, tmp_path / "missing" / "x.jac", quality=1)
    assert caught.value.filename == str(tmp_path / "missing" / "x.jac")
    with pytest.raises(TypeError, match=r"expects a PIL\.Image\.Image, got ndarray"):
        pillow_jac.save(np.zeros((8, 8, 3), np.uint8), tmp_path / "x.jac", quality=1)
    (tmp_path / "photo.PNG").write_bytes(b"kept")  # a name no viewer would open as a .jac
    with pytest.raises(ValueError, match=r"names a PNG file: name it \.jac"):
        pillow_jac.save(image, tmp_path / "photo.PNG", quality=1)
    assert (tmp_path / "photo.PNG").read_bytes() == b"kept"
    (tmp_path / "photo.PNG").unlink()
    assert sorted(os.listdir(tmp_path)) == ["folder.jac"] and not os.listdir(tmp_path / "folder.jac")


def test_check_target_takes_bytes_paths(tmp_path):
    from pillow_jac.files import check_target

    check_target(os.fsencode(tmp_path / "new.jac"))  # a file that can be written: nothing raised, nothing made
    assert not (tmp_path / "new.jac").exists()
    with pytest.raises(IsADirectoryError):
        check_target(os.fsencode(tmp_path))
    with pytest.raises(FileNotFoundError):
        check_target(os.fsencode(tmp_path / "missing" / "x.jac"))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_folder_that_takes_no_new_file_is_refused_before_encoding_and_named(tmp_path, monkeypatch):
    """A new file in a folder one may not write fails before the encode, and the error says the folder is what
    refuses; a file there that one may write is written in place, as Pillow and imageio write it."""
    folder = tmp_path / "locked"
    folder.mkdir()
    old = folder / "old.jac"
    old.write_bytes(b"old" * 1000)
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: access(p, mode, **k) and not (Path(p) == folder and mode & os.W_OK)
    )
    encodes = []
    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda *a, **k: (encodes.append(a), real_save(*a, **k)))
    target = folder / "new.jac"
    with pytest.raises(PermissionError) as exc:
        pillow_jac.save(Image.new("RGB", (8, 8)), target, quality=1)
    assert exc.value.filename == str(target) and "folder" in exc.value.strerror
    assert encodes == [] and sorted(os.listdir(folder)) == ["old.jac"]
    inode = old.stat().st_ino
    pillow_jac.save(Image.new("RGB", (8, 8), "red"), old, quality=1)
    assert len(encodes) == 1 and sorted(os.listdir(folder)) == ["old.jac"] and old.stat().st_ino == inode
    with Image.open(old) as im:  # the longer old bytes were cut off
        assert im.size == (8, 8) and im.getpixel((0, 0))[0] > 200


@pytest.mark.skipif(not hasattr(os, "link"), reason="no hard links")
def test_a_file_with_other_hard_links_is_written_in_place_by_every_writer(tmp_path):
    """pillow_jac.save, the CLI and imageio keep a hard link's other names pointing at the new bytes."""
    import imageio.v3 as iio

    from pillow_jac.cli import main

    src = tmp_path / "src.png"
    Image.new("RGB", (8, 8), "blue").save(src)
    for i, write in enumerate(
        (
            lambda p: pillow_jac.save(Image.open(src), p, quality=1),
            lambda p: main(["encode", "-q", "1", str(src), str(p)]),
            lambda p: iio.imwrite(p, np.asarray(Image.open(src)), quality=1),
        )
    ):
        first, second = tmp_path / f"a{i}.jac", tmp_path / f"b{i}.jac"
        first.write_bytes(b"old" * 10_000)
        os.link(first, second)
        write(first)
        assert first.read_bytes() == second.read_bytes() and first.stat().st_nlink == 2
        with Image.open(second) as im:
            assert im.size == (8, 8)


def test_a_temporary_file_is_never_more_readable_than_the_file_it_replaces(tmp_path, monkeypatch):
    """A private file stays private while its replacement is written, and the data is synced before the rename."""
    path = tmp_path / "private.jac"
    path.write_bytes(b"old")
    path.chmod(0o600)
    seen, synced = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    def write(f):
        seen.append(stat.S_IMODE(os.fstat(f.fileno()).st_mode))
        f.write(b"new")

    write_atomic(path, write)
    assert seen == [0o600] and stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"new"
    assert synced, "the new data was not synced before the rename"


def test_a_temporary_file_the_folder_refuses_is_reported_as_the_folders_doing(tmp_path, monkeypatch):
    """Where the folder refuses only at the end (its permissions changed during the encode), the error says so."""
    path = tmp_path / "out.jac"
    path.write_bytes(b"old")
    real_open = os.open

    def refuse_temporaries(name, flags, mode=0o777, **kwargs):
        if os.path.basename(name).startswith(".jac-"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        return real_open(name, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", refuse_temporaries)
    with pytest.raises(PermissionError) as exc:
        write_atomic(path, lambda f: f.write(b"new"))
    assert exc.value.filename == str(path) and "folder" in exc.value.strerror and ".tmp" not in str(exc.value)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.jac"]


@pytest.mark.skipif(os.name != "posix", reason="process ids of the writers")
def test_a_temporary_file_a_killed_writer_left_is_removed_and_one_being_written_is_not(tmp_path: Path) -> None:
    """A batch worker killed while it wrote an output (SIGKILL, the out-of-memory killer) left its temporary file
    beside the outputs for good: its name now holds the writer's process id, and the batch removes those of
    processes that no longer run."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # waited for: no longer a process
    here = files._host_tag()
    orphan = tmp_path / f".jac-{here}-{dead}-0123abcd.tmp"
    older = tmp_path / f".jac-{dead}-4567cdef.tmp"  # named by a pillow_jac that wrote no machine in it
    live = tmp_path / f".jac-{here}-{os.getpid()}-89abcdef.tmp"
    # another machine's writer, in a folder both write to (shared storage): its process id says nothing here
    elsewhere = tmp_path / f".jac-{'0' if here != '00000000' else '1'}0000000-{dead}-01234567.tmp"
    other = tmp_path / ".jac-sources"
    for path in (orphan, older, live, elsewhere, other):
        path.write_bytes(b"x")
    assert files.remove_orphaned_temporaries(tmp_path) == 2
    assert not orphan.exists() and not older.exists() and live.exists() and elsewhere.exists() and other.exists()
    names = []
    files.write_atomic(tmp_path / "a.jac", lambda f: names.extend(os.listdir(tmp_path)) or f.write(b"data"))
    (written,) = set(names) - {path.name for path in (live, elsewhere, other)}  # the name it is written under
    match = files._TEMPORARY_NAME.fullmatch(written)
    assert match is not None and match.group(1, 2) == (here, str(os.getpid())), written
