"""A batch's record of sources (``.jac-sources``, :mod:`pillow_jac.source_record`) as resume reads it, whatever
the file holds: a byte that is not UTF-8 costs only its own line, and a record that never ends is not read."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pillow_jac.cli import main
from pillow_jac.source_record import RECORD_NAME, SourceRecord, note_made

from .helpers import natural_image

ROOT = Path(__file__).resolve().parents[1]


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
