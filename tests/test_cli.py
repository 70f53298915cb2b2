"""Tests of the ``jac`` command line tool, through ``main([...])`` and as a subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, features

import pillow_jac
from pillow_jac import __version__, container, generations
from pillow_jac.cli import main
from pillow_jac.constants import MAGIC

from .helpers import listing, natural_image, sixteen_bit_png

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample.png"


def crop(x: int = 150, y: int = 90, w: int = 48, h: int = 40) -> Image.Image:
    with Image.open(SAMPLE) as im:
        return im.convert("RGB").crop((x, y, x + w, y + h))


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    crop().save(path, icc_profile=icc)
    return path


@pytest.fixture(scope="module")
def jac(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "image.jac"
    crop().save(path, quality=3, xmp=b"<x/>")
    return path


def run_jac(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pillow_jac", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jac: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------- encode / decode


def _with_metadata(png: Path) -> Path:
    """``png`` with EXIF and XMP beside its ICC profile."""
    from PIL import PngImagePlugin

    path = png.with_name("meta.png")
    text = PngImagePlugin.PngInfo()
    text.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>tags</x:xmpmeta>")  # where PNG keeps XMP
    with Image.open(png) as im:
        exif = Image.Exif()
        exif[0x010F] = "a camera maker"
        im.save(path, icc_profile=im.info["icc_profile"], exif=exif, pnginfo=text)
    with Image.open(path) as check:
        assert {"icc_profile", "exif", "xmp"} <= set(check.info)
    return path


def test_encode(png: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jac"
    source = _with_metadata(png)
    assert main(["encode", str(source), str(out), "-q", "2.5"]) == 0
    assert out.read_bytes().startswith(MAGIC)
    with Image.open(out) as im, Image.open(source) as original:
        assert im.format == "JAC" and im.size == (48, 40)
        assert im.info["jac_quality"] == 2.5
        for key in ("icc_profile", "exif", "xmp"):  # metadata kept by default, as it was
            assert im.info[key] == original.info[key], key
    assert capsys.readouterr().err == ""


def test_encode_strip(png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jac"
    assert main(["encode", str(_with_metadata(png)), str(out), "--strip", "--quality", "4"]) == 0
    with Image.open(out) as im:
        assert not {"icc_profile", "exif", "xmp"} & set(im.info)


def test_decode(jac: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    assert main(["decode", str(jac), str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (48, 40) and im.mode == "RGB"
        assert im.info.get("xmp") in ("<x/>", b"<x/>")  # metadata passed on to PNG


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_decode_other_formats(jac: Path, tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"out{ext}"
    assert main(["decode", str(jac), str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (48, 40) and im.format == {".jpg": "JPEG", ".tif": "TIFF"}[ext]


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow without OpenJPEG")
@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
def test_decode_writes_what_the_name_asks_as_pillow_does(jac: Path, tmp_path: Path) -> None:
    """A decode encodes in memory, so Pillow's writers saw no file name: a .j2k got a JP2 file, not the bare
    codestream that Image.save("x.j2k") writes and that .j2k readers expect, and an SGI file lost its name."""
    signatures = {".j2k": b"\xff\x4f\xff\x51", ".J2C": b"\xff\x4f\xff\x51", ".jp2": b"\x00\x00\x00\x0cjP  "}
    for ext, signature in signatures.items():
        out = tmp_path / f"out{ext}"
        assert main(["decode", str(jac), str(out)]) == 0
        assert out.read_bytes().startswith(signature), ext
        with Image.open(out) as im:
            assert im.size == (48, 40)
    assert main(["decode", str(jac), str(tmp_path / "photo.sgi")]) == 0
    assert (tmp_path / "photo.sgi").read_bytes()[24:29] == b"photo"  # the header's image name (SGI format, 1.0)
    # a name an IM header (ASCII) or a JPEG 2000 writer (valid Unicode) cannot hold is not given to it
    for name in ("café.im", os.fsdecode(b"\xff.jp2"), os.fsdecode(b"\xff.j2k")):
        assert main(["decode", str(jac), str(tmp_path / name)]) == 0, name
        with Image.open(tmp_path / name) as im:
            assert im.size == (48, 40)
    assert (tmp_path / os.fsdecode(b"\xff.j2k")).read_bytes().startswith(signatures[".j2k"])
    assert main(["decode", str(jac), str(tmp_path / "café.pdf")]) == 0  # a title in Unicode, as Pillow writes it
    Image.open(jac).save(tmp_path / "pillow-café.pdf")
    title = re.compile(rb"/Title *(\([^)]*\)|<[^>]*>)")
    assert title.search((tmp_path / "café.pdf").read_bytes()) is not None
    assert title.search((tmp_path / "pillow-café.pdf").read_bytes()) is not None


def _half_transparent(mode: str) -> Image.Image:
    """A crop in ``mode`` (RGBA or LA) whose left half is fully transparent, its hidden colour dark."""
    im = crop().convert(mode)
    alpha = np.full((im.height, im.width), 255, np.uint8)
    alpha[:, : im.width // 2] = 0
    im.putalpha(Image.fromarray(alpha))
    return im


@pytest.mark.parametrize(
    ("mode", "ext", "expected"), [("RGBA", ".jpg", "RGB"), ("LA", ".pcx", "L"), ("LA", ".bmp", "L")]
)
def test_decode_to_a_format_without_alpha_composites_onto_white_and_warns(tmp_path, capsys, mode, ext, expected):
    src = tmp_path / "a.jac"
    _half_transparent(mode).save(src, quality=8)
    assert main(["decode", str(src), str(tmp_path / f"a{ext}")]) == 0
    err = capsys.readouterr().err
    assert "alpha left out" in err and "composited onto white" in err, err
    with Image.open(tmp_path / f"a{ext}") as im:
        assert im.mode == expected
        flat = np.asarray(im.convert("L"))
    assert flat[:, : flat.shape[1] // 2 - 1].min() >= 250  # white where it was transparent (JPEG's ringing aside)
    assert flat[:, flat.shape[1] // 2 + 1 :].mean() < 200  # the image where it was opaque
    assert main(["decode", str(src), str(tmp_path / "a.png")]) == 0
    assert "alpha" not in capsys.readouterr().err
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == mode


def test_an_opaque_image_loses_no_alpha_and_gets_no_warning(tmp_path, capsys):
    src = tmp_path / "opaque.jac"
    crop().convert("RGBA").save(src, quality=4)
    assert main(["decode", str(src), str(tmp_path / "opaque.jpg")]) == 0
    assert "alpha" not in capsys.readouterr().err


def _graded_alpha(mode: str) -> Image.Image:
    """A crop in ``mode`` (RGBA or LA): its left quarter fully transparent, then partly, its right half opaque."""
    im = crop().convert(mode)
    alpha = np.full((im.height, im.width), 255, np.uint8)
    quarter = im.width // 4
    alpha[:, :quarter] = 0
    alpha[:, quarter : 2 * quarter] = 128
    im.putalpha(Image.fromarray(alpha))
    return im


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_decode_to_gif_keeps_whole_transparency_and_warns_of_partial(tmp_path, capsys, mode):
    """GIF stores only fully transparent pixels: partly transparent ones are composited onto white, with a warning."""
    for name, im in (("on-off", _half_transparent(mode)), ("graded", _graded_alpha(mode))):
        src = tmp_path / f"{name}.jac"
        im.save(src, quality=8)
        assert main(["decode", str(src), str(tmp_path / f"{name}.gif")]) == 0
        err = capsys.readouterr().err
        assert ("alpha reduced to on/off" in err) == (name == "graded"), (name, err)
        with Image.open(tmp_path / f"{name}.gif") as gif, Image.open(src) as original:
            alpha = np.asarray(gif.convert("RGBA"))[..., 3]
            grey = np.asarray(gif.convert("L")).astype(int)
            expected = np.asarray(original.getchannel("A"))
        assert np.array_equal(alpha, np.where(expected == 0, 0, 255)), name
        if name == "graded":  # half the hidden colour, half white: light, where a plain GIF would show it dark
            quarter = alpha.shape[1] // 4
            assert grey[:, quarter + 1 : 2 * quarter - 1].min() >= 128


def test_decode_to_icns_keeps_partial_alpha(tmp_path, capsys):
    """Pillow reads an ICNS back at its largest icon: its alpha is still kept, with no warning."""
    src = tmp_path / "graded.jac"
    _graded_alpha("RGBA").save(src, quality=8)
    assert main(["decode", str(src), str(tmp_path / "graded.icns")]) == 0
    assert "alpha" not in capsys.readouterr().err
    with Image.open(tmp_path / "graded.icns") as icns:
        assert icns.mode == "RGBA" and 100 < np.median(np.asarray(icns)[:, icns.width * 3 // 8, 3]) < 160


def test_decode_keeps_grey_alpha_as_rgba_where_the_format_stores_only_that(tmp_path, capsys):
    src = tmp_path / "la.jac"
    _half_transparent("LA").save(src, quality=8)
    assert main(["decode", str(src), str(tmp_path / "la.sgi")]) == 0  # Pillow's SGI writer takes RGBA, not LA
    assert "alpha" not in capsys.readouterr().err
    with Image.open(tmp_path / "la.sgi") as im, Image.open(src) as original:
        assert im.mode == "RGBA"
        assert np.array_equal(np.asarray(im)[..., 3], np.asarray(original)[..., 1])


def test_a_grey_profile_is_left_out_where_the_format_stores_grey_as_colour(tmp_path, capsys):
    grey_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    grey_icc = grey_icc[:16] + b"GRAY" + grey_icc[20:]  # the header's colour space is all this rule reads
    src = tmp_path / "grey.jac"
    crop().convert("L").save(src, quality=4, icc_profile=grey_icc)
    assert main(["decode", str(src), str(tmp_path / "grey.webp")]) == 0  # Pillow's WebP writer stores RGB
    assert "ICC profile left out: WEBP stores these pixels as RGB, which a GRAY profile" in capsys.readouterr().err
    with Image.open(tmp_path / "grey.webp") as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info
    assert main(["decode", str(src), str(tmp_path / "grey.png")]) == 0
    assert "ICC" not in capsys.readouterr().err
    with Image.open(tmp_path / "grey.png") as im:
        assert im.mode == "L" and im.info["icc_profile"] == grey_icc


def test_decode_does_not_replace_an_original_unless_forced(png: Path, tmp_path: Path, capsys) -> None:
    """The README's commands in order (encode photo.png, decode to photo.png) kept the original only by luck."""
    original = png.read_bytes()
    jac = tmp_path / "in.jac"
    assert main(["encode", str(png), str(jac), "-q", "2"]) == 0
    assert main(["decode", str(jac), str(png)]) == 1
    assert_one_line_error(capsys.readouterr().err, "in.png: exists and carries no mark of a decode", "--force")
    assert png.read_bytes() == original
    for ext in (".png", ".jpg", ".tif"):  # a decode's own output carries its mark and is replaced again
        out = tmp_path / f"decoded{ext}"
        assert main(["decode", str(jac), str(out)]) == 0
        assert main(["decode", str(jac), str(out)]) == 0
    assert main(["decode", str(jac), str(tmp_path / "decoded.webp")]) == 0
    assert main(["decode", str(jac), str(tmp_path / "decoded.webp")]) == 1  # a WebP carries no mark
    assert_one_line_error(capsys.readouterr().err, "decoded.webp: exists and is not a PNG, JPEG or TIFF", "--force")
    crop().save(tmp_path / "scan.tif")  # a TIFF no decode wrote
    assert main(["decode", str(jac), str(tmp_path / "scan.tif")]) == 1
    assert_one_line_error(capsys.readouterr().err, "scan.tif: exists and carries no mark of a decode")
    crop().save(tmp_path / "other.jpg")  # a JPEG no decode wrote
    assert main(["decode", str(jac), str(tmp_path / "other.jpg")]) == 1
    assert_one_line_error(capsys.readouterr().err, "other.jpg: exists and carries no mark of a decode")
    assert main(["decode", str(jac), str(png), "--force"]) == 0
    assert png.read_bytes() != original


def test_decode_checks_its_output_before_decoding(jac: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from pillow_jac import codec

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded before the output was checked")

    monkeypatch.setattr(codec, "decode", no_decode)
    (tmp_path / "folder.png").mkdir()
    assert main(["decode", str(jac), str(tmp_path / "folder.png")]) == 1
    assert_one_line_error(capsys.readouterr().err, "folder.png: Is a directory")
    assert main(["decode", str(jac), str(tmp_path / "missing" / "x.png")]) == 1
    assert_one_line_error(capsys.readouterr().err, "x.png: No such file or directory")
    assert main(["decode", str(jac), str(tmp_path / "again.jac")]) == 1  # a decode would encode it again
    assert_one_line_error(capsys.readouterr().err, "again.jac: a decode does not write .jac files", "jac encode")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png"]


# --------------------------------------------------------------------------- info


def test_info(jac: Path, capsys) -> None:
    assert main(["info", str(jac)]) == 0
    out = capsys.readouterr().out
    assert "48x40 RGB" in out
    assert "quality:   3" in out
    assert "bpp" in out
    assert "xmp 4 B" in out


def test_info_json(jac: Path, capsys) -> None:
    assert main(["info", str(jac), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["width"], info["height"], info["mode"]) == (48, 40, "RGB")
    assert info["quality"] == 3.0
    assert info["file_bytes"] == jac.stat().st_size
    assert info["bpp"] == pytest.approx(8 * jac.stat().st_size / (48 * 40), abs=1e-4)
    assert info["xmp_bytes"] == 4 and info["exif_bytes"] == 0
    assert info["y_stream_bytes"] > 0
    header = container.read(jac).header  # the generation the file names
    assert (info["model_id"], info["weights_hash"]) == (header.model_id, header.weights_hash.hex())
    assert info["model_id"] == generations.encoder(None).model_id  # the installed generation that wrote it


def test_info_of_several_files_reports_a_bad_one_and_shows_the_rest(jac: Path, png: Path, capsys) -> None:
    """``jac info *.jac`` took one file only; now each is shown, one that fails is named, and the status is 1."""
    assert main(["info", str(jac), str(png), str(jac)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("48x40 RGB") == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and "not a JAC file" in lines[0] and "1 of 3 files could not be read" in lines[1]
    assert main(["info", "--json", str(jac), str(jac)]) == 0
    infos = json.loads(capsys.readouterr().out)
    assert [info["width"] for info in infos] == [48, 48]
    with pytest.raises(SystemExit):
        main(["info"])
    assert main(["info", "-", "-"]) == 1
    assert "standard input (-) can be read only once" in capsys.readouterr().err


def test_info_shows_an_empty_metadata_chunk(tmp_path: Path, capsys) -> None:
    """An empty ``exif`` chunk is there, and was shown as absent ("metadata: none")."""
    from pillow_jac import container

    path = tmp_path / "e.jac"
    crop().save(path, quality=2)
    parsed = container.read(path)
    parsed.exif = b""
    path.write_bytes(container.serialize(parsed))
    assert main(["info", str(path)]) == 0
    assert "metadata:  exif 0 B" in capsys.readouterr().out
    assert main(["info", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"] == ["exif"]


def test_info_does_not_import_torch(jac: Path) -> None:
    """Nor the range coder, nor the batch machinery (multiprocessing and its fork server): only jac batch needs it."""
    code = (
        "import sys\n"
        "from pillow_jac.cli import main\n"
        f"rc = main(['info', {str(jac)!r}])\n"
        "loaded = [m for m in ('torch', 'constriction', 'pillow_jac.local_batch') if m in sys.modules]\n"
        "assert not loaded, f'{loaded} imported'\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "48x40 RGB" in result.stdout


# --------------------------------------------------------------------------- errors


def test_missing_input(tmp_path: Path, capsys) -> None:
    assert main(["encode", str(tmp_path / "nope.png"), str(tmp_path / "o.jac")]) == 1
    assert_one_line_error(capsys.readouterr().err, "nope.png", "No such file")
    assert not (tmp_path / "o.jac").exists()


def test_not_a_jac_file(png: Path, tmp_path: Path, capsys) -> None:
    assert main(["decode", str(png), str(tmp_path / "o.png")]) == 1
    assert_one_line_error(capsys.readouterr().err, "not a JAC file")
    assert main(["info", str(png)]) == 1
    assert_one_line_error(capsys.readouterr().err, "not a JAC file")


def test_corrupt_jac(jac: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jac"
    bad.write_bytes(jac.read_bytes()[:-20])
    assert main(["info", str(bad)]) == 1
    assert_one_line_error(capsys.readouterr().err, "truncated")
    assert main(["decode", str(bad), str(tmp_path / "o.png")]) == 1
    assert_one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "o.png").exists()


def test_unsupported_mode(tmp_path: Path, capsys) -> None:
    """32-bit integer grey has no range a file defines: refused, and nothing is left behind."""
    src = tmp_path / "deep.tif"
    Image.new("I", (8, 8), 1000).save(src)
    out = tmp_path / "deep.jac"
    assert main(["encode", str(src), str(out)]) == 1
    assert_one_line_error(capsys.readouterr().err, "cannot write mode I ")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["deep.tif"]  # no temporary file left behind


def test_sixteen_bit_grey_is_scaled_to_eight_bits_with_a_warning(tmp_path: Path, capsys) -> None:
    """A 16-bit grey PNG was refused ("cannot write mode I;16"); Pillow's convert("L") would clip it at 255."""
    ramp = np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16)
    src = tmp_path / "deep.png"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(ramp).save(src, icc_profile=srgb[:16] + b"GRAY" + srgb[20:])  # a grey profile: kept
    assert Image.open(src).mode == "I;16"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["encode", str(src), str(tmp_path / "deep.jac"), "-q", "8"]) == 0
    assert "16-bit grey samples reduced to 8 bits" in capsys.readouterr().err
    with Image.open(tmp_path / "deep.jac") as im:
        assert im.mode == "L" and im.info["icc_profile"] == Image.open(src).info["icc_profile"]
        error = np.abs(np.asarray(im).astype(float) - ramp / 257.0)
    assert error.mean() < 3 and np.asarray(im).max() > 240  # scaled, not clipped (clipping gives 255 from 1/256 on)


def test_sixteen_bit_grey_and_alpha_stays_grey_and_sixteen_bit_colour_is_named(tmp_path: Path, capsys) -> None:
    """Pillow opens a 16-bit grey+alpha PNG as RGBA: it was stored as colour (its decode no longer grey) with no
    warning, and 16-bit colour was reduced to 8 bits silently, where 16-bit grey is named."""
    grey = np.linspace(0, 65535, 24 * 32).reshape(24, 32)
    alpha = np.full_like(grey, 65535)
    alpha[:, :8] = 0
    sixteen_bit_png(tmp_path / "la.png", np.dstack([grey, alpha]), 4)
    sixteen_bit_png(tmp_path / "rgb.png", np.dstack([grey, grey[::-1], grey]), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["encode", str(tmp_path / "la.png"), str(tmp_path / "la.jac"), "-q", "6"]) == 0
        assert "16-bit grey and alpha samples reduced to 8 bits" in capsys.readouterr().err
        assert main(["encode", str(tmp_path / "rgb.png"), str(tmp_path / "rgb.jac"), "-q", "6"]) == 0
        assert "16-bit colour samples reduced to 8 bits" in capsys.readouterr().err
    with Image.open(tmp_path / "la.jac") as im:
        assert im.mode == "LA"
        assert (np.asarray(im)[:, :8, 1] == 0).all() and (np.asarray(im)[:, 8:, 1] == 255).all()
    with Image.open(tmp_path / "rgb.jac") as im:
        assert im.mode == "RGB"


def test_sixteen_bit_pgm_and_a_transparent_grey_level(tmp_path: Path, capsys) -> None:
    """A 16-bit PGM opens as mode I (still refused once); a 16-bit PNG's tRNS grey level became the 8-bit
    level of its low byte, making other pixels transparent. The key is matched on the 16-bit samples."""
    ramp = np.linspace(0, 65535, 24 * 40).reshape(24, 40).astype(np.uint16)
    pgm = tmp_path / "deep.pgm"
    pgm.write_bytes(b"P5 40 24 65535\n" + ramp.astype(">u2").tobytes())
    assert Image.open(pgm).mode == "I"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["encode", str(pgm), str(tmp_path / "pgm.jac"), "-q", "8"]) == 0
    with Image.open(tmp_path / "pgm.jac") as im:
        assert im.mode == "L" and np.abs(np.asarray(im).astype(float) - ramp / 257.0).mean() < 3
    keyed = ramp.copy()
    keyed[:4, :4] = 4660  # the transparent level; 4660 & 0xFF = 52 is the 8-bit level of other pixels
    png = tmp_path / "keyed.png"
    Image.fromarray(keyed).save(png, transparency=4660)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["encode", str(png), str(tmp_path / "keyed.jac"), "-q", "8"]) == 0
    with Image.open(tmp_path / "keyed.jac") as im:
        alpha = np.asarray(im)[:, :, 1]
    assert im.mode == "LA" and (alpha == 0).sum() == 16 and (alpha[:4, :4] == 0).all()
    assert "16-bit grey samples reduced" in capsys.readouterr().err


@pytest.mark.parametrize("key", [(0, 100, 255), (4660, 22136, 39612)])
def test_a_sixteen_bit_colour_png_drops_its_transparent_colour_with_a_warning(tmp_path: Path, capsys, key) -> None:
    """Pillow reads the samples as 8 bits but keeps the tRNS colour at 16: as an 8-bit colour (0, 100, 255) keys
    other pixels than the file's (here, none of the keyed ones and all of the others), and one above 255 none."""
    samples = np.full((6, 5, 3), key, ">u2")
    samples[3:] = (0, 25600, 65280)  # read as the 8-bit (0, 100, 255): not the file's transparent colour
    png = tmp_path / "rgb16.png"
    sixteen_bit_png(png, samples, 2, transparency=key)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["encode", str(png), str(tmp_path / "out.jac"), "-q", "8"]) == 0
    with Image.open(tmp_path / "out.jac") as im:
        assert im.mode == "RGB"
    err = capsys.readouterr().err
    assert f"transparent colour {key} is a 16-bit one that no 8-bit pixel matches" in err, err


def test_encode_converts_cmyk_through_its_icc_profile_and_warns_without_one(tmp_path: Path, capsys) -> None:
    """As a colour-managed converter: a print file's inks through its profile to sRGB, not Pillow's naive formula."""
    from .helpers import cmyk_profile

    inks = Image.new("CMYK", (64, 32), (255, 0, 0, 0))  # cyan, and magenta on the right
    inks.paste((0, 255, 0, 0), (32, 0, 64, 32))
    profile = cmyk_profile()
    inks.save(tmp_path / "print.jpg", icc_profile=profile, quality=95)
    assert main(["encode", str(tmp_path / "print.jpg"), str(tmp_path / "print.jac"), "-q", "8"]) == 0
    assert capsys.readouterr().err == ""
    srgb = ImageCms.createProfile("sRGB")
    with Image.open(tmp_path / "print.jpg") as source:
        managed = ImageCms.profileToProfile(
            source, ImageCms.ImageCmsProfile(io.BytesIO(profile)), srgb, outputMode="RGB"
        )
        naive = np.asarray(source.convert("RGB"), np.int16)
    with Image.open(tmp_path / "print.jac") as im:
        assert im.info["icc_profile"][16:20] == b"RGB "  # an sRGB profile now describes the pixels
        decoded = np.asarray(im.convert("RGB"), np.int16)
    assert np.abs(decoded - np.asarray(managed, np.int16)).mean() < 8  # the codec's error, at the colours' edge most
    assert np.abs(decoded - naive).mean() > 30
    inks.save(tmp_path / "broken.jpg", icc_profile=profile[:300], quality=95)  # its tags cut off
    assert main(["encode", str(tmp_path / "broken.jpg"), str(tmp_path / "broken.jac"), "-q", "1"]) == 0
    assert "broken.jpg: CMYK: its ICC profile is unusable" in capsys.readouterr().err
    inks.save(tmp_path / "bare.jpg", quality=95)
    assert main(["encode", str(tmp_path / "bare.jpg"), str(tmp_path / "bare.jac"), "-q", "8"]) == 0
    assert "bare.jpg: CMYK without a CMYK ICC profile converted to RGB naively" in capsys.readouterr().err
    with Image.open(tmp_path / "bare.jac") as im, Image.open(tmp_path / "bare.jpg") as source:
        assert "icc_profile" not in im.info
        assert np.abs(np.asarray(im.convert("RGB"), np.int16) - np.asarray(source.convert("RGB"), np.int16)).mean() < 8


def test_failed_encode_keeps_existing_output(png: Path, tmp_path: Path, monkeypatch) -> None:
    from pillow_jac import codec

    out = tmp_path / "out.jac"
    out.write_bytes(b"previous content")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(codec, "encode", broken)
    assert main(["encode", str(png), str(out)]) == 1
    assert out.read_bytes() == b"previous content"


def test_unusable_output_fails_before_encoding(png: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from pillow_jac import codec

    def no_encode(*args, **kwargs):
        raise AssertionError("encoded before the output path was checked")

    monkeypatch.setattr(codec, "encode", no_encode)
    (tmp_path / "folder.jac").mkdir()
    assert main(["encode", str(png), str(tmp_path / "folder.jac")]) == 1
    assert_one_line_error(capsys.readouterr().err, "folder.jac: Is a directory")
    assert main(["encode", str(png), str(tmp_path / "missing" / "x.jac")]) == 1
    assert_one_line_error(capsys.readouterr().err, "x.jac: No such file or directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.jac", "in.png"]


def test_only_the_first_frame_is_encoded_with_a_warning(tmp_path: Path, capsys) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue", "green")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert main(["encode", str(gif), str(tmp_path / "anim.jac"), "-q", "1"]) == 0
    assert capsys.readouterr().err == f"jac: warning: {gif} has 3 frames; only the first is encoded\n"
    with Image.open(tmp_path / "anim.jac") as im:
        assert im.size == (8, 8)
    frames[0].save(tmp_path / "one.gif")
    assert main(["encode", str(tmp_path / "one.gif"), str(tmp_path / "one.jac"), "-q", "1"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("while_", ["encoding", "writing"])
def test_sigterm_stops_like_ctrl_c(png: Path, tmp_path: Path, monkeypatch, capsys, while_: str) -> None:
    """SIGTERM (kill, timeout, docker stop) mid-encode or mid-write: status 143, nothing left in the output folder."""
    from pillow_jac import codec, files

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_encode, real_write = codec.encode, files.write_atomic

    def encode(*args, **kwargs):
        if while_ == "encoding":
            os.kill(os.getpid(), signal.SIGTERM)
        return real_encode(*args, **kwargs)

    def write_atomic(path, write):
        def killed(f):
            f.write(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            write(f)

        real_write(path, killed if while_ == "writing" else write)

    monkeypatch.setattr(codec, "encode", encode)
    monkeypatch.setattr(files, "write_atomic", write_atomic)  # what conversion's write_file calls
    before = signal.getsignal(signal.SIGTERM)
    assert main(["encode", str(png), str(out_dir / "o.jac")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "jac: terminated"
    assert list(out_dir.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # main() puts the handler back


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_that_a_library_raises_again_as_ctrl_c_is_still_terminated(png: Path, monkeypatch, capsys) -> None:
    """Ray's wait catches the exception SIGTERM raises and raises KeyboardInterrupt instead: still 143."""
    from pillow_jac import codec

    def encode(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # as ray.wait does
        raise AssertionError("SIGTERM did not stop the encode")

    monkeypatch.setattr(codec, "encode", encode)
    assert main(["encode", str(png), str(png.with_suffix(".jac"))]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "jac: terminated"
    monkeypatch.setattr(codec, "encode", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["encode", str(png), str(png.with_suffix(".jac"))]) == 130  # a Ctrl-C is still one
    assert capsys.readouterr().err.strip() == "jac: interrupted"


def test_standard_input_and_output(png: Path, tmp_path: Path, monkeypatch, capsysbinary) -> None:
    """``-`` reads standard input and writes standard output, byte for byte what a file would get."""
    import io

    assert main(["encode", str(png), str(tmp_path / "file.jac")]) == 0
    capsysbinary.readouterr()
    assert main(["encode", str(png), "-"]) == 0
    piped = capsysbinary.readouterr().out
    assert piped == (tmp_path / "file.jac").read_bytes()
    assert not Path("-").exists()

    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(piped)})())
    assert main(["decode", "-", "-"]) == 0
    decoded = capsysbinary.readouterr().out
    assert decoded.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(decoded)) as im, Image.open(tmp_path / "file.jac") as direct:
        assert im.tobytes() == direct.tobytes()

    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(png.read_bytes())})())
    assert main(["encode", "-", str(tmp_path / "stdin.jac")]) == 0
    assert (tmp_path / "stdin.jac").read_bytes() == piped

    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(b"not an image")})())
    assert main(["encode", "-", str(tmp_path / "junk.jac")]) == 1
    assert_one_line_error(capsysbinary.readouterr().err.decode(), "standard input is not an image")

    # endless input (cat /dev/zero |) stops at the most that an image Pillow opens can hold
    from pillow_jac import conversion

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(conversion, "STDIN_METADATA_BYTES", 0)
    endless = type("Endless", (io.RawIOBase,), {"readable": lambda self: True, "readinto": lambda self, b: len(b)})
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BufferedReader(endless())})())
    assert main(["encode", "-", str(tmp_path / "endless.jac")]) == 1
    assert_one_line_error(capsysbinary.readouterr().err.decode(), "standard input holds more than")


def test_dash_as_a_file_name_and_missing_standard_streams(png: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``./-`` is the file named "-", not standard output; a closed standard stream is a one-line error."""
    monkeypatch.chdir(tmp_path)
    assert main(["encode", str(png), "./-", "--force"]) == 0
    assert (tmp_path / "-").read_bytes()[:8] == MAGIC
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["encode", str(png), "-"]) == 1
    assert_one_line_error(capsys.readouterr().err, "there is no standard output")
    for command in (["info", "./-"], ["info", "--json", "./-"], ["models"]):  # printed nothing and exited 0
        assert main(command) == 1, command
        assert_one_line_error(capsys.readouterr().err, "there is no standard output")
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["decode", "-", str(tmp_path / "o.png")]) == 1
    assert_one_line_error(capsys.readouterr().err, "there is no standard input")


@pytest.mark.skipif(os.name != "posix", reason="SIGPIPE")
def test_a_reader_that_goes_away_ends_it_quietly(jac: Path) -> None:
    """``jac decode x.jac - | true``: no error message, the status of a process ended by SIGPIPE."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pillow_jac", "decode", "-", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    proc.stdout.close()  # the reader goes away before anything is written: the input is not sent yet
    proc.stdin.write(jac.read_bytes())
    proc.stdin.close()
    status = proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    assert status == 128 + signal.SIGPIPE, err
    assert err == ""


@pytest.mark.skipif(os.name != "posix", reason="SIGPIPE")
def test_a_reader_that_goes_away_part_way_ends_it_quietly(tmp_path: Path) -> None:
    """``jac decode x.jac - | head -c 10`` with more than a pipe's 64 KiB of PNG: the write that the reader left
    during came back short, without an error, and jac ended with status 0 having written a part."""
    noise = (np.random.default_rng(0).random((256, 384, 3)) * 255).astype(np.uint8)
    (tmp_path / "noise.jac").write_bytes(pillow_jac.encode(noise, 8))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pillow_jac", "decode", str(tmp_path / "noise.jac"), "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    status = proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    assert (status, err) == (128 + signal.SIGPIPE, "")


def test_standard_output_gets_every_byte_of_short_writes() -> None:
    from pillow_jac.conversion import _emit

    class Trickle(io.BytesIO):
        def write(self, data) -> int:  # as a pipe may: part of each write
            return super().write(bytes(data[:1000]))

    out = Trickle()
    data = bytes(range(256)) * 40
    _emit(Path("-"), data, out)
    assert out.getvalue() == data


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_an_ignored_sigterm_stays_ignored(png: Path, tmp_path: Path, monkeypatch) -> None:
    """Started with SIGTERM ignored (nohup-style wrappers), jac keeps ignoring it while it works."""
    from pillow_jac import cli

    during = []
    real_run = cli._run

    def run(args):
        during.append(signal.getsignal(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the encode goes on
        real_run(args)

    monkeypatch.setattr(cli, "_run", run)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert main(["encode", str(png), str(tmp_path / "o.jac")]) == 0
        assert during == [signal.SIG_IGN]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "o.jac").read_bytes()[:8] == MAGIC


@pytest.mark.skipif(os.name != "posix", reason="a pseudo-terminal")
def test_image_data_is_not_written_to_a_terminal(png: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pillow_jac", "encode", str(png), "-"],
            stdout=follower, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "refusing to write image data to a terminal")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_outputs_get_the_umask_mode_and_keep_an_existing_mode(png: Path, jac: Path, tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        assert main(["encode", str(png), str(tmp_path / "new.jac"), "-q", "1"]) == 0
        assert main(["decode", str(jac), str(tmp_path / "new.png")]) == 0
        existing = tmp_path / "existing.png"
        existing.write_bytes(b"old")
        existing.chmod(0o664)
        assert main(["decode", str(jac), str(existing), "--force"]) == 0  # not a decode's output: replaced if forced
    finally:
        os.umask(previous)
    assert (tmp_path / "new.jac").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "new.png").stat().st_mode & 0o777 == 0o640
    assert existing.stat().st_mode & 0o777 == 0o664


def test_write_errors_name_the_output(png: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "missing-folder" / "out.jac"
    assert main(["encode", str(png), str(out)]) == 1
    assert_one_line_error(capsys.readouterr().err, str(out), "No such file")


def test_unknown_output_extension(jac: Path, tmp_path: Path, capsys) -> None:
    assert main(["decode", str(jac), str(tmp_path / "out.xyz")]) == 1
    assert_one_line_error(capsys.readouterr().err, "cannot write '.xyz'")
    assert main(["decode", str(jac), str(tmp_path / "noext")]) == 1
    assert_one_line_error(capsys.readouterr().err, "no file extension")
    assert main(["decode", str(jac), str(tmp_path / "out.xbm")]) == 1  # Pillow writes only bilevel XBM
    assert_one_line_error(capsys.readouterr().err, "out.xbm: Pillow's XBM writer takes none of the modes RGB")
    assert not (tmp_path / "out.xbm").exists()
    rgba = np.dstack([natural_image(16, 16), np.full((16, 16), 128, np.uint8)])  # half transparent
    (tmp_path / "rgba.jac").write_bytes(pillow_jac.encode(rgba, 2))
    with warnings.catch_warnings():  # the error alone: "alpha left out" was warned before it
        warnings.simplefilter("always")
        assert main(["decode", str(tmp_path / "rgba.jac"), str(tmp_path / "rgba.xbm")]) == 1
    assert_one_line_error(capsys.readouterr().err, "takes none of the modes RGB")
    for name in ("rgba.h5", "rgba.wmf"):  # Pillow's stub formats: no writer in any mode, not a mode refused
        assert main(["decode", str(tmp_path / "rgba.jac"), str(tmp_path / name)]) == 1
        assert_one_line_error(capsys.readouterr().err, "Pillow has no ", " writer here (", "save handler not installed")


def _same_file_paths(path: Path) -> list[Path]:
    """Other paths of the file at ``path``: the path itself, through ``..``, a symbolic link and a hard link."""
    other = path.parent / "sub"
    other.mkdir(exist_ok=True)
    paths = [path, other / ".." / path.name]
    if hasattr(os, "symlink"):
        (other / f"link{path.suffix}").symlink_to(path)
        paths.append(other / f"link{path.suffix}")
    if hasattr(os, "link"):
        os.link(path, other / f"hard{path.suffix}")
        paths.append(other / f"hard{path.suffix}")
    return paths


def test_encode_refuses_to_overwrite_its_input(png: Path, capsys) -> None:
    before = png.read_bytes()
    for out in _same_file_paths(png):
        for force in ([], ["--force"]):
            assert main(["encode", str(png), str(out), *force]) == 1
            assert_one_line_error(capsys.readouterr().err, "the output is the input file")
    assert png.read_bytes() == before


def test_decode_refuses_to_overwrite_its_input(jac: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "copy.jac"
    src.write_bytes(jac.read_bytes())
    for out in _same_file_paths(src):
        assert main(["decode", str(src), str(out)]) == 1
        assert_one_line_error(capsys.readouterr().err, "the output is the input file")
    assert src.read_bytes() == jac.read_bytes()


def test_encode_output_must_end_in_jac_unless_forced(png: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.png"
    assert main(["encode", str(png), str(out)]) == 1
    assert_one_line_error(capsys.readouterr().err, str(out), ".jac", "--force")
    assert not out.exists()
    assert main(["encode", str(png), str(out), "--force", "-q", "1"]) == 0
    assert out.read_bytes().startswith(MAGIC)
    assert main(["encode", str(png), str(tmp_path / "OUT.JAC"), "-q", "1"]) == 0
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    assert "--force" in capsys.readouterr().out  # documented in the help


class _BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class _NotAnException(BaseException):
    pass


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("boom\n  at line 2\nand more"), "RuntimeError: boom"),
        (AssertionError(), "AssertionError"),
        (KeyError("layout"), "KeyError: 'layout'"),
        (OverflowError("int too large to convert"), "OverflowError: int too large to convert"),
        (NotImplementedError("no kernel for 'meta'"), "NotImplementedError: no kernel for 'meta'"),
        (SyntaxError("not a JAC file"), "not a JAC file"),
        (ValueError("quality must be from 1 to 8"), "quality must be from 1 to 8"),
        (_BrokenStr(), "_BrokenStr"),
        (_NotAnException("odd"), "_NotAnException: odd"),
    ],
)
def test_any_error_is_one_line(png: Path, tmp_path: Path, capsys, monkeypatch, error, expected) -> None:
    import pillow_jac.cli

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pillow_jac.cli, "encode_file", fail)
    assert main(["encode", str(png), str(tmp_path / "o.jac")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err)
    assert captured.err.strip() == f"jac: error: {expected}"


def test_warnings_are_one_line_and_name_the_source(png: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """An encode's warnings name its source: Pillow's own (a bomb warning, a broken APNG) did not, so a log of
    many commands did not say which file it was; the codec's, which name it already, are not named twice."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 40 - 1)  # the input is just over the limit: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["encode", str(png), str(tmp_path / "o.jac"), "-q", "1"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"jac: warning: {png}: Image size (1920 pixels) exceeds limit") and err.count("\n") == 1, err
    from .test_local_batch import apng_with_no_frames

    monkeypatch.undo()
    apng = tmp_path / "broken.png"
    apng_with_no_frames(apng)
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": io.BytesIO(apng.read_bytes())})())
    assert main(["encode", "-", str(tmp_path / "a.jac"), "-q", "1"]) == 0
    assert main(["encode", str(apng), str(tmp_path / "b.jac"), "-q", "1"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"jac: warning: {name}: Invalid APNG, will use default PNG image if possible"
        for name in ("standard input", apng)
    ]
    one = tmp_path / "1"  # a name that the warning's text holds elsewhere: it is named all the same
    one.write_bytes(png.read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 40 - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["encode", "1", "one.jac", "-q", "1"]) == 0
    assert capsys.readouterr().err.startswith("jac: warning: 1: Image size (1920 pixels)")


def test_decode_warns_and_refuses_like_image_open(jac: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 40 - 1)  # over the limit: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["decode", str(jac), str(tmp_path / "o.png")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("jac: warning: Image size (1920 pixels) exceeds limit") and err.count("\n") == 1, err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 40 // 2 - 1)  # over twice the limit: refused
    assert main(["decode", str(jac), str(tmp_path / "p.png")]) == 1
    assert_one_line_error(capsys.readouterr().err, "decompression bomb")
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("quality", ["75", "0", "abc"])
def test_bad_quality_is_a_usage_error(png: Path, tmp_path: Path, quality: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["encode", str(png), str(tmp_path / "o.jac"), "-q", quality])
    assert exc.value.code == 2
    assert "quality" in capsys.readouterr().err


def test_usage_errors(capsys) -> None:
    for argv in ([], ["frobnicate"], ["encode", "only-one-arg"], ["batch", "a", "b"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


# --------------------------------------------------------------------------- batch


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    crop(0, 0).save(d / "a.png")
    crop(60, 30).save(d / "b.jpg", quality=95)
    crop(200, 100, 32, 24).save(d / "sub" / "c.png")
    (d / "notes.txt").write_text("not an image")
    return d


def test_batch_roundtrip(photo_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "jac"
    assert main(["batch", str(photo_dir), str(out), "--to", "jac", "-q", "2"]) == 0
    assert listing(out) == ["a.jac", "b.jac"]
    err = capsys.readouterr().err
    assert "[2/2]" in err  # progress on stderr
    with Image.open(out / "a.jac") as im:
        assert im.info["jac_quality"] == 2.0

    back = tmp_path / "png"
    assert main(["batch", str(out), str(back), "--to", "png", "--quiet"]) == 0
    assert listing(back) == ["a.png", "b.png"]
    assert capsys.readouterr().err == ""
    with Image.open(back / "b.png") as im:
        assert im.size == (48, 40)


@pytest.fixture
def fake_encode(monkeypatch, jac: Path) -> list:
    """Replace the codec's encoder by one that returns a fixed file (for tests of the batch logic)."""
    from pillow_jac import codec

    calls = []

    def encode(image, quality, **kwargs):
        calls.append((image.shape, quality))
        return jac.read_bytes()

    monkeypatch.setattr(codec, "encode", encode)
    return calls


def test_batch_recursive(fake_encode: list, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "jac"
    assert main(["batch", str(photo_dir), str(out), "--to", "jac", "-r", "--quiet"]) == 0
    assert (out / "sub" / "c.jac").is_file()
    assert sorted(fake_encode) == [((24, 32, 3), 4.0), ((40, 48, 3), 4.0), ((40, 48, 3), 4.0)]


def test_batch_reports_failures(fake_encode: list, photo_dir: Path, tmp_path: Path, capsys) -> None:
    (photo_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    out = tmp_path / "jac"
    assert main(["batch", str(photo_dir), str(out), "--to", "jac", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert any("broken.png" in line for line in err)
    assert err[-1] == "jac: error: 1 of 3 files failed"
    assert listing(out) == ["a.jac", "b.jac"]  # the others were converted


def test_batch_warns_of_frames(fake_encode: list, tmp_path: Path, capsys) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    frames[0].save(photos / "anim.gif", save_all=True, append_images=frames[1:])
    assert main(["batch", str(photos), str(tmp_path / "out"), "--to", "jac", "--quiet"]) == 0
    warnings_shown = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings_shown == [f"jac: warning: {photos / 'anim.gif'}: 2 frames; only the first is encoded"]


def test_batch_errors(tmp_path: Path, capsys) -> None:
    assert main(["batch", str(tmp_path / "missing"), str(tmp_path / "o"), "--to", "jac"]) == 1
    assert_one_line_error(capsys.readouterr().err, "missing: no such directory")
    (tmp_path / "file.png").write_bytes(b"")
    assert main(["batch", str(tmp_path / "file.png"), str(tmp_path / "o"), "--to", "jac"]) == 1
    assert_one_line_error(capsys.readouterr().err, "file.png: not a directory")
    (tmp_path / "in").mkdir()
    crop().save(tmp_path / "in" / "a.png")
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "file.png"), "--to", "jac"]) == 1
    assert_one_line_error(capsys.readouterr().err, "file.png: not a directory (the output folder)")
    (tmp_path / "empty").mkdir()
    assert main(["batch", str(tmp_path / "empty"), str(tmp_path / "o"), "--to", "png"]) == 1
    assert_one_line_error(capsys.readouterr().err, "no .jac files found")
    for jobs in ("0", "-2", "two"):  # a usage error: status 2, as for every other bad option
        with pytest.raises(SystemExit) as exit_info:
            main(["batch", str(tmp_path / "empty"), str(tmp_path / "o"), "--to", "png", "-j", jobs])
        assert exit_info.value.code == 2
        assert "-j/--jobs: must be a whole number of at least 1" in capsys.readouterr().err
    for options in (["-q", "3"], ["-e", "2"], ["--size", "1k", "--preview"]):  # ignored before, status 0
        with pytest.raises(SystemExit) as exit_info:
            main(["batch", str(tmp_path / "in"), str(tmp_path / "o"), "--to", "png", *options])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "options of --to jac, not of --to png" in err
        assert err.startswith("usage: jac batch ")  # the command's usage, as argparse's own errors show it
    with pytest.raises(SystemExit) as exit_info:  # accepted before, and it changed nothing
        main(["batch", str(tmp_path / "in"), str(tmp_path / "o"), "--to", "jac", "--force"])
    assert exit_info.value.code == 2 and "--force: an option of --to png" in capsys.readouterr().err


def test_a_bad_device_fails_a_batch_once(tmp_path: Path, capsys, monkeypatch) -> None:
    """A bad --device, --model or JAC_WEIGHTS was reported once per file, after each input was opened (10,000 lines
    for 10,000 files)."""
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        crop().save(tmp_path / "in" / name)
    monkeypatch.setenv("JAC_DEVICE", "meta")  # spelt like a device, and one torch has, but not one the codec runs on
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "o"), "--to", "jac"]) == 1
    assert_one_line_error(capsys.readouterr().err, "device 'meta' (JAC_DEVICE=meta) is not supported")
    monkeypatch.setenv("JAC_DEVICE", "bogus")  # named: a user who gave no --device may not know the variable
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "o"), "--to", "jac"]) == 1
    assert_one_line_error(capsys.readouterr().err, "unknown device 'bogus' (JAC_DEVICE=bogus)")
    import torch

    if not torch.cuda.is_available():
        monkeypatch.setenv("JAC_DEVICE", "cuda")
        assert main(["encode", str(tmp_path / "in" / "a.png"), str(tmp_path / "a.jac")]) == 1
        assert_one_line_error(capsys.readouterr().err, "CUDA was requested (JAC_DEVICE=cuda) but is not available")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    monkeypatch.delenv("JAC_DEVICE")
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "o"), "--to", "jac", "--model", "nope"]) == 1
    assert_one_line_error(capsys.readouterr().err, "model 'nope' cannot encode here")
    monkeypatch.setenv("JAC_WEIGHTS", str(tmp_path / "missing.safetensors"))
    assert main(["batch", str(tmp_path / "in"), str(tmp_path / "o"), "--to", "jac"]) == 1
    assert_one_line_error(capsys.readouterr().err, "missing.safetensors: no such file")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="POSIX signals and process groups")
@pytest.mark.parametrize("target", ["group", "parent"])
def test_ctrl_c_stops_a_parallel_batch(tmp_path: Path, target: str) -> None:
    """SIGINT to the terminal's process group (Ctrl-C) or to jac alone: exit 130 at once, converting nothing more."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    image = crop(0, 0, 384, 256)
    for i in range(200):
        image.crop((i, i // 2, i + 64, i // 2 + 64)).save(photos / f"{i:03d}.png", compress_level=0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pillow_jac", "batch", str(photos), str(out), "--to", "jac", "-j", "2", "--quiet"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
        # as a terminal starts it: a process started with SIGINT ignored (a background job of a script, nohup)
        # keeps ignoring it, as it should, so a test run from such a job would otherwise see no Ctrl-C at all
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.jac"))) < 4:  # both workers are converting
            assert proc.poll() is None and time.monotonic() < deadline, "the batch did not get going"
            time.sleep(0.02)
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        converted = len(list(out.glob("*.jac")))
        _, err = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "jac: interrupted" and "Traceback" not in err, err
    assert stopped_after < 8.0  # about 1-3 s on 2 busy cores
    assert len(list(out.glob("*.jac"))) <= converted + 2  # at most the files being renamed into place
    assert [name for name in listing(out) if not name.endswith(".jac")] == []  # no temporary file left behind


# --------------------------------------------------------------------------- as a program (no torch: fast)


def test_python_m_version_and_help() -> None:
    result = run_jac("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"jac (pillow_jac) {__version__}"
    result = run_jac("--help")
    assert result.returncode == 0
    for command in ("encode", "decode", "info", "batch"):
        assert command in result.stdout


def test_python_m_error_exit_status(tmp_path: Path) -> None:
    result = run_jac("decode", str(tmp_path / "missing.jac"), str(tmp_path / "o.png"))
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "missing.jac")
    result = run_jac("encode", "in.png")
    assert result.returncode == 2
    assert "usage: jac encode" in result.stderr


def test_progress_bar_on_a_terminal() -> None:
    import io

    from pillow_jac.batch_plan import Progress as _Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = _Progress(2, stream)
    bar.step("a.png")
    bar.step("b.png", error="cannot identify image file")
    text = stream.getvalue()
    assert "\r[###############...............] 1/2" in text
    assert "jac: b.png: cannot identify image file" in text
    assert "] 2/2  " in text and text.endswith("s\n")  # the finished bar ends its line


def test_models_and_info_name_the_decoder_generation(tmp_path, capsys):
    """``jac models`` lists the installed generations; ``jac info`` says which one a file needs and if it is here."""
    import json as _json

    from fuzz import fuzz_jac as fz
    from pillow_jac import cli, codec

    assert cli.main(["models", "--json"]) == 0
    listed = _json.loads(capsys.readouterr().out)
    assert listed[0]["model_id"] == "mbt-128-192-r006" and listed[0]["can_encode"] is True
    assert listed[0]["role"] == "encode+decode"
    data = codec.encode(natural_image(8, 8), 2)
    (tmp_path / "here.jac").write_bytes(data)
    (tmp_path / "gone.jac").write_bytes(fz.restamp(data, "mbt-9-12-r099", bytes(8)))
    assert cli.main(["info", str(tmp_path / "here.jac")]) == 0
    assert "mbt-128-192-r006 (weights 19772a6335c73e41), installed" in capsys.readouterr().out
    assert cli.main(["info", str(tmp_path / "gone.jac")]) == 0
    out = capsys.readouterr().out
    assert "mbt-9-12-r099" in out and "NOT installed" in out and "JAC_MODELS" in out
    assert cli.main(["info", "--json", str(tmp_path / "gone.jac")]) == 0
    assert _json.loads(capsys.readouterr().out)["decoder_installed"] is False
    (tmp_path / "other.jac").write_bytes(fz.restamp(data, "mbt-128-192-r006", bytes(8)))  # the id, another hash
    assert cli.main(["info", str(tmp_path / "other.jac")]) == 0
    assert "NOT installed: the installed one has another hash" in capsys.readouterr().out
    # --model picks the generation to encode for
    src = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(natural_image(8, 8)).save(src)
    assert cli.main(["encode", str(src), str(tmp_path / "m.jac"), "--model", "mbt-128-192-r006"]) == 0
    assert cli.main(["encode", str(src), str(tmp_path / "x.jac"), "--model", "mbt-1-1-r001"]) != 0
    assert "cannot encode here" in capsys.readouterr().err


def test_info_reads_standard_input(jac: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pillow_jac", "info", "-", "--json"],
        input=jac.read_bytes(),
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["file"] == "-" and info["file_bytes"] == jac.stat().st_size


@pytest.mark.skipif(os.name != "posix", reason="FIFOs")
def test_info_of_a_pipe_stops_at_the_signature_and_counts_what_it_read(jac: Path, tmp_path: Path) -> None:
    """``jac info -`` read all of standard input before looking at the signature (all of /dev/zero: out of
    memory); a FIFO's size was its st_size, 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pillow_jac", "info", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    proc.stdin.write(b"not a JAC file, and more to come")
    proc.stdin.flush()  # the pipe stays open: an input read to its end would never end
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
        proc.stdin.close()
    assert b"not a JAC file" in proc.stderr.read()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(jac.read_bytes()))
    writer.start()
    result = run_jac("info", "--json", str(fifo))
    writer.join()
    assert json.loads(result.stdout)["file_bytes"] == jac.stat().st_size


def test_info_shows_a_preview(tmp_path: Path, capsys) -> None:
    noise = (np.random.default_rng(0).random((300, 600, 3)) * 255).astype(np.uint8)
    path = tmp_path / "p.jac"
    path.write_bytes(pillow_jac.encode(noise, 2, preview=True))
    assert main(["info", str(path)]) == 0
    assert "preview 512x256 " in capsys.readouterr().out
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preview_size"] == [512, 256] and info["preview_bytes"] > 0


def test_info_counts_unknown_chunks_without_keeping_them(jac: Path, tmp_path: Path, capsys) -> None:
    """A flood of unknown chunks is counted per type, not kept or listed one by one."""
    from pillow_jac import container

    parsed = container.read(jac)
    parsed.unknown_chunks = [(b"abcd", b"")] * 5000 + [(b"wxyz", b"1")] * 3
    path = tmp_path / "flood.jac"
    path.write_bytes(container.serialize(parsed))
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["unknown_chunks"], info["unknown_chunk_count"]) == (["abcd", "wxyz"], 5003)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unknown chunk 'abcd', unknown chunk 'wxyz', 5003 unknown chunks of 2 types" in out
    assert len(out) < 1000
    # thousands of distinct types: the first are kept, the rest only counted (a dict entry each took 180 MB
    # for a million)
    from pillow_jac.cli_info import UNKNOWN_TYPES_KEPT

    many = [(f"a{i:03d}".encode(), b"") for i in range(1000)]
    parsed.unknown_chunks = many + many
    path.write_bytes(container.serialize(parsed))
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["unknown_chunks"] == [t.decode() for t, _ in many[:UNKNOWN_TYPES_KEPT]]
    assert (info["unknown_chunks_all_listed"], info["unknown_chunk_count"]) == (False, 2000)
    assert main(["info", str(path)]) == 0
    assert f"2000 unknown chunks of over {UNKNOWN_TYPES_KEPT} types" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "exif", "refused"),
    [
        ("out.tif", b"Exif\x00\x00garbage-not-tiff", "TIFF refused it"),
        ("out.jpg", b"Exif\x00\x00" + bytes(70000), "EXIF data is too long"),
    ],
)
def test_decode_leaves_out_metadata_the_format_refuses(tmp_path: Path, capsys, name, exif, refused) -> None:
    """A JPEG holds at most 64 KiB of EXIF, a TIFF only EXIF that parses: the pixels are written anyway."""
    src = tmp_path / "a.jac"
    crop().save(src, quality=2, exif=exif, xmp=b"<x/>")
    assert main(["decode", str(src), str(tmp_path / name)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("jac: warning: EXIF left out:") and refused in err[0], err
    assert err[1:] == []  # the XMP is kept (a TIFF's as its own tag, which the refused EXIF carried)
    with Image.open(tmp_path / name) as im:
        assert im.size == (48, 40)
        assert "exif" not in im.info and im.info["xmp"] == b"<x/>"


def test_decode_warns_of_metadata_the_format_skips_silently(tmp_path: Path, capsys) -> None:
    """Pillow's BMP writer ignores ICC, EXIF and XMP without an error: it went unsaid. A TIFF gets the XMP as its
    XMLPacket tag (Pillow's TIFF writer has no XMP option: it was left out, with a warning)."""
    src = tmp_path / "a.jac"
    crop().save(src, quality=2, exif=b"Exif\x00\x00" + Image.Exif().tobytes(), xmp=b"<x/>", icc_profile=b"icc")
    assert main(["decode", str(src), str(tmp_path / "out.bmp")]) == 0
    err = capsys.readouterr().err
    assert err == "jac: warning: ICC profile, EXIF and XMP left out: BMP output does not store them\n"
    assert main(["decode", str(src), str(tmp_path / "out.png")]) == 0  # PNG keeps all three
    assert capsys.readouterr().err == ""
    assert main(["decode", str(src), str(tmp_path / "out.tif")]) == 0  # TIFF too: the XMP as tag 700 (XMLPacket)
    assert capsys.readouterr().err == ""
    with Image.open(tmp_path / "out.tif") as im:
        assert im.info["xmp"] == b"<x/>" and im.info["icc_profile"] == b"icc"
    assert main(["decode", str(src), str(tmp_path / "out.pdf")]) == 0  # Pillow writes PDF but does not read it
    err = capsys.readouterr().err
    assert err == "jac: warning: ICC profile, EXIF and XMP perhaps left out: Pillow cannot read PDF back to tell\n"


def test_models_says_when_jac_weights_names_no_weights_file(tmp_path: Path, monkeypatch, capsys) -> None:
    """``jac models`` listed the package's weights silently while encoding failed on a mistyped JAC_WEIGHTS."""
    monkeypatch.setenv("JAC_WEIGHTS", str(tmp_path / "typo.safetensors"))
    assert main(["models"]) == 0
    captured = capsys.readouterr()
    assert "mbt-128-192-r006" in captured.out
    assert "warning: JAC_WEIGHTS=" in captured.err and "no such file" in captured.err
    monkeypatch.setenv("JAC_WEIGHTS", str(ROOT / "weights" / "mbt2018-n128m192.safetensors"))
    assert main(["models"]) == 0
    assert capsys.readouterr().err == ""


def test_models_warns_of_jac_models_entries_that_name_no_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """A JAC_MODELS entry that is the weights file itself, or a mistyped folder, is said, not passed over silently;
    a decoder-only JAC_WEIGHTS is said to decode only, not to make encoding fail."""
    from pillow_jac import weights, weights_hashes

    shipped = ROOT / "weights" / "mbt2018-n128m192.safetensors"
    small = tmp_path / "r006-decoder.safetensors"
    weights.save_weights(small, *weights_hashes.decoder_only(*weights.load_weights(shipped)))
    monkeypatch.setenv("JAC_MODELS", os.pathsep.join([str(small), str(tmp_path / "typo")]))
    monkeypatch.setenv("JAC_WEIGHTS", str(small))
    assert main(["models"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"jac: warning: JAC_MODELS entry {small} is a file: name the folder that holds it",
        f"jac: warning: JAC_MODELS entry {tmp_path / 'typo'}: no such folder",
        f"jac: warning: JAC_WEIGHTS={small} is a decoder-only file: the newest full file encodes",
    ]


def test_decode_names_the_file_whose_streams_or_alpha_are_corrupt(tmp_path: Path, capsys) -> None:
    """Container errors named the file; errors found while decoding (a stream, the alpha plane) did not."""
    invalid = Path(__file__).resolve().parents[1] / "format_spec" / "vectors" / "invalid"
    for name, words in (("ystr-runs-out.jac", "symbols still to decode"), ("alph-plane-short.jac", "alpha plane")):
        src = tmp_path / name
        src.write_bytes((invalid / name).read_bytes())
        assert main(["decode", str(src), str(tmp_path / "out.png")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"jac: error: {src}: ") and words in err and err.count("\n") == 1, err
        assert not (tmp_path / "out.png").exists()


def test_decode_file_names_its_source_unless_a_batch_names_it(tmp_path: Path) -> None:
    """The library call names the file in a stream's error, as jac decode prints it; a batch's call
    (name_source=False) gets the codec's own error, which the batch names."""
    from pillow_jac.conversion import ConversionError, decode_file
    from pillow_jac.entropy_coding import EntropyCodingError

    src = tmp_path / "cut.jac"
    src.write_bytes(
        (Path(__file__).resolve().parents[1] / "format_spec/vectors/invalid/ystr-runs-out.jac").read_bytes()
    )
    with pytest.raises(ConversionError, match=f"^{re.escape(str(src))}: .*symbols still to decode"):
        decode_file(src, tmp_path / "a.png")
    with pytest.raises(EntropyCodingError, match="^(?!.*cut.jac).*symbols still to decode"):
        decode_file(src, tmp_path / "b.png", name_source=False)
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


# --------------------------------------------------------------------------- orientation, errors naming the input


def _turned_photo(path: Path, orientation: int = 6, fmt: str | None = None) -> None:
    """A 48x40 crop whose EXIF (a TIFF's tag 274) says to show it turned: 40x48 for orientation 6."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Cam"  # Make
    if fmt == "TIFF":
        crop().save(path, tiffinfo={0x0112: orientation, 0x010F: "Cam"})
    else:
        crop().save(path, exif=exif.tobytes())


def _shown_size(path: Path) -> tuple[int, int]:
    from PIL import ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


def test_an_orientation_the_output_would_lose_is_applied_to_the_pixels(tmp_path: Path) -> None:
    """A photo whose EXIF says to turn it shows upright after encoding, whether its EXIF is kept or not."""
    jpeg, tiff = tmp_path / "phone.jpg", tmp_path / "scan.tif"
    _turned_photo(jpeg)
    _turned_photo(tiff, fmt="TIFF")
    assert _shown_size(jpeg) == _shown_size(tiff) == (40, 48)
    for src, options, stored in ((jpeg, [], (48, 40)), (jpeg, ["--strip"], (40, 48)), (tiff, [], (40, 48))):
        out = tmp_path / f"{src.stem}{''.join(options)}.jac"
        assert main(["encode", str(src), str(out), *options]) == 0
        with Image.open(out) as im:
            assert im.size == stored, (src, options)  # the pixels as stored
            assert ("exif" in im.info) == (options == [])  # a TIFF's tags as EXIF, its orientation applied
            assert (0x0112 in im.getexif()) == (options == [] and src == jpeg)
        assert _shown_size(out) == (40, 48), (src, options)  # and as a viewer shows them: upright
    with Image.open(tmp_path / "phone.jac") as im:
        assert im.getexif()[0x0112] == 6 and im.getexif()[0x010F] == "Cam"  # kept, not applied
    mirrored = tmp_path / "mirror.jpg"
    _turned_photo(mirrored, orientation=2)
    assert main(["encode", str(mirrored), str(tmp_path / "m.jac"), "--strip"]) == 0
    expected = np.asarray(crop())[:, ::-1].astype(int)
    with Image.open(tmp_path / "m.jac") as im:
        assert np.abs(np.asarray(im).astype(int) - expected).mean() < 8  # mirrored, not turned


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_a_turned_tiff_of_one_strip_is_read_upright_in_every_mode(tmp_path: Path, mode: str) -> None:
    """Pillow maps an uncompressed L, P or RGBA TIFF's strip from its file at the size turned by tag 274: the
    encoder stored scrambled pixels with exit 0 (RGB, which Pillow copies, was right)."""
    tiff, out = tmp_path / f"scan-{mode}.tif", tmp_path / f"scan-{mode}.jac"
    source = crop().convert(mode)
    source.save(tiff, tiffinfo={0x0112: 6})
    assert main(["encode", str(tiff), str(out), "-q", "8"]) == 0
    expected = np.asarray(source.convert("RGBA").transpose(Image.Transpose.ROTATE_270)).astype(int)
    with Image.open(out) as im:
        assert im.size == (40, 48)
        assert np.abs(np.asarray(im.convert("RGBA")).astype(int) - expected).mean() < 16  # scrambled: 40-60
    if mode == "L":  # a pipe given by its path: what Pillow read of it is read again, not the pipe
        import subprocess
        import sys

        piped = tmp_path / "piped.jac"
        done = subprocess.run([sys.executable, "-m", "pillow_jac", "encode", "/dev/stdin", str(piped), "-q", "8"],
                              input=tiff.read_bytes(), capture_output=True, cwd=ROOT)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert piped.read_bytes() == out.read_bytes()


def test_a_decode_to_a_format_that_loses_the_orientation_turns_the_pixels(tmp_path: Path) -> None:
    """jac decode keeps the orientation where the output stores it, and turns the pixels where it does not (BMP,
    PPM, GIF, EXIF over JPEG's 64 KiB): the picture shows upright either way, turned once."""
    jpeg = tmp_path / "phone.jpg"
    _turned_photo(jpeg)
    big = Image.Exif()
    big[0x0112], big[0x010E] = 6, "x" * 70_000  # ImageDescription: EXIF that a JPEG cannot hold
    crop().save(tmp_path / "big.png", exif=big.tobytes())
    for src in (jpeg, tmp_path / "big.png"):
        assert main(["encode", str(src), str(tmp_path / f"{src.stem}.jac")]) == 0
    crop().save(tmp_path / "big-xmp.jac", exif=big.tobytes(), xmp=_XMP_TURNED)  # the turn in the XMP too
    outputs = [("phone", ext) for ext in ("png", "jpg", "webp", "bmp", "ppm", "gif")] + [("big", "jpg")]
    for stem, ext in [*outputs, ("big-xmp", "jpg")]:
        out = tmp_path / f"{stem}-out.{ext}"
        assert main(["decode", str(tmp_path / f"{stem}.jac"), str(out)]) == 0
        assert _shown_size(out) == (40, 48), out.name
    with Image.open(tmp_path / "big-xmp-out.jpg") as im:  # browsers read no XMP orientation: the pixels turned
        assert im.size == (40, 48) and b"Orientation" not in im.info.get("xmp", b"")
    with Image.open(tmp_path / "phone-out.bmp") as im:
        assert im.size == (40, 48)  # turned pixels
    with Image.open(tmp_path / "phone-out.png") as im:
        assert im.size == (48, 40) and im.getexif()[0x0112] == 6  # the tag kept, the pixels as stored


def test_a_decode_to_an_icon_format_keeps_the_size_or_warns(tmp_path: Path, capsys) -> None:
    """An ICO wrote only Pillow's icon sizes below the image's (a 56x40 image came back 48x34) and ICNS stretched any
    image to 1024x1024, silently: now an ICO holds the image at its size (fitted into 256x256), and an output
    that reads back at another size says so."""
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    crop(0, 0, 56, 40).save(small)
    crop(0, 0, 300, 200).save(big)
    for src in (small, big):
        assert main(["encode", str(src), str(tmp_path / f"{src.stem}.jac")]) == 0
    capsys.readouterr()
    _turned_photo(tmp_path / "phone.jpg")  # 48x40, shown 40x48: an ICO has no EXIF, so its pixels are turned
    assert main(["encode", str(tmp_path / "phone.jpg"), str(tmp_path / "phone.jac")]) == 0
    capsys.readouterr()
    cases = [("small", "ico", (56, 40), False), ("big", "ico", (256, 171), True),
             ("small", "icns", (1024, 1024), True), ("phone", "ico", (40, 48), False)]  # fmt: skip
    for stem, ext, size, warned in cases:
        out = tmp_path / f"{stem}-out.{ext}"
        assert main(["decode", str(tmp_path / f"{stem}.jac"), str(out)]) == 0
        with Image.open(out) as im:
            assert im.size == size, out.name
        assert ("reads back at" in capsys.readouterr().err) is warned, out.name


_XMP_TURNED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def _raw_profile_text(exif: Image.Exif) -> str:
    """EXIF as ImageMagick writes it into a PNG: a "Raw profile type exif" text of hex lines."""
    data = exif.tobytes()[6:]
    return f"\nexif\n{len(data):8d}\n{data.hex()}\n"


def test_an_orientation_kept_in_a_raw_exif_profile_or_the_xmp_is_not_applied_twice(tmp_path: Path) -> None:
    """The tag turns the image for viewers wherever the output keeps it; only pixels without a kept tag are turned."""
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "raw").mkdir()
    (tmp_path / "xmp").mkdir()
    raw, xmp = tmp_path / "raw" / "magick.png", tmp_path / "xmp" / "photo.jpg"
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", _raw_profile_text(exif), zip=True)
    crop().save(raw, pnginfo=text)
    crop().save(xmp, xmp=_XMP_TURNED, quality=95)
    assert _shown_size(raw) == _shown_size(xmp) == (40, 48)
    for src in (raw, xmp):
        for options, stored in (([], (48, 40)), (["--strip"], (40, 48))):
            out = tmp_path / f"{src.stem}{''.join(options)}.jac"
            assert main(["encode", str(src), str(out), *options]) == 0
            with Image.open(out) as im:
                assert im.size == stored, (src, options)
            assert _shown_size(out) == (40, 48), (src, options)
            folder = tmp_path / f"batch-{src.parent.name}{''.join(options)}"
            assert main(["batch", str(src.parent), str(folder), "--to", "jac", "--quiet", *options]) == 0
            assert _shown_size(folder / f"{src.stem}.jac") == (40, 48), (src, options)


def test_turned_pixels_keep_no_orientation_anywhere(tmp_path: Path) -> None:
    """Pixels turned upright lose the tag from the EXIF, a raw EXIF profile and the XMP; the other tags stay."""
    from PIL import ImageOps

    from pillow_jac.source_image import upright

    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Cam"
    im = crop()
    im.info.update(exif=exif.tobytes(), xmp=_XMP_TURNED, **{"Raw profile type exif": _raw_profile_text(exif)})
    im.info["XML:com.adobe.xmp"] = _XMP_TURNED.decode()
    turned = upright(im, 6)
    assert turned.size == (40, 48) and "exif" in im.info and im.info["xmp"] == _XMP_TURNED  # the source as it was
    assert ImageOps.exif_transpose(turned).size == (40, 48)  # nothing turns it again
    for key in ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp"):
        alone = Image.new("RGB", turned.size)
        alone.info[key] = turned.info[key]
        assert 0x0112 not in alone.getexif(), key
    kept = Image.Exif()
    kept.load(turned.info["exif"])
    assert kept[0x010F] == "Cam"


def test_an_xmp_orientation_element_with_spaces_is_taken_out_of_turned_pixels(tmp_path: Path) -> None:
    """Pillow reads ``<tiff:Orientation>6\n</tiff:Orientation>`` as 6, but only two exact spellings were taken out
    of turned pixels' XMP: a TIFF, which now keeps the XMP and which Pillow turns on load, came out turned twice."""
    odd = _XMP_TURNED.replace(b'tiff:Orientation="6"/>', b"><tiff:Orientation>6\n</tiff:Orientation></rdf:Description>")
    src = tmp_path / "odd.jac"
    crop().save(src, quality=2, xmp=odd)
    assert _shown_size(src) == (40, 48)
    for ext in ("tif", "png"):
        out = tmp_path / f"odd-out.{ext}"
        assert main(["decode", str(src), str(out)]) == 0
        with Image.open(out) as im:
            im.load()  # Pillow's TIFF reader turns the image by its orientation as it loads
            assert im.size == (40, 48) and _shown_size(out) == (40, 48), ext


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="stops a stall with SIGALRM")
def test_a_long_run_of_white_space_in_the_xmp_does_not_stall_turning_the_pixels(tmp_path: Path) -> None:
    """Taking the orientation out of turned pixels' XMP tried a pattern that began with white space at every space
    of a run: time growing with the square of the run, hours for a hostile file's megabyte of spaces. Both ways
    the XMP is stripped run here, each under an alarm (a regular expression's match stops for a signal): jac
    encode of a turned PNG (its pixels turned upright) and jac decode to a format without EXIF (its pixels
    turned)."""

    class Stalled(BaseException):
        pass

    def stalled(signum, frame):
        raise Stalled

    padded = _XMP_TURNED.replace(b'"6"/>', b'"6"' + b" " * 1_000_000 + b"/>")  # a run that no orientation ends
    exif = Image.Exif()
    exif[0x0112] = 6
    png, jac = tmp_path / "turned.png", tmp_path / "turned.jac"
    crop().save(png, exif=exif, pnginfo=_png_xmp(padded))
    crop().save(jac, quality=2, exif=exif, xmp=padded)
    encode = ["encode", str(png), str(tmp_path / "up.jac"), "--strip"]
    previous = signal.signal(signal.SIGALRM, stalled)
    try:
        for argv in (encode, ["decode", str(jac), str(tmp_path / "o.bmp")]):
            signal.alarm(20)  # seconds; the linear pass takes milliseconds, the quadratic one about 15 minutes
            try:
                assert main(argv) == 0
            except Stalled:
                pytest.fail(f"jac {argv[0]} stalled on the XMP's white space")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert _shown_size(tmp_path / "o.bmp") == (40, 48)


def test_an_orientation_element_that_an_attributes_removal_brings_together_goes_too() -> None:
    """The attributes go first, then the elements, as two passes did: one pass over both left an element that
    the removal of an attribute inside its tag made whole, and Pillow read its 6 on pixels already turned."""
    from pillow_jac.save_metadata import without_orientation

    joined = ('<tiff:Orientation tiff:Orientation="1">6</tiff:Orientation>', "<tiff:Orien tiff:Orientation='1'tation>6")
    for xmp in (joined[0], joined[1] + "</tiff:Orientation>"):
        assert without_orientation({"xmp": xmp}) == {"xmp": ""}
        assert without_orientation({"xmp": xmp.encode()}) == {"xmp": b""}


def _png_xmp(xmp: bytes):
    """A PNG's ``pnginfo`` holding ``xmp`` as Pillow reads it (an iTXt chunk ``XML:com.adobe.xmp``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info


def test_errors_of_reading_or_encoding_the_input_name_it(tmp_path: Path, capsys) -> None:
    """Pillow's and the codec's errors about the input carry its name; an OSError's is reworded as name: reason."""
    good = tmp_path / "whole.png"
    crop().save(good)
    cut = tmp_path / "cut off.png"
    cut.write_bytes(good.read_bytes()[:-200])
    floats = tmp_path / "floats.tif"
    Image.fromarray(np.zeros((8, 8), np.float32)).save(floats)
    for src, fragment in ((cut, "truncated"), (floats, "mode F")):
        out = tmp_path / "out.jac"
        assert main(["encode", str(src), str(out)]) == 1
        assert_one_line_error(capsys.readouterr().err, f"{src}: ", fragment)
        assert not out.exists()
    assert main(["encode", str(good), str(good / "x.jac")]) == 1  # an OSError's number and repr, reworded
    assert_one_line_error(capsys.readouterr().err, f"{good / 'x.jac'}: Not a directory")


def test_models_shows_a_path_the_locale_cannot_show(tmp_path: Path) -> None:
    """jac models failed ("'ascii' codec can't encode") where jac info showed the same name escaped."""
    folder = tmp_path / "modèles"
    folder.mkdir()
    weights = folder / "w.safetensors"
    try:
        os.link(generations.default_weights_path(), weights)
    except OSError:  # another file system
        weights.write_bytes(generations.default_weights_path().read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "pillow_jac", "models"], capture_output=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "ascii", "JAC_WEIGHTS": str(weights)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mod\\xe8les" in result.stdout.decode()


def test_info_shows_each_file_as_it_is_read_and_a_name_the_locale_cannot_show(jac: Path, tmp_path: Path) -> None:
    """A name with bytes that are not UTF-8 is shown escaped, also under a strict UTF-8 stdout."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/odd\xff.jac"))
    odd.write_bytes(jac.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "pillow_jac", "info", str(odd), str(jac)],
        capture_output=True, cwd=ROOT, timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
    )  # fmt: skip
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr
    assert out.count("48x40 RGB") == 2 and "odd\\udcff.jac" in out
    # each file is shown once read: the first before the second (a pipe, written to only then) has come
    fifo = tmp_path / "second.jac"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pillow_jac", "info", str(jac), str(fifo)], stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    writer = threading.Thread(target=lambda: fifo.write_bytes(jac.read_bytes()), daemon=True)
    deadline = time.monotonic() + 60

    def read_until(done) -> bytes:  # unbuffered, so that select sees every byte not read yet
        out = b""
        while not done(out):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"jac info showed {out!r} and nothing more within 60 s"
            piece = os.read(proc.stdout.fileno(), 65536)
            if not piece:
                break
            out += piece
        return out

    try:
        first = read_until(lambda out: b"48x40 RGB" in out)
        assert b"48x40 RGB" in first, "jac info ended before showing the first file"
        writer.start()  # the second file comes only now
        rest = read_until(lambda out: False)  # to the end
        assert proc.wait(timeout=60) == 0 and (first + rest).count(b"48x40 RGB") == 2
    finally:
        proc.kill()
        proc.stdout.close()
        if writer.is_alive():  # blocked opening the pipe: a reader of our own lets it finish
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            writer.join(10)
            os.close(fd)


def test_a_turned_photo_batched_with_strip_is_done_on_the_next_run(tmp_path: Path, capsys) -> None:
    """Its output is stored turned (40x48 from 48x40), and the resume check allows for that."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _turned_photo(src / "phone.jpg")
    assert main(["batch", str(src), str(out), "--to", "jac", "--strip"]) == 0
    first = (out / "phone.jac").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["batch", str(src), str(out), "--to", "jac", "--strip"]) == 0
    assert (out / "phone.jac").stat().st_mtime_ns == first  # skipped, not encoded again


def test_an_option_error_is_not_blamed_on_the_input(png: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("JAC_DEVICE", "bogus")
    assert main(["encode", str(png), str(tmp_path / "o.jac")]) == 1
    err = capsys.readouterr().err
    assert "bogus" in err and f"{png}:" not in err


@pytest.mark.parametrize("device", ["bogus", "CPU", "", "cuda:", " cpu"])
def test_a_misspelt_device_is_a_usage_error(png: Path, tmp_path: Path, capsys, device: str) -> None:
    """A --device no torch device is spelt like exited 1 after the arguments were read, where every other option
    value that is wrong exits 2 (README, "Exit status")."""
    for command in (["encode", str(png), str(tmp_path / "o.jac")], ["batch", str(tmp_path), str(tmp_path / "o")]):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--device", device])
        assert exc.value.code == 2
        assert "use cpu, cuda, cuda:N or auto" in capsys.readouterr().err
    assert not (tmp_path / "o.jac").exists()


@pytest.mark.parametrize("command", ["encode", "decode", "info"])
def test_a_file_name_ending_in_a_separator_is_refused(jac: Path, png: Path, tmp_path: Path, capsys, command) -> None:
    """``jac encode a.png out.jac/`` replaced the file out.jac (Path drops the trailing separator), where cp and
    cwebp refuse a name that can only be a folder's."""
    out = tmp_path / ("out.jac" if command == "encode" else "out.png")
    out.write_bytes(b"kept")
    source = png if command == "encode" else jac
    argv = {"encode": [str(png), f"{out}/"], "decode": [str(jac), f"{out}/"], "info": [f"{jac}/"]}[command]
    with pytest.raises(SystemExit) as exc:
        main([command, *argv])
    assert exc.value.code == 2
    assert "ends in a separator" in capsys.readouterr().err
    assert out.read_bytes() == b"kept" and source.exists()


def test_decoding_to_a_format_that_refuses_the_metadata_warns_once(tmp_path: Path, capsys) -> None:
    """A turned photo whose EXIF and XMP JPEG refuses (each over 64 kB): the output is saved a second time with its
    pixels turned, and the warning that the metadata was left out came twice."""
    from PIL import ExifTags

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.ImageDescription] = "x" * 70_000  # over JPEG's 64 kB segment: the orientation is lost
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b" " * 70_000 + b"</x:xmpmeta>"
    src = tmp_path / "turned.jac"
    src.write_bytes(pillow_jac.encode(natural_image(24, 32), 2, exif=exif, xmp=xmp))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["decode", str(src), str(tmp_path / "turned.jpg")]) == 0
    err = capsys.readouterr().err
    assert err.count("left out") == 1, err
    assert Image.open(tmp_path / "turned.jpg").size == (24, 32)  # the pixels turned: 32 wide, 24 high before


def test_python_m_pillow_jac_cli_runs_the_command(tmp_path: Path) -> None:
    """``python -m pillow_jac.cli`` did nothing and exited 0: the module had no entry point of its own."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pillow_jac.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("jac "), done
    done = subprocess.run([sys.executable, "-m", "pillow_jac.cli"], capture_output=True, text=True)
    assert done.returncode == 2 and "COMMAND" in done.stderr


def test_a_full_standard_output_is_named(tmp_path: Path, png: Path) -> None:
    """``jac info x.jac > /dev/full`` said ``[Errno 28] No space left on device``, naming nothing."""
    import subprocess
    import sys

    jac = tmp_path / "x.jac"
    assert main(["encode", str(png), str(jac)]) == 0
    for command in (["info", str(jac)], ["models"]):
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "pillow_jac", *command], stdout=full, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT)  # fmt: skip
        assert done.returncode == 1 and done.stderr == "jac: error: standard output: No space left on device\n", done


def test_a_tiffs_camera_tags_are_kept_as_exif(tmp_path: Path) -> None:
    """Pillow reads a TIFF's EXIF as tags of its image directory, which no writer of another format carries:
    jac encode kept none of a camera's or scanner's TIFF metadata, and said nothing. Its descriptive tags are
    stored as EXIF now (not its layout's tags, nor the orientation, which turns the pixels as before)."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0132], exif[0x8298], exif[0x0112] = "Cam", "2020:01:02 03:04:05", "me", 6
    tif = tmp_path / "cam.tif"
    crop().save(tif, exif=exif)
    for options, expected in (([], {0x010F: "Cam", 0x0132: "2020:01:02 03:04:05", 0x8298: "me"}), (["--strip"], {})):
        out = tmp_path / f"cam{''.join(options)}.jac"
        assert main(["encode", str(tif), str(out), *options]) == 0
        with Image.open(out) as im:
            assert dict(im.getexif()) == expected and im.size == (40, 48)  # turned upright, no tag to turn it again


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_decode_to_tiff_leaves_out_the_exifs_stale_layout_tags(tmp_path: Path, capsys, mode: str) -> None:
    """Pillow's TIFF writer copies an EXIF's IFD0 over its own tags: a photo's EXIF whose sizes or photometric
    interpretation were left from before a crop or a grey conversion gave a TIFF of 4000x3000 that did not load,
    or that no reader opened, and jac decode exited 0. The layout tags are left out; the rest is kept."""
    exif = Image.Exif()
    exif[0x0100], exif[0x0101], exif[0x0106], exif[0x010F], exif[0x0112], exif[0x011A] = 4000, 3000, 2, "Cam", 3, 300.0
    exif[0x013C], exif[0x010D], exif[0x4746] = "host", "doc", 5  # HostComputer, DocumentName, Rating: kept too
    exif.get_ifd(0x8769)[0x9003] = "2020:01:02 03:04:05"  # DateTimeOriginal, in the EXIF directory
    source = tmp_path / "cropped.jpg"
    crop().convert(mode).save(source, exif=exif, quality=95)
    assert main(["encode", str(source), str(tmp_path / "cropped.jac")]) == 0
    assert main(["decode", str(tmp_path / "cropped.jac"), str(tmp_path / "cropped.tif")]) == 0
    assert "warning" not in capsys.readouterr().err
    with Image.open(tmp_path / "cropped.tif") as im, Image.open(tmp_path / "cropped.jac") as jac:
        tags = dict(im.tag_v2)
        im.load()
        decoded = np.asarray(jac)
        # Pillow 13 turns a TIFF by its orientation as it loads it (3: half a turn); earlier versions do not
        assert im.mode == mode and any(np.array_equal(np.asarray(im), x) for x in (decoded, decoded[::-1, ::-1]))
    assert (tags[0x0100], tags[0x0101], tags[0x010F], tags[0x0112], tags[0x011A]) == (48, 40, "Cam", 3, 300.0)
    assert (tags[0x013C], tags[0x010D], tags[0x4746]) == ("host", "doc", 5)
    with Image.open(tmp_path / "cropped.tif") as im:
        assert im.getexif().get_ifd(0x8769).get(0x9003) == "2020:01:02 03:04:05"


def test_a_decode_to_png_stores_an_xmp_in_utf_16_as_text_and_leaves_out_one_that_is_not_text(tmp_path, capsys):
    """PNG holds XMP as UTF-8 text: a UTF-16 packet (the XMP specification allows UTF-8, -16 and -32) was decoded as
    UTF-8 with replacement and written as NULs and U+FFFD, without a word."""
    packet = '<?xpacket begin="\ufeff"?><x:xmpmeta xmlns:x="adobe:ns:meta/">Zoë</x:xmpmeta><?xpacket end="w"?>'
    for name, xmp, expected in (
        ("utf16", packet.encode("utf-16"), packet),
        ("utf16be", packet.encode("utf-16-be"), packet),  # no mark before the packet: it is in its begin=""
        ("utf8", packet.encode("utf-8"), packet),
        ("latin1", packet.replace("\ufeff", "").encode("latin-1"), None),  # no mark, not UTF-8: not text
    ):
        crop().save(tmp_path / f"{name}.jpg", xmp=xmp)
        assert main(["encode", str(tmp_path / f"{name}.jpg"), str(tmp_path / f"{name}.jac")]) == 0
        assert main(["decode", str(tmp_path / f"{name}.jac"), str(tmp_path / f"{name}.png")]) == 0
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.info.get("XML:com.adobe.xmp") == expected, name
        assert ("XMP left out" in capsys.readouterr().err) is (expected is None), name


def test_decode_errors_name_what_they_are_about(jac: Path, tmp_path: Path, capsys) -> None:
    """A missing input was reported as a problem of an existing output; an original named .jfif as "not a PNG, JPEG
    or TIFF"; a failed write to "-" without naming standard output, as jac info names it."""
    original = tmp_path / "photo.jfif"
    crop().save(original, format="JPEG")
    assert main(["decode", str(tmp_path / "missing.jac"), str(original)]) == 1
    assert capsys.readouterr().err.strip() == f"jac: error: {tmp_path / 'missing.jac'}: No such file or directory"
    assert main(["decode", str(jac), str(original)]) == 1
    assert "exists and carries no mark of a decode" in capsys.readouterr().err
    if Path("/dev/full").exists():
        with open("/dev/full", "wb") as full:
            done = subprocess.run([sys.executable, "-m", "pillow_jac", "decode", str(jac), "-"], stdout=full,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)  # fmt: skip
        assert (done.returncode, done.stderr.strip()) == (1, "jac: error: standard output: No space left on device")


def test_16_bit_cmyk_is_said_to_be_reduced_to_8_bits(tmp_path: Path, capsys) -> None:
    """Pillow keeps the high byte of 16-bit CMYK samples, as of 16-bit RGB, which was warned of; CMYK was not."""
    import struct

    width, height = 4, 3
    samples = (np.arange(width * height * 4, dtype="<u2") * 4099).tobytes()
    entries = [(256, width), (257, height), (258, None), (259, 1), (262, 5), (273, None), (277, 4), (278, height),
               (279, len(samples)), (284, 1)]  # fmt: skip
    ifd_end = 8 + 2 + 12 * len(entries) + 4
    tiff = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, value in entries:
        if tag == 258:  # four 16-bit samples a pixel, listed after the directory
            tiff += struct.pack("<HHII", tag, 3, 4, ifd_end)
        elif tag in (273, 279):
            tiff += struct.pack("<HHII", tag, 4, 1, ifd_end + 8 if tag == 273 else value)
        else:
            tiff += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    tiff += struct.pack("<I4H", 0, 16, 16, 16, 16) + samples
    source = tmp_path / "cmyk16.tif"
    source.write_bytes(bytes(tiff))
    with Image.open(source) as im:
        assert im.mode == "CMYK" and im.tile[0].args[0] == "CMYK;16L"
    assert main(["encode", str(source), str(tmp_path / "cmyk16.jac")]) == 0
    assert "16-bit colour samples reduced to 8 bits" in capsys.readouterr().err


def test_max_image_pixels_sets_pillows_limit_for_the_command_only(png, jac, tmp_path, capsys, monkeypatch) -> None:
    """A trusted image above Pillow's decompression-bomb limit (a 200 MP panorama) could not be encoded or decoded
    with ``jac`` at all: the limit is Python's ``PIL.Image.MAX_IMAGE_PIXELS``. ``--max-image-pixels`` sets it for
    the command (0 or none: no limit), and the caller's is back after."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the 48x40 crop is 1920 pixels: above twice it
    out = tmp_path / "out.jac"
    assert main(["encode", str(png), str(out)]) == 1
    assert "decompression bomb" in capsys.readouterr().err and not out.exists()
    assert main(["encode", str(png), str(out), "--max-image-pixels", "0"]) == 0 and out.exists()
    assert main(["decode", str(jac), str(tmp_path / "a.png")]) == 1
    assert main(["decode", str(jac), str(tmp_path / "a.png"), "--max-image-pixels", "none"]) == 0
    assert main(["decode", str(jac), str(tmp_path / "b.png"), "--max-image-pixels", "1000"]) == 0  # warned
    assert "could be decompression bomb" in capsys.readouterr().err
    assert Image.MAX_IMAGE_PIXELS == 500
    monkeypatch.undo()
    assert main(["encode", str(png), str(tmp_path / "c.jac"), "--max-image-pixels", "900"]) == 1
    assert "exceeds limit of 1800 pixels" in capsys.readouterr().err
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(SystemExit):
            main(["encode", str(png), str(tmp_path / "d.jac"), "--max-image-pixels", bad])
