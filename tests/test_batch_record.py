"""A batch's record of sources (``.jac-sources``, :mod:`pillow_jac.source_record`) as resume reads it: a source
dated in the future is done once converted, and a byte that is not UTF-8 costs only its own line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from PIL import Image

from pillow_jac.cli import main
from pillow_jac.source_record import RECORD_NAME, SourceRecord, note_made

from .helpers import natural_image

#: a day ahead: a camera with a wrong clock, an archive unpacked from another time zone
DAY_NS = 86_400 * 10**9


def tomorrow(path: Path) -> None:
    """Date ``path`` a day in the future (``touch -d "+1 day"``)."""
    os.utime(path, ns=(time.time_ns() + DAY_NS,) * 2)


def batch(capsys, src: Path, out: Path, to: str) -> str:
    """Run ``jac batch src out --to to`` (successfully) and return what it printed on stderr."""
    capsys.readouterr()
    assert main(["batch", str(src), str(out), "--to", to]) == 0
    return capsys.readouterr().err


def folder_of_two(tmp_path: Path, ahead: bool = True) -> tuple[Path, Path]:
    """``(photos, out)``: ``a.png`` (dated a day in the future where ``ahead``) and ``b.png``; an output path."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed, name in enumerate(["a", "b"]):
        Image.fromarray(natural_image(24, 24, seed)).save(photos / f"{name}.png")
    if ahead:
        tomorrow(photos / "a.png")
    return photos, tmp_path / "out"


def test_a_source_dated_in_the_future_is_converted_once(tmp_path: Path, capsys) -> None:
    """Newer than any output, it was converted again by every run: the record that notes it as it is now, and
    its output as made, says it is done whatever their times."""
    photos, out = folder_of_two(tmp_path)
    batch(capsys, photos, out, "jac")
    made = (out / "a.jac").stat().st_mtime_ns
    assert "jac: 2 files already done, skipped" in batch(capsys, photos, out, "jac")
    assert (out / "a.jac").stat().st_mtime_ns == made


def test_a_source_dated_in_the_future_is_still_converted_again_where_the_record_does_not_vouch(
    tmp_path: Path, capsys
) -> None:
    """Where the source or the output is not the one the record notes, or the record does not say what the
    output was made as, the times still decide (and a source changed since is converted again)."""
    photos, out = folder_of_two(tmp_path)
    batch(capsys, photos, out, "jac")
    first = (out / "a.jac").read_bytes()
    Image.fromarray(natural_image(24, 24, 7)).save(photos / "a.png")  # another picture, dated ahead again
    tomorrow(photos / "a.png")
    assert "jac: 1 files already done, skipped" in batch(capsys, photos, out, "jac")  # b.png only
    assert (out / "a.jac").read_bytes() != first
    assert "jac: 2 files already done, skipped" in batch(capsys, photos, out, "jac")
    os.utime(out / "a.jac")  # not the output as made (touched): older than its source, so not done
    assert "jac: 1 files already done, skipped" in batch(capsys, photos, out, "jac")
    record = out / RECORD_NAME
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    record.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "made"}) + "\n" for e in lines))
    assert "jac: 1 files already done, skipped" in batch(capsys, photos, out, "jac")  # a line with no "made"


def test_a_jac_file_dated_in_the_future_is_decoded_once(tmp_path: Path, capsys) -> None:
    """As for ``--to jac``: ``--to png`` is judged by the record too."""
    photos, jacs = folder_of_two(tmp_path)
    batch(capsys, photos, jacs, "jac")
    for jac in jacs.glob("*.jac"):
        tomorrow(jac)
    back = tmp_path / "back"
    batch(capsys, jacs, back, "png")
    assert "jac: 2 files already done, skipped" in batch(capsys, jacs, back, "png")


def test_a_byte_that_is_not_utf8_costs_its_own_line_only(tmp_path: Path, capsys) -> None:
    """One such byte made the whole record unreadable: every output counted as another file's and failed with
    "it is not in the folder's .jac-sources" until the record was removed."""
    photos, out = folder_of_two(tmp_path, ahead=False)
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
