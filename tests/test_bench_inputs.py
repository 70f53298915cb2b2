"""What ``python -m pillow_jac.bench.rd --data`` accepts: images it can measure fairly, and clear errors otherwise."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pillow_jac.bench import rd
from pillow_jac.bench.images import ImageInputError, check_images, list_images, load_rgb


def _rgb(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 3 + seed, yy * 5, (xx + yy + 7 * seed) % 256], axis=2)
    return (rgb % 256).astype(np.uint8)


def _png_rgb16(path: Path, samples: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one; it reads it as mode RGB, clipped)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = samples.shape
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _wide_images(folder: Path) -> dict[str, Path]:
    """One file per kind of sample wider than 8 bits, each alone in its own folder."""
    wide = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    made = {}
    for kind in ("grey16-png", "rgb16-png", "rgb16-ppm", "float-tiff", "int32-tiff"):
        (folder / kind).mkdir(parents=True)
    made["grey16-png"] = folder / "grey16-png" / "a.png"
    Image.fromarray(wide).save(made["grey16-png"])  # mode I;16
    made["rgb16-png"] = folder / "rgb16-png" / "a.png"
    _png_rgb16(made["rgb16-png"], np.stack([wide, wide[::-1], 65535 - wide], axis=2))
    made["rgb16-ppm"] = folder / "rgb16-ppm" / "a.ppm"
    made["rgb16-ppm"].write_bytes(b"P6\n64 48\n65535\n" + np.stack([wide] * 3, axis=2).astype(">u2").tobytes())
    made["float-tiff"] = folder / "float-tiff" / "a.tif"
    Image.fromarray(wide.astype(np.float32) / 65535).save(made["float-tiff"])  # mode F
    made["int32-tiff"] = folder / "int32-tiff" / "a.tif"
    Image.fromarray(wide.astype(np.int32)).save(made["int32-tiff"])  # mode I
    return made


def _rd(tmp_path: Path, data: Path, *extra: str) -> int:
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--codecs", "jpeg420", "--ladder", "jpeg420=50,90"]
    return rd.main([*argv, "--published", "", "--no-ms-ssim", *extra])


@pytest.mark.parametrize("kind", ["grey16-png", "rgb16-png", "rgb16-ppm", "float-tiff", "int32-tiff"])
def test_images_wider_than_8_bits_are_refused_naming_the_file(tmp_path: Path, capsys, kind: str):
    path = _wide_images(tmp_path / "data")[kind]
    with pytest.raises(ImageInputError, match="wider than 8 bits"):
        load_rgb(path)
    assert _rd(tmp_path, path.parent) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "wider than 8 bits" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_eight_bit_images_of_every_kind_load(tmp_path: Path):
    rgb = _rgb()
    for name, image in {
        "rgb.png": Image.fromarray(rgb),
        "grey.png": Image.fromarray(rgb[:, :, 0]),
        "palette.png": Image.fromarray(rgb).quantize(16),
        "rgb.ppm": Image.fromarray(rgb),
        "rgb.tif": Image.fromarray(rgb),
    }.items():
        image.save(tmp_path / name)
        out = load_rgb(tmp_path / name)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert np.array_equal(out, np.asarray(image.convert("RGB"))), name  # a palette's colours, grey as RGB


def test_an_image_with_transparency_is_measured_with_a_warning_naming_it(tmp_path: Path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rgba = np.dstack([_rgb(), np.full((48, 64), 255, np.uint8)])
    Image.fromarray(rgba).save(data / "opaque.png")  # an alpha channel that hides nothing: no warning
    rgba[:8, :8, 3] = 0
    Image.fromarray(rgba).save(data / "holes.png")
    assert _rd(tmp_path, data) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and str(data / "holes.png") in err and "alpha dropped" in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["meta"]["image_names"] == ["holes", "opaque"]


def test_a_file_that_is_not_an_image_is_an_error_naming_it(tmp_path: Path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_rgb()).save(data / "a.png")
    (data / "b.png").write_text("not an image")
    with pytest.raises(ImageInputError, match="cannot be read as an image"):
        load_rgb(data / "b.png")
    assert _rd(tmp_path, data) == 2
    err = capsys.readouterr().err
    assert str(data / "b.png") in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_names_that_differ_only_in_their_extension_are_refused_naming_both(tmp_path: Path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_rgb(seed=0)).save(data / "a.png")
    Image.fromarray(_rgb(seed=1)).save(data / "a.webp", lossless=True)
    assert _rd(tmp_path, data) == 2
    err = capsys.readouterr().err
    assert str(data / "a.png") in err and str(data / "a.webp") in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_limit_must_be_positive(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_rgb()).save(data / "a.png")
    with pytest.raises(ValueError, match="at least 1"):
        list_images(data, 0)
    with pytest.raises(SystemExit) as exit_info:
        _rd(tmp_path, data, "--limit", "0")
    assert exit_info.value.code == 2
    assert [p.name for p in list_images(data, 1)] == ["a.png"]


def test_images_only_in_subfolders_are_an_error_that_says_so(tmp_path: Path, capsys):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    Image.fromarray(_rgb()).save(data / "sub" / "a.png")
    with pytest.raises(FileNotFoundError, match="subfolders"):
        list_images(data)
    assert _rd(tmp_path, data) == 2
    err = capsys.readouterr().err
    assert "sub/a.png" in err and "not searched" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["grey16-png", "rgb16-png", "rgb16-ppm", "float-tiff", "int32-tiff"])
def test_check_images_names_every_wide_file_from_its_header(tmp_path: Path, kind: str):
    path = _wide_images(tmp_path / "data")[kind]
    good = tmp_path / "good.png"
    Image.fromarray(_rgb()).save(good)
    check_images([good])

    def no_pixels(self):
        raise AssertionError("check_images read pixels")

    with pytest.raises(ImageInputError, match="wider than 8 bits") as caught, pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageFile.ImageFile, "load", no_pixels)  # from the header alone
        mp.setattr(Image.Image, "load", no_pixels)
        check_images([good, path])
    assert str(path) in str(caught.value) and str(good) not in str(caught.value)


def test_targets_speed_and_throughput_refuse_a_wide_image_before_any_work(tmp_path: Path, capsys):
    from pillow_jac.bench import speed, targets, throughput

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_rgb()).save(data / "a.png")  # a good image first: targets must not encode it first
    wide = _wide_images(tmp_path / "wide")["grey16-png"]
    (data / "b.png").write_bytes(wide.read_bytes())
    out = tmp_path / "out"
    runs = {
        "targets": lambda: targets.main(["--data", str(data), "--out", str(out), "--sizes", "2k"]),
        "speed": lambda: speed.main(
            ["--image", str(wide), "--out", str(out), "--codecs", "jpeg420", "--no-compressai"]
        ),
        "throughput": lambda: throughput.main(["--image", str(wide), "--out", str(out), "--sizes", "64x48"]),
    }
    for name, run in runs.items():
        assert run() == 2, name
        err = capsys.readouterr().err
        assert "wider than 8 bits" in err and "Traceback" not in err, (name, err)
        assert "plain encode" not in err, name  # nothing was encoded before the refusal
        assert not out.exists(), name
