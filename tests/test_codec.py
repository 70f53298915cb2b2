"""Round trips through the codec API, symbol exactness and corrupt input."""

from __future__ import annotations

import io
import warnings
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from pillow_jac import codec, codec_batch, codec_steps, container
from pillow_jac.entropy_coding import EntropyCodingError

from .helpers import natural_image


# (112, 300): a 7x19 latent, wavefronts of up to 7 positions (computed as 8, see latent_coding)
@pytest.mark.parametrize(("height", "width"), [(1, 1), (5, 7), (64, 64), (33, 100), (70, 19), (112, 300)])
@pytest.mark.parametrize("quality", [1, 4.5, 8])
def test_round_trip_sizes_and_qualities(height, width, quality):
    image = natural_image(height, width, seed=height * width)
    data = codec.encode(image, quality)
    header = container.parse(data).header
    assert (header.width, header.height, header.layout) == (width, height, "RGB")
    assert header.quality == pytest.approx(quality, abs=1 / 256)
    decoded = codec.decode(data)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    # the decoder recovers exactly the symbols the encoder wrote
    z_enc, y_enc = codec.encode_symbols(image, quality)
    z_dec, y_dec = codec.decode_symbols(data)
    np.testing.assert_array_equal(y_enc, y_dec)
    np.testing.assert_array_equal(z_enc, z_dec)


def test_decode_is_deterministic_and_quality_orders_rate():
    image = natural_image(48, 64, seed=3)
    sizes = [len(codec.encode(image, q)) for q in (1, 8)]
    assert sizes[0] < sizes[1]
    data = codec.encode(image, 3)
    first = codec.decode(data)
    np.testing.assert_array_equal(codec.decode(bytes(data)), first)  # a second decode, of a copy, in this process
    assert codec.encode(image, 3) == data


@pytest.mark.parametrize("layout", ["L", "LA", "RGBA"])
def test_layouts(layout):
    rgb = natural_image(20, 24, seed=5)
    gray = rgb[:, :, 1]
    alpha = np.arange(20 * 24, dtype=np.uint8).reshape(20, 24)
    image = {"L": gray, "LA": np.dstack([gray, alpha]), "RGBA": np.dstack([rgb, alpha])}[layout]
    decoded = codec.decode(codec.encode(image, 6))
    assert decoded.shape == image.shape
    if layout != "L":
        np.testing.assert_array_equal(decoded[:, :, -1], alpha)  # alpha is lossless


def test_bad_inputs_to_encode():
    with pytest.raises(ValueError, match="quality"):
        codec.encode(np.zeros((4, 4, 3), np.uint8), 75)
    with pytest.raises(ValueError, match="uint8"):
        codec.encode(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        codec.encode(np.zeros((0, 4, 3), np.uint8))


def test_corrupt_streams_raise_value_errors():
    image = natural_image(64, 64, seed=9)
    data = codec.encode(image, 4)
    jac = container.parse(data)
    rng = np.random.default_rng(0)

    def with_y(y_stream: bytes) -> bytes:
        return container.serialize(
            container.JacFile.create(
                width=64, height=64, layout="RGB", quality=4, model_id=jac.header.model_id,
                weights_hash=jac.header.weights_hash, z_stream=jac.z_stream, y_stream=y_stream,
            )
        )  # fmt: skip

    refused = 0
    for _ in range(10):
        y = bytearray(jac.y_stream)
        y[rng.integers(len(y))] ^= 1 << int(rng.integers(8))
        try:  # a flipped bit may still decode (to other pixels); anything but EntropyCodingError is a bug
            assert codec.decode(with_y(bytes(y))).shape == image.shape
        except EntropyCodingError:
            refused += 1
    assert refused >= 5  # most flips are caught (by the running-out rule, CODING.md 2.4): all 10 of these
    # a stream cut at a word boundary may decode as if zeros followed, unless the length bounds catch it (CODING.md 2.4)
    with pytest.raises(EntropyCodingError, match="multiple of 4"):
        codec.decode(with_y(jac.y_stream[:-3]))


def test_wrong_weights_are_named():
    data = codec.encode(natural_image(8, 8), 2)
    jac = container.parse(data)
    jac.header.weights_hash = bytes(8)
    with pytest.raises(codec.ModelNotInstalledError, match="has another hash"):
        codec.decode(jac)


def test_crc_catches_flipped_bits():
    data = bytearray(codec.encode(natural_image(16, 16), 2))
    data[-20] ^= 0x10  # inside the last stream chunk's payload
    with pytest.raises(ValueError, match="CRC mismatch in chunk 'YSTR'"):
        codec.decode(bytes(data))


@pytest.mark.parametrize("quality", ["4", b"4", True, 10**400, float("nan"), [4], Decimal("NaN"), Decimal("Infinity")])
def test_quality_must_be_a_real_number(quality):
    """Strings, bytes and bools are refused, not converted; a huge int is a ValueError, not OverflowError."""
    with pytest.raises(ValueError, match="quality must be"):
        codec.encode(natural_image(8, 8), quality)


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "banana", "cuda:99"])
def test_unsupported_devices_are_value_errors(device, monkeypatch):
    data = codec.encode(natural_image(8, 8), 2)
    monkeypatch.setenv("JAC_DEVICE", device)
    with pytest.raises(ValueError, match="device|CUDA"):
        codec.decode(data)


def test_decode_takes_a_path_and_junk_is_a_value_error(tmp_path):
    data = codec.encode(natural_image(8, 8), 2)
    (tmp_path / "x.jac").write_bytes(data)
    np.testing.assert_array_equal(codec.decode(tmp_path / "x.jac"), codec.decode(data))
    np.testing.assert_array_equal(codec.decode(str(tmp_path / "x.jac")), codec.decode(data))
    with pytest.raises(ValueError, match="not a JAC file"):
        codec.decode(b"junk")
    with pytest.raises(TypeError, match="expected .jac bytes, a path or a parsed JacFile"):
        codec.decode(12)


def _huge() -> memoryview:
    """One byte more than a chunk holds, without allocating it."""
    return memoryview(np.broadcast_to(np.uint8(0), (container.C.MAX_CHUNK_BYTES + 1,)))


class _NoModel(Exception):
    """Raised by a stand-in for the model: the arguments were not all checked before it."""


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise _NoModel

    monkeypatch.setattr(codec_steps, "encoder_engine", refuse)


@pytest.mark.parametrize("name", ["ystr-partial-word", "alph-plane-short", "alph-trailing-byte"])
def test_damage_seen_without_a_model_is_refused_before_the_weights_load(monkeypatch, name: str) -> None:
    """A stream that is not whole 32-bit words, or an alpha plane of the wrong size, was refused only after torch
    and the weights had loaded (seconds through imageio's imiter)."""
    vectors = Path(__file__).resolve().parents[1] / "format_spec" / "vectors" / "invalid"
    monkeypatch.setattr(codec_steps, "decoder_engine", lambda *a, **k: pytest.fail("the weights were loaded first"))
    with pytest.raises(ValueError):
        codec.decode(vectors / f"{name}.jac")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"icc_profile": "text"}, TypeError, "icc_profile must be bytes, got str"),
        ({"exif": 123}, TypeError, "exif must be bytes or a PIL.Image.Exif, got int"),
        ({"xmp": 5}, TypeError, "xmp must be bytes or a str, got int"),
        ({"icc_profile": _huge()}, ValueError, "chunk limit"),
        ({"model": 5}, TypeError, "model must be a model_id"),
    ],
)
def test_metadata_and_model_are_checked_before_the_network(no_model, options, error, message):
    with pytest.raises(error, match=message):
        codec.encode(np.zeros((8, 8, 3), np.uint8), 1, effort=1, **options)


def test_encode_takes_metadata_as_image_save_does():
    """xmp as str (UTF-8), exif as PIL.Image.Exif or raw TIFF (gaining the Exif\\0\\0 prefix, SPEC.md 5.2)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    image = np.zeros((8, 8), np.uint8)
    jac = container.parse(codec.encode(image, 1, xmp="<x>é</x>", exif=exif))
    assert (jac.xmp, jac.exif) == ("<x>é</x>".encode(), exif.tobytes())
    jac = container.parse(codec.encode(image, 1, exif=b"MM\x00*\x00\x00\x00\x08", icc_profile=bytearray(b"icc")))
    assert (jac.exif, jac.icc_profile) == (b"Exif\x00\x00MM\x00*\x00\x00\x00\x08", b"icc")
    im = Image.fromarray(image)  # the Pillow save path stores the same
    out = io.BytesIO()
    im.save(out, "JAC", quality=1, xmp="<x>é</x>", exif=exif)
    assert out.getvalue() == codec.encode(image, 1, xmp="<x>é</x>", exif=exif)


def test_non_arrays_are_type_errors_and_arrays_of_other_kinds_value_errors(no_model):
    """What is no array-like is a TypeError; arrays of another dtype or shape (nested lists, a numpy scalar)
    stay ValueErrors; buffers are arrays."""
    for image in (None, "photo.png", b"\x89PNG\r\n", 3, {"pixels": 1}):
        with pytest.raises(TypeError, match="expected a uint8 numpy array or a PIL image"):
            codec.encode(image, 1)
    with pytest.raises(ValueError, match=r"a list reads as int64; give numpy.asarray\(pixels, dtype=numpy.uint8\)"):
        codec.encode([[1, 2], [3, 4]], 1)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.uint8(3), 1)
    with pytest.raises(_NoModel):  # taken: the model is next
        codec.encode(memoryview(np.zeros((4, 4, 3), np.uint8)), 1)


def test_a_blank_jac_device_counts_as_unset(monkeypatch):
    from pillow_jac.engine import resolve_device

    for blank in ("", "  "):
        monkeypatch.setenv("JAC_DEVICE", blank)
        assert str(resolve_device()) == "cpu"


def test_decoded_layouts_follow_coding_1_4_exactly():
    """Grey is (299 R + 587 G + 114 B + 500) // 1000 for every value; alpha is appended; arrays are contiguous."""
    from pillow_jac.codec_steps import to_layout

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)[3:37, 5:66]  # a cropped view, as synthesis gives
    rgb[0, :4] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [1, 1, 1]]
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    wide = rgb.astype(np.int64)
    gray = ((299 * wide[..., 0] + 587 * wide[..., 1] + 114 * wide[..., 2] + 500) // 1000).astype(np.uint8)
    expected = {
        "L": gray,
        "LA": np.dstack([gray, alpha]),
        "RGB": rgb,
        "RGBA": np.dstack([rgb, alpha]),
    }
    for layout, want in expected.items():
        got = to_layout(rgb, layout, alpha if "A" in layout else None)
        assert got.dtype == np.uint8 and got.flags.c_contiguous and np.array_equal(got, want), layout


def test_a_half_imported_torch_is_refused_with_a_clear_error(tmp_path):
    """Ctrl-C during torch's first import leaves ``torch.*`` modules without ``torch``; importing it again
    raised AttributeError or crashed the process (a segmentation fault). Encode and decode now refuse,
    before anything imports torch again (in a fresh process, which has not imported torch)."""
    import subprocess
    import sys

    path = tmp_path / "x.jac"
    path.write_bytes(codec.encode(np.zeros((8, 8, 3), np.uint8), 2))
    script = f"""
import sys, types
import numpy as np
from pillow_jac import codec
sys.modules["torch._utils"] = types.ModuleType("torch._utils")  # what an interrupted import leaves
for call in (lambda: codec.decode({str(path)!r}), lambda: codec.encode(np.zeros((8, 8, 3), np.uint8), 2)):
    try:
        call()
    except codec.CodecError as e:
        assert "import of torch in this process failed or was interrupted" in str(e), e
    else:
        raise AssertionError("not refused")
assert "torch" not in sys.modules
print("refused")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "refused", done.stdout + done.stderr


def test_a_failed_allocation_is_a_memory_error_naming_the_size(monkeypatch):
    """A file may declare up to ~179 megapixels; where the memory is not there, torch's CPU allocator raised a
    bare RuntimeError out of decode (found by fuzzing a 115 kB file declaring 13376 x 13376)."""
    data = codec.encode(np.zeros((8, 8, 3), np.uint8), 2)
    engine = codec_steps.decoder_engine(container.parse(data), None, None)

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 9 bytes")

    monkeypatch.setattr(engine.latents, "decode", fail)
    for call in (codec.decode, codec.decode_symbols, lambda d: codec.decode_batch([d, d])):
        with pytest.raises(MemoryError, match="not enough memory to code a 8x8 image"):
            call(data)
    image = np.zeros((8, 8, 3), np.uint8)
    monkeypatch.setattr(engine.latents, "encode", fail)  # the engine that encodes is the same (newest) one
    for call in (
        lambda: codec.encode(image, 2),
        lambda: codec.encode(image, target_size=300),
        lambda: codec.encode_batch([image, image], 2),
    ):
        with pytest.raises(MemoryError, match="not enough memory to code a 8x8 image"):
            call()
    monkeypatch.setattr(codec_steps, "analyze_image", fail)  # encode_symbols stops before the coder
    with pytest.raises(MemoryError, match="not enough memory to code a 8x8 image"):
        codec.encode_symbols(image, 2)
    monkeypatch.setattr(engine.latents, "decode", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):  # another RuntimeError is not a memory error
        codec.decode(data)


def test_api_edges_raise_what_a_pillow_user_catches(tmp_path) -> None:
    """From a review of the Python API: each of these was a confusing error or none."""
    from PIL import Image

    import pillow_jac
    from pillow_jac import generations
    from pillow_jac.weights import WeightsError

    a = np.zeros((8, 8, 3), np.uint8)
    data = pillow_jac.encode(a, 4)
    with pytest.raises(TypeError, match="must be a list"):  # iterated, a file gave its lines as "files"
        pillow_jac.decode_batch(io.BytesIO(data))
    with pytest.raises(generations.ModelNotInstalledError):  # the class generations exports catches it too
        pillow_jac.encode(a, 4, model="mbt-0-0-r999")
    with pytest.raises(codec.ModelNotInstalledError):
        pillow_jac.encode(a, 4, model="mbt-0-0-r999")
    with pytest.raises(OSError, match="cannot write mode F as JAC"):  # as Pillow's writers: OSError (and ValueError)
        Image.new("F", (4, 4)).save(io.BytesIO(), "JAC")
    with pytest.raises(ValueError, match="cannot encode mode 'I'"):
        pillow_jac.encode(Image.new("I", (4, 4)))
    with pytest.raises(ValueError, match="empty path"):
        pillow_jac.encode(a, 4, weights="")
    with pytest.raises(WeightsError, match="is a folder"):
        pillow_jac.encode(a, 4, weights=tmp_path)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        pillow_jac.encode(a, 4, weights=tmp_path / "missing.safetensors")
    z, y = codec.encode_symbols(a, None, effort=None)  # None: the defaults, as encode takes them
    assert np.array_equal(y, codec.decode_symbols(data)[1])


def test_building_an_engine_leaves_the_callers_random_generator_alone(monkeypatch):
    """The first encode and decode of a process build an engine; its layers' random initialisation (overwritten
    by the file's weights) must not move the caller's torch generator: a seeded program draws the same
    numbers whether or not the codec ran first."""
    import torch

    from pillow_jac import engine

    with torch.random.fork_rng(devices=[]):  # the tests after this one keep the generator they had
        torch.manual_seed(0)
        expected = torch.rand(4)
        data = codec.encode(natural_image(16, 16), 4)
        for run in (lambda: codec.encode(natural_image(16, 16), 4), lambda: codec.decode(data)):
            monkeypatch.setattr(engine, "_CACHE", {})  # so that this call builds its engine
            torch.manual_seed(0)
            run()
            assert torch.equal(torch.rand(4), expected)


def test_cpu_indexes_share_one_engine_and_a_changed_weights_file_replaces_its_own(tmp_path, monkeypatch):
    """ "cpu:1" built another copy of the model (about 150 MB) although an index means nothing on the CPU, and
    each modification of a weights file left the engine of the file as it was cached for good."""
    import os
    import shutil

    from pillow_jac import engine, generations

    monkeypatch.setattr(engine, "_CACHE", {})
    weights = tmp_path / "copy.safetensors"
    shutil.copyfile(generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME, weights)
    first = engine.get_engine("cpu", weights)
    assert engine.get_engine("cpu:1", weights) is first and engine.get_engine("cpu:0", weights) is first
    for seconds in (1, 2):  # the file re-frozen or copied again: another modification time
        os.utime(weights, (seconds, seconds))
        assert engine.get_engine("cpu", weights) is not first
    assert len(engine._CACHE) == 1


def test_a_weights_path_that_is_not_a_regular_file_is_refused(tmp_path):
    """A FIFO named as the weights file blocked the encode for ever, waiting for a writer (in a child process,
    so that a regression fails here instead of hanging the suite)."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    script = (
        "import sys, numpy as np, pillow_jac\n"
        "from pillow_jac.weights import WeightsError\n"
        "try:\n"
        "    pillow_jac.encode(np.zeros((16, 16, 3), np.uint8), 4, weights=sys.argv[1])\n"
        "except WeightsError as e:\n"
        "    print(e)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script, str(fifo)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the encode blocked on the FIFO")
    assert done.stdout.strip() == f"weights file {fifo} is not a regular file", done.stderr


def test_what_users_pass_by_mistake_is_refused_with_a_hint(tmp_path, monkeypatch) -> None:
    """Channels first, a path as bytes and a file opened as text gave errors that did not say what to do (a
    UnicodeDecodeError for a text-mode file); an image that decoders here would refuse (twice Pillow's pixel limit)
    was encoded for minutes before the file was refused at its decode."""
    from PIL import Image

    from pillow_jac import container

    with pytest.raises(ValueError, match=r"channels first\? give pixels.transpose\(1, 2, 0\)"):
        codec.encode(np.zeros((3, 24, 40), np.uint8), 2)
    path = tmp_path / "a.jac"
    path.write_bytes(codec.encode(np.zeros((16, 16, 3), np.uint8), 2))
    with pytest.raises(container.NotJacFileError, match=r"a path as bytes\? give os.fsdecode"):
        codec.decode(bytes(path))
    for encoding in ("utf-8", "latin-1"):
        with open(path, encoding=encoding) as f, pytest.raises(TypeError, match="open it in binary mode"):
            container.read(f)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="decoders would refuse the file; raise the limit to encode it"):
        codec.encode(np.zeros((16, 16, 3), np.uint8), 2)
    assert codec.encode(np.zeros((8, 8, 3), np.uint8), 2)  # 64 pixels: within twice the limit


def test_a_pil_images_colour_key_that_encode_does_not_apply_is_warned_of(no_model) -> None:
    """An RGB PNG with a tRNS colour passed to encode() lost its transparency without a word, where Image.save
    stores it as alpha."""
    from PIL import Image

    from pillow_jac.codec_inputs import as_array

    im = Image.new("RGB", (8, 6))
    im.info["transparency"] = (0, 0, 0)
    with pytest.warns(UserWarning, match=r"transparent colour \(0, 0, 0\).*convert\('RGBA'\)"):
        arr, layout = as_array(im)
    assert layout == "RGB" and arr.shape == (6, 8, 3)
    grey = Image.new("L", (8, 6))
    grey.info["transparency"] = 4096  # a 16-bit grey PNG's key: L -> LA would key its low byte, the wrong pixels
    with pytest.warns(UserWarning, match=r"transparent colour 4096 .* is a 16-bit one that no 8-bit pixel"):
        as_array(grey)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_array(Image.new("RGB", (8, 6)))  # no key, no warning
        keyed = Image.new("RGBA", (8, 6))
        keyed.info["transparency"] = (0, 0, 0)  # the image has its alpha: the key says nothing more
        as_array(keyed)


def test_the_array_api_warns_of_a_possible_bomb_as_image_open_does(monkeypatch, tmp_path) -> None:
    """decode() and decode_batch() of a file above Pillow's limit (within twice it) gave no
    DecompressionBombWarning, so a program that makes that warning an error, as Pillow advises, was not protected
    on this path; the plugin warns once (at Image.open), and jac decode once."""
    from PIL import Image

    data = codec.encode(np.zeros((16, 16, 3), np.uint8), 2)
    path = tmp_path / "a.jac"
    path.write_bytes(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 256 pixels: a warning, not an error
    for call in (lambda: codec.decode(data), lambda: codec.decode(path), lambda: codec_batch.decode_batch([data])):
        with pytest.warns(Image.DecompressionBombWarning):
            call()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    assert [w.category for w in caught] == [Image.DecompressionBombWarning]  # once, not again at load()


def test_a_file_object_given_to_decode_is_refused_with_the_hint_its_docstring_promises(tmp_path) -> None:
    path = tmp_path / "a.jac"
    path.write_bytes(b"not read")
    with open(path, "rb") as f, pytest.raises(TypeError, match=r"got BufferedReader: read it \(f.read\(\)\)"):
        codec.decode(f)


@pytest.mark.parametrize("device", [3, ["cpu"], b"cpu", 1.5])
def test_a_device_of_another_type_is_a_type_error_naming_it(device) -> None:
    """``str(device)`` came before any check: ``device=3`` gave ValueError "unknown device '3'"."""
    from pillow_jac.engine import resolve_device

    with pytest.raises(TypeError, match=f"device must be a str, a torch.device or None, not {type(device).__name__}"):
        resolve_device(device)


def test_an_empty_device_argument_is_refused_and_a_torch_device_taken(monkeypatch) -> None:
    """None asks for the default; an empty or blank string is refused, whatever JAC_DEVICE says."""
    import torch

    from pillow_jac.engine import resolve_device

    monkeypatch.setenv("JAC_DEVICE", "cpu")
    for blank in ("", "  "):
        with pytest.raises(ValueError, match="is empty: use cpu, cuda, cuda:N or auto, or None for the default"):
            resolve_device(blank)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(("mode", "tried"), [("RGBA", "RGBA, RGB"), ("LA", "LA, RGBA, L, RGB"), ("RGB", "RGB")])
def test_a_writer_that_takes_no_mode_is_told_every_mode_tried(mode: str, tried: str) -> None:
    """An image with alpha is tried in its modes, then flattened in the flat image's: the error named the last."""
    from PIL import Image

    from pillow_jac.decoded_output import for_format

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused: no "alpha left out" before the error
        with pytest.raises(ValueError, match=rf"^Pillow's XBM writer takes none of the modes {tried}; choose"):
            for_format(Image.new(mode, (4, 4)), "XBM")


def test_a_jac_file_given_parsed_is_held_to_the_header_rules_of_a_read_one(monkeypatch) -> None:
    """A JacFile handed to decode, decode_symbols or decode_batch has the header rules of a file read
    (container.check_header, SPEC.md 3): one whose width and height were changed, and so no longer derive
    its latent shapes, is refused up front as such a file is, not decoded past the pixel limit (checked on
    the width and height, while the decode is sized by the latent shapes) nor run into numpy's errors."""
    import dataclasses

    from PIL import Image

    jac = container.parse(codec.encode(natural_image(128, 128, seed=9), 4))  # 8 x 8 latents
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 128 x 128 file is over twice the limit
    with pytest.raises(codec_steps.CodecError, match="exceeds the limit"):
        codec.decode_symbols(jac)
    for size in (1, 1280):  # within the limit on its face (8 x 8 latents decoded), and not (latents too few)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000 if size == 1 else None)
        forged = dataclasses.replace(jac, header=dataclasses.replace(jac.header, width=size, height=size))
        for decode in (codec.decode, codec.decode_symbols, lambda f: codec_batch.decode_batch([f])):
            with pytest.raises(container.JacDataError, match=r"^invalid JHDR: y shape \(8, 8\) does not match"):
                decode(forged)
