"""Tests of reading and writing ``.jac`` through imageio (v3 and v2 APIs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_jac
from pillow_jac import imageio_plugin
from pillow_jac.constants import DEFAULT_QUALITY, MAGIC

iio = pytest.importorskip("imageio.v3")
iio2 = pytest.importorskip("imageio.v2")


def known_extensions() -> dict:
    from imageio.config import known_extensions

    return known_extensions


ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample.png"


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.asarray(Image.open(SAMPLE).convert("RGB"))[100:140, 200:248].copy()  # 40x48


@pytest.fixture(scope="module")
def jac_file(tmp_path_factory, rgb: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("imageio") / "image.jac"
    iio.imwrite(path, rgb, quality=5)
    return path


def test_known_extension_registered() -> None:
    entries = known_extensions()[".jac"]
    assert any(entry.priority == ["pillow"] for entry in entries)


def test_register_is_idempotent() -> None:
    before = len(known_extensions()[".jac"])
    assert imageio_plugin.register() is True
    pillow_jac.register()
    assert len(known_extensions()[".jac"]) == before


def test_register_without_imageio(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "imageio" else real_find_spec(name, *a)
    )
    assert imageio_plugin.register() is False


def test_v3_write_read_path(jac_file: Path, rgb: np.ndarray) -> None:
    assert jac_file.read_bytes().startswith(MAGIC)
    back = iio.imread(jac_file)
    assert back.shape == rgb.shape and back.dtype == np.uint8
    assert np.mean(np.abs(back.astype(int) - rgb)) < 24


def test_v3_bytes_roundtrip(rgb: np.ndarray) -> None:
    data = iio.imwrite("<bytes>", rgb, extension=".jac")
    assert isinstance(data, bytes) and data.startswith(MAGIC)
    assert iio.imread(data, extension=".jac").shape == rgb.shape
    assert iio.improps(data).shape == rgb.shape  # found by its signature too
    assert iio.immeta(data)["quality"] == DEFAULT_QUALITY


def test_v3_quality_and_plugin_argument(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "q.jac"
    iio.imwrite(path, rgb, plugin="pillow", quality=2.5)
    assert iio.immeta(path)["quality"] == 2.5


def test_v3_invalid_quality(tmp_path: Path, rgb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="quality"):
        iio.imwrite(tmp_path / "bad.jac", rgb, quality=90)


def test_improps(jac_file: Path) -> None:
    props = iio.improps(jac_file)
    assert props.shape == (40, 48, 3)
    assert props.dtype == np.uint8


def test_immeta(jac_file: Path) -> None:
    meta = iio.immeta(jac_file)
    assert meta["quality"] == 5.0
    assert isinstance(meta["model_id"], str)
    assert meta["mode"] == "RGB"


def test_gray_and_alpha_layouts(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = rgb[:, :, 1].copy()
    iio.imwrite(tmp_path / "g.jac", gray)
    assert iio.imread(tmp_path / "g.jac").shape == gray.shape

    alpha = np.tile(np.arange(48, dtype=np.uint8) * 5, (40, 1))
    rgba = np.dstack([rgb, alpha])
    iio.imwrite(tmp_path / "a.jac", rgba)
    back = iio.imread(tmp_path / "a.jac")
    assert back.shape == (40, 48, 4)
    np.testing.assert_array_equal(back[:, :, 3], alpha)


def test_v2_api(jac_file: Path, tmp_path: Path, rgb: np.ndarray) -> None:
    assert iio2.imread(jac_file).shape == rgb.shape
    data = jac_file.read_bytes()
    assert iio2.imread(data, format=".jac").shape == rgb.shape
    out = tmp_path / "v2.jac"
    iio2.imwrite(out, rgb, quality=3)
    with Image.open(out) as im:
        assert im.format == "JAC" and im.info["quality"] == 3.0


def test_16_bit_data_is_rejected(tmp_path: Path) -> None:
    deep = np.zeros((8, 8), np.uint16)
    with pytest.raises(ValueError, match="cannot write mode I;16"):
        iio.imwrite(tmp_path / "deep.jac", deep)
