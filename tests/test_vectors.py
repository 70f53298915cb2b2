"""The committed test vectors (format_spec/vectors) decode to the recorded latents and pixels."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_jac import codec, container

VECTORS = Path(__file__).resolve().parents[1] / "format_spec" / "vectors"
TABLE = json.loads((VECTORS / "vectors.json").read_text())
_spec = importlib.util.spec_from_file_location("make_vectors", VECTORS.parent / "make_vectors.py")
make_vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_vectors)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_vector_decodes_exactly(name):
    entry = TABLE[name]
    data = (VECTORS / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["file_sha256"]
    header = container.parse(data).header
    assert [header.width, header.height] == entry["size"] and header.layout == entry["mode"]
    assert make_vectors.symbols_digest(data) == entry["symbols_sha256"]
    pixels = codec.decode(data)
    expected = np.asarray(Image.open(VECTORS / entry["decoded"]))
    assert pixels.shape == expected.shape
    # latents are exact everywhere; g_s is float, so allow one level where platforms round differently
    assert np.abs(pixels.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("name", sorted(TABLE))
def test_encoder_reproduces_vector(name):
    entry = TABLE[name]
    with Image.open(VECTORS / entry["source"]) as im:
        z_hat, y_hat = codec.encode_symbols(np.asarray(im), entry["quality"])
    expected_z, expected_y = codec.decode_symbols((VECTORS / entry["file"]).read_bytes())
    np.testing.assert_array_equal(y_hat, expected_y)
    np.testing.assert_array_equal(z_hat, expected_z)
