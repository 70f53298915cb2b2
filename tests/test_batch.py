"""encode_batch and decode_batch: one g_a / g_s pass for several images of a padded size, exact coding per image.

What is guaranteed: ``batch_size=1`` gives :func:`~pillow_jac.codec.encode`'s bytes and
:func:`~pillow_jac.codec.decode`'s arrays (the same operations on the same tensors); every file is
valid and its latents decode exactly. What is not: a batched convolution may sum in another order
than a single one, so batched latents may round the other way and batched pixels may differ by one
level. Measured with torch 2.13 on this machine's CPU, for batches of 3 to 8 images of 64x64 to
768x512: 0 of 1.28 million latents and 0 of 4.9 million pixels differed. The tests allow
:data:`LATENT_TOLERANCE` and :data:`PIXEL_TOLERANCE` (fractions that may differ, each by at most 1)
so that another CPU or BLAS build does not fail them.
"""

from __future__ import annotations

import dataclasses
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import pillow_jac
from pillow_jac import codec, codec_batch, container, stripes

from .helpers import natural_image

#: fraction of latents that may differ (by 1) between a batched and a per-image encode
LATENT_TOLERANCE = 1e-3
#: fraction of pixel values that may differ (by 1) between a batched and a per-image decode
PIXEL_TOLERANCE = 1e-3
QUALITY = 3


def _mixed_images() -> list[np.ndarray]:
    """L, LA, RGB and RGBA images; the first three and the last share a 64x64 padded size, two do not."""
    rgb = natural_image(50, 40, seed=1)
    alpha = np.tile(np.arange(64, dtype=np.uint8)[:, None] * 4, (1, 64))
    return [
        rgb[:, :, 0],  # L, 50x40
        np.stack([natural_image(64, 60, seed=2)[:, :, 1], alpha[:, :60]], axis=2),  # LA, 64x60
        rgb,  # RGB, 50x40
        np.dstack([natural_image(30, 70, seed=3), np.full((30, 70), 200, np.uint8)]),  # RGBA, 30x70
        natural_image(33, 100, seed=4),  # RGB, 33x100
        np.dstack([natural_image(64, 64, seed=5), alpha]),  # RGBA, 64x64
    ]


@pytest.fixture(scope="module")
def mixed():
    images = _mixed_images()
    return images, codec.encode_batch(images, QUALITY, batch_size=2), [codec.encode(im, QUALITY) for im in images]


def _assert_close(a: np.ndarray | None, b: np.ndarray | None, tolerance: float) -> None:
    """``a`` and ``b`` differ in at most a ``tolerance`` fraction of values, each by at most 1."""
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    differ = a.astype(np.int64) != b.astype(np.int64)
    assert np.abs(a.astype(np.int64) - b.astype(np.int64)).max(initial=0) <= 1
    assert differ.mean() <= tolerance


def test_mixed_sizes_and_layouts_keep_their_order(mixed):
    images, files, _ = mixed
    assert len(files) == len(images)
    for image, data in zip(images, files, strict=True):
        header = container.parse(data).header
        assert (header.height, header.width) == image.shape[:2]
        assert header.layout == ("L" if image.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}[image.shape[2]])
        decoded = codec.decode(data)
        assert decoded.shape == image.shape and decoded.dtype == np.uint8
        if image.ndim == 3 and image.shape[2] in (2, 4):
            np.testing.assert_array_equal(decoded[:, :, -1], image[:, :, -1])  # alpha is lossless


def test_batched_latents_match_per_image_encode(mixed):
    _, files, singles = mixed
    for batched, single in zip(files, singles, strict=True):
        for a, b in zip(codec.decode_symbols(batched), codec.decode_symbols(single), strict=True):
            _assert_close(a, b, LATENT_TOLERANCE)


def test_decode_batch_matches_decode(mixed, tmp_path):
    _, files, singles = mixed
    path = tmp_path / "first.jac"
    path.write_bytes(files[0])
    # a path, parsed files and bytes in one call
    inputs = [path] + [container.parse(f) if i % 2 else f for i, f in enumerate(files[1:])]
    batched = codec.decode_batch(inputs, batch_size=4)
    assert len(batched) == len(files)
    for data, array in zip(files, batched, strict=True):
        _assert_close(array, codec.decode(data), PIXEL_TOLERANCE)
    np.testing.assert_array_equal(codec.decode_batch(singles[:1], batch_size=1)[0], codec.decode(singles[0]))


def test_batch_size_one_is_encode_byte_for_byte(mixed):
    images, _, singles = mixed
    assert codec.encode_batch(images[2:5], QUALITY, batch_size=1) == singles[2:5]


def test_files_carry_no_metadata(mixed):
    _, files, _ = mixed
    for data in files:
        jac = container.parse(data)
        assert (jac.icc_profile, jac.exif, jac.xmp, jac.preview) == (None, None, None, None)


def test_empty_lists():
    assert codec.encode_batch([]) == []
    assert codec.decode_batch([]) == []


def test_a_generator_that_reuses_its_buffer_gives_each_item_as_it_was_yielded():
    """A generator that refills one buffer (video frames, ``readinto``) gave every output the last item: the batch
    took the references first and read them afterwards."""
    frame = np.empty((16, 24, 3), np.uint8)

    def frames():
        for level in (0, 128, 255):
            frame[:] = level
            yield frame

    files = codec_batch.encode_batch(frames(), quality=4)
    assert files == [codec.encode(np.full((16, 24, 3), level, np.uint8), 4) for level in (0, 128, 255)]
    buffer = bytearray()

    def chunks():
        for data in files:
            buffer[:] = data
            yield buffer

    levels = [int(round(float(a.mean()))) for a in codec_batch.decode_batch(chunks())]
    assert levels == [int(round(float(codec.decode(f).mean()))) for f in files] and len(set(levels)) == 3


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        codec.encode_batch([np.zeros((8, 8), np.uint8)], batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size"):
        codec.decode_batch([], batch_size=batch_size)


def test_images_above_one_stripe_go_one_at_a_time(monkeypatch):
    """A large image goes through the per-image path alone, with what encode_batch checked and made already:
    its alpha plane is compressed once, and its file and pixels are encode's and decode's."""
    # stripes of 4096 pixels: 8 latent rows (the fewest) of a 64-pixel-wide image; a 60-row image is one
    # stripe (4 latent rows), a 190-row image two (12)
    monkeypatch.setattr(stripes, "STRIPE_PIXELS", 4096)
    small, large = natural_image(60, 64, seed=6), natural_image(190, 64, seed=7)
    large = np.dstack([large, np.linspace(0, 255, large.shape[0] * large.shape[1]).reshape(large.shape[:2])])
    large = large.astype(np.uint8)
    expected = codec.encode(large, QUALITY)
    calls = []
    for module, name in ((codec_batch, "encode_with"), (codec_batch, "decode_with"), (container, "compress_alpha")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    files = codec.encode_batch([large, small, small], QUALITY)
    assert calls == ["compress_alpha", "encode_with"]
    assert files[0] == expected
    decoded = codec.decode_batch(files)
    assert calls == ["compress_alpha", "encode_with", "decode_with"]
    assert [d.shape for d in decoded] == [large.shape, small.shape, small.shape]
    np.testing.assert_array_equal(decoded[0], codec.decode(files[0]))


def test_wide_images_are_not_batched(monkeypatch):
    """A stripe has at least 8 latent rows, so a wide enough image of 8 rows holds more than a stripe's pixels: it
    goes alone, or a batch of them would need batch_size times that memory."""
    monkeypatch.setattr(stripes, "STRIPE_PIXELS", 4096)
    wide = (8, 2)  # 8 latent rows of 2 columns: 4096 pixels, within 8 rows
    assert codec_batch.batchable(wide)
    assert not codec_batch.batchable((8, 3))  # 6144 pixels: above a stripe's, though within its fewest rows


def test_one_item_for_a_list_is_refused(tmp_path) -> None:
    image = natural_image(48, 48, seed=10)
    for single in (image, image[:, :, 0], Image.fromarray(image), memoryview(image), bytearray(image.tobytes())):
        with pytest.raises(TypeError, match="images must be a list"):
            codec.encode_batch(single, QUALITY)
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = image, image[:, :, 0]
    assert len(codec.encode_batch(objects, QUALITY)) == 2  # a 1-D array of images is a list
    data = codec.encode(image, QUALITY)
    for single in (data, "x.jac", container.parse(data)):
        with pytest.raises(TypeError, match="files must be a list"):
            codec.decode_batch(single)
    stacked = codec.encode_batch(np.stack([image, image]), QUALITY)  # (N, H, W, C): N images
    assert stacked == [data, data]
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="images must be a list"):  # iterated, it gave one "image" per row
        codec.encode_batch(torch.from_numpy(image), QUALITY)
    with pytest.raises(TypeError, match="cannot read a Tensor as an array"):  # torch's own error is a RuntimeError
        codec.encode(torch.zeros(8, 8, 3, requires_grad=True), QUALITY)
    assert codec.encode_batch(torch.from_numpy(np.stack([image, image])), QUALITY) == [data, data]
    paths = [tmp_path / "a.jac", tmp_path / "b.jac"]
    for path in paths:
        path.write_bytes(data)
    decoded = codec.decode_batch(np.array([str(p) for p in paths]))  # a 1-D array of paths, as glob gives them
    assert [d.shape for d in decoded] == [image.shape] * 2


def test_errors_name_the_item():
    image = natural_image(32, 32, seed=11)
    good = codec.encode(image, QUALITY)
    jac = container.parse(good)
    bad = container.serialize(dataclasses.replace(jac, y_stream=b"\xff" * len(jac.y_stream)))
    with pytest.raises(OSError) as info:
        codec.decode_batch([good, bad, good])
    assert info.value.batch_index == 1
    if sys.version_info >= (3, 11):
        assert info.value.__notes__ == ["(item 1 of the batch)"]
    with pytest.raises(container.NotJacFileError) as info:  # a ValueError, as from decode()
        codec.decode_batch([good, good, b"\x00not a jac file"])
    assert info.value.batch_index == 2
    with pytest.raises(ValueError, match="uint8") as info:
        codec.encode_batch([image, image.astype(np.float32)], QUALITY)
    assert info.value.batch_index == 1
    rgba = codec.encode(np.dstack([image, image[:, :, 0]]), QUALITY)
    jac = container.parse(rgba)
    short_alpha = container.serialize(dataclasses.replace(jac, alpha=zlib.compress(b"\0" * 10)))  # a valid container
    with pytest.raises(ValueError, match="alpha plane") as info:
        codec.decode_batch([rgba, short_alpha])
    assert info.value.batch_index == 1
    # a bad alpha plane and a bad stream: the error decode() gives (it checks the alpha plane first), not another
    bad_stream = b"\xff" * len(jac.y_stream)
    both = container.serialize(dataclasses.replace(jac, alpha=jac.alpha[:-1] + b"\0", y_stream=bad_stream))
    with pytest.raises(OSError) as alone:
        codec.decode(both)
    for batch_size in (1, 2):
        with pytest.raises(OSError) as batched:
            codec.decode_batch([rgba, both], batch_size=batch_size)
        assert type(batched.value) is type(alone.value) and str(batched.value) == str(alone.value), batch_size


def test_options_as_the_single_image_calls_take_them():
    from pillow_jac import generations

    images = [natural_image(32, 40, seed=12), natural_image(32, 40, seed=13)]
    files = codec.encode_batch(images, batch_size=np.int64(2))
    assert codec.encode_batch(images, effort=None, batch_size=2) == files  # None: the default, as encode() takes it
    with pytest.raises(TypeError, match="model"):
        codec.encode_batch([], model=3)  # checked with no images too
    assert files == codec.encode_batch(images, None, batch_size=2)  # None: the default quality, as encode() takes it
    assert container.parse(files[0]).header.quality == container.parse(codec.encode(images[0])).header.quality
    weights = generations.encoder(None).path
    assert codec.encode_batch(images, weights=weights, batch_size=2) == files
    decoded = codec.decode_batch(files, weights=weights, batch_size=np.int8(2))
    assert all(np.array_equal(a, b) for a, b in zip(decoded, codec.decode_batch(files), strict=True))
    assert pillow_jac.encode_batch is codec_batch.encode_batch is codec.encode_batch
    assert pillow_jac.decode_batch is codec_batch.decode_batch


def test_weights_are_used_as_the_single_image_calls_use_them(tmp_path) -> None:
    """weights= names the generation that encodes (the files carry its model_id) and decodes."""
    from pillow_jac import weights as weights_file
    from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
    from pillow_jac.training.freeze import freeze

    torch.manual_seed(0)
    tiny = tmp_path / "tiny.safetensors"
    weights_file.save_weights(tiny, *freeze(JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)), release=7))
    images = [natural_image(32, 40, seed=12), natural_image(32, 40, seed=13)]
    files = codec.encode_batch(images, weights=tiny, batch_size=2)
    assert {container.parse(f).header.model_id for f in files} == {"mbt-8-12-r007"}
    decoded = codec.decode_batch(files, weights=tiny, batch_size=2)
    assert all(np.array_equal(a, codec.decode(f, weights=tiny)) for a, f in zip(decoded, files, strict=True))


def test_effort_refines_each_image():
    images = [natural_image(16, 16, seed=8), natural_image(12, 20, seed=9)]
    files = codec.encode_batch(images, QUALITY, effort=1)
    for image, data in zip(images, files, strict=True):
        z, y = codec.decode_symbols(data)
        z1, y1 = codec.encode_symbols(image, QUALITY, effort=1)
        _assert_close(y, y1, LATENT_TOLERANCE)
        _assert_close(z, z1, LATENT_TOLERANCE)


def test_a_tensor_that_requires_grad_is_a_type_error_as_for_one_image():
    """An (N, H, W, C) tensor that requires grad raised torch's RuntimeError, which the API does not document;
    one such image, alone or in a list, was already a TypeError."""
    for images in (torch.zeros(2, 8, 8, 3, requires_grad=True), [torch.zeros(8, 8, 3, requires_grad=True)]):
        with pytest.raises(TypeError, match="cannot read a Tensor as an array"):
            codec_batch.encode_batch(images)
