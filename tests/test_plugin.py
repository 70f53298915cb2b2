"""Tests of the Pillow plugin (pillow_jac.JacImagePlugin), in the style of Pillow's own plugin tests."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, UnidentifiedImageError

import pillow_jac
from pillow_jac import JacImagePlugin, container, files, image_saving
from pillow_jac.constants import DEFAULT_QUALITY, MAGIC

from .helpers import sixteen_bit_png

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample.png"
SIZE = (48, 40)


# --------------------------------------------------------------------------- helpers


def hopper(mode: str = "RGB", size: tuple[int, int] = SIZE) -> Image.Image:
    """A small natural image (a crop of the bundled sample photo) in ``mode``."""
    with Image.open(SAMPLE) as im:
        crop = im.convert("RGB").crop((150, 90, 150 + size[0], 90 + size[1]))
    return crop if mode == "RGB" else crop.convert(mode)


def with_alpha(im: Image.Image) -> Image.Image:
    """``im`` (RGB or L) with a varied alpha channel: a gradient and a fully transparent block."""
    alpha = Image.linear_gradient("L").resize(im.size)
    alpha.paste(0, (0, 0, im.width // 3, im.height // 3))
    out = im.convert("RGBA" if im.mode == "RGB" else "LA")
    out.putalpha(alpha)
    return out


def jac_bytes(im: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JAC", **options)
    return buf.getvalue()


def roundtrip(im: Image.Image, **options) -> Image.Image:
    out = Image.open(io.BytesIO(jac_bytes(im, **options)))
    out.load()
    return out


def assert_resembles(decoded: Image.Image, original: Image.Image) -> None:
    """Loose sanity check of a lossy round trip: same size and mode, pixels strongly correlated.

    Image quality is the codec's business (and depends on the weights); this catches plumbing
    errors such as swapped channels, transposed or shifted images.
    """
    assert decoded.size == original.size and decoded.mode == original.mode
    a = np.asarray(decoded, np.float64).ravel()
    b = np.asarray(original, np.float64).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.5


def codec_encode(im: Image.Image, quality: float = DEFAULT_QUALITY) -> bytes:
    from pillow_jac import codec

    return codec.encode(np.asarray(im), quality)


@pytest.fixture(scope="module")
def rgb_jac() -> bytes:
    return jac_bytes(hopper("RGB"), quality=6)


@pytest.fixture
def rgb_jac_path(tmp_path: Path, rgb_jac: bytes) -> Path:
    path = tmp_path / "hopper.jac"
    path.write_bytes(rgb_jac)
    return path


# --------------------------------------------------------------------------- registration


def test_registration() -> None:
    assert Image.OPEN["JAC"][0] is JacImagePlugin.JacImageFile
    assert Image.SAVE["JAC"] is image_saving.save_handler
    assert Image.SAVE_ALL["JAC"] is image_saving.save_all_handler
    assert Image.registered_extensions()[".jac"] == "JAC"
    assert Image.MIME["JAC"] == "image/x-jac"


def test_register_is_idempotent() -> None:
    before = list(Image.ID)
    pillow_jac.register()
    JacImagePlugin.register()
    assert Image.ID == before
    assert Image.ID.count("JAC") == 1


def test_accept() -> None:
    for accept in (container.accept, JacImagePlugin._accept):
        assert accept(MAGIC + b"rest")
        assert not accept(MAGIC[:7])
        assert not accept(b"\x89PNG\r\n\x1a\n")


def test_lazy_codec_exports() -> None:
    from pillow_jac import codec

    assert pillow_jac.encode is codec.encode
    assert pillow_jac.decode is codec.decode
    assert {"encode", "decode", "register", "__version__"} <= set(dir(pillow_jac))
    with pytest.raises(AttributeError):
        pillow_jac.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- reading


def test_sanity(rgb_jac_path: Path, tmp_path: Path) -> None:
    with Image.open(rgb_jac_path) as im:
        fp = im.fp
        assert im.format == "JAC"
        assert im.format_description == JacImagePlugin.JacImageFile.format_description
        assert im.get_format_mimetype() == "image/x-jac"
        assert im.size == SIZE
        assert im.mode == "RGB"
        assert im.info["jac_quality"] == 6.0
        assert isinstance(im.info["model_id"], str) and im.info["model_id"]
        assert im.tile  # nothing decoded yet
        im.load()
        assert not im.tile
        assert fp.closed  # Pillow closes the file it opened once the pixels are read
        assert_resembles(im, hopper())
        im.save(tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as png:
        assert png.size == SIZE and png.mode == "RGB"


def test_load_decodes_what_open_parsed(monkeypatch, rgb_jac: bytes) -> None:
    """The file is read once: ``load()`` neither parses again nor touches the file."""
    fp = io.BytesIO(rgb_jac)
    with Image.open(fp) as im:
        assert fp.tell() == len(rgb_jac)  # open read the whole container, once

        def parsed_again(*args, **kwargs):
            raise AssertionError("the file was parsed again")

        from pillow_jac.container import reading

        for module in (container, reading):  # the names the package exports, and those read() calls
            for name in ("read", "read_file", "parse", "read_header"):
                monkeypatch.setattr(module, name, parsed_again)
        fp.close()  # load must not need it
        im.load()
        assert_resembles(im, hopper())


def test_loaded_pixels_are_writable_as_a_png_s_are(rgb_jac: bytes) -> None:
    """A loaded image is writable: pixel access writes in place, and drawing shows through it."""
    from PIL import ImageDraw

    with Image.open(io.BytesIO(rgb_jac)) as im:
        pixels = im.load()
        assert im.readonly == 0
        pixels[0, 0] = (255, 0, 0)
        ImageDraw.Draw(im).point((1, 1), fill=(0, 255, 0))
        assert (pixels[0, 0], pixels[1, 1]) == ((255, 0, 0), (0, 255, 0))


def test_open_with_formats_argument(rgb_jac: bytes) -> None:
    with Image.open(io.BytesIO(rgb_jac), formats=["JAC"]) as im:
        assert im.format == "JAC"
    png = io.BytesIO()
    hopper().save(png, "PNG")
    with pytest.raises(UnidentifiedImageError):
        Image.open(png, formats=["JAC"])


def test_invalid_file() -> None:
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"this is not an image at all" * 4))
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(MAGIC[:5]))


@pytest.mark.parametrize(
    ("cut", "load_truncated"),
    [(cut, flag) for cut in (8, 12, 30, 74, -40, -13, -1) for flag in (False, True) if not (flag and cut == -1)],
)
def test_truncated_file(monkeypatch, rgb_jac: bytes, cut: int, load_truncated: bool) -> None:
    """A file cut short is an OSError, as in Pillow's plugins, even with LOAD_TRUNCATED_IMAGES (see the module doc)
    unless only its JEND chunk is cut (-1, see the next test)."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    with pytest.raises(OSError, match="truncated JAC file") as info:
        Image.open(io.BytesIO(rgb_jac[:cut]))
    assert isinstance(info.value, container.JacTruncatedError)
    assert isinstance(info.value, ValueError)  # a JacFormatError too


def test_load_truncated_images_skips_a_damaged_preview_or_metadata_chunk(monkeypatch) -> None:
    """With LOAD_TRUNCATED_IMAGES, as PNG does, a bad CRC in an ancillary chunk costs that chunk, not the image
    (SPEC.md 8.3); without it the file is refused, and a damaged critical chunk is refused either way."""
    from PIL import ImageFile

    data = jac_bytes(hopper("RGB"), quality=2, preview=16, xmp=b"<x/>")
    with Image.open(io.BytesIO(data)) as im:
        intact = np.asarray(im)
    chunks = {ctype: (offset, length) for offset, ctype, length in _chunks(data)}
    for ctype in (b"prvw", b"xmp ", b"YSTR"):
        offset, length = chunks[ctype]
        bad = bytearray(data)
        bad[offset + 8 + length] ^= 1  # the chunk's CRC
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
        with pytest.raises(OSError, match="CRC mismatch"):
            Image.open(io.BytesIO(bytes(bad)))
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
        if ctype == b"YSTR":
            with pytest.raises(OSError, match="CRC mismatch in chunk 'YSTR'"):
                Image.open(io.BytesIO(bytes(bad)))
            continue
        with pytest.warns(UserWarning, match=f"skipped the damaged ancillary chunk '{ctype.decode().strip()}'"):
            im = Image.open(io.BytesIO(bytes(bad)))
        with im:
            assert ("xmp" in im.info) == (ctype != b"xmp ")
            assert (im.draft("RGB", (8, 8)) is None) == (ctype == b"prvw")  # no preview to draft from
            if ctype != b"prvw":
                continue
            assert np.array_equal(np.asarray(im), intact)


def test_load_truncated_images_forgives_a_damaged_end(monkeypatch, rgb_jac: bytes) -> None:
    """With LOAD_TRUNCATED_IMAGES a file cut inside or before its 12-byte JEND chunk, or with bytes after it, is
    read (SPEC.md 8.3) with a warning; without it, and for a cut in YSTR (13 bytes off), it is refused."""
    from PIL import ImageFile

    with Image.open(io.BytesIO(rgb_jac)) as im:
        intact = np.asarray(im)
    for data in (rgb_jac[:-1], rgb_jac[:-12], rgb_jac + b"\0", rgb_jac + b"junk" * 100):
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
        with pytest.raises(OSError, match="truncated JAC file|after the JEND"):
            Image.open(io.BytesIO(data))
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
        with pytest.warns(UserWarning, match="read without its damaged end"):
            im = Image.open(io.BytesIO(data))
        with im:
            assert im._jac == container.parse(rgb_jac)  # what load() decodes
            if len(data) == len(rgb_jac) - 1:
                assert np.array_equal(np.asarray(im), intact)
    with pytest.raises(OSError, match="truncated JAC file: CRC of chunk 'YSTR'"):
        Image.open(io.BytesIO(rgb_jac[:-13]))


def test_recovery_warnings_name_the_file_and_point_at_the_caller(monkeypatch, tmp_path: Path, rgb_jac: bytes) -> None:
    """The warnings of a recovering read named no file, so the default filter showed one per process, and pointed
    at pillow_jac's code: they now name the file (a path, or a file object's name) and point at the caller's line."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    bad = bytearray(jac_bytes(hopper("RGB"), quality=2, xmp=b"<x/>"))
    offset, _, length = next(c for c in _chunks(bytes(bad)) if c[1] == b"xmp ")
    bad[offset + 8 + length] ^= 1  # the xmp chunk's CRC
    paths = []
    for name, data in (("a.jac", bytes(bad)), ("b.jac", bytes(bad)), ("c.jac", rgb_jac + b"\0")):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # once per message and line: the loop's line
        for path in [*paths, paths[0]]:
            Image.open(path).close()
        with open(paths[1], "rb") as fp:
            Image.open(fp).close()  # a file object: its name
    damaged_xmp = "skipped the damaged ancillary chunk 'xmp' (CRC mismatch)"
    assert [str(w.message) for w in caught] == [
        f"JAC file {str(paths[0])!r}: {damaged_xmp}",
        f"JAC file {str(paths[1])!r}: {damaged_xmp}",
        f"JAC file {str(paths[2])!r}: read without its damaged end (the file is cut short before or inside its "
        "JEND chunk, or has bytes after JEND)",
        f"JAC file {str(paths[1])!r}: {damaged_xmp}",
    ]
    assert {w.filename for w in caught} == {__file__}


def _chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, data length) of each chunk of a well-formed ``.jac`` file."""

    out, pos = [], len(MAGIC)
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((pos, data[pos + 4 : pos + 8], n))
        pos += 12 + n
    return out


def test_one_frame_like_other_plugins(rgb_jac: bytes) -> None:
    from PIL import ImageSequence

    with Image.open(io.BytesIO(rgb_jac)) as im:
        assert im.n_frames == 1
        assert im.is_animated is False
        assert [frame.size for frame in ImageSequence.Iterator(im)] == [SIZE]
        with pytest.raises(EOFError):
            im.seek(1)
        assert im.tell() == 0


def test_load_after_verify(rgb_jac_path: Path) -> None:
    """As with WebP, AVIF and HEIF, ``load()`` works after ``verify()``."""
    with Image.open(rgb_jac_path) as im:
        fp = im.fp
        im.verify()
        assert fp.closed
        im.load()
        assert_resembles(im, hopper())


def _parse_in_pieces(data: bytes, cuts: list[int]):
    """What :class:`PIL.ImageFile.Parser` gives for ``data`` fed in pieces ending at ``cuts`` (and the end)."""
    from PIL import ImageFile

    parser = ImageFile.Parser()
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        parser.feed(data[a:b])
    return parser.close()


def _chunk_ends(data: bytes) -> list[int]:
    """The offset after the signature and after each chunk of a file."""
    ends, at = [len(MAGIC)], len(MAGIC)
    while at < len(data):
        at += 12 + int.from_bytes(data[at : at + 4], "big")
        ends.append(at)
    return ends


def test_incremental_parser(rgb_jac: bytes) -> None:
    """PIL.ImageFile.Parser gives the image and the metadata Image.open gives, however the file is cut up."""
    vectors = Path(__file__).resolve().parents[1] / "format_spec" / "vectors"
    with_metadata = (vectors / "edge" / "chunks-reordered.jac").read_bytes()  # ICC, EXIF and XMP
    for data in (rgb_jac, with_metadata):
        with Image.open(io.BytesIO(data)) as direct:
            direct.load()
            for cuts in (list(range(100, len(data), 100)), _chunk_ends(data)[:-1], [len(data) - 5]):
                im = _parse_in_pieces(data, cuts)
                assert im.tobytes() == direct.tobytes() and im.info == direct.info
                im.putpixel((0, 0), 0 if im.mode == "L" else (1, 2, 3))  # writable, as Image.open's after load()


@pytest.mark.parametrize("truncated", [False, True])
def test_the_parser_reads_the_chunks_once_the_file_has_come(rgb_jac: bytes, monkeypatch, truncated: bool) -> None:
    """The Parser tries to open what it has after every piece. Every try read all the chunks so far, so a file of
    many chunks fed in small pieces took time growing with the square of its size: under LOAD_TRUNCATED_IMAGES
    (20,000 empty chunks in pieces of 1 kB: 13 s), and without it for a file whose chunks end in JEND's 12 bytes
    at every piece's end (a 400 kB file: 15 s). Only close() reads the chunks."""
    from PIL import ImageFile

    from pillow_jac import container

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated)
    end = len(rgb_jac) - 12
    jend = rgb_jac[end:]
    plain = rgb_jac[:end] + _chunk(b"zzzz", b"") * 200 + jend
    trap = _chunk(b"zzzz", b"") * 20 + _chunk(b"trap", bytes(100) + jend)
    baited = rgb_jac[:end] + trap * 40 + jend
    # the baited file is cut where each trap chunk's data ends: every piece but the last ends as a file ends
    layouts = {
        "plain": (plain, list(range(64, len(plain), 64))),
        "baited": (baited, [end + k * len(trap) - 4 for k in range(1, 41)]),
    }
    reads: dict[str, int] = {}
    read_file = container.read_file
    for name, (data, cuts) in layouts.items():
        reads[name] = 0
        monkeypatch.setattr(
            container, "read_file", lambda *a, _n=name, **k: reads.__setitem__(_n, reads[_n] + 1) or read_file(*a, **k)
        )
        im = _parse_in_pieces(data, cuts)
        monkeypatch.setattr(container, "read_file", read_file)
        with Image.open(io.BytesIO(rgb_jac)) as direct:
            assert im.tobytes() == direct.tobytes()
    assert reads == {"plain": 1, "baited": 1}  # close()'s, of the whole file


def test_an_image_the_parser_opened_from_a_piece_is_not_decoded(rgb_jac: bytes) -> None:
    """The image a Parser attempt opened knows the size and mode; its pixels come from close()."""
    from PIL import ImageFile

    parser = ImageFile.Parser()
    parser.feed(rgb_jac[: len(rgb_jac) // 2])
    with Image.open(io.BytesIO(rgb_jac)) as direct:
        assert (parser.image.size, parser.image.mode) == (direct.size, direct.mode)
        with pytest.raises(OSError, match="close"):
            parser.image.load()
        parser.feed(rgb_jac[len(rgb_jac) // 2 :])
        assert parser.close().tobytes() == direct.tobytes()


@pytest.mark.parametrize("error", [KeyboardInterrupt, MemoryError])
def test_an_exception_of_the_parsers_last_open_goes_on_unchanged(rgb_jac: bytes, monkeypatch, error) -> None:
    """Parser.close() loads, in a finally, the image a piece opened while the whole file's open raises: a Ctrl-C
    or a MemoryError there became an OSError about that image."""
    from PIL import ImageFile

    from pillow_jac import container

    parser = ImageFile.Parser()
    parser.feed(rgb_jac[:200])
    parser.feed(rgb_jac[200:])

    def interrupted(*args, **kwargs):
        raise error

    monkeypatch.setattr(container, "read_file", interrupted)
    with pytest.raises(error):
        parser.close()


def _outcome(read) -> tuple:
    """``("refused",)`` when ``read()`` raises OSError, else the image's pixels and info."""
    try:
        with warnings.catch_warnings():
            # LOAD_TRUNCATED_IMAGES's warnings of the damage it forgives
            warnings.simplefilter("ignore")
            im = read()
            im.load()
    except OSError:
        return ("refused",)
    return im.tobytes(), im.info


def test_the_parser_warns_only_of_damage_the_whole_file_has(rgb_jac: bytes, monkeypatch) -> None:
    """Under LOAD_TRUNCATED_IMAGES the Parser's attempt on a piece that stops before JEND warned of a damaged
    end, for a sound file fed byte by byte; a file whose end is damaged is still warned of, once, at close()."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for data, warned in ((rgb_jac, 0), (rgb_jac[:-6], 1)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            im = _parse_in_pieces(data, list(range(1, len(data))))
        assert [str(w.message) for w in caught if "damaged end" in str(w.message)] == [
            "JAC: read without its "
            "damaged end (the file is cut short before or inside its JEND chunk, or has bytes after JEND)"
        ] * warned
        with Image.open(io.BytesIO(rgb_jac)) as direct:
            assert im.tobytes() == direct.tobytes()


def test_the_parser_does_not_decode_a_piece_before_it_refuses_the_whole(rgb_jac: bytes, monkeypatch) -> None:
    """A complete file fed to the Parser, then bytes that make the whole input invalid: ``close()`` loads the
    first piece's image in a ``finally``, and the plugin decoded it (seconds, gigabytes for a large one) before
    the refusal, whose error a failed decode could replace."""
    from PIL import ImageFile

    monkeypatch.setattr(JacImagePlugin, "_decode_pixels", lambda jac: pytest.fail("the stale piece was decoded"))
    parser = ImageFile.Parser()
    parser.feed(rgb_jac)
    parser.feed(b"junk")
    with pytest.raises(OSError, match="JEND"):
        parser.close()
    # only the Parser's stale load is skipped: a program's load inside its own ``except OSError`` decodes
    monkeypatch.undo()
    fp = io.BytesIO(rgb_jac)
    with Image.open(fp) as im:
        fp.close()  # load does not need it
        try:
            raise FileNotFoundError("a file of the program's own")
        except OSError:
            im.load()
        assert not im.tile and im.getpixel((0, 0)) is not None


@pytest.mark.parametrize("truncated_ok", [False, True])
def test_the_parser_judges_the_whole_file_as_open_does(rgb_jac: bytes, monkeypatch, truncated_ok: bool) -> None:
    """The Parser refuses or accepts each file as Image.open does, also when a piece ends where the file so far
    looks complete (at a chunk boundary before trailing data, a bad end or an unknown critical chunk)."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_ok)
    end = len(rgb_jac) - 12  # where JEND starts
    cases = {
        "trailing byte": (rgb_jac + b"\0", len(rgb_jac)),
        "another file after it": (rgb_jac + rgb_jac, len(rgb_jac)),
        "unknown critical chunk": (rgb_jac[:end] + _chunk(b"ABCD", b"x") + rgb_jac[end:], end),
        "JEND's CRC zeroed": (rgb_jac[:-4] + bytes(4), end),
        "cut inside JEND": (rgb_jac[:-6], end),
    }
    outcomes = {}
    for name, (data, cut) in cases.items():
        outcomes[name] = _outcome(lambda d=data: Image.open(io.BytesIO(d)))
        assert _outcome(lambda d=data, c=cut: _parse_in_pieces(d, [c])) == outcomes[name], name
    refused = {name for name, outcome in outcomes.items() if outcome == ("refused",)}
    # without LOAD_TRUNCATED_IMAGES every one is refused; with it, a file cut short or with data after its end is
    # read (SPEC.md 8.3), but not a damaged critical chunk
    assert refused == (set(cases) if not truncated_ok else {"unknown critical chunk", "JEND's CRC zeroed"})


def _chunk(ctype: bytes, payload: bytes) -> bytes:

    crc = zlib.crc32(ctype + payload).to_bytes(4, "big")
    return len(payload).to_bytes(4, "big") + ctype + payload + crc


def test_verify_checks_the_alpha_plane() -> None:
    """verify() refuses a file whose alpha plane does not decompress to the image's size, as load() does."""
    vectors = Path(__file__).resolve().parents[1] / "format_spec" / "vectors" / "invalid"
    for name in ("alph-plane-short", "alph-preset-dictionary", "alph-trailing-byte"):
        with Image.open(vectors / f"{name}.jac") as im, pytest.raises(container.JacDataError, match="alpha plane"):
            im.verify()


def test_trailing_garbage_is_rejected(rgb_jac: bytes) -> None:
    with pytest.raises(ValueError, match="after the JEND"):
        Image.open(io.BytesIO(rgb_jac + b"junk"))


def _rewrite(data: bytes, **changes) -> bytes:
    jac = container.parse(data)
    for name, value in changes.items():
        setattr(jac, name, value)
    jac.header.z_stream_length = len(jac.z_stream)
    jac.header.y_stream_length = len(jac.y_stream)
    return container.serialize(jac)


def test_corrupt_stream_raises_only_oserror_or_valueerror(rgb_jac: bytes) -> None:
    jac = container.parse(rgb_jac)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, len(jac.y_stream), dtype=np.uint8).tobytes()
    data = _rewrite(rgb_jac, y_stream=noise, z_stream=jac.z_stream[::-1])
    with Image.open(io.BytesIO(data)) as im:  # the container is valid: opening works
        assert im.size == SIZE
        try:
            im.load()  # a range decoder may decode garbage without noticing; it must not crash
        except (OSError, ValueError):
            pass


def _damaged(data: bytes, kind: str) -> bytes:
    ystr = data.index(b"YSTR")
    if kind == "crc":
        return data[: ystr + 6] + bytes([data[ystr + 6] ^ 0xFF]) + data[ystr + 7 :]
    if kind == "trailing":
        return data + b"\0"
    return data[:8] + b"junkjunkjunk" + data[20:]  # "first-chunk": the signature, then no JHDR


@pytest.mark.parametrize(
    ("kind", "cause"),
    [("crc", "CRC mismatch in chunk 'YSTR'"), ("trailing", "after the JEND chunk"), ("first-chunk", "must be JHDR")],
)
def test_damaged_file_is_an_oserror_like_a_damaged_png(rgb_jac: bytes, kind: str, cause: str) -> None:
    """The loop Pillow users write to skip broken images skips a damaged .jac; the message names the cause."""
    data = _damaged(rgb_jac, kind)
    with pytest.raises(OSError, match=cause) as info:
        Image.open(io.BytesIO(data))
    assert isinstance(info.value, container.JacDataError)
    assert isinstance(info.value, ValueError)  # a JacFormatError, as documented since the first release
    skipped = []
    for blob in (data, b"not an image at all"):
        try:
            Image.open(io.BytesIO(blob))
        except (UnidentifiedImageError, OSError):
            skipped.append(blob)
    assert len(skipped) == 2


def test_stream_that_does_not_decode_is_an_oserror(rgb_jac: bytes) -> None:
    """A YSTR with a valid CRC whose symbols run out of the coding range: OSError and ValueError on load."""
    from pillow_jac.entropy_coding import EntropyCodingError

    assert issubclass(EntropyCodingError, OSError) and issubclass(EntropyCodingError, ValueError)
    jac = container.parse(rgb_jac)
    data = _rewrite(rgb_jac, y_stream=jac.y_stream[:4])  # a whole word, far too short for the latents
    with Image.open(io.BytesIO(data)) as im, pytest.raises(OSError) as info:
        im.load()
    assert isinstance(info.value, ValueError)


def test_wrong_model_fails_on_load_not_open(rgb_jac: bytes) -> None:
    jac = container.parse(rgb_jac)
    jac.header.model_id = "no-such-model"
    with Image.open(io.BytesIO(container.serialize(jac))) as im:
        assert im.info["model_id"] == "no-such-model"
        with pytest.raises(ValueError, match="no-such-model"):
            im.load()


@pytest.mark.parametrize("exc", [RuntimeError("torch said no"), KeyError("symbol"), AssertionError()])
def test_foreign_decode_errors_become_oserror(monkeypatch, rgb_jac: bytes, exc: Exception) -> None:
    from pillow_jac import codec

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(codec, "decode", broken)
    with Image.open(io.BytesIO(rgb_jac)) as im:
        with pytest.raises(OSError, match="cannot decode JAC image") as info:
            im.load()
    assert info.value.__cause__ is exc


_ALLOWED = (OSError, SyntaxError, ValueError, MemoryError, NotImplementedError, OverflowError)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_only_allowed_exceptions(rgb_jac: bytes, data) -> None:
    """Mutated files raise only the exception types Pillow's fuzzers allow (see Pillow's test suite)."""
    buf = bytearray(rgb_jac)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(buf[:cut]))) as im:
                im.load()
    except (*_ALLOWED, Image.DecompressionBombError, Image.DecompressionBombWarning):
        pass


def test_decompression_bomb_error_before_decoding(monkeypatch, rgb_jac: bytes) -> None:
    from pillow_jac import codec

    def must_not_run(*args, **kwargs):
        raise AssertionError("decoder ran")

    monkeypatch.setattr(codec, "decode", must_not_run)
    monkeypatch.setattr(container, "read_file", must_not_run)  # refused from the header, before the chunks are read
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE[0] * SIZE[1] // 2 - 1)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(rgb_jac))


def test_decompression_bomb_warning(monkeypatch, rgb_jac: bytes) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE[0] * SIZE[1] - 1)
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(rgb_jac))


def test_thumbnail(rgb_jac_path: Path) -> None:
    with Image.open(rgb_jac_path) as im:
        im.thumbnail((24, 24))
        assert im.size == (24, 20)
        assert im.mode == "RGB"


def test_open_does_not_import_torch(rgb_jac_path: Path) -> None:
    code = (
        "import sys, pillow_jac\n"
        "from PIL import Image\n"
        f"im = Image.open({str(rgb_jac_path)!r})\n"
        "assert im.size == (48, 40) and im.mode == 'RGB' and im.info['jac_quality'] == 6.0, im\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_threads_decode_identically(rgb_jac: bytes) -> None:
    results: list[bytes] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with Image.open(io.BytesIO(rgb_jac)) as im:
                im.load()
                results.append(im.tobytes())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 3
    assert len(set(results)) == 1


# --------------------------------------------------------------------------- writing: modes


class EncodeSpy:
    """Stands in for ``codec.encode``: records its arguments and returns a fixed valid file.

    The writing tests below check what the plugin hands the codec (converted pixels, quality,
    metadata, device) without running the network each time; the codec itself is exercised by
    the round-trip tests above and below.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[dict] = []

    def __call__(self, image, quality=DEFAULT_QUALITY, **kwargs) -> bytes:
        self.calls.append({"image": np.array(image), "quality": quality, **kwargs})
        return self.data

    @property
    def last(self) -> dict:
        return self.calls[-1]


@pytest.fixture
def spy(monkeypatch, rgb_jac: bytes) -> EncodeSpy:
    from pillow_jac import codec

    encode_spy = EncodeSpy(rgb_jac)
    monkeypatch.setattr(codec, "encode", encode_spy)
    return encode_spy


@pytest.mark.parametrize("layout", ["RGB", "L", "RGBA", "LA"])
def test_plugin_matches_codec(layout: str) -> None:
    """Pillow's path gives exactly the codec's bytes and pixels, for every layout; alpha is exact."""
    from pillow_jac import codec

    im = hopper("RGB" if layout.startswith("RGB") else "L")
    if layout.endswith("A"):
        im = with_alpha(im)
    data = jac_bytes(im, quality=5)
    assert data == codec.encode(np.asarray(im), 5)
    with Image.open(io.BytesIO(data)) as out:
        assert out.mode == layout
        np.testing.assert_array_equal(np.asarray(out), codec.decode(data))
        if layout.endswith("A"):
            assert out.getchannel("A").tobytes() == im.getchannel("A").tobytes()
        assert_resembles(out, im)


@pytest.mark.parametrize(
    ("mode", "stored"),
    [
        ("RGB", "RGB"),
        ("L", "L"),
        ("RGBA", "RGBA"),
        ("LA", "LA"),
        ("1", "L"),
        ("P", "RGB"),
        ("PA", "RGBA"),
        ("CMYK", "RGB"),
        ("YCbCr", "RGB"),
        ("RGBX", "RGB"),
        ("HSV", "RGB"),
        ("RGBa", "RGBA"),
        ("La", "LA"),
    ],
)
def test_mode_conversion(spy: EncodeSpy, mode: str, stored: str) -> None:
    base = hopper("L") if stored.startswith("L") else hopper()
    im = (with_alpha(base) if stored.endswith("A") else base).convert(mode)
    jac_bytes(im)
    np.testing.assert_array_equal(spy.last["image"], np.asarray(im.convert(stored)))


def test_palette_with_transparency_keeps_alpha(spy: EncodeSpy) -> None:
    im = hopper().quantize(16)
    im.info["transparency"] = 0
    jac_bytes(im)
    assert spy.last["image"].shape == (SIZE[1], SIZE[0], 4)
    np.testing.assert_array_equal(spy.last["image"], np.asarray(im.convert("RGBA")))


@pytest.mark.parametrize(("mode", "key", "stored"), [("L", 0, "LA"), ("1", 0, "LA"), ("RGB", (0, 0, 0), "RGBA")])
def test_colour_key_is_stored_as_alpha(spy: EncodeSpy, tmp_path: Path, mode: str, key, stored: str) -> None:
    """A PNG with a tRNS colour key (1, L or RGB with info["transparency"]) keeps its transparency, as WebP does."""
    im = hopper(mode)
    im.paste(key if mode != "1" else 0, (0, 0, 10, 10))
    im.save(tmp_path / "keyed.png", transparency=key)
    with Image.open(tmp_path / "keyed.png") as keyed:
        assert keyed.mode == mode and "transparency" in keyed.info
        jac_bytes(keyed)
        expected = np.asarray(keyed.convert(stored))
    assert spy.last["image"].shape[2] == len(stored)
    np.testing.assert_array_equal(spy.last["image"], expected)
    assert (expected[:10, :10, -1] == 0).all() and expected[..., -1].max() == 255


def test_a_sixteen_bit_colour_key_is_dropped_with_a_warning(spy: EncodeSpy, tmp_path: Path) -> None:
    """Pillow reads a 16-bit RGB PNG as 8 bits but keeps its tRNS colour at 16: it matches no pixel, so an alpha
    plane made from it would be opaque everywhere. The image is stored as RGB, and the user told why."""
    key = (4660, 22136, 39612)
    samples = np.full((6, 5, 3), key, ">u2")
    samples[3:] = 1000  # the top rows have the transparent colour
    png = tmp_path / "rgb16-keyed.png"
    sixteen_bit_png(png, samples, 2, transparency=key)
    with Image.open(png) as im:
        assert im.mode == "RGB" and im.info["transparency"] == key
        with pytest.warns(UserWarning, match=r"transparent colour \(4660, 22136, 39612\) is a 16-bit one"):
            jac_bytes(im)
    assert spy.last["image"].shape == (6, 5, 3)


def test_a_sixteen_bit_grey_key_is_dropped_with_a_warning(spy: EncodeSpy) -> None:
    """A 16-bit grey PNG's tRNS level stays 16-bit when the image is brought to 8-bit L (as the README asks),
    and L -> LA keyed on its low byte: the darkest pixels became transparent, the keyed one stayed opaque, with
    no warning. As for RGB, the image is stored without transparency and the user told why."""
    samples = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    png = io.BytesIO()
    Image.fromarray(samples).save(png, "PNG", transparency=4096)
    with Image.open(png) as im:
        grey = im.point(lambda v: v / 257).convert("L")
    assert grey.info["transparency"] == 4096
    with pytest.warns(UserWarning, match=r"transparent colour 4096 is a 16-bit one"):
        jac_bytes(grey)
    assert spy.last["image"].shape == (64, 64)  # L, no alpha plane


def test_palette_with_rgba_palette(spy: EncodeSpy) -> None:
    im = with_alpha(hopper()).quantize(16, method=Image.Quantize.FASTOCTREE)
    assert im.palette.mode == "RGBA"
    jac_bytes(im)
    assert spy.last["image"].shape[2] == 4


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F", "LAB"])
def test_unsupported_modes_raise_valueerror(spy: EncodeSpy, mode: str, tmp_path: Path) -> None:
    im = Image.new(mode, SIZE)
    with pytest.raises(ValueError, match=f"cannot write mode {mode} as JAC.*L, LA, RGB or RGBA"):
        im.save(io.BytesIO(), format="JAC")
    path = tmp_path / "out.jac"
    with pytest.raises(ValueError):
        im.save(path)
    assert not path.exists()  # Pillow removes the file it created for the failed save
    assert not spy.calls


@pytest.mark.parametrize("size", [(1, 1), (17, 3)])
def test_odd_sizes(size: tuple[int, int]) -> None:
    out = roundtrip(hopper("RGB", size))
    assert out.size == size


# --------------------------------------------------------------------------- writing: options


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))  # header and metadata only, no decoding


def test_default_quality(spy: EncodeSpy) -> None:
    jac_bytes(hopper())
    assert spy.last["quality"] == DEFAULT_QUALITY


@pytest.mark.parametrize("quality", [1, 2.5, 3, 8, np.float32(5.25), Decimal("4.5"), Fraction(7, 2)])
def test_quality_values(spy: EncodeSpy, quality) -> None:
    jac_bytes(hopper(), quality=quality)
    assert spy.last["quality"] == float(quality)
    assert type(spy.last["quality"]) is float


@pytest.mark.parametrize("quality", ["3", b"3", True, 10**400])
def test_quality_that_is_not_a_number_is_refused(quality) -> None:
    with pytest.raises(ValueError, match="quality must be"):
        jac_bytes(hopper(), quality=quality)


def test_quality_is_stored_and_changes_size() -> None:
    small, large = jac_bytes(hopper(), quality=1), jac_bytes(hopper(), quality=7.3)
    assert opened(small).info["jac_quality"] == 1.0
    assert opened(large).info["jac_quality"] == container.quantize_quality(7.3)  # stored to 1/256
    assert len(small) < len(large)


@pytest.mark.parametrize("quality", [75, 0, 0.5, 8.01, -1, float("nan"), "high"])
def test_invalid_quality(spy: EncodeSpy, quality) -> None:
    with pytest.raises(ValueError, match="quality"):
        jac_bytes(hopper(), quality=quality)
    assert not spy.calls


def test_jpeg_style_quality_message(spy: EncodeSpy) -> None:
    with pytest.raises(ValueError, match="not JPEG's 0-100 scale"):
        jac_bytes(hopper(), quality=75)


def test_save_to_path_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "out.JAC"  # extensions are case-insensitive
    hopper().save(path, quality=3)
    with Image.open(path) as im:
        assert im.format == "JAC" and im.info["jac_quality"] == 3.0
        im.load()


def test_save_with_format_argument(spy: EncodeSpy, tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    hopper().save(path, format="JAC")
    assert path.read_bytes() == spy.data


def test_save_to_file_object(spy: EncodeSpy, tmp_path: Path) -> None:
    path = tmp_path / "out.jac"
    with open(path, "wb") as f:
        f.write(b"prefix")
        hopper().save(f, format="jac")  # the format name is case-insensitive
    assert path.read_bytes() == b"prefix" + spy.data


def test_failed_encode_writes_nothing(monkeypatch, tmp_path: Path) -> None:
    from pillow_jac import codec

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, pretend")

    monkeypatch.setattr(codec, "encode", broken)
    buf = io.BytesIO()
    with pytest.raises(OSError, match="cannot encode JAC image"):
        hopper().save(buf, format="JAC")
    assert buf.getvalue() == b""
    path = tmp_path / "new.jac"
    with pytest.raises(OSError):
        hopper().save(path)
    assert not path.exists()


def test_save_all(spy: EncodeSpy, tmp_path: Path) -> None:
    """One frame saves as without save_all; more frames are refused before anything is written."""
    assert jac_bytes(hopper(), save_all=True) == spy.data
    with pytest.raises(ValueError, match="a JAC file holds one image, but save_all was given 3 frames"):
        jac_bytes(hopper(), save_all=True, append_images=[hopper(), hopper()])
    gif = io.BytesIO()
    hopper().save(gif, "GIF", save_all=True, append_images=[hopper().rotate(90)])
    with Image.open(gif) as animated:
        assert animated.n_frames == 2
        path = tmp_path / "anim.jac"
        with pytest.raises(ValueError, match="2 frames"):
            animated.save(path, save_all=True)
    assert not path.exists()
    assert len(spy.calls) == 1


def test_append_to_an_existing_file_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    """``save(path, append=True)`` makes Pillow open the file for update without emptying it: a smaller image
    written there left the old file's tail after its end, and the file could no longer be opened."""
    path = tmp_path / "a.jac"
    hopper().save(path, quality=8)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="append=True"):
        hopper().resize((16, 16)).save(path, quality=1, append=True)
    assert path.read_bytes() == before
    with Image.open(path) as im:
        im.load()


_FULL_DISK = """
import resource, signal, sys
from PIL import Image
import pillow_jac
from pillow_jac import codec

data = open(sys.argv[1], "rb").read()
codec.encode = lambda *args, **kwargs: data
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
for target in sys.argv[2:]:
    try:
        if target.endswith("fileobj.jac"):
            with open(target, "ab") as f:
                Image.new("RGB", (8, 8)).save(f, format="JAC")
        else:
            Image.new("RGB", (8, 8)).save(target)
        print("saved")
    except OSError as e:
        print(e.errno, e.filename)
"""


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="needs os.posix_fallocate and RLIMIT_FSIZE")
def test_full_disk_leaves_no_partial_file(tmp_path: Path, rgb_jac: bytes) -> None:
    """A file system that cannot hold the file (here a file-size limit) fails the save before any byte is written."""
    import errno

    assert len(rgb_jac) > 64
    (tmp_path / "data").write_bytes(rgb_jac)
    old, new, fileobj = tmp_path / "old.jac", tmp_path / "new.jac", tmp_path / "fileobj.jac"
    old.write_bytes(b"old file")
    fileobj.write_bytes(b"prefix")
    args = [str(p) for p in (tmp_path / "data", new, old, fileobj)]
    result = subprocess.run([sys.executable, "-c", _FULL_DISK, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == [f"{errno.EFBIG} {p}" for p in args[1:]]
    assert not new.exists()  # Pillow removes the file it created, since the error came from the writer
    assert old.read_bytes() == b""  # Pillow truncated it before the writer ran: use pillow_jac.save to keep it
    assert fileobj.read_bytes() == b"prefix"  # the caller's own bytes, and no partial JAC data


@pytest.mark.parametrize("module", ["gzip", "bz2", "lzma"])
@pytest.mark.parametrize("prefix", [0, 100_000])
def test_save_into_a_compressing_wrapper(tmp_path: Path, rgb_jac: bytes, module: str, prefix: int) -> None:
    """A wrapper's tell() is not its file's: no space is reserved (nor truncated) in the compressed file."""
    import importlib

    compressor = importlib.import_module(module)
    path = tmp_path / "x.jac.z"
    data = rgb_jac + bytes(8192)  # compressible: reserved space would show as zeros after the stream
    with compressor.open(path, "wb") as f:
        f.write(bytes(prefix))
        assert files.file_position(f) == (None, None)
        files.write_into(f, data, str(path))
    assert path.stat().st_size < 2_000 + len(rgb_jac)  # the zeros compress to about 100 bytes
    written = path.read_bytes()
    assert not written.endswith(bytes(8))  # no space reserved beyond what the compressor wrote
    assert compressor.decompress(written) == bytes(prefix) + data


@pytest.mark.skipif(os.name != "posix", reason="O_APPEND through fcntl")
def test_appending_file_position_is_its_end(tmp_path: Path) -> None:
    """A shell's ``>>`` opens with O_APPEND at position 0: a failed write must not truncate the file to 0."""
    path = tmp_path / "log.jac"
    path.write_bytes(b"earlier content")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    with open(fd, "wb") as f:
        assert f.tell() == 0
        assert files.file_position(f) == (len(b"earlier content"), fd)
    with open(path, "r+b") as f:
        f.seek(3)
        assert files.file_position(f)[0] == 3
    assert files.file_position(io.BytesIO()) == (None, None)
    import tempfile

    with tempfile.NamedTemporaryFile(dir=tmp_path) as named:  # a wrapper around a real file: its offset counts
        named.write(b"abc")
        named.flush()
        assert files.file_position(named)[0] == 3


@pytest.mark.parametrize("mode", ["ab", "a+b"])
def test_saving_into_a_file_opened_for_appending_writes_the_file(tmp_path: Path, rgb_jac: bytes, mode: str) -> None:
    """Space reserved at the end of a file opened for appending made it longer, and the image then landed after
    as many zero bytes as it has: a corrupt file, reported as saved."""
    path = tmp_path / "a.jac"
    with Image.open(io.BytesIO(rgb_jac)) as im:
        decoded = im.copy()
    for count in (1, 2):
        with open(path, mode) as f:
            decoded.save(f, format="JAC", quality=2)
        data = path.read_bytes()
        single = jac_bytes(decoded, quality=2)
        assert data == single * count
    with Image.open(io.BytesIO(single)) as im:
        assert im.size == decoded.size


def test_pillow_jac_save_takes_a_bytes_path(tmp_path: Path) -> None:
    """``Image.save`` takes a bytes path; ``pillow_jac.save`` failed on one after the whole encode."""
    path = tmp_path / "b.jac"
    pillow_jac.save(hopper(), os.fsencode(path), quality=2)
    with Image.open(path) as im:
        assert im.size == SIZE


def test_effort_none_is_the_default_as_for_the_other_options(spy: EncodeSpy) -> None:
    jac_bytes(hopper(), effort=None, quality=None, preview=None, device=None, model=None)
    assert spy.last["effort"] == 0 and spy.last["quality"] == DEFAULT_QUALITY


def test_unknown_save_options_are_ignored(spy: EncodeSpy) -> None:
    jac_bytes(hopper(), optimize=True, lossless=False)
    assert set(spy.last) == {"image", "quality", "effort", "device", "model", "preview", "icc_profile", "exif", "xmp"}


def test_lossless_is_refused_not_ignored(spy: EncodeSpy, tmp_path: Path) -> None:
    """WebP's ``lossless=True`` was ignored as any unknown option is: the caller got a lossy file unawares."""
    target = tmp_path / "x.jac"
    with pytest.raises(ValueError, match="lossy format: lossless=True"):
        hopper().save(target, lossless=True)
    assert not target.exists() and not spy.calls


def test_device_option(spy: EncodeSpy) -> None:
    jac_bytes(hopper(), device="cpu")
    assert spy.last["device"] == "cpu"
    jac_bytes(hopper())
    assert spy.last["device"] is None  # the codec's default: JAC_DEVICE, else cpu


# --------------------------------------------------------------------------- metadata


@pytest.fixture(scope="module")
def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def make_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010E] = "JAC test image"  # ImageDescription
    exif[0x0112] = 1  # Orientation
    return exif


XMP = b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"/><?xpacket end="r"?>'


def test_metadata_roundtrip(monkeypatch, srgb_profile: bytes) -> None:
    exif = make_exif()
    out = opened(jac_bytes(hopper(), icc_profile=srgb_profile, exif=exif, xmp=XMP))
    assert out.info["icc_profile"] == srgb_profile
    assert out.info["exif"] == exif.tobytes()
    assert out.getexif()[0x010E] == "JAC test image"
    assert out.info["xmp"] == XMP
    # re-saving a decoded JAC image keeps its metadata
    out.load()
    from pillow_jac import codec

    encode_spy = EncodeSpy(b"")
    monkeypatch.setattr(codec, "encode", encode_spy)
    out.save(io.BytesIO(), format="JAC")
    assert encode_spy.last["icc_profile"] == srgb_profile
    assert encode_spy.last["exif"] == exif.tobytes()
    assert encode_spy.last["xmp"] == XMP


def test_metadata_types(spy: EncodeSpy) -> None:
    exif = make_exif()
    jac_bytes(hopper(), xmp=XMP.decode(), exif=exif, icc_profile=bytearray(b"icc"))
    assert spy.last["xmp"] == XMP
    assert spy.last["exif"] == exif.tobytes()
    assert spy.last["icc_profile"] == b"icc"
    # a bare TIFF block (as Pillow's WebP reader may give) gets the Exif prefix (SPEC.md 5.2)
    tiff = exif.tobytes()[6:]
    assert tiff.startswith((b"II*\x00", b"MM\x00*"))
    jac_bytes(hopper(), exif=tiff)
    assert spy.last["exif"] == exif.tobytes()


def test_encode_image_is_what_save_writes(spy: EncodeSpy, srgb_profile: bytes) -> None:
    """The public encode_image takes the save options and gives the bytes save writes, with the same codec call."""
    im = hopper().convert("P")
    im.info.update(icc_profile=srgb_profile, xmp=XMP)
    options = {"quality": 3.5, "effort": 1, "exif": make_exif(), "xmp": None, "device": "cpu", "optimize": True}
    data = JacImagePlugin.encode_image(im, **options)
    by_encode = spy.last
    assert data == jac_bytes(im, **options) == spy.data
    by_save = spy.last
    for key in ("quality", "effort", "device", "icc_profile", "exif", "xmp"):
        assert by_encode[key] == by_save[key], key
    np.testing.assert_array_equal(by_encode["image"], by_save["image"])
    assert by_encode["image"].shape == (SIZE[1], SIZE[0], 3)  # P converted to RGB
    assert by_encode["icc_profile"] == srgb_profile  # kept from im.info
    assert (by_encode["exif"], by_encode["xmp"]) == (make_exif().tobytes(), None)  # replaced, dropped
    assert image_saving._encode_image(im, options) == data  # with Pillow's encoderinfo dict, as the handler has it
    with pytest.raises(ValueError, match="quality"):
        JacImagePlugin.encode_image(im, quality=75)


def test_metadata_kept_from_info_by_default(spy: EncodeSpy, srgb_profile: bytes) -> None:
    im = hopper()
    im.info.update(icc_profile=srgb_profile, exif=make_exif().tobytes(), xmp=XMP)
    jac_bytes(im)
    for key in ("icc_profile", "exif", "xmp"):
        assert spy.last[key] == im.info[key]


def test_exif_edited_through_getexif_is_what_is_kept(spy: EncodeSpy) -> None:
    """``im.getexif()`` is Pillow's way to edit EXIF: an Orientation reset there after rotating the pixels was
    ignored and the stale one kept from ``im.info`` (viewers then rotated the image a second time)."""
    from PIL import ExifTags

    orientation = ExifTags.Base.Orientation
    exif = make_exif()
    exif[orientation] = 6
    jpeg = io.BytesIO()
    hopper().save(jpeg, "JPEG", exif=exif)
    with Image.open(jpeg) as im:
        rotated = im.rotate(-90, expand=True)
    raw = rotated.info["exif"]
    jac_bytes(rotated)
    assert spy.last["exif"] == raw  # not edited: the bytes as they came
    rotated.getexif()[orientation] = 1
    jac_bytes(rotated)
    kept = Image.Exif()
    kept.load(spy.last["exif"])
    assert kept[orientation] == 1 and kept[0x010E] == "JAC test image"


def test_exif_removed_from_info_is_dropped_even_after_getexif(spy: EncodeSpy) -> None:
    """getexif() caches its tags on the image: after a first save (or a look at the orientation), deleting
    ``info["exif"]`` stored the cached tags, GPS included, and replacing it stored the old ones."""
    jpeg = io.BytesIO()
    exif = make_exif()
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)  # GPSLatitude
    hopper().save(jpeg, "JPEG", exif=exif)
    with Image.open(jpeg) as im:
        jac_bytes(im)  # the first save reads getexif(), which caches
        assert spy.last["exif"] == im.info["exif"]
        other = make_exif()
        other[0x010E] = "another description"
        im.info["exif"] = other.tobytes()
        jac_bytes(im)
        assert spy.last["exif"] == other.tobytes()
        del im.info["exif"]
        jac_bytes(im)
        assert spy.last["exif"] is None


def test_exif_edits_in_a_sub_ifd_are_stored_and_xmp_orientation_is_no_edit(spy: EncodeSpy) -> None:
    """Clearing the GPS IFD through getexif() was ignored (only IFD0 was compared); an Orientation that getexif()
    copies from the XMP by itself made the EXIF be re-serialised (its thumbnail IFD lost) although nothing was
    edited."""
    jpeg = io.BytesIO()
    exif = make_exif()
    del exif[0x0112]
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    hopper().save(jpeg, "JPEG", exif=exif, xmp=xmp)
    with Image.open(jpeg) as im:
        raw = im.info["exif"]
        assert im.getexif()[0x0112] == 6  # Pillow's copy from the XMP
        jac_bytes(im)
        assert spy.last["exif"] == raw
        im.getexif().get_ifd(0x8825).clear()
        jac_bytes(im)
    kept = Image.Exif()
    kept.load(spy.last["exif"])
    assert kept.get_ifd(0x8825) == {} and kept[0x010E] == "JAC test image"


def test_a_sub_ifd_only_read_through_getexif_is_no_edit(spy: EncodeSpy) -> None:
    """``im.getexif().get_ifd(GPSInfo)`` ("does the photo have a location?") on EXIF without a GPS IFD made the
    EXIF be stored re-serialised: an empty GPS IFD added, the thumbnail IFD lost."""
    from PIL import ExifTags

    jpeg = io.BytesIO()
    exif = make_exif()
    hopper().save(jpeg, "JPEG", exif=exif)
    with Image.open(jpeg) as im:
        raw = im.info["exif"]
        for ifd in (ExifTags.IFD.GPSInfo, ExifTags.IFD.Interop, ExifTags.IFD.Exif):
            im.getexif().get_ifd(ifd)
        jac_bytes(im)
        assert spy.last["exif"] == raw
        im.getexif().get_ifd(ExifTags.IFD.GPSInfo)[2] = (48.0, 51.0, 29.0)  # an edit there is still stored
        jac_bytes(im)
    kept = Image.Exif()
    kept.load(spy.last["exif"])
    assert kept.get_ifd(ExifTags.IFD.GPSInfo)[2] == (48.0, 51.0, 29.0)


def test_a_gps_ifd_added_through_getexif_alone_is_stored(spy: EncodeSpy) -> None:
    """A location added through ``im.getexif().get_ifd(GPSInfo)`` to an image with no EXIF (a geotagging script)
    left IFD0 empty, and an edit with an empty IFD0 and Exif IFD was taken for "every tag deleted": nothing was
    stored (JPEG and WebP store it with ``exif=im.getexif()``)."""
    from PIL import ExifTags

    im = hopper()
    gps = im.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (51.0, 30.0, 0.0)
    jac_bytes(im)
    assert spy.last["exif"] is not None
    kept = Image.Exif()
    kept.load(spy.last["exif"])
    assert kept.get_ifd(ExifTags.IFD.GPSInfo) == {1: "N", 2: (51.0, 30.0, 0.0)}
    im.getexif().get_ifd(ExifTags.IFD.GPSInfo).clear()  # and deleting it again stores none
    jac_bytes(im)
    assert spy.last["exif"] is None


def test_exif_in_a_png_raw_profile_text_chunk_is_kept(spy: EncodeSpy) -> None:
    """ImageMagick writes a PNG's EXIF as a "Raw profile type exif" text chunk, which only getexif() reads."""
    from PIL import PngImagePlugin

    tiff = make_exif().tobytes()[6:]
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(tiff) + 6:8d}\n" + (b"Exif\0\0" + tiff).hex() + "\n")
    png = io.BytesIO()
    hopper().save(png, "PNG", pnginfo=text)
    with Image.open(png) as im:
        im.load()
        assert "exif" not in im.info
        jac_bytes(im)
    kept = Image.Exif()
    kept.load(spy.last["exif"])
    assert dict(kept) == dict(make_exif())
    tif = io.BytesIO()
    hopper().save(tif, "TIFF")
    with Image.open(tif) as im:  # a TIFF's getexif() is its own image tags: not stored as EXIF
        jac_bytes(im)
    assert spy.last["exif"] is None


def test_metadata_can_be_dropped_or_replaced(spy: EncodeSpy, srgb_profile: bytes) -> None:
    im = hopper()
    im.info.update(icc_profile=srgb_profile, exif=make_exif().tobytes(), xmp=XMP)
    jac_bytes(im, icc_profile=None, exif=b"", xmp=b"<x/>")
    assert spy.last["icc_profile"] is None
    assert spy.last["exif"] is None
    assert spy.last["xmp"] == b"<x/>"


def test_profile_of_another_colour_space_is_not_kept(spy: EncodeSpy, srgb_profile: bytes) -> None:
    """A CMYK image's CMYK profile would describe pixels stored as RGB: it is dropped unless asked for, with a
    warning (it was dropped silently, metadata lost without a word)."""
    cmyk_profile = srgb_profile[:16] + b"CMYK" + srgb_profile[20:]
    gray_profile = srgb_profile[:16] + b"GRAY" + srgb_profile[20:]
    im = hopper().convert("CMYK")
    im.info["icc_profile"] = cmyk_profile
    with pytest.warns(UserWarning, match=r"ICC profile is left out: its colour space \(CMYK\) cannot describe the RGB"):
        jac_bytes(im)
    assert spy.last["icc_profile"] is None
    jac_bytes(im, icc_profile=cmyk_profile)  # asked for: written as given
    assert spy.last["icc_profile"] == cmyk_profile
    cases = [
        ("RGB", srgb_profile, True),
        ("L", gray_profile, True),
        ("L", srgb_profile, False),
        ("LA", gray_profile, True),
        ("P", srgb_profile, True),
        ("RGB", b"short", True),
    ]
    for mode, profile, kept in cases:
        im = hopper(mode)
        im.info["icc_profile"] = profile
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jac_bytes(im)
        assert spy.last["icc_profile"] == (profile if kept else None), (mode, profile[16:20])
        assert [str(w.message) for w in caught if "ICC profile" in str(w.message)] == (
            []
            if kept
            else [
                f"the image's ICC profile is left out: its colour space (RGB) cannot describe the {mode} pixels stored"
            ]
        )


def test_no_metadata_by_default(rgb_jac: bytes) -> None:
    assert not {"icc_profile", "exif", "xmp"} & set(opened(rgb_jac).info)


def test_metadata_from_png(spy: EncodeSpy, tmp_path: Path, srgb_profile: bytes) -> None:
    png = tmp_path / "in.png"
    hopper().save(png, icc_profile=srgb_profile, exif=make_exif())
    with Image.open(png) as im:
        jac_bytes(im)
    assert spy.last["icc_profile"] == srgb_profile
    assert spy.last["exif"] == make_exif().tobytes()


def test_bad_metadata_type(spy: EncodeSpy) -> None:
    with pytest.raises(TypeError, match="icc_profile must be bytes"):
        jac_bytes(hopper(), icc_profile=12)
    for name in ("icc_profile", "exif"):  # binary blocks: text would be stored as garbage
        with pytest.raises(TypeError, match=f"{name} must be bytes( or a PIL.Image.Exif)?, got str"):
            jac_bytes(hopper(), **{name: "abc"})
    im = hopper()
    im.info["xmp"] = {"not": "bytes"}  # from im.info: skipped, not an error
    jac_bytes(im)
    assert spy.last["xmp"] is None


def test_save_options_take_what_pillow_users_pass(spy: EncodeSpy, tmp_path: Path) -> None:
    """``append_images`` as any iterable (as WebP and PNG take it), ``preview`` as a numpy integer, and
    ``pillow_jac.save`` refusing a file object or another format before encoding."""
    import pillow_jac

    assert jac_bytes(hopper(), save_all=True, append_images=(im for im in [])) == spy.data
    with pytest.raises(ValueError, match="given 2 frames"):
        jac_bytes(hopper(), save_all=True, append_images=(im for im in [hopper()]))
    assert jac_bytes(hopper(), preview=np.int64(16)) == spy.data
    assert spy.calls[-1]["preview"] == 16
    calls = len(spy.calls)
    with pytest.raises(TypeError):
        pillow_jac.save(hopper(), io.BytesIO())
    with pytest.raises(ValueError, match="writes JAC files"):
        pillow_jac.save(hopper(), tmp_path / "x.jac", format="PNG")
    assert len(spy.calls) == calls  # refused before any encode
    pillow_jac.save(hopper(), tmp_path / "x.jac", format="jac")
    assert (tmp_path / "x.jac").read_bytes() == spy.data
    pillow_jac.save(hopper(), tmp_path / "y.jac", format=None)  # as Image.save's default
    assert (tmp_path / "y.jac").read_bytes() == spy.data


@pytest.mark.parametrize("exif", [b"MM\0*", b"garbage!"])
def test_exif_that_pillow_cannot_parse_reads_as_none(rgb_jac: bytes, tmp_path: Path, exif: bytes) -> None:
    """Pillow's EXIF parser let struct.error and SyntaxError out of a short or garbled block: getexif(),
    ImageOps.exif_transpose() and imageio's reader (which calls getexif()) failed on a file whose pixels decode.
    The stored bytes stay in info and are carried by a save."""
    import imageio.v3 as iio
    from PIL import ImageOps

    jac = container.parse(rgb_jac)
    jac.exif = exif
    path = tmp_path / "bad-exif.jac"
    path.write_bytes(container.serialize(jac))
    with Image.open(path) as im:
        with pytest.warns(UserWarning, match=r"bad-exif.jac: its EXIF cannot be read"):
            assert dict(im.getexif()) == {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once
            assert dict(im.getexif()) == {}
            turned = ImageOps.exif_transpose(im)
        assert turned.size == im.size and im.info["exif"] == exif
        out = io.BytesIO()
        im.save(out, "JAC")
    assert container.parse(out.getvalue()).exif in (exif, b"Exif\0\0" + exif)  # the header a TIFF block gets
    with pytest.warns(UserWarning, match="EXIF cannot be read"):
        pixels = iio.imread(path)
    assert pixels.shape == (im.height, im.width, 3)


def test_leaving_the_with_block_lets_go_of_the_file_as_for_png(rgb_jac_path: Path, tmp_path: Path) -> None:
    """Leaving ``with Image.open(...)`` closed only the file (Pillow's ``__exit__``): the parsed file stayed and
    ``load()`` decoded after the block, where a PNG fails. Pixels loaded in the block stay, as a PNG's do."""
    png = tmp_path / "a.png"
    hopper().save(png)
    with Image.open(png) as im:
        pass
    with pytest.raises((AssertionError, AttributeError, ValueError)):  # Pillow 13: a bare assert on its closed file
        im.load()
    with Image.open(rgb_jac_path) as im:
        pass
    assert im._jac is None
    with pytest.raises(ValueError, match="closed image"):
        im.load()
    with open(rgb_jac_path, "rb") as f:
        with Image.open(f) as im:
            assert im.draft("RGB", (8, 8)) is None  # no preview: the image is decoded on load
        assert not f.closed  # the caller's file object stays open, as for a PNG
    with pytest.raises(ValueError, match="closed image"):
        im.load()
    with Image.open(rgb_jac_path) as im:
        im.load()
    with Image.open(io.BytesIO(rgb_jac_path.read_bytes())) as again:
        assert im.tobytes() == again.tobytes()


def test_the_exif_warning_names_a_file_opened_from_a_file_object(rgb_jac: bytes, tmp_path: Path) -> None:
    """Opened from a file object (as imageio opens every file), ``filename`` is empty: the warning named no file,
    and it pointed at the line calling ``getexif()`` inside Pillow or imageio, not the user's."""
    import imageio.v3 as iio
    from PIL import ImageOps

    jac = container.parse(rgb_jac)
    jac.exif = b"garbage!"
    path = tmp_path / "bad-exif.jac"
    path.write_bytes(container.serialize(jac))
    with open(path, "rb") as f, Image.open(f) as im, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ImageOps.exif_transpose(im)  # its getexif() call is in Pillow: the warning points here
        assert dict(im.getexif()) == {}  # said once
    assert [str(w.message).split(": its EXIF")[0] for w in caught] == [str(path)]
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match=rf"^{re.escape(str(path))}: its EXIF cannot be read") as through_imageio:
        iio.imread(path)
    assert [w.filename for w in through_imageio] == [__file__]
    with Image.open(io.BytesIO(path.read_bytes())) as im, pytest.warns(UserWarning, match="^a JAC file: its EXIF"):
        im.getexif()


def test_errors_that_are_not_a_bad_file_are_not_called_one(rgb_jac: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TypeError or IndexError of the reading code is a bug, not a damaged file: it is not turned into
    "truncated or corrupt JAC file" (Pillow's ``ImageFile`` takes such errors for "not this format")."""

    def bug(*args: object, **kwargs: object) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(container, "read_file", bug)
    header = container.read_header(io.BytesIO(rgb_jac))
    with pytest.raises(IndexError, match="a bug"):
        JacImagePlugin._read_container(io.BytesIO(rgb_jac[74:]), header, None)
    with pytest.raises(SyntaxError) as refused:
        JacImagePlugin.JacImageFile(io.BytesIO(rgb_jac))
    assert isinstance(refused.value.__cause__, IndexError)
    monkeypatch.setattr(container, "read_header", bug)
    with pytest.raises(SyntaxError) as refused:
        JacImagePlugin.JacImageFile(io.BytesIO(rgb_jac))
    assert isinstance(refused.value.__cause__, IndexError)
