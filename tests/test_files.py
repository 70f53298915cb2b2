"""pillow_jac.save: a failed save leaves an existing file as it was."""

from __future__ import annotations

import os

import pytest
from PIL import Image

import pillow_jac


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


def test_pillow_save_to_an_existing_path_is_what_save_avoids(tmp_path):
    """Pillow truncates an existing target before the writer runs: why pillow_jac.save exists."""
    path = tmp_path / "photo.jac"
    pillow_jac.save(Image.new("RGB", (16, 8), "blue"), path)
    with pytest.raises(ValueError):
        Image.new("RGB", (16, 8)).save(path, quality=75)
    assert path.stat().st_size == 0
