"""Tests of the preview chunk (``prvw``, SPEC.md section 5.4): written on request, used by draft() and thumbnail()."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_jac
from pillow_jac import JacImagePlugin, codec, codec_steps, container

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample.png"
SIZE = (96, 80)  # previews of 48 pixels (preview=48) keep every encode here small


@pytest.fixture(scope="module")
def image() -> Image.Image:
    with Image.open(SAMPLE) as im:
        return im.convert("RGB").crop((120, 80, 120 + SIZE[0], 80 + SIZE[1]))


def forbid_decode(monkeypatch) -> None:
    """The image's own streams must not be decoded: a thumbnail or draft is to come from the preview."""
    monkeypatch.setattr(JacImagePlugin, "_raw_pixels", lambda *a: pytest.fail("decoded the image, not its preview"))


@pytest.fixture
def no_decode(monkeypatch) -> None:
    forbid_decode(monkeypatch)


def jac_bytes(im: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "JAC", **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def plain(image: Image.Image) -> bytes:
    return jac_bytes(image, quality=3)


@pytest.fixture(scope="module")
def with_preview(image: Image.Image) -> bytes:
    return jac_bytes(image, quality=3, preview=48)


def test_without_preview_the_bytes_do_not_change(image: Image.Image, plain: bytes) -> None:
    assert container.parse(plain).preview is None
    assert jac_bytes(image, quality=3, preview=False) == plain
    assert jac_bytes(image, quality=3, preview=np.False_) == plain
    assert codec.encode(np.asarray(image), 3, preview=False) == plain


def test_the_preview_is_one_chunk_more(plain: bytes, with_preview: bytes) -> None:
    jac = container.parse(with_preview)
    image_format, width, height, data = container.unpack_preview(jac.preview)
    assert (image_format, width, height) == (container.PREVIEW_WEBP, 48, 40)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert container.serialize(dataclasses.replace(jac, preview=None)) == plain  # nothing else differs
    assert len(with_preview) == len(plain) + 12 + len(jac.preview)
    # written before the streams (SPEC.md 4.3), so a reader after the preview can stop there
    assert with_preview.index(container.CHUNK_PRVW) < with_preview.index(b"YSTR")


def test_a_file_with_preview_decodes_to_the_same_pixels(plain: bytes, with_preview: bytes) -> None:
    assert np.array_equal(codec.decode(with_preview), codec.decode(plain))
    with Image.open(io.BytesIO(with_preview)) as im:
        im.load()
        assert im.size == SIZE and np.array_equal(np.asarray(im), codec.decode(plain))


def test_thumbnail_uses_the_preview(image: Image.Image, with_preview: bytes, no_decode) -> None:
    with Image.open(io.BytesIO(with_preview)) as im:
        im.thumbnail((24, 24))  # asks draft() for 48 x 48: the preview covers it
        assert im.size == (24, 20) and im.mode == "RGB"  # from the preview (forbid_decode)
    expected = image.resize((48, 40), Image.Resampling.LANCZOS).resize((24, 20), Image.Resampling.BICUBIC)
    difference = np.abs(np.asarray(im, np.int16) - np.asarray(expected, np.int16))
    assert difference.mean() < 6  # the WebP preview's loss, not another picture


def test_thumbnail_with_preview_does_not_import_torch(tmp_path: Path, with_preview: bytes) -> None:
    path = tmp_path / "preview.jac"
    path.write_bytes(with_preview)
    code = (
        "import sys, pillow_jac\n"
        "from PIL import Image\n"
        f"im = Image.open({str(path)!r})\n"
        "im.thumbnail((24, 24))\n"
        "assert im.size == (24, 20), im.size\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_draft_picks_the_preview_only_when_large_enough(with_preview: bytes) -> None:
    with Image.open(io.BytesIO(with_preview)) as im:
        assert im.draft("RGB", (64, 64)) is None  # the image fitted in 64 x 64 is 64 x 53: more than 48 x 40
        assert im.size == SIZE
    with Image.open(io.BytesIO(with_preview)) as im:
        assert im.draft(None, (48, 48)) == ("RGB", (0, 0, 48, 40))
        assert im.size == (48, 40)
        assert im.draft(None, (30, 30)) is None  # once only
        pixels = im.load()
        assert im.size == (48, 40) and im.mode == "RGB"
        pixels[0, 0] = (1, 2, 3)  # writable, as a decoded image is
        assert im.getpixel((0, 0)) == (1, 2, 3)
    with Image.open(io.BytesIO(with_preview)) as im:
        im.load()
        assert im.draft(None, (48, 48)) is None  # too late: the image is decoded
        assert im.size == SIZE


def test_thumbnail_without_preview_decodes(plain: bytes) -> None:
    with Image.open(io.BytesIO(plain)) as im:
        assert im.draft(None, (48, 48)) is None
        im.thumbnail((24, 24))
        assert im.size == (24, 20)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA"])
def test_preview_keeps_the_mode(image: Image.Image, mode: str, monkeypatch) -> None:
    converted = image.convert(mode)
    if mode in ("LA", "RGBA"):
        converted.putalpha(Image.linear_gradient("L").resize(SIZE))
    data = jac_bytes(converted, quality=2, preview=48)
    forbid_decode(monkeypatch)
    with Image.open(io.BytesIO(data)) as im:
        im.thumbnail((24, 24))
        assert im.mode == mode and im.size == (24, 20)  # from the preview (forbid_decode)
        if mode != "L":  # alpha survives the preview (WebP with alpha)
            alpha = np.asarray(im.getchannel("A"), np.int16)
            assert alpha[0].mean() < 40 and alpha[-1].mean() > 200  # the gradient runs top to bottom


def test_default_preview_is_512_pixels_and_small_images_get_none() -> None:
    strip = np.tile(np.linspace(0, 255, 600, dtype=np.uint8)[None, :, None], (16, 1, 3))  # 600 x 16
    data = pillow_jac.encode(strip, 2, preview=True)
    assert container.unpack_preview(container.parse(data).preview)[1:3] == (512, 14)
    small = np.zeros((20, 30, 3), np.uint8)
    assert container.parse(pillow_jac.encode(small, 2, preview=True)).preview is None  # no larger than 512
    assert JacImagePlugin.make_preview(small, "RGB", 30) is None
    assert JacImagePlugin.make_preview(small, "RGB", 16) is not None


@pytest.mark.parametrize("value", [3, 5000, "yes", 2.5])
def test_bad_preview_values(image: Image.Image, value) -> None:
    with pytest.raises(ValueError, match="preview must be"):
        JacImagePlugin.make_preview(np.asarray(image), "RGB", value)


def test_a_bad_preview_value_fails_the_save_before_the_encode(image: Image.Image, monkeypatch) -> None:
    """The preview's size was checked after the networks and the range coder had run (minutes at effort 3)."""

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran before the preview option was checked")

    monkeypatch.setattr(codec_steps, "encoder_engine", no_encoder)
    for value in (3, "yes", 600.0, 0, 0.0, ""):  # a falsy size is a bad size, not "no preview" (it was ignored)
        with pytest.raises(ValueError, match="preview must be"):
            jac_bytes(image, quality=2, preview=value)
        with pytest.raises(ValueError, match="preview must be"):
            pillow_jac.encode(np.asarray(image), 2, preview=value)


def with_chunk(data: bytes, preview: bytes) -> bytes:
    return container.serialize(dataclasses.replace(container.parse(data), preview=preview))


def _webp(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(out, "WEBP")
    return out.getvalue()


@pytest.mark.parametrize(
    "preview",
    [
        b"\x01\x00",  # too short
        container.pack_preview(container.PREVIEW_WEBP, 48, 40, b"RIFF but not a WebP"),  # does not decode
        b"\x07\x00\x30\x00\x28" + b"RIFF",  # unknown format
        # real WebP files of the declared size, each refused for its own reason alone:
        container.pack_preview(
            container.PREVIEW_WEBP, 60, 40, _webp(60, 40)
        ),  # another aspect ratio (the image's is 6:5)
        container.pack_preview(container.PREVIEW_WEBP, 96, 80, _webp(96, 80)),  # not smaller than the image
        # a sound header (the right size) before a body of garbage: it does not decode
        container.pack_preview(container.PREVIEW_WEBP, 48, 40, _webp(48, 40)[:40] + bytes(range(7, 250)) * 4),
    ],
    ids=["too-short", "not-a-webp", "unknown-format", "another-aspect", "not-smaller", "damaged-body"],
)
def test_unusable_previews_are_ignored(plain: bytes, preview: bytes, tmp_path: Path) -> None:
    """draft() ignores them, and ``jac info`` does not call them usable (it gave the declared size of any whose
    fields unpacked, while thumbnail() decoded the whole image)."""
    from pillow_jac.cli_info import file_info

    data = with_chunk(plain, preview)
    with Image.open(io.BytesIO(data)) as im:
        assert im.draft(None, (48, 48)) is None
        assert im.size == SIZE
    (tmp_path / "a.jac").write_bytes(data)
    info = file_info(tmp_path / "a.jac")
    assert "preview" in info["metadata"] and info["preview_size"] is None


def test_jac_info_gives_a_usable_previews_size(with_preview: bytes, tmp_path: Path) -> None:
    from pillow_jac.cli_info import file_info

    (tmp_path / "a.jac").write_bytes(with_preview)
    assert file_info(tmp_path / "a.jac")["preview_size"] == [48, 40]


def test_a_preview_of_another_size_than_declared_is_ignored(plain: bytes, with_preview: bytes) -> None:
    _, _, _, webp = container.unpack_preview(container.parse(with_preview).preview)
    data = with_chunk(plain, container.pack_preview(container.PREVIEW_WEBP, 60, 50, webp))  # webp is 48 x 40
    with Image.open(io.BytesIO(data)) as im:
        assert im.draft(None, (48, 48)) is None


@pytest.mark.parametrize("image_format", ["WEBP", "JPEG"])
def test_a_preview_larger_than_declared_is_not_opened(plain: bytes, monkeypatch, image_format: str) -> None:
    """A ``prvw`` declaring 24x20 around an embedded file of 120x100: Image.open's bomb check warned about the
    embedded file (an error where warnings are), and the WebP decoder allocated its canvas, all for a 96x80 file.
    Now its header's size is compared first, and no bomb check runs on it."""
    big = io.BytesIO()
    Image.new("RGB", (120, 100)).save(big, image_format, quality=10)  # 12,000 pixels: above the limit, below twice
    code = container.PREVIEW_WEBP if image_format == "WEBP" else container.PREVIEW_JPEG
    data = with_chunk(plain, container.pack_preview(code, 24, 20, big.getvalue()))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 96)
    opened: list[str] = []
    if image_format == "WEBP":
        from PIL import WebPImagePlugin

        real = WebPImagePlugin.WebPImageFile.__init__

        def spied(self, *args, **kwargs):
            opened.append("webp")
            real(self, *args, **kwargs)

        monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "__init__", spied)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(io.BytesIO(data)) as im:
            assert im.draft(None, (24, 20)) is None
            assert im.size == SIZE
    assert opened == []  # the WebP decoder, which allocates its canvas when opened, never ran


def test_jpeg_previews_are_read(image: Image.Image, plain: bytes) -> None:
    buffer = io.BytesIO()
    image.resize((48, 40)).save(buffer, "JPEG", quality=90)
    data = with_chunk(plain, container.pack_preview(container.PREVIEW_JPEG, 48, 40, buffer.getvalue()))
    with Image.open(io.BytesIO(data)) as im:
        assert im.draft(None, (48, 48)) is not None
        im.load()
        assert im.size == (48, 40) and im.mode == "RGB"


def test_container_reads_the_first_of_two_previews(plain: bytes) -> None:
    first = container.pack_preview(container.PREVIEW_JPEG, 4, 3, b"one")
    second = container.pack_preview(container.PREVIEW_WEBP, 4, 3, b"two")
    data = with_chunk(plain, first)
    end = data.index(b"JEND") - 4  # a second prvw chunk before JEND
    data = data[:end] + container._chunk(container.CHUNK_PRVW, second) + data[end:]
    assert container.parse(data).preview == first
    with pytest.raises(ValueError, match="known chunk"):
        container.serialize(dataclasses.replace(container.parse(plain), unknown_chunks=[(b"prvw", second)]))


def test_pack_preview_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="unknown preview format"):
        container.pack_preview(9, 4, 3, b"x")
    with pytest.raises(ValueError, match="width"):
        container.pack_preview(container.PREVIEW_JPEG, 0, 3, b"x")
    with pytest.raises(ValueError, match="empty"):
        container.pack_preview(container.PREVIEW_JPEG, 4, 3, b"")


def test_cli_encode_preview(tmp_path: Path) -> None:
    from pillow_jac.cli import main

    strip = Image.fromarray(np.tile(np.linspace(0, 255, 600, dtype=np.uint8)[None, :, None], (16, 1, 3)))
    source = tmp_path / "strip.png"
    strip.save(source)
    assert main(["encode", str(source), str(tmp_path / "strip.jac"), "-q", "2", "--preview"]) == 0
    jac = container.read(tmp_path / "strip.jac")
    assert container.unpack_preview(jac.preview)[1:3] == (512, 14)
    assert main(["encode", str(source), str(tmp_path / "plain.jac"), "-q", "2"]) == 0
    assert container.read(tmp_path / "plain.jac").preview is None


def test_a_closed_image_fails_at_once_and_lets_go_of_its_data(with_preview: bytes, monkeypatch) -> None:
    """load() after close() ran the whole neural decode before Pillow's "closed" error; close() kept the parsed
    file and a drafted preview."""
    from pillow_jac import JacImagePlugin

    monkeypatch.setattr(JacImagePlugin, "_raw_pixels", lambda *a: pytest.fail("decoded a closed image"))
    im = Image.open(io.BytesIO(with_preview))
    assert im.draft(None, (48, 48)) is not None and im._preview is not None  # the preview drafted
    im.close()
    assert im._jac is None and im._preview is None
    with pytest.raises(ValueError, match="closed image"):
        im.load()


def test_thumbnail_warns_of_a_bomb_once(image: Image.Image, monkeypatch) -> None:
    """The preview went through Image.open's check too: a second DecompressionBombWarning, for a smaller image."""
    data = jac_bytes(image, quality=3, preview=90)  # a 90x75 preview of the 96x80 image
    forbid_decode(monkeypatch)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # both warn (not an error below 10,000)
    with pytest.warns(Image.DecompressionBombWarning) as caught:
        im = Image.open(io.BytesIO(data))
        im.thumbnail((45, 38))
    assert im.size == (45, 38)  # from the preview (forbid_decode)
    assert len([w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]) == 1


@pytest.mark.parametrize("layout", ["RGBA", "LA"])
@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
def test_a_preview_without_alpha_stands_only_for_an_opaque_image(layout: str, image_format: str) -> None:
    """A preview without alpha (JPEG, or a WebP whose alpha libwebp dropped as opaque), converted to the file's
    mode, made an opaque thumbnail of an image with alpha. It now serves only an image whose alpha (the ALPH
    chunk, zlib: no torch) is 255 everywhere; any other is decoded. No neural coding here: draft() alone."""
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 100, 50)).save(buffer, image_format, quality=60)
    code = container.PREVIEW_JPEG if image_format == "JPEG" else container.PREVIEW_WEBP
    preview = container.pack_preview(code, 48, 40, buffer.getvalue())
    width, height = SIZE
    for plane, used in ((bytes(range(width)) * height, False), (b"\xff" * (width * height), True)):
        _, alpha = container.compress_alpha(plane, width, height)
        jac = container.JacFile.create(
            width=width, height=height, layout=layout, quality=2, model_id="demo", weights_hash=bytes(8),
            z_stream=b"z", y_stream=b"y", alpha=alpha, preview=preview,
        )  # fmt: skip
        with Image.open(io.BytesIO(container.serialize(jac))) as im:
            assert (im.draft(None, (48, 48)) is not None) == used
            if used:
                im.load()
                assert im.mode == layout and im.size == (48, 40) and im.getextrema()[-1] == (255, 255)


@pytest.mark.parametrize("layout", ["RGBA", "LA"])
def test_the_preview_of_a_nearly_opaque_image_keeps_its_alpha(image: Image.Image, layout: str) -> None:
    """One pixel of alpha 250 among 255s: resized to the preview, the alpha was 255 everywhere, libwebp dropped it,
    and the reader (rightly) took a preview without alpha for no image of this file's: every such file paid for a
    preview that thumbnail() never used. No neural coding here: make_preview and draft() alone."""
    from pillow_jac.preview import make_preview

    pixels = np.array(image.convert(layout))
    pixels[..., -1] = 255
    pixels[40, 50, -1] = 250
    chunk = make_preview(pixels, layout, 8)  # 96x80 to 8x7: the 250 averaged away
    with Image.open(io.BytesIO(container.unpack_preview(chunk)[3])) as embedded:
        assert embedded.mode == "RGBA" and embedded.getextrema()[-1][0] < 255
    width, height = SIZE
    _, alpha = container.compress_alpha(pixels[..., -1].tobytes(), width, height)
    jac = container.JacFile.create(
        width=width, height=height, layout=layout, quality=2, model_id="demo", weights_hash=bytes(8),
        z_stream=b"z", y_stream=b"y", alpha=alpha, preview=chunk,
    )  # fmt: skip
    with Image.open(io.BytesIO(container.serialize(jac))) as im:
        assert im.draft(None, (8, 8)) is not None


def test_a_jpeg_preview_cut_short_is_not_used_even_where_truncated_images_load(image, monkeypatch) -> None:
    """SPEC.md 5.4: a preview that does not decode to its size is ignored. Pillow fills a cut JPEG in with grey
    under LOAD_TRUNCATED_IMAGES; the preview is refused then, and the whole one still serves."""
    from PIL import ImageFile

    buffer = io.BytesIO()
    image.resize((48, 40)).save(buffer, "JPEG", quality=90)
    whole = buffer.getvalue()
    width, height = SIZE

    def file_with(jpeg: bytes) -> bytes:
        jac = container.JacFile.create(
            width=width, height=height, layout="RGB", quality=2, model_id="demo", weights_hash=bytes(8),
            z_stream=b"z", y_stream=b"y", preview=container.pack_preview(container.PREVIEW_JPEG, 48, 40, jpeg),
        )  # fmt: skip
        return container.serialize(jac)

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with Image.open(io.BytesIO(file_with(whole[: len(whole) // 2]))) as im:
        assert im.draft(None, (48, 48)) is None
    with Image.open(io.BytesIO(file_with(whole))) as im:
        assert im.draft(None, (48, 48)) is not None


def test_numpy_booleans_and_integers_are_taken_as_python_ones():
    from pillow_jac.preview import PREVIEW_SIZE, preview_size

    assert preview_size(np.True_) == preview_size(True) == PREVIEW_SIZE
    assert preview_size(np.int64(48)) == 48
    with pytest.raises(ValueError, match="preview must be"):
        preview_size(np.False_)  # False means no preview: the caller never asks for its size


def test_the_alpha_check_reads_the_plane_in_pieces_and_jac_info_decodes_no_preview(monkeypatch, tmp_path) -> None:
    """jac info asked preview_for, which read the whole alpha plane at once (and decoded the preview): a 390 kB
    file of 20000x20000 took 807 MB and 1.7 s. The plane is read in pieces, and info decodes no preview pixels."""
    import tracemalloc
    import zlib

    from pillow_jac import preview as preview_module
    from pillow_jac.cli_info import file_info

    width, height = 4000, 4000  # 16 MB of alpha
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 100, 50)).save(buffer, "JPEG")
    chunk = container.pack_preview(container.PREVIEW_JPEG, 40, 40, buffer.getvalue())

    def file_of(plane: bytes) -> container.JacFile:
        return container.JacFile.create(
            width=width, height=height, layout="RGBA", quality=2, model_id="demo", weights_hash=bytes(8),
            z_stream=b"z", y_stream=b"y", alpha=zlib.compress(plane),
            preview=chunk,
        )  # fmt: skip

    opaque = b"\xff" * (width * height)
    last_not = opaque[:-1] + b"\xfe"
    for plane, expected in ((opaque, True), (last_not, False), (opaque[:-1], False)):
        jac = file_of(plane)
        tracemalloc.start()
        assert preview_module._opaque(jac) is expected
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 << 20  # 4 MiB: the plane of 16 MB is never held whole
    path = tmp_path / "big.jac"
    path.write_bytes(container.serialize(file_of(opaque)))
    monkeypatch.setattr(preview_module, "preview_for", lambda *a: pytest.fail("info decoded the preview"))
    assert file_info(path)["preview_size"] == [40, 40]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", width * height // 2 - 1)  # a reader refuses the file
    assert file_info(path)["preview_size"] is None
