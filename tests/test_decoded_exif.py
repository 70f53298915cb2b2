"""The EXIF a decode writes into another format: its EXIF and GPS directories, where the source had them only."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import pillow_jac
from pillow_jac.cli import main

from .helpers import natural_image

#: the pointers to the EXIF and GPS directories in IFD0 (EXIF 2.32 section 4.6.3)
EXIF_IFD, GPS_IFD = 0x8769, 0x8825


def _source_exif(directories: tuple[int, ...]) -> Image.Exif:
    """An EXIF with a Make tag and, for each of ``directories``, that directory holding one tag."""
    exif = Image.Exif()
    exif[0x010F] = "Cam"
    if EXIF_IFD in directories:
        exif.get_ifd(EXIF_IFD)[0x9003] = "2020:01:02 03:04:05"  # DateTimeOriginal
    if GPS_IFD in directories:
        exif.get_ifd(GPS_IFD)[0x0001] = "N"  # GPSLatitudeRef
    return exif


def _written_exif(path: Path) -> tuple[set[int], dict[int, dict]]:
    """The IFD0 tags of the EXIF a decode wrote to ``path``, and what each directory pointer points at."""
    with Image.open(path) as im:
        if im.format == "TIFF":
            ifd0 = set(im.tag_v2)  # a TIFF's EXIF is tags of its own IFD0
            exif = im.getexif()
        else:
            exif = Image.Exif()
            exif.load(im.info["exif"])
            ifd0 = set(exif)
        return ifd0, {tag: dict(exif.get_ifd(tag)) for tag in (EXIF_IFD, GPS_IFD) if tag in ifd0}


@pytest.mark.parametrize("directories", [(), (EXIF_IFD,), (EXIF_IFD, GPS_IFD)])
@pytest.mark.parametrize("ext", [".tif", ".jpg", ".png", ".webp"])
def test_a_decode_writes_only_the_exif_directories_the_source_had(tmp_path, capsys, ext, directories):
    """Reading the EXIF and GPS directories to write them into a TIFF also made empty ones where the EXIF had
    none: the TIFF got ExifIFD and GPSInfo pointers (tags 0x8769, 0x8825) to empty directories."""
    exif = _source_exif(directories)
    src = tmp_path / "photo.jac"
    src.write_bytes(pillow_jac.encode(natural_image(24, 32), 2, exif=exif))
    out = tmp_path / f"photo{ext}"
    assert main(["decode", str(src), str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    ifd0, pointed = _written_exif(out)
    assert 0x010F in ifd0, ext
    assert set(pointed) == set(directories), ext
    assert pointed == {tag: dict(exif.get_ifd(tag)) for tag in directories}, ext
