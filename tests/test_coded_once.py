"""An encode at effort 1-3 codes its latents once: the streams that the real check of a small image made
(pillow_jac.image_transforms.symbols: effort 0's latents against the search's, by their real files) are the
streams written, in pillow_jac.encode, encode_batch and the target search alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_jac import codec, codec_batch, codec_inputs, codec_steps, container, latent_coding
from pillow_jac.constants import EFFORT_REAL_CHECK_PIXELS
from pillow_jac.model import refine
from pillow_jac.target_search import Candidates

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.png"


def sample(height: int, width: int) -> np.ndarray:
    with Image.open(SAMPLE) as im:
        return np.asarray(im.convert("RGB"))[:height, :width].copy()


@pytest.fixture
def codings(monkeypatch) -> list:
    """The shapes of the latents the latent coder codes, one entry per call of LatentCoder.encode."""
    calls, real = [], latent_coding.LatentCoder.encode

    def counting(self, z_hat, y_hat):
        calls.append(y_hat.shape)
        return real(self, z_hat, y_hat)

    monkeypatch.setattr(latent_coding.LatentCoder, "encode", counting)
    return calls


def _streams(data: bytes) -> tuple[bytes, bytes]:
    jac = container.parse(data)
    return jac.z_stream, jac.y_stream


def _coded(latents) -> tuple[bytes, bytes]:
    return codec_steps.encoder_engine(None, None, None).latents.encode(*latents)


def test_the_search_wins_and_its_streams_are_the_ones_compared(codings) -> None:
    image = sample(40, 48)
    assert image.shape[0] * image.shape[1] <= EFFORT_REAL_CHECK_PIXELS  # the real check runs
    plain, searched = codec.encode_symbols(image, 3), codec.encode_symbols(image, 3, effort=1)
    assert not np.array_equal(plain[1], searched[1])  # the search's latents make the better real file here
    codings.clear()
    data = codec.encode(image, 3, effort=1)
    assert len(codings) == 2  # effort 0's latents and the search's, each once; none coded again to write
    assert _streams(data) == _coded(searched)


def test_effort_0s_latents_win_and_their_streams_are_written(codings, monkeypatch) -> None:
    image = sample(40, 48)
    real_refine = refine.refine_latents

    def worse(*args, **kwargs):  # a search whose every latent makes a worse real file
        y, z = real_refine(*args, **kwargs)
        return y + 3.0, z

    monkeypatch.setattr(refine, "refine_latents", worse)
    codings.clear()
    data = codec.encode(image, 3, effort=1)
    assert len(codings) == 2
    assert data == codec.encode(image, 3, effort=0)


def test_an_effort_0_encode_and_a_large_image_code_once(codings, monkeypatch) -> None:
    image = sample(40, 48)
    codec.encode(image, 3)
    assert len(codings) == 1
    monkeypatch.setattr(codec_steps.transforms(), "EFFORT_REAL_CHECK_PIXELS", 0)  # no real check: one coding
    codings.clear()
    data = codec.encode(image, 3, effort=1)
    assert len(codings) == 1
    assert _streams(data) == _coded(codec.encode_symbols(image, 3, effort=1))


def test_a_batch_codes_each_image_once(codings) -> None:
    images = [sample(40, 48), sample(48, 40)]
    files = codec_batch.encode_batch(images, 3, effort=1)
    assert len(codings) == 4  # two candidates per image, no third coding
    assert files == [codec.encode(image, 3, effort=1) for image in images]


def test_the_target_search_writes_the_streams_its_refinement_coded(codings) -> None:
    image = sample(40, 48)
    engine = codec_steps.encoder_engine(None, None, None)
    fields = codec_inputs.file_fields(image, "RGB", icc_profile=None, exif=None, xmp=None, model=None, preview=False)
    c = Candidates(image, "RGB", engine, {**fields, "model_id": engine.model_id, "weights_hash": engine.weights_hash})
    q16 = 3 * 256
    c.psnr(q16, 1)  # the refinement, with its real check
    assert len(codings) == 2
    assert c.encode(q16, 1) == codec.encode(image, 3, effort=1)
    assert len(codings) == 4  # the target search's file took the streams already made; codec.encode made two
