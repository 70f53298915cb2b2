"""``jac batch`` on this machine (pillow_jac/local_batch.py): lost workers, warnings, originals kept."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_jac import container
from pillow_jac.batch_plan import batch_inputs
from pillow_jac.cli import main
from pillow_jac.conversion import convert_file

from .helpers import listing, natural_image

ROOT = Path(__file__).resolve().parents[1]


def photo(seed: int = 0, size: int = 64) -> Image.Image:
    return Image.fromarray(natural_image(size, size, seed))


def photo_folder(tmp_path: Path, count: int, size: int = 64) -> tuple[Path, Path]:
    """``(photos, out)``: a folder of ``count`` photos ``000.png``... of ``size`` pixels, and an output path."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for i in range(count):
        photo(i, size).save(photos / f"{i:03d}.png")
    return photos, out


def apng_with_no_frames(path: Path) -> None:
    """A PNG whose ``acTL`` chunk says 0 frames: Pillow opens it with the warning "Invalid APNG"."""
    buffer = io.BytesIO()
    photo(1, 32).save(buffer, "PNG")
    data = buffer.getvalue()

    def chunk(ctype: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    after_ihdr = 8 + 25
    path.write_bytes(data[:after_ihdr] + chunk(b"acTL", struct.pack(">II", 0, 0)) + data[after_ihdr:])


@contextlib.contextmanager
def parallel_batch(photos: Path, out: Path, *options: str, preexec_fn=None) -> Iterator[subprocess.Popen]:
    """``jac batch PHOTOS OUT --to jac -j 2 OPTIONS`` in a session of its own (so that its workers can be found);
    its whole process group is killed on the way out if it still runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pillow_jac", "batch", str(photos), str(out), "--to", "jac", "-j", "2", *options],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ignore_sigint() -> None:
    """A child's SIGINT ignored, as for ``jac batch ... &`` in a script (a ``preexec_fn``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_for_outputs(proc: subprocess.Popen, out: Path, count: int) -> None:
    """Wait until the batch has written ``count`` outputs (at most two minutes, and while it runs)."""
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.jac"))) < count:
        assert proc.poll() is None and time.monotonic() < deadline, "the batch did not get going"
        time.sleep(0.02)


def _session_workers(session: int) -> list[int]:
    """The batch's worker processes: the children of its forkserver, in its session."""
    processes = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        processes[int(entry)] = (int(fields[1]), int(fields[3]), cmdline)  # ppid, session, command line
    servers = {pid for pid, (_, sid, cmd) in processes.items() if sid == session and b"forkserver" in cmd}
    return [pid for pid, (ppid, sid, _) in processes.items() if sid == session and ppid in servers]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_worker_costs_no_other_file(tmp_path: Path, how: signal.Signals) -> None:
    """A worker killed mid-batch (SIGKILL, as the out-of-memory killer does) or terminated alone (SIGTERM: it
    cleans up its file and ends): its file is converted again, and the rest go on."""
    photos, out = photo_folder(tmp_path, 24)
    with parallel_batch(photos, out) as proc:
        wait_for_outputs(proc, out, 4)
        workers = _session_workers(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], how)
        killed_at = len(list(out.glob("*.jac")))
        _, err = proc.communicate(timeout=120)
    assert killed_at < 24, "the batch ended before the worker was killed"
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "jac: error" not in err, err
    assert listing(out) == [f"{i:03d}.jac" for i in range(24)]  # no temporary file left
    for name in listing(out):
        container.read(out / name)


@pytest.mark.slow
def test_a_batch_started_with_sigint_ignored_ignores_it_in_its_workers(tmp_path: Path) -> None:
    """``jac batch ... &`` in a script runs with SIGINT ignored; a Ctrl-C to the group then interrupted the files
    of ``-j 2``'s workers (2 of 10 failed, status 1), while ``-j 1`` went on as asked."""
    photos, out = photo_folder(tmp_path, 8, 96)

    with parallel_batch(photos, out, "-e", "1", preexec_fn=_ignore_sigint) as proc:
        wait_for_outputs(proc, out, 2)
        sent = 0
        while proc.poll() is None and sent < 5:  # Ctrl-C to the whole group, while files are converting
            os.killpg(proc.pid, signal.SIGINT)
            sent += 1
            time.sleep(0.3)
        _, err = proc.communicate(timeout=120)
    assert sent, "the batch ended before a Ctrl-C"
    assert (proc.returncode, "interrupted" in err) == (0, False), err
    assert listing(out) == [f"{i:03d}.jac" for i in range(8)]


def test_a_batch_that_ignores_sigint_still_stops_its_running_files_on_sigterm(tmp_path: Path) -> None:
    """With SIGINT ignored (``jac batch ... &`` in a script), a SIGTERM to the batch waited for every file being
    converted to finish (36 s at effort 2), writing outputs after the stop that nothing reported or recorded: the
    parent's cancel interrupts a file with a simulated SIGINT, which Python drops for an ignored signal."""
    photos, out = photo_folder(tmp_path, 6, 192)

    with parallel_batch(photos, out, "-e", "2", preexec_fn=_ignore_sigint) as proc:
        wait_for_outputs(proc, out, 1)
        before = set(listing(out))
        os.kill(proc.pid, signal.SIGTERM)  # the parent only, as `kill %1` would
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    after = set(listing(out))
    assert all(name.endswith(".jac") for name in after), after  # no temporary file left
    assert len(after - before) < 2, (before, after)  # the two running files were stopped, not finished


@pytest.mark.slow
def test_ctrl_c_pressed_again_while_the_workers_stop_prints_no_traceback(tmp_path: Path) -> None:
    """Three Ctrl-Cs in a tenth of a second: the second and third landed in the pool's shutdown and at exit,
    printing "Exception ignored in ... KeyboardInterrupt" tracebacks below "jac: interrupted" (-j 1: none)."""
    photos, out = photo_folder(tmp_path, 12, 96)
    with parallel_batch(photos, out, "-e", "1") as proc:
        wait_for_outputs(proc, out, 1)
        for _ in range(3):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.03)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_warnings_name_their_file(tmp_path: Path, capfd, monkeypatch, jobs: str) -> None:
    """Each warning names its file, as the user named the folder, also from worker processes."""
    photos = tmp_path / "photos"
    photos.mkdir()
    apng_with_no_frames(photos / "warn.png")
    photo().save(photos / "fine.png")
    monkeypatch.chdir(tmp_path)
    assert main(["batch", "photos", "out", "--to", "jac", "-j", jobs, "--quiet"]) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["jac: warning: photos/warn.png: Invalid APNG, will use default PNG image if possible"]


def test_decoding_in_place_keeps_the_originals(tmp_path: Path, capsys) -> None:
    """``jac batch D D --to jac`` then ``--to png``: each original PNG is kept, also when it is newer than its .jac.

    The rule was the files' times: an original copied back without its time (``cp``, ``unzip``) was newer
    than its .jac and was replaced by the lossy decode, with status 0."""
    original = tmp_path / "a.png"
    photo().save(original)
    before = original.read_bytes()
    assert main(["batch", str(tmp_path), str(tmp_path), "--to", "jac", "--quiet"]) == 0
    for newer in (False, True):
        if newer:
            os.utime(original, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # copied back without its time
        assert main(["batch", str(tmp_path), str(tmp_path), "--to", "png", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "a.png: exists and carries no mark of a decode" in err and "--force replaces it" in err
        assert original.read_bytes() == before
    # --force replaces an original, and a decode is replaced by the next (a batch run again)
    assert main(["batch", str(tmp_path), str(tmp_path), "--to", "png", "--quiet", "--force"]) == 0
    decoded = original.read_bytes()
    assert decoded != before
    assert main(["batch", str(tmp_path), str(tmp_path), "--to", "png", "--quiet"]) == 0
    assert original.read_bytes() == decoded
    # encoded into another folder and decoded back into the originals' folder: the originals are kept too
    photo(1).save(tmp_path / "b.png")
    second = (tmp_path / "b.png").read_bytes()
    jacs = tmp_path / "jacs"
    assert main(["batch", str(tmp_path), str(jacs), "--to", "jac", "--quiet"]) == 0
    assert main(["batch", str(jacs), str(tmp_path), "--to", "png", "--quiet"]) == 1
    assert "b.png: exists and carries no mark of a decode" in capsys.readouterr().err
    assert (tmp_path / "b.png").read_bytes() == second


def test_hidden_files_are_not_inputs(tmp_path: Path) -> None:
    photo().save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS's companion of a.png
    (tmp_path / ".a.jac-1234abcd.tmp").write_bytes(b"")
    (tmp_path / ".thumbnails").mkdir()
    photo().save(tmp_path / ".thumbnails" / "a.png")
    (tmp_path / "sub").mkdir()
    photo().save(tmp_path / "sub" / "b.png")
    assert [p.name for p in batch_inputs(tmp_path, "jac", recursive=False)] == ["a.png"]
    found = batch_inputs(tmp_path, "jac", recursive=True)
    assert [str(p.relative_to(tmp_path)) for p in found] == ["a.png", "sub/b.png"]


def _unreadable(monkeypatch, *folders: Path) -> None:
    """``folders`` refuse to be listed, as a folder without read permission does (root reads every folder)."""
    scandir = os.scandir

    def refusing(path="."):
        if Path(os.fspath(path)).resolve() in {f.resolve() for f in folders}:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)


def test_a_folder_that_cannot_be_read_is_reported_not_passed_over(tmp_path: Path, monkeypatch, capsys) -> None:
    """With -r, an unreadable subfolder fails like a file (exit 1, named) and the rest convert; an unreadable
    input folder is said to be one, not 'no images found'."""
    photos = tmp_path / "photos"
    (photos / "locked").mkdir(parents=True)
    photo().save(photos / "a.png")
    photo().save(photos / "locked" / "b.png")
    _unreadable(monkeypatch, photos / "locked")
    assert main(["batch", str(photos), str(tmp_path / "out"), "--to", "jac", "-r", "-j", "1", "-q", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{photos / 'locked'}" in err and "cannot read this folder (Permission denied)" in err, err
    assert listing(tmp_path / "out") == ["a.jac"]
    _unreadable(monkeypatch, photos)
    assert main(["batch", str(photos), str(tmp_path / "out2"), "--to", "jac", "-j", "1"]) == 1
    assert "cannot read the folder: Permission denied" in capsys.readouterr().err


def test_an_output_another_source_made_is_not_replaced(tmp_path: Path, capsys) -> None:
    """Two folders with an a.png of one size, converted into one output folder: the second run once replaced the
    first's a.jac (its a.png newer) or kept it as done (older). Now it fails, naming the file that made it; the
    first folder moved elsewhere is still the same source (done, skipped)."""
    first, second, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    for folder, colour in ((first, (200, 30, 30)), (second, (30, 30, 200))):
        folder.mkdir()
        Image.new("RGB", (32, 24), colour).save(folder / "a.png")
        Image.new("RGB", (32, 24), colour).save(folder / f"only-{folder.name}.png")
    os.utime(second / "a.png", ns=(time.time_ns() + 10**10,) * 2)  # newer than the output will be
    assert main(["batch", str(first), str(out), "--to", "jac", "-j", "1", "--quiet"]) == 0
    made = (out / "a.jac").read_bytes()
    assert main(["batch", str(second), str(out), "--to", "jac", "-j", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"a.jac there was made from another file, {first / 'a.png'}" in err, err
    assert (out / "a.jac").read_bytes() == made and (out / "only-B.jac").exists()  # the rest converted
    moved = tmp_path / "moved"
    first.rename(moved)
    assert main(["batch", str(moved), str(out), "--to", "jac", "-j", "1"]) == 0
    assert "2 files already done, skipped" in capsys.readouterr().err
    before = (out / "only-A.jac").read_bytes()  # moved, and asked for another quality: converted again
    assert main(["batch", str(moved), str(out), "--to", "jac", "-j", "1", "-q", "1", "--quiet"]) == 0
    assert (out / "only-A.jac").read_bytes() != before
    with Image.open(out / "a.jac") as im:
        assert im.info["jac_quality"] == 1
    (out / "a.jac").unlink()  # removed by hand: the other folder's a.png converts
    assert main(["batch", str(second), str(out), "--to", "jac", "-j", "1", "--quiet"]) == 0
    assert (out / "a.jac").read_bytes() != made
    assert sorted(p.name for p in out.iterdir()) == [".jac-sources", "a.jac", "only-A.jac", "only-B.jac"]


def test_a_jac_no_batch_made_there_is_neither_replaced_nor_taken_as_done(tmp_path: Path, capsys) -> None:
    """A .jac in the output folder that is not in its record (one that came as a .jac, one ``jac encode`` made)
    was replaced by the encode of a newer holiday.png of the same name, or, when as new and of the same size
    in pixels, skipped as done although it holds another picture. It may be the only copy of its picture."""
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(0, 32).save(photos / "holiday.png")
    photo(1, 32).save(photos / "other.png")
    received = tmp_path / "received.jac"
    Image.new("RGB", (48, 40), (10, 120, 200)).save(received, quality=2)
    (photos / "holiday.jac").write_bytes(received.read_bytes())  # in place: jac batch photos photos
    assert main(["batch", str(photos), str(photos), "--to", "jac", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "holiday.jac is there, and no batch into this folder made it" in err, err
    assert (photos / "holiday.jac").read_bytes() == received.read_bytes() and (photos / "other.jac").exists()
    out = tmp_path / "out"
    out.mkdir()
    assert main(["encode", str(photos / "other.png"), str(out / "holiday.jac"), "-q", "4"]) == 0  # as new, 32x32
    by_hand = (out / "holiday.jac").read_bytes()
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "4"]) == 1
    err = capsys.readouterr().err
    assert "already done" not in err and "holiday.jac is there, and no batch" in err, err
    assert (out / "holiday.jac").read_bytes() == by_hand
    (out / "holiday.jac").unlink()  # removed: it converts, and is then the batch's own
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "4", "--quiet"]) == 0
    assert (out / "holiday.jac").read_bytes() != by_hand
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "4"]) == 0
    assert "2 files already done, skipped" in capsys.readouterr().err


def test_a_batch_stopped_after_writing_an_output_converts_it_again(tmp_path: Path, capsys) -> None:
    """An output written just before the batch was killed has no line saying what made it, and a .jac with no
    line is another file's (it may be the only copy of its picture): every later batch refused it. The batch now
    notes each conversion before it starts, so such an output is its source's, converted again."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    photo(0, 32).save(photos / "a.png")
    photo(1, 32).save(photos / "b.png")
    assert main(["batch", str(photos), str(out), "--to", "jac", "--quiet"]) == 0
    record = out / ".jac-sources"
    lines = record.read_text().splitlines()
    started = [json.loads(line) for line in lines if json.loads(line).get("pending")]
    assert {e["output"] for e in started} == {"a.jac", "b.jac"}  # noted before converting
    kept = [line for line in lines if not (json.loads(line)["output"] == "a.jac" and "pending" not in line)]
    record.write_text("\n".join(kept) + "\n")  # as a kill between a.jac's write and its line leaves it
    before = (out / "a.jac").stat().st_mtime_ns
    assert main(["batch", str(photos), str(out), "--to", "jac"]) == 0
    err = capsys.readouterr().err
    assert "1 files already done, skipped" in err and "no batch into this folder" not in err, err
    assert (out / "a.jac").stat().st_mtime_ns != before  # converted again
    assert main(["batch", str(photos), str(out), "--to", "jac"]) == 0
    assert "2 files already done, skipped" in capsys.readouterr().err


def test_a_source_replaced_by_an_older_copy_is_converted_again(tmp_path: Path, capsys) -> None:
    """``cp -p old.png a.png`` puts back a file older than a.jac, of the same size in pixels: by time alone
    a.jac was done. The record of sources knows a.png's size and time when a.jac was made, so it is redone."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    photo(0, 32).save(photos / "a.png")
    photo(1, 32).save(photos / "b.png")
    old = tmp_path / "old.png"
    photo(2, 32).save(old)
    os.utime(old, ns=(time.time_ns() - 10**11,) * 2)  # older than a.jac will be
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "1", "--quiet"]) == 0
    first = (out / "a.jac").read_bytes()
    os.replace(old, photos / "a.png")  # as cp -p would leave it: another picture, an older time
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "1"]) == 0
    assert "jac: 1 files already done, skipped" in capsys.readouterr().err  # b.png only
    assert (out / "a.jac").read_bytes() != first
    with Image.open(out / "a.jac") as im:
        assert (
            abs(np.asarray(im, np.float32) - photo(2, 32)).mean()
            < abs(np.asarray(im, np.float32) - photo(0, 32)).mean()
        )
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "1"]) == 0
    assert "jac: 2 files already done, skipped" in capsys.readouterr().err  # now done, as made


def test_a_batch_with_other_settings_converts_again(tmp_path: Path, capsys) -> None:
    """A batch run at -q 1, then with --psnr: every file was "already done" (a target checks no quality) and kept
    its quality-1 file. The record of sources holds the settings each output was made with."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for seed in range(2):
        photo(seed, 32).save(photos / f"p{seed}.png")
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "1", "--quiet"]) == 0
    made = {p.name: p.read_bytes() for p in out.glob("*.jac")}
    for args in (["--psnr", "30"], ["-q", "1", "-e", "1"], ["--size", "900"]):
        capsys.readouterr()
        assert main(["batch", str(photos), str(out), "--to", "jac", *args]) == 0
        assert "already done" not in capsys.readouterr().err, args
        assert main(["batch", str(photos), str(out), "--to", "jac", *args]) == 0
        assert "jac: 2 files already done, skipped" in capsys.readouterr().err, args  # the same settings again
    assert {p.name: p.read_bytes() for p in out.glob("*.jac")} != made


def test_resume_judges_strip_and_quality_by_what_the_output_was_made_with(tmp_path: Path, capsys) -> None:
    """Resume guessed ``--strip`` from the source's header: a grey PNG with an RGB profile (which no output keeps)
    was converted again at every run, and a ``--strip`` output of a PNG whose EXIF Pillow does not read with the
    header was "done" for a run without ``--strip``, its EXIF lost. ``-q 4.501`` redid outputs stored at 4.5."""
    from PIL import ImageCms

    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo(0, 24).convert("L").save(photos / "grey.png", icc_profile=srgb)
    exif = Image.Exif()
    exif[0x010E] = "a description"
    photo(1, 24).save(photos / "late.png", exif=exif.tobytes())  # eXIf, then moved after the pixels:
    data = (photos / "late.png").read_bytes()
    start = data.index(b"eXIf") - 4
    end = start + 12 + int.from_bytes(data[start : start + 4], "big")
    chunk, rest = data[start:end], data[:start] + data[end:]
    iend = rest.rindex(b"IEND") - 4
    (photos / "late.png").write_bytes(rest[:iend] + chunk + rest[iend:])

    def batch(*args: str) -> str:
        capsys.readouterr()
        assert main(["batch", str(photos), str(out), "--to", "jac", *args]) == 0
        return capsys.readouterr().err

    batch("-q", "4.5")
    assert "jac: 2 files already done, skipped" in batch("-q", "4.5")  # the grey one too
    # a record written before the quality was recorded as stored (4.3 as given, a file stores 4.30078125), and
    # before strip was recorded: the outputs are not all redone
    batch("-q", "4.3")
    record = out / ".jac-sources"
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    for entry in lines:
        if "settings" in entry:  # not the lines noting a conversion that begins
            entry["settings"] = {k: v for k, v in entry["settings"].items() if k != "strip"} | {"quality": 4.3}
    record.write_text("".join(json.dumps(entry) + "\n" for entry in lines))
    assert "jac: 2 files already done, skipped" in batch("-q", "4.3")
    batch("-q", "4.5")
    assert "jac: 2 files already done, skipped" in batch("-q", "4.501")  # the quality a file stores
    batch("-q", "4.5", "--strip")
    assert not container.read(out / "late.jac").exif
    assert "already done" not in batch("-q", "4.5")  # made with --strip: the EXIF comes back
    assert container.read(out / "late.jac").exif
    assert "jac: 2 files already done, skipped" in batch("-q", "4.5")


def test_preview_size_reaches_the_file(tmp_path: Path) -> None:
    photo(0, 128).save(tmp_path / "a.png")
    convert_file(str(tmp_path / "a.png"), str(tmp_path / "a.jac"), "jac", 2, 0, None, {"preview": 64})
    kind, width, height, _ = container.unpack_preview(container.read(tmp_path / "a.jac").preview)
    assert (width, height) == (64, 64)


def test_a_batch_run_again_skips_what_is_done_as_on_ray(tmp_path: Path, capsys) -> None:
    photos, out, back = tmp_path / "photos", tmp_path / "out", tmp_path / "back"
    photos.mkdir()
    for seed in range(3):
        photo(seed, 16).save(photos / f"p{seed}.png")
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "1"]) == 0
    assert main(["batch", str(out), str(back), "--to", "png"]) == 0
    (out / "p1.jac").write_bytes((out / "p1.jac").read_bytes()[:-9])  # cut short, as by a crash
    capsys.readouterr()
    written = {p: p.stat().st_mtime_ns for p in [*out.glob("*.jac"), *back.glob("*.png")]}
    assert main(["batch", str(photos), str(out), "--to", "jac", "-q", "1"]) == 0
    assert main(["batch", str(out), str(back), "--to", "png"]) == 0
    err = capsys.readouterr().err
    assert "jac: 2 files already done, skipped" in err and "p0.png (already done)" in err, err
    redone = sorted(p.name for p, ns in written.items() if p.stat().st_mtime_ns != ns)
    assert redone == ["p1.jac", "p1.png"]  # the cut file, then its decode, which is now older than it
    again = ["batch", str(photos), str(out), "--to", "jac", "-q", "2"]
    assert main(again) == 0
    assert "already done" not in capsys.readouterr().err  # another quality: every file again
    assert main(again) == 0
    assert "jac: 3 files already done, skipped" in capsys.readouterr().err
    assert main([*again, "--no-resume"]) == 0
    assert "already done" not in capsys.readouterr().err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_batch_that_cannot_write_its_record_stops_before_converting(tmp_path: Path, capsys, jobs: str) -> None:
    """Outputs missing from the folder's record are refused by every later batch: a batch went on without it,
    reported success, and the next run into the folder failed every file."""
    from pillow_jac.source_record import RECORD_NAME

    photos, out = photo_folder(tmp_path, 2)
    (out / RECORD_NAME).mkdir(parents=True)  # cannot be appended to, even by root
    assert main(["batch", str(photos), str(out), "--to", "jac", "-j", jobs]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"jac: error: {out / RECORD_NAME}: cannot add to the batch's record"), err
    assert listing(out) == []  # no output (the record is not listed)


@pytest.mark.parametrize("idle_death", [-signal.SIGKILL, None])
def test_a_file_is_charged_for_a_terminated_worker_only_where_no_worker_was_killed_idle(monkeypatch, idle_death):
    """Pools that break with a file marked as its worker's SIGTERM (the first so): sent alone (no other worker
    ended by another signal), the file is charged and fails after its attempts; where a worker was killed idle
    (SIGKILL, the out-of-memory killer), the SIGTERM was the pool's and the file is converted again uncharged."""
    from pillow_jac import local_batch

    pools = []

    def breaking_pool(ctx, items, todo, states, workers, options, force, hard_deaths):
        pools.append(list(todo))
        if len(pools) <= 2:  # two pools break with file 0 marked
            states[0] = local_batch._TERMINATED
            hard_deaths.extend([idle_death] if idle_death else [])
            yield 0, None
            yield from ((i, (("made", i), [])) for i in todo if i != 0)
        else:
            yield from ((i, (("made", i), [])) for i in todo)

    monkeypatch.setattr(local_batch, "_run_pool", breaking_pool)
    jobs = {Path(f"{i}.png"): Path(f"{i}.jac") for i in range(3)}
    results = {src.name: result for src, result, _ in local_batch._run_jobs(jobs, (), False, workers=2)}
    if idle_death:
        assert results["0.png"] == ("made", 0) and len(pools) == 3
    else:
        assert str(results["0.png"]) == local_batch._DIED and len(pools) == 2
    assert results["1.png"] == ("made", 1) and results["2.png"] == ("made", 2)


def test_a_worker_ended_idle_by_sigterm_marks_the_pool(monkeypatch) -> None:
    """Its SIGTERM broke the pool, and the workers the pool then ends mark their files as not the cause."""
    from multiprocessing import RawArray

    from pillow_jac import local_batch

    monkeypatch.setattr(local_batch, "_states", RawArray("b", 3))
    monkeypatch.setattr(local_batch, "_converting", False)
    monkeypatch.setattr(local_batch, "_terminating", False)
    ended = []
    monkeypatch.setattr(local_batch, "_end_by_sigterm", lambda: ended.append(True))
    local_batch._worker_sigterm(signal.SIGTERM, None)
    assert ended == [True] and list(local_batch._states) == [0, 0, 1]


def test_a_finished_batch_run_again_in_a_folder_it_cannot_write_skips_every_file(tmp_path, capsys, monkeypatch):
    """Nothing is left to note in the record: no error (a record that cannot be written stops only a batch that
    would convert something)."""
    import errno

    from pillow_jac import source_record

    photos, out = photo_folder(tmp_path, 2)
    assert main(["batch", str(photos), str(out), "--to", "jac"]) == 0

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(source_record, "_locked", read_only)
    capsys.readouterr()
    assert main(["batch", str(photos), str(out), "--to", "jac"]) == 0
    assert "jac: 2 files already done, skipped" in capsys.readouterr().err


_TERMINATING_WORKER = """
import os, signal, time
import pillow_jac.conversion as conversion
convert = conversion.convert_file
def convert_file(src, dst, *args, **kwargs):
    if "term" in os.path.basename(str(src)):  # as a memory watchdog (earlyoom) sends SIGTERM to the largest process
        time.sleep(0.15)
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.3)  # the other worker is converting a file then, which the pool's own SIGTERM interrupts
    return convert(src, dst, *args, **kwargs)
conversion.convert_file = convert_file
"""


@pytest.mark.slow
def test_a_file_whose_worker_gets_sigterm_alone_fails_alone(tmp_path: Path) -> None:
    """A worker sent SIGTERM alone while converting a file, each time that file is converted: the file is charged
    as one whose worker was killed, and fails after its attempts. Such a SIGTERM was taken for the pool's own (which
    ends the other workers when one died): the file was never charged, and after three breaks every file left failed
    as "the worker processes kept dying while idle". The file the other worker converts meanwhile is not charged."""
    photos, out = photo_folder(tmp_path, 12)
    photo(99).save(photos / "005-term.png")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_TERMINATING_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "pillow_jac", "batch", str(photos), str(out), "--to", "jac", "-j", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    failures = [line for line in done.stderr.splitlines() if line.startswith(f"jac: {photos}")]
    assert done.returncode == 1 and done.stderr.splitlines()[-1] == "jac: error: 1 of 13 files failed", done.stderr
    assert len(failures) == 1 and "005-term.png" in failures[0] and "died" in failures[0], failures
    assert listing(out) == [f"{i:03d}.jac" for i in range(12)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_worker_killed_amid_many_files_costs_none_of_them(tmp_path: Path) -> None:
    """A thousand files, each refused at once (not images), and a worker killed half-way: every file is
    reported with its own error, none with the pool's."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for i in range(1000):
        (photos / f"{i:04d}.png").write_bytes(b"not a png")
    lines: list[str] = []
    with parallel_batch(photos, out) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if len(lines) == 500:
                workers = _session_workers(proc.pid)
                assert len(workers) == 2, workers
                os.kill(workers[0], signal.SIGKILL)
        proc.wait(timeout=300)
    failures = [line for line in lines if line.startswith(f"jac: {photos}")]
    assert proc.returncode == 1 and lines[-1].strip() == "jac: error: 1000 of 1000 files failed"
    assert len(failures) == 1000
    assert all("cannot identify image file" in line for line in failures), [
        line for line in failures if "cannot identify" not in line
    ][:3]


def test_a_worker_whose_batch_is_cancelled_ends_itself_if_its_pool_does_not(monkeypatch) -> None:
    """A parent killed with ``kill -9`` left its idle workers waiting for work for ever (1.2 GB for ``-j 2``).

    The cancel pipe's end interrupts the file being converted; a worker still there once that file is
    cleaned up and the grace has passed now ends itself (here: the exit and the interruption recorded)."""
    import multiprocessing
    import threading

    from pillow_jac import local_batch

    exits, interrupts = [], []
    monkeypatch.setattr(local_batch, "_ORPHAN_GRACE_SECONDS", 0.3)
    monkeypatch.setattr(local_batch._thread, "interrupt_main", lambda *a: interrupts.append(a))
    monkeypatch.setattr(local_batch.os, "_exit", exits.append)
    monkeypatch.setattr(local_batch, "_cancelled", False)
    monkeypatch.setattr(local_batch, "_in_job", True)  # a file's clean-up under way: never cut short
    reader, writer = multiprocessing.Pipe(duplex=False)
    thread = threading.Thread(target=local_batch._interrupt_when_cancelled, args=(reader,), daemon=True)
    thread.start()
    time.sleep(0.2)
    assert (exits, interrupts) == ([], [])  # the parent holds its end: nothing happens
    writer.close()  # the parent died
    deadline = time.monotonic() + 10
    while not interrupts and time.monotonic() < deadline:  # however long a loaded machine takes to notice
        time.sleep(0.05)
    time.sleep(0.5)  # one interrupt, not one per wait of the watcher
    assert len(interrupts) == 1 and exits == [] and local_batch._cancelled
    local_batch._in_job = False  # the clean-up is done
    thread.join(timeout=5)
    assert exits == [1]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity")
def test_workers_share_the_cpus_this_process_may_use(monkeypatch) -> None:
    """Under taskset, a cpuset or Slurm, -j 4 gave each worker cpu_count // 4 threads of a 64-core host on 4 CPUs."""
    from pillow_jac import local_batch

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert local_batch._usable_cpus() == 4
    assert [local_batch.threads_per_worker(j) for j in (1, 2, 4, 8)] == [4, 2, 1, 1]  # what _run_pool hands on


def test_inputs_that_would_share_an_output_fail_and_the_others_convert(tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(0, 16).save(photos / "a.png")
    photo(0, 16).save(photos / "a.jpg")
    photo(1, 16).save(photos / "c.png")
    assert main(["batch", str(photos), str(tmp_path / "out"), "--to", "jac", "-q", "1"]) == 1
    err = capsys.readouterr().err
    assert "a.jpg would also be written to a.jac; neither is converted" in err, err
    assert "a.png would also be written to a.jac; neither is converted" in err, err
    assert err.strip().splitlines()[-1] == "jac: error: 2 of 3 files failed", err
    assert listing(tmp_path / "out") == ["c.jac"]


def test_a_batch_skips_its_own_outputs_decodes_and_what_pillow_only_identifies(tmp_path: Path, capsys) -> None:
    """The in-place round trip of the README runs again; videos and data files beside photos are no failures."""
    from PIL import EpsImagePlugin

    photo(0, 16).save(tmp_path / "b.jpg")
    photo(1, 16).save(tmp_path / "c.png")
    (tmp_path / "clip.mpg").write_bytes(b"\x00\x00\x01\xb3" + bytes(60))  # Pillow identifies MPEG, cannot decode it
    (tmp_path / "data.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(60))  # a stub format without a handler
    (tmp_path / "plot.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n")
    args = ["-q", "1", "-r"]
    assert main(["batch", str(tmp_path), str(tmp_path), "--to", "jac", *args]) == 0
    assert main(["batch", str(tmp_path), str(tmp_path), "--to", "png", "--force"]) == 0  # b.png: a decode
    capsys.readouterr()
    assert main(["batch", str(tmp_path), str(tmp_path), "--to", "jac", *args]) == 0
    err = capsys.readouterr().err
    for decoded in ("b.png", "c.png"):  # c.png, the original, was replaced by its decode (--force)
        assert f"{decoded}: written by a decode of a .jac file, not an original; not encoded" in err, err
    assert "[1/1]" in err and "b.jpg" in err, err  # b.jpg alone is encoded again, beside its decode b.png
    names = [p.name for p in batch_inputs(tmp_path, "jac", recursive=True)]
    assert "clip.mpg" not in names and "data.h5" not in names
    assert ("plot.eps" in names) == bool(EpsImagePlugin.has_ghostscript())
    (tmp_path / "jac").mkdir()
    photo(2, 16).save(tmp_path / "jac" / "d.png")  # a decode's output folder inside the input folder
    assert "d.png" not in [p.name for p in batch_inputs(tmp_path, "jac", True, out_dir=tmp_path / "jac")]
    assert "d.png" in [p.name for p in batch_inputs(tmp_path, "jac", True)]


def test_a_link_that_leads_nowhere_is_reported(tmp_path: Path, capsys) -> None:
    photo(0, 16).save(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    assert main(["batch", str(tmp_path), str(tmp_path / "out"), "--to", "jac", "-q", "1"]) == 1
    err = capsys.readouterr().err
    assert "gone.png: " in err and "loop.png: " in err, err
    assert listing(tmp_path / "out") == ["a.jac"]


def test_progress_ends_a_stopped_bar_and_keeps_one_line_per_file() -> None:
    from pillow_jac.batch_plan import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = Progress(3, terminal)
    bar.step("a.png")
    bar.close()  # stopped after one of three: what comes next ("jac: interrupted") starts a line
    assert terminal.getvalue().startswith("\r[") and " 1/3 " in terminal.getvalue(), terminal.getvalue()
    assert terminal.getvalue().endswith("s\n"), terminal.getvalue()
    lines = io.StringIO()
    bar = Progress(2, lines)
    bar.step("two\nlines.png")
    bar.step("b.png", error="broken")
    bar.close()
    assert lines.getvalue().splitlines() == ["[1/2] two\\nlines.png", "jac: b.png: broken"]


def test_batch_strips_metadata_and_encodes_for_a_model_as_encode_does(tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    exif = Image.Exif()
    exif[0x8825] = {2: (51.0, 30.0, 0.0)}  # a GPS position, which a batch for the web should be able to drop
    photo(0, 16).save(photos / "a.jpg", exif=exif.tobytes())
    assert main(["batch", str(photos), str(tmp_path / "kept"), "--to", "jac", "-q", "1"]) == 0
    assert main(["batch", str(photos), str(tmp_path / "bare"), "--to", "jac", "-q", "1", "--strip"]) == 0
    with Image.open(tmp_path / "kept" / "a.jac") as kept, Image.open(tmp_path / "bare" / "a.jac") as bare:
        assert "exif" in kept.info and "exif" not in bare.info
    model = container.read(tmp_path / "kept" / "a.jac").header.model_id
    capsys.readouterr()
    assert main(["batch", str(photos), str(tmp_path / "kept"), "--to", "jac", "-q", "1", "--model", model]) == 0
    assert "1 files already done" in capsys.readouterr().err  # the model it was made for: done
    assert main(["batch", str(photos), str(tmp_path / "kept"), "--to", "jac", "-q", "1", "--strip"]) == 0
    assert "already done" not in capsys.readouterr().err  # it holds EXIF: a --strip run is not done with it
    with Image.open(tmp_path / "kept" / "a.jac") as kept:
        assert "exif" not in kept.info
    assert main(["batch", str(photos), str(tmp_path / "x"), "--to", "jac", "-q", "1", "--model", "mbt-0-0-r999"]) == 1
    assert "mbt-0-0-r999" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["batch", str(tmp_path / "kept"), str(tmp_path / "png"), "--to", "png", "--strip"])
    assert "--strip: options of --to jac, not of --to png" in capsys.readouterr().err


def test_workers_take_the_batchs_pixel_limit(tmp_path: Path, monkeypatch, capsys) -> None:
    """Workers started by the fork server had Pillow's own limit, not the batch's: ``--max-image-pixels`` (or a
    caller's ``PIL.Image.MAX_IMAGE_PIXELS``) held with ``-j 1`` and was lost with ``-j 2``."""
    photos, out = photo_folder(tmp_path, 2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 pixels: above twice it
    assert main(["batch", str(photos), str(out), "--to", "jac", "-j", "2", "--quiet"]) == 1
    assert capsys.readouterr().err.count("decompression bomb") == 2
    assert main(["batch", str(photos), str(out), "--to", "jac", "-j", "2", "--quiet", "--max-image-pixels", "0"]) == 0
    assert listing(out) == ["000.jac", "001.jac"]


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_a_batch_refuses_a_model_that_cannot_encode_before_any_file(tmp_path: Path, monkeypatch, runner: str) -> None:
    """run_batch and distributed.convert check the model once, before planning or writing anything (as jac batch
    did for both, in the CLI): a library call with a mistyped model failed every file, one by one, on every worker.
    The Ray path refuses it before it imports Ray."""
    from pillow_jac import distributed, generations
    from pillow_jac.local_batch import run_batch

    photos, out = photo_folder(tmp_path, 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of Ray would fail with ImportError
    convert = run_batch if runner == "local" else distributed.convert
    with pytest.raises(generations.ModelNotInstalledError, match="'nope' cannot encode here"):
        convert(photos, out, "jac", model="nope", progress=False)
    assert not out.exists()
