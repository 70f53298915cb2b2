"""A batch's record of sources (``.jac-sources``, :mod:`pillow_jac.source_record`) as resume reads it, whatever
the file holds: a byte that is not UTF-8 costs only its own line, and a record that never ends is not read. A
source dated in the future is converted once, where the record vouches for it as the files are when judged."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pillow_jac import local_batch
from pillow_jac.cli import main
from pillow_jac.constants import DEFAULT_EFFORT, DEFAULT_QUALITY
from pillow_jac.ray_worker import Worker
from pillow_jac.source_record import RECORD_NAME, SourceRecord, note_made

from .helpers import natural_image

ROOT = Path(__file__).resolve().parents[1]
#: a day ahead: a camera with a wrong clock, an archive unpacked from another time zone
DAY_NS = 86_400 * 10**9


def tomorrow(path: Path) -> None:
    """Date ``path`` a day in the future (``touch -d "+1 day"``)."""
    os.utime(path, ns=(time.time_ns() + DAY_NS,) * 2)


def save_again(path: Path, seed: int = 7) -> None:
    """Save another picture as ``path``, dated a day in the future as the first was."""
    Image.fromarray(natural_image(24, 24, seed)).save(path)
    tomorrow(path)


def batch(capsys, src: Path, out: Path, to: str) -> str:
    """Run ``jac batch src out --to to`` (successfully) and return what it printed on stderr."""
    capsys.readouterr()
    assert main(["batch", str(src), str(out), "--to", to]) == 0
    return capsys.readouterr().err


def folder_of_two(tmp_path: Path) -> tuple[Path, Path]:
    """``(photos, out)``: a folder of ``a.png`` and ``b.png``, and an output path."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed, name in enumerate(["a", "b"]):
        Image.fromarray(natural_image(24, 24, seed)).save(photos / f"{name}.png")
    return photos, tmp_path / "out"


def test_a_byte_that_is_not_utf8_costs_its_own_line_only(tmp_path: Path, capsys) -> None:
    """One such byte made the whole record unreadable: every output counted as another file's and failed with
    "it is not in the folder's .jac-sources" until the record was removed."""
    photos, out = folder_of_two(tmp_path)
    batch(capsys, photos, out, "jac")
    with open(out / RECORD_NAME, "ab") as f:
        f.write(b"\xff\n")  # printf '\xff\n' >> out/.jac-sources
    err = batch(capsys, photos, out, "jac")
    assert "jac: 2 files already done, skipped" in err and RECORD_NAME not in err, err
    record = out / RECORD_NAME
    lines = record.read_bytes().splitlines(keepends=True)
    spoilt = [line.replace(b'a.png"', b'a\xff.png"') if b'"a.jac"' in line else line for line in lines]
    record.write_bytes(b"".join(spoilt))  # b's lines read; a's do not, so a.jac is as no batch made it
    capsys.readouterr()
    assert main(["batch", str(photos), str(out), "--to", "jac"]) == 1
    err = capsys.readouterr().err
    assert "a.jac is there, and no batch into this folder made it" in err and "b.png (already done)" in err, err


def test_a_record_with_a_byte_that_is_not_utf8_is_read_and_compacted(tmp_path: Path) -> None:
    """The other lines count, and a compaction (:class:`SourceRecord`) rewrites the record without that line."""
    out = tmp_path / "out"
    out.mkdir()
    sources = [tmp_path / f"{i}.png" for i in range(3)]
    for src in sources:
        src.write_bytes(b"x")
    for run in range(400):  # 1,200 lines for 3 outputs, and one more
        for src in sources:
            note_made(out, src, out / f"{src.stem}.jac", {"quality": run})
        if run == 200:
            with open(out / RECORD_NAME, "ab") as f:
                f.write(b'{"output": "\xff.jac"}\n')
    record = SourceRecord(out)
    assert sorted(record.made) == ["0.jac", "1.jac", "2.jac"]
    lines = (out / RECORD_NAME).read_bytes().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["settings"] == {"quality": 399} for line in lines)


def test_a_line_longer_than_any_records_is_skipped_without_being_held(tmp_path: Path) -> None:
    """A line was read whole, however long (the whole record, as text and as lines): a record of one 32 MiB line
    took over 64 MiB to read. The lines after it still count."""
    import tracemalloc

    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "a.png"
    src.write_bytes(b"x")
    with open(out / RECORD_NAME, "wb") as f:
        f.write(b"{" * (32 << 20) + b"\n" + b"x" * (1 << 20) + b"\n")  # the second exactly at the limit, with its end
    note_made(out, src, out / "a.jac", None)
    tracemalloc.start()
    try:
        made = SourceRecord(out).made
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(made) == ["a.jac"]
    assert peak < 8 << 20, peak  # a piece of a line at a time (1 MiB), not the file


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="POSIX special files")
@pytest.mark.parametrize("kind", ["device", "pipe"])
def test_a_record_that_is_not_a_regular_file_is_neither_read_nor_written(tmp_path: Path, kind: str) -> None:
    """A record that is a link to /dev/zero was read until memory ran out, and a named pipe blocked the batch
    for ever: such a record is not read (nothing is known, so no output counts as the batch's) and the batch
    stops with an error before it converts anything."""
    photos, out = folder_of_two(tmp_path)
    out.mkdir()
    if kind == "device":
        (out / RECORD_NAME).symlink_to("/dev/zero")
    else:
        os.mkfifo(out / RECORD_NAME)

    def limited() -> None:  # a reader without the bound fails at once rather than filling the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    code = "import sys; from pillow_jac.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "batch", str(photos), str(out), "--to", "jac", "--quiet"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=limited)
    assert proc.returncode == 1, proc.stderr
    assert "cannot add to the batch's record" in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr
    assert not list(out.glob("*.jac"))


def test_a_source_dated_in_the_future_is_converted_once(tmp_path: Path, capsys) -> None:
    """Newer than any output, it was converted again by every run: the record vouches for the source and the
    output as they are, so their times are not compared."""
    photos, out = folder_of_two(tmp_path)
    tomorrow(photos / "a.png")
    batch(capsys, photos, out, "jac")
    made = (out / "a.jac").stat().st_mtime_ns
    for _ in range(2):
        assert "jac: 2 files already done, skipped" in batch(capsys, photos, out, "jac")
    assert (out / "a.jac").stat().st_mtime_ns == made


def test_a_jac_file_dated_in_the_future_is_decoded_once(tmp_path: Path, capsys) -> None:
    """As for ``--to jac``: ``--to png`` is judged by the record too."""
    photos, jacs = folder_of_two(tmp_path)
    batch(capsys, photos, jacs, "jac")
    for jac in jacs.glob("*.jac"):
        tomorrow(jac)
    back = tmp_path / "back"
    batch(capsys, jacs, back, "png")
    assert "jac: 2 files already done, skipped" in batch(capsys, jacs, back, "png")


def test_the_times_decide_where_the_record_does_not_vouch_for_the_files(tmp_path: Path, capsys) -> None:
    """A source saved again, a touched output or a line without ``made`` (an older record's) is judged by the
    times: a source dated in the future is converted again."""
    photos, out = folder_of_two(tmp_path)
    tomorrow(photos / "a.png")
    batch(capsys, photos, out, "jac")
    first = (out / "a.jac").read_bytes()
    save_again(photos / "a.png")
    assert "jac: 1 files already done, skipped" in batch(capsys, photos, out, "jac")  # b.png only
    assert (out / "a.jac").read_bytes() != first
    assert "jac: 2 files already done, skipped" in batch(capsys, photos, out, "jac")
    os.utime(out / "a.jac")  # not the output as made (touched): older than its source, so not done
    assert "jac: 1 files already done, skipped" in batch(capsys, photos, out, "jac")
    record = out / RECORD_NAME
    lines = list(SourceRecord(out).made.values())
    assert all("made" in entry for entry in lines)
    record.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "made"}) + "\n" for e in lines))
    assert "jac: 1 files already done, skipped" in batch(capsys, photos, out, "jac")  # a line with no "made"


def test_a_source_saved_again_while_converted_is_converted_again(tmp_path: Path, capsys, monkeypatch) -> None:
    """note_made noted the source as it was once the output was written: a source saved again meanwhile was
    recorded as the one the output was made from, and every later run skipped it. The line notes the source as
    note_started found it, before the conversion read it."""
    photos, out = folder_of_two(tmp_path)
    tomorrow(photos / "a.png")
    real = local_batch.note_made

    def saved_meanwhile(out_dir, src, dst, *args, **kwargs):  # the user saves a.png while it is converted
        if Path(src).name == "a.png":
            save_again(Path(src))
        real(out_dir, src, dst, *args, **kwargs)

    monkeypatch.setattr(local_batch, "note_made", saved_meanwhile)
    batch(capsys, photos, out, "jac")
    monkeypatch.undo()
    first = (out / "a.jac").read_bytes()
    assert "jac: 1 files already done, skipped" in batch(capsys, photos, out, "jac")  # b.png only
    assert (out / "a.jac").read_bytes() != first
    assert "jac: 2 files already done, skipped" in batch(capsys, photos, out, "jac")


def test_an_output_replaced_once_written_is_not_vouched_for(tmp_path: Path, capsys, monkeypatch) -> None:
    """note_made noted the output as it found it when the batch noted it: an output replaced after the conversion
    wrote it (by another program) was recorded as the output made, and a source dated in the future was then
    skipped with it. The line notes the output as the conversion wrote it."""
    import shutil

    photos, out = folder_of_two(tmp_path)
    tomorrow(photos / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(natural_image(24, 24, 9)).save(elsewhere / "a.png")
    batch(capsys, elsewhere, tmp_path / "other", "jac")
    other = (tmp_path / "other" / "a.jac").read_bytes()
    real = local_batch.note_made

    def replaced_meanwhile(out_dir, src, dst, *args, **kwargs):  # another .jac put in the output's place
        if Path(src).name == "a.png":
            shutil.copyfile(tmp_path / "other" / "a.jac", dst)
        real(out_dir, src, dst, *args, **kwargs)

    monkeypatch.setattr(local_batch, "note_made", replaced_meanwhile)
    batch(capsys, photos, out, "jac")
    monkeypatch.undo()
    assert (out / "a.jac").read_bytes() == other
    assert "jac: 1 files already done, skipped" in batch(capsys, photos, out, "jac")  # b.png only
    assert (out / "a.jac").read_bytes() != other


def test_a_worker_checks_what_the_record_vouches_for_against_the_files(tmp_path: Path, capsys) -> None:
    """The Ray driver decided when it sent a file that its times would not be compared, and the worker acted on
    it after the source had been saved again: it skipped the new source. The worker is sent what the record
    vouches for and compares it with the files as it finds them (here called as a Ray actor's method is)."""
    photos, out = folder_of_two(tmp_path)
    tomorrow(photos / "a.png")
    batch(capsys, photos, out, "jac")
    src, dst = str(photos / "a.png"), str(out / "a.jac")
    vouched = SourceRecord(out).vouched(dst)
    assert vouched is not None
    worker = Worker("jac", "cpu", 1, None)
    options = ("jac", DEFAULT_QUALITY, DEFAULT_EFFORT, "cpu", True, {}, False, None, vouched)
    assert worker.convert(src, dst, *options).status == "skipped"  # the files as vouched for
    save_again(photos / "a.png")  # after the driver sent it
    assert worker.convert(src, dst, *options).status == "done"
