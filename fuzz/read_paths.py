"""The oracle's rules for the read paths beside ``codec.decode`` and ``load()``.

``codec.decode_batch`` of the file alone and ``codec.decode_symbols`` agree with ``codec.decode``
(:func:`check_batch_and_symbols`); ``load()`` under ``ImageFile.LOAD_TRUNCATED_IMAGES`` does what the plugin's
docstring and SPEC.md section 8.3 say (:func:`check_truncated`); ``jac info`` prints what the container
accepts and refuses the rest with the container's error (:func:`check_info`). The first three each cost a
whole decode of a file that decodes, so such a file runs one of them (:func:`rotated_check`).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .calls import bomb_errors, label, lib
from .chunks import split
from .limits import Finding

#: the checks that cost one more whole decode of a file that decodes; such a variant runs one of them
#: (:func:`rotated_check`), a variant ``codec.decode`` refuses runs all three (most fail early, and their
#: errors are what the three must agree on)
ROTATED_CHECKS = ("decode_batch", "decode_symbols", "LOAD_TRUNCATED_IMAGES")


def rotated_check(data: bytes) -> str:
    """Which of :data:`ROTATED_CHECKS` a variant that decodes runs: one by its CRC-32, so a session runs all three.

    Each costs as much as ``codec.decode``; running the three on every such variant would more than double
    the time the decode target takes per input.
    """
    return ROTATED_CHECKS[zlib.crc32(data) % len(ROTATED_CHECKS)]


def load_truncated(data: bytes, load: bool = True) -> tuple[Any, list[str]]:
    """``Image.open(...).load()`` of ``data`` under ``ImageFile.LOAD_TRUNCATED_IMAGES``: ``(pixels, warnings)``.

    The warnings are the messages of every warning open and load gave, in order. Without ``load`` the image is
    only opened, and ``pixels`` is None.
    """
    L = lib()
    saved = L.ImageFile.LOAD_TRUNCATED_IMAGES
    L.ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", L.Image.DecompressionBombWarning)
            with L.Image.open(io.BytesIO(data), formats=["JAC"]) as im:
                pixels = None
                if load:
                    im.load()
                    import numpy as np

                    pixels = np.asarray(im)
    finally:
        L.ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return pixels, [str(w.message) for w in caught]


def recover(data: bytes) -> tuple[Any, list[bytes]]:
    """``container.parse`` of ``data`` recovering what it can (SPEC.md section 8.3): ``(file, damaged chunk types)``."""
    damaged: list[bytes] = []
    return lib().container.parse(data, on_damaged=damaged.append), damaged


_INFO_DIR: tempfile.TemporaryDirectory[str] | None = None

_PARSER: Any = None


@contextlib.contextmanager
def _cached_cli_parser() -> Iterator[None]:
    """Let ``cli.main`` reuse one argument parser: building it takes most of a ``jac info`` call (~15 ms).

    The parser is built once per process: its defaults must not depend on anything that changes between
    inputs (they do not: ``cli.build_parser`` reads only constants).
    """
    global _PARSER
    cli = lib().cli
    build = cli.build_parser
    if _PARSER is None:
        _PARSER = build()
    cli.build_parser = lambda: _PARSER
    try:
        yield
    finally:
        cli.build_parser = build


def info_path() -> Path:
    """The file :func:`jac_info` writes each input to (in a temporary folder, removed at exit)."""
    global _INFO_DIR
    if _INFO_DIR is None:
        _INFO_DIR = tempfile.TemporaryDirectory(prefix="jac-fuzz-info-")
    return Path(_INFO_DIR.name) / "input.jac"


def jac_info(data: bytes) -> tuple[int, str, str]:
    """``jac info`` of ``data`` through ``pillow_jac.cli.main``: ``(status, stdout, stderr)``.

    ``data`` is written to :func:`info_path` first. An argparse exit (``SystemExit``) gives its code as the status.
    """
    path = info_path()
    path.unlink(missing_ok=True)  # a new file: truncating one makes ext4 flush it to disk on close (~4 ms)
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with _cached_cli_parser(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = lib().cli.main(["info", str(path)])
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 2
    return status, out.getvalue(), err.getvalue()


def alpha_plane_decodes(data: bytes) -> bool:
    """Whether ``data``'s alpha plane decompresses (True for a file without one, or that does not parse)."""
    container = lib().container
    try:
        jac = container.parse(data)
    except Exception:
        return True
    if jac.alpha is None:
        return True
    try:
        container.decompress_alpha(jac.alpha_method, jac.alpha, jac.header.width, jac.header.height)
    except Exception:
        return False
    return True


def check_batch_and_symbols(
    data: bytes, decoded: tuple[str, Any], batched: tuple[str, Any] | None, symbols: tuple[str, Any] | None
) -> None:
    """``decode_batch`` of the file alone gives ``decode``'s pixels, or an error of its class naming item 0.

    ``decode_symbols`` succeeds where ``decode`` does, with latents of the header's shapes, and fails with the
    class of ``decode``'s error. None: the check did not run (:func:`rotated_check`; and ``decode_symbols``,
    which does not read the alpha plane, does not run on a file whose alpha plane does not decompress).
    """
    if decoded[0] == "ok":
        if batched is not None:
            if batched[0] != "ok":
                raise Finding(f"codec.decode accepted but decode_batch -> {label(batched)}")
            pixels = batched[1]
            if len(pixels) != 1 or pixels[0].shape != decoded[1].shape or (pixels[0] != decoded[1]).any():
                raise Finding("codec.decode_batch of one file and codec.decode give different pixels")
        if symbols is not None:
            if symbols[0] != "ok":
                raise Finding(f"codec.decode accepted but decode_symbols -> {label(symbols)}")
            h = lib().container.parse(data).header
            z_hat, y_hat = symbols[1]
            if y_hat.shape[1:] != h.y_shape or (z_hat is not None and z_hat.shape[1:] != h.z_shape):
                shapes = (None if z_hat is None else z_hat.shape, y_hat.shape)
                raise Finding(f"decode_symbols gave latents of shapes {shapes}; the header: {h.z_shape} {h.y_shape}")
        return
    error = decoded[1]
    if batched is not None:
        if batched[0] == "ok" or type(batched[1]) is not type(error):
            raise Finding(f"codec.decode -> {label(decoded)} but decode_batch -> {label(batched)}")
        index = getattr(batched[1], "batch_index", None)
        if isinstance(error, (OSError, ValueError)) and index != 0:
            raise Finding(f"decode_batch -> {label(batched)} with batch_index {index}")
    if symbols is not None and (symbols[0] == "ok" or type(symbols[1]) is not type(error)):
        raise Finding(f"codec.decode -> {label(decoded)} but decode_symbols -> {label(symbols)}")


def check_truncated(
    data: bytes,
    parsed: tuple[str, Any],
    recovered: tuple[str, Any],
    loaded: tuple[str, Any],
    truncated: tuple[str, Any],
    repaired: tuple[str, Any] | None,
) -> None:
    """``ImageFile.LOAD_TRUNCATED_IMAGES`` as the plugin's docstring states it (SPEC.md section 8.3).

    A whole file reads as without the flag: the same pixels or the same error, and no warning. A damaged one
    that the recovering read (``on_damaged``) accepts, with the critical chunks (JHDR, ZSTR, YSTR, ALPH) whole
    in the file, reads as that file decodes (``repaired``), with one warning per damaged chunk or end, each
    naming the damage; one it refuses fails (with an allowed exception, as everywhere).
    """
    if parsed[0] == "ok":
        if recovered[0] != "ok" or recovered[1] != (parsed[1], []):
            raise Finding(f"parse accepted but the recovering parse -> {label(recovered)}")
        reference = loaded
    elif recovered[0] == "error":
        if truncated[0] == "ok":
            raise Finding(f"the recovering parse -> {label(recovered)} but LOAD_TRUNCATED_IMAGES gave an image")
        return
    else:
        jac, damaged = recovered[1]
        if not damaged:
            raise Finding(f"parse -> {label(parsed)} but the recovering parse accepted without reporting damage")
        chunks = split(data)
        whole = {(c.ctype, c.data) for c in chunks[0] if c.crc is None} if chunks else set()
        needed = [(b"ZSTR", jac.z_stream), (b"YSTR", jac.y_stream)]
        if jac.alpha is not None:
            needed.append((b"ALPH", bytes([jac.alpha_method]) + jac.alpha))
        if not chunks or chunks[0][0].ctype != b"JHDR" or chunks[0][0].crc is not None or not whole.issuperset(needed):
            raise Finding(f"parse -> {label(parsed)}; the recovering parse accepted a damaged critical chunk")
        reference = repaired
    assert reference is not None
    if truncated[0] == "ok":
        pixels, messages = truncated[1]
        if pixels is not None:  # None: only opened, a whole file that decodes (rotated_check)
            if reference[0] != "ok":
                raise Finding(f"load() -> {label(reference)} but under LOAD_TRUNCATED_IMAGES gave an image")
            if pixels.shape != reference[1].shape or (pixels != reference[1]).any():
                raise Finding("load() under LOAD_TRUNCATED_IMAGES gives other pixels than the file's chunks decode to")
        damage = [] if parsed[0] == "ok" else recovered[1][1]
        names = [b"end" if c == lib().C.CHUNK_JEND else c.rstrip() for c in damage]
        if len(messages) != len(names) or not all(
            "damaged" in m and n.decode("latin-1") in m for m, n in zip(messages, names, strict=True)
        ):
            raise Finding(f"LOAD_TRUNCATED_IMAGES warned {messages} for the damage {damage}")
    elif reference[0] == "ok" and not isinstance(truncated[1], bomb_errors()):
        raise Finding(f"the file's chunks decode but under LOAD_TRUNCATED_IMAGES load() -> {label(truncated)}")
    elif reference[0] == "error" and type(truncated[1]) is not type(reference[1]):
        if not isinstance(truncated[1], bomb_errors()):
            raise Finding(f"load() -> {label(reference)} but under LOAD_TRUNCATED_IMAGES -> {label(truncated)}")


def check_info(parsed: tuple[str, Any], info: tuple[str, Any]) -> None:
    """``jac info`` prints a file the container accepts (status 0), and refuses any other with the container's error.

    That is one line ``jac: error: PATH: MESSAGE`` on stderr, status 1 and nothing on stdout: a stray exception
    (``TypeError``, ``struct.error``, ...), which the command line also reports in one line, says its type.
    ``info`` is the outcome of :func:`jac_info`; the command line's status 130 is a Ctrl-C it caught, raised
    again here.
    """
    if info[0] != "ok":  # jac_info itself failed (writing the input): not the command line's doing
        raise Finding(f"jac info could not be run: {label(info)}")
    status, out, err = info[1]
    if status == 130:
        raise KeyboardInterrupt
    path = info_path()
    if parsed[0] == "ok":
        h = parsed[1].header
        first = f"{path}: JAC {h.version[0]}.{h.version[1]}, {h.width}x{h.height} {h.layout}"
        streams = f"  streams:   z {len(parsed[1].z_stream)} B, y {len(parsed[1].y_stream)} B"
        if parsed[1].alpha:
            streams += f", alpha {len(parsed[1].alpha)} B"
        if status != 0 or err or out.splitlines()[:1] != [first] or streams not in out.splitlines():
            raise Finding(f"parse accepted but jac info -> status {status}: {(err or out).strip()[:200]!r}")
        return
    message = str(parsed[1]).strip().splitlines()[0]
    if status != 1 or out or err != f"jac: error: {path}: {message}\n":
        raise Finding(f"parse -> {label(parsed)} but jac info -> status {status}: {(err or out).strip()[:200]!r}")
