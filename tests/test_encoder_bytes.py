"""The files the newest generation's encoder writes at effort 0 and 1, pinned byte for byte.

The released vectors (format_spec/vectors/mbt-128-192-r006) pin effort 0 only: those at effort 1 and 2 predate
the recorded search schedule, so tests/test_vectors.py checks just that they decode. These digests pin crops of
examples/sample.png at effort 0 and 1 (images up to EFFORT_REAL_CHECK_PIXELS, whose real check codes two
candidates, and a 384x256 image), so that a change to how the encoder computes its coding parameters or its
streams that is meant to leave the bytes alone is seen to. They hold for the encoder hash and search schedule
below; another encoder (SPEC.md section 9.2) writes other files, and the test is skipped for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_jac import codec, generations, weights
from pillow_jac.model.refine import schedule

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.png"
#: the encoder that wrote the pinned files, and the effort-1 search it ran
ENCODER = ("mbt-128-192-r006", "1c51823b1006abe9")
SEARCH = {
    "iterations": 8, "learning_rate": 0.02, "temperatures": [0.5, 0.05], "tile": 48, "halo": 4,
    "distortion": "MSE of the pixels clamped to [0, 1], its gradient straight through the clamp",
    "real_check_pixels": 65536,
}  # fmt: skip
#: (crop, quality, effort): sha256 of the file
PINNED = {
    ("rgb-40x48", 2, 0): "ec48dfc31c4c36d1173404cad4cd1ec9d1f1d36fe5537687a948f38f8035ba96",
    ("rgb-40x48", 6.5, 0): "c75b3e1916ce9c89084add9890ffb4a43dfbcd5464772e1089a8f118fa10a7f4",
    ("rgb-40x48", 2, 1): "38236fe155ca686c7f178da58dbeabaf781f9ba4b00361877e5baaaa04657d04",
    ("rgb-40x48", 6.5, 1): "08d041753c5aa3e3daa58fa3065a369c52c4f607e1f61e9e348754c7f6b58091",
    ("rgb-128x192", 6.5, 1): "f6dd2dcfea19ff8a01332a51c04ab1fe8c3b24a59493c947a5130c40b39b64da",
    ("gray-70x90", 2, 1): "d46aee5e4a9bbf07de27e530279690f4538fac1baf066a47960e783982afacc7",
    ("rgba-64x80", 6.5, 0): "63c4ee3e19c45dbd9186cd7bc96d942c266633fa1a91866ae4ea2bccebe1bc46",
    ("rgb-256x384", 2, 0): "49c6cce83b4071ad3c4312ed46cfe1433b89fd2ba89bd6f6b611250e61f9918f",
}


def crop(name: str) -> np.ndarray:
    with Image.open(SAMPLE) as im:
        rgb = np.asarray(im.convert("RGB"))
    layout, size = name.split("-")
    height, width = map(int, size.split("x"))
    part = rgb[:height, :width]
    if layout == "gray":
        return np.ascontiguousarray(part[:, :, 1])
    if layout == "rgba":
        return np.dstack([part, part[:, :, 0]])
    return np.ascontiguousarray(part)


@pytest.fixture(scope="module")
def same_encoder() -> None:
    encoder = generations.encoder()
    _, manifest = weights.load_weights(encoder.path)
    if (encoder.model_id, manifest["encoder_hash"]) != ENCODER:
        pytest.skip(f"the pinned files are {ENCODER}'s; the newest encoder here is another")


@pytest.mark.parametrize(("name", "quality", "effort"), list(PINNED), ids=[f"{n}-q{q}-e{e}" for n, q, e in PINNED])
def test_the_encoder_writes_the_pinned_bytes(same_encoder, name, quality, effort) -> None:
    if effort and schedule(effort) != SEARCH:
        pytest.skip("the effort-1 search is another than the one that made the pinned files")
    data = codec.encode(crop(name), quality, effort=effort)
    assert hashlib.sha256(data).hexdigest() == PINNED[(name, quality, effort)]
