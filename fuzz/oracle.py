"""The fuzz harness's oracle: the rules every input must follow, checked by running the reader on it.

:func:`check_container` runs ``container.parse``, ``read_file`` on a non-seekable stream
(:class:`Unseekable`), ``read_header``, ``Image.open`` and ``draft()`` (whose use of the ``prvw``
preview must follow SPEC.md section 5.4) and checks that they agree; :func:`check_decode` adds
``codec.decode``, ``Image.open(...).load()``, ``verify()``, ``ImageFile.Parser``, ``thumbnail()``,
``codec.decode_batch``, ``codec.decode_symbols``, ``load()`` under ``ImageFile.LOAD_TRUNCATED_IMAGES`` and
``jac info`` (``pillow_jac.cli.main``), on the input as it is and re-stamped with the installed weights
(a file that decodes runs one of ``decode_batch``, ``decode_symbols`` and the load under the flag:
:func:`~fuzz.read_paths.rotated_check`; the rules of those read paths are in :mod:`fuzz.read_paths`).
Only the exceptions in :data:`~fuzz.calls.ALLOWED` and Pillow's decompression-bomb error and warning may
escape (:func:`~fuzz.calls.call`); anything else, an overrun of the :class:`~fuzz.limits.Limits` or a
disagreement raises :class:`~fuzz.limits.Finding`. Each check returns a short, size-independent outcome
label. :func:`run_one` runs a check as the engines do: an overrun counts only if it happens twice
(:func:`check_confirmed`), under the :func:`~fuzz.limits.watchdog` (:func:`time_limit`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

from .calls import ALLOWED, bomb_errors, call, label, lib
from .chunks import restamp
from .limits import Finding, Limits, Overrun, _Budget, watchdog
from .read_paths import (
    ROTATED_CHECKS,
    alpha_plane_decodes,
    check_batch_and_symbols,
    check_info,
    check_truncated,
    info_path,
    jac_info,
    load_truncated,
    recover,
    rotated_check,
)

__all__ = [
    "ALLOWED", "DECODERS", "ROTATED_CHECKS", "Unseekable", "check_confirmed", "check_container", "check_decode",
    "info_path", "installed_model", "lib", "preview_request", "rotated_check", "run_one", "steps", "time_limit",
]  # fmt: skip

#: the decoders :func:`check_decode` runs on a variant of an input at most: ``codec.decode``, ``load()``, the
#: Parser, ``decode_batch``, ``decode_symbols`` and ``load()`` under ``LOAD_TRUNCATED_IMAGES``; ``thumbnail()``
#: of a file with a preview, and the decode of a damaged file's recovered container, come on top
DECODERS = 6


class Unseekable(io.RawIOBase):
    """A non-seekable stream returning at most ``piece`` bytes per read."""

    def __init__(self, data: bytes, piece: int = 7) -> None:
        self._data, self._pos, self._piece = data, 0, piece

    def readable(self) -> bool:
        """Always readable."""
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``min(n, piece)`` bytes."""
        n = len(self._data) - self._pos if n is None or n < 0 else n
        out = self._data[self._pos : self._pos + min(n, self._piece)]
        self._pos += len(out)
        return out


def _unwarned(decode: Any, data: Any) -> Any:
    """``decode(data)`` without the codec's ``DecompressionBombWarning`` above Pillow's limit.

    The codec decodes up to twice the limit; the Pillow paths here make the warning an error, as a cautious
    program does.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lib().Image.DecompressionBombWarning)
        return decode(data)


def _pillow_open(data: bytes, load: bool) -> Any:
    Image = lib().Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=["JAC"]) as im:
            if not load:
                return im.size, im.mode, dict(im.info)
            im.load()
            import numpy as np

            return np.asarray(im)


def _pieces(data: bytes) -> list[bytes]:
    """``data`` cut where a reader could take the file so far for a whole one.

    After the signature and after each chunk its length fields lead to; the rest in one piece where they lead
    outside the data.
    """
    cuts, at = [], 8
    while at < len(data):
        cuts.append(at)
        at += 12 + int.from_bytes(data[at : at + 4], "big")
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _pillow_parser(data: bytes) -> Any:
    """The pixels of Pillow's ``ImageFile.Parser`` fed ``data`` one piece per chunk (:func:`_pieces`)."""
    from PIL import ImageFile

    Image = lib().Image
    if not data.startswith(lib().C.MAGIC):  # what other formats' readers make of it is not this oracle's business
        msg = "not a JAC file"
        raise OSError(msg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        parser = ImageFile.Parser()
        for piece in _pieces(data):
            parser.feed(piece)
        with parser.close() as im:
            if im.format != "JAC":  # the Parser tries every format; the oracle compares Image.open's JAC only
                msg = f"read as {im.format}, not JAC"
                raise OSError(msg)
            import numpy as np

            return np.asarray(im)


def _pillow_verify(data: bytes) -> bool:
    """``Image.open(...).verify()`` of ``data``."""
    Image = lib().Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=["JAC"]) as im:
            im.verify()
    return True


def _pillow_draft(data: bytes, request: tuple[int, int]) -> tuple[Any, tuple[int, int], str]:
    """Open ``data`` with Pillow and ask ``draft()`` for ``request``; load the preview when it took one.

    Returns ``(draft's answer, size, mode)``, the size and mode after the load.
    """
    Image = lib().Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=["JAC"]) as im:
            answer = im.draft(None, request)
            if answer is not None:
                im.load()
            return answer, im.size, im.mode


def _pillow_thumbnail(data: bytes, size: tuple[int, int]) -> tuple[bool, tuple[int, int], str]:
    """``thumbnail(size)`` of ``data`` opened with Pillow: ``(whether draft() took the preview, size, mode)``."""
    Image = lib().Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=["JAC"]) as im:
            answers = []
            draft = im.draft

            def recorded(mode: str | None, box: tuple[int, int] | None) -> Any:
                answers.append(draft(mode, box))
                return answers[-1]

            im.draft = recorded  # type: ignore[method-assign]
            im.thumbnail(size)
            im.load()
            return any(a is not None for a in answers), im.size, im.mode


def preview_request(jac: Any) -> tuple[int, int]:
    """The size the oracle asks ``draft()`` for: the declared size of the file's preview, else half the image."""
    unpacked = lib().container.unpack_preview(jac.preview)
    if unpacked is not None:
        return unpacked[1], unpacked[2]
    width, height = jac.size
    return max(1, width // 2), max(1, height // 2)


def _check_draft(jac: Any, request: tuple[int, int], drafted: tuple[str, Any]) -> str:
    """The rules for ``draft(None, request)`` on a file Image.open accepted (SPEC.md section 5.4); a label.

    A preview is ancillary: a bad one is ignored, it never makes the file unreadable, so ``draft()`` never
    raises, not even a decompression-bomb warning for an embedded file larger than declared.
    """
    if drafted[0] != "ok":
        raise Finding(f"Image.open accepted but draft() -> {label(drafted)}")
    answer, size, mode = drafted[1]
    if answer is None:
        return "preview:unused" if jac.preview is not None else ""
    unpacked = lib().container.unpack_preview(jac.preview)
    if unpacked is None:
        raise Finding(f"draft() answered {answer} for a file without a usable preview")
    width, height = jac.size
    pw, ph = unpacked[1:3]
    if answer != (jac.mode, (0, 0, pw, ph)) or size != (pw, ph) or mode != jac.mode:
        raise Finding(f"draft() answered {answer}, loaded {size} {mode}; the preview is {pw}x{ph}, the file {jac.mode}")
    if pw >= width and ph >= height:
        raise Finding(f"draft() used a {pw}x{ph} preview of a {width}x{height} image (not smaller)")
    scale = min(request[0] / width, request[1] / height, 1.0)
    if pw < int(width * scale) or ph < int(height * scale):
        raise Finding(f"draft({request}) used a {pw}x{ph} preview of {width}x{height}, smaller than asked for")
    return "preview:used"


def check_container(data: bytes, limits: Limits | None = None, strict_memory: bool = True) -> str:
    """Run every container entry point on ``data`` and check they agree; returns the outcome label.

    Raises:
        Finding: a forbidden exception, an overrun of ``limits`` or a disagreement.
    """
    limits = limits or Limits()
    L = lib()
    drafted = None
    with _Budget(limits, "container"):
        parsed = call("container.parse", lambda: L.container.parse(data), strict_memory)
        streamed = call("read_file(unseekable)", lambda: L.container.read_file(Unseekable(data)), strict_memory)
        header = call("read_header", lambda: L.container.read_header(io.BytesIO(data)), strict_memory)
        opened = call("Image.open", lambda: _pillow_open(data, load=False), strict_memory)
        if parsed[0] == "ok" and opened[0] == "ok":
            request = preview_request(parsed[1])
            drafted = call("Image.draft", lambda: _pillow_draft(data, request), strict_memory)
    if parsed[0] != streamed[0] or (parsed[0] == "ok" and parsed[1] != streamed[1]):
        raise Finding(f"parse -> {label(parsed)} but read_file on a stream -> {label(streamed)}")
    if parsed[0] == "error" and streamed[0] == "error" and type(parsed[1]) is not type(streamed[1]):
        raise Finding(f"parse -> {label(parsed)} but read_file on a stream -> {label(streamed)}")
    if isinstance(parsed[1], SyntaxError) != isinstance(header[1], SyntaxError):
        raise Finding(f"parse -> {label(parsed)} but read_header -> {label(header)}")
    if parsed[0] == "ok":
        jac = parsed[1]
        if header[0] != "ok" or header[1] != jac.header:
            raise Finding(f"parse accepted but read_header -> {label(header)}")
        if opened[0] == "ok":
            size, mode, info = opened[1]
            if size != jac.size or mode != jac.mode or info.get("model_id") != jac.header.model_id:
                raise Finding(f"Image.open reports {size} {mode}, the container {jac.size} {jac.mode}")
        elif not isinstance(opened[1], (L.Image.DecompressionBombError, L.Image.DecompressionBombWarning)):
            raise Finding(f"parse accepted but Image.open -> {label(opened)}")
        if drafted is not None:
            preview = _check_draft(jac, request, drafted)
            if preview:
                return f"{label(parsed)} | {preview}"
    elif opened[0] == "ok":
        raise Finding(f"parse -> {label(parsed)} but Image.open accepted")
    return label(parsed)


def installed_model() -> tuple[str, bytes]:
    """``(model_id, weights_hash)`` of the installed weights (builds the engine: imports torch)."""
    from pillow_jac.engine import get_engine

    engine = get_engine()
    return engine.model_id, engine.weights_hash


def check_decode(data: bytes, limits: Limits | None = None, strict_memory: bool = True) -> str:
    """Run :func:`check_container`, then every decoder, and check that they agree.

    The decoders (``codec.decode``, ``Image.open(...).load()``, ``verify()``, ``ImageFile.Parser``, for a
    file with a preview ``thumbnail()`` of half its size, ``codec.decode_batch`` of the file alone,
    ``codec.decode_symbols`` and ``load()`` under ``ImageFile.LOAD_TRUNCATED_IMAGES``) and ``jac info`` run on
    ``data`` as it is and re-stamped to the installed weights (see :func:`restamp`).
    Returns the outcome labels joined by ``" | "``.

    Raises:
        Finding: a forbidden exception, an overrun of ``limits``, a disagreement or a wrong shape.
    """
    limits = limits or Limits()
    L = lib()
    labels = [check_container(data, limits, strict_memory)]
    variants = [data]
    stamped = restamp(data, *installed_model())
    if stamped != data:
        variants.append(stamped)
    for variant in variants:
        preview = _preview_of(variant)
        with _Budget(limits, "container"):
            parsed = call("container.parse", lambda v=variant: L.container.parse(v), strict_memory)
            recovered = call("container.parse(on_damaged)", lambda v=variant: recover(v), strict_memory)
            info = call("jac info", lambda v=variant: jac_info(v), strict_memory)
        repair = parsed[0] == "error" and recovered[0] == "ok"  # damaged, and recovered under LOAD_TRUNCATED_IMAGES
        decoders = DECODERS + (preview is not None) + repair
        with _Budget(limits, "decode", limits.seconds + decoders * limits.seconds_per_step * steps(variant)):
            decoded = call("codec.decode", lambda v=variant: _unwarned(L.codec.decode, v), strict_memory)
            loaded = call("Image.open().load()", lambda v=variant: _pillow_open(v, load=True), strict_memory)
            verified = call("Image.open().verify()", lambda v=variant: _pillow_verify(v), strict_memory)
            fed = call("ImageFile.Parser", lambda v=variant: _pillow_parser(v), strict_memory)
            if preview is not None:
                box = (max(1, preview[1] // 2), max(1, preview[2] // 2))
                thumb = call("thumbnail()", lambda v=variant, b=box: _pillow_thumbnail(v, b), strict_memory)
            rotated = ROTATED_CHECKS if decoded[0] == "error" else (rotated_check(variant),)
            batched = symbols = None
            if "decode_batch" in rotated:
                batched = call(
                    "codec.decode_batch", lambda v=variant: _unwarned(L.codec.decode_batch, [v]), strict_memory
                )
            if "decode_symbols" in rotated and alpha_plane_decodes(variant):  # else it decodes what decode does not
                symbols = call(
                    "codec.decode_symbols", lambda v=variant: _unwarned(L.codec.decode_symbols, v), strict_memory
                )
            load = "LOAD_TRUNCATED_IMAGES" in rotated
            truncated = call(
                "Image.open() under LOAD_TRUNCATED_IMAGES",
                lambda v=variant, full=load: load_truncated(v, full),
                strict_memory,
            )
            repaired = None
            if repair:
                repaired = call("codec.decode(recovered)", lambda j=recovered[1][0]: L.codec.decode(j), strict_memory)
        if preview is not None:
            _check_thumbnail(variant, box, loaded, thumb)
        _check_parser_and_verify(loaded, fed, verified, decoded)
        check_batch_and_symbols(variant, decoded, batched, symbols)
        check_truncated(variant, parsed, recovered, loaded, truncated, repaired)
        check_info(parsed, info)
        if decoded[0] == "ok":
            jac = L.container.parse(variant)
            w, h = jac.size
            want = {"L": (h, w), "LA": (h, w, 2), "RGB": (h, w, 3), "RGBA": (h, w, 4)}[jac.mode]
            if decoded[1].shape != want or decoded[1].dtype.name != "uint8":
                raise Finding(f"codec.decode returned {decoded[1].dtype} {decoded[1].shape}, header says {want}")
            if loaded[0] == "ok":
                if loaded[1].shape != want or (loaded[1] != decoded[1]).any():
                    raise Finding("Image.open().load() and codec.decode give different pixels")
            elif not isinstance(loaded[1], bomb_errors()):
                raise Finding(f"codec.decode accepted but Image.open().load() -> {label(loaded)}")
        elif loaded[0] == "ok":
            raise Finding(f"codec.decode -> {label(decoded)} but Image.open().load() accepted")
        labels.append(label(decoded))
    return " | ".join(labels)


def _check_parser_and_verify(
    loaded: tuple[str, Any], fed: tuple[str, Any], verified: tuple[str, Any], decoded: tuple[str, Any]
) -> None:
    """The Parser accepts what ``Image.open().load()`` accepts, with the same pixels.

    And ``verify()`` passes no file whose decode then finds the container damaged (its alpha plane included).
    """
    if loaded[0] == "ok":
        if fed[0] != "ok" or fed[1].shape != loaded[1].shape or (fed[1] != loaded[1]).any():
            raise Finding(f"Image.open().load() accepted but ImageFile.Parser -> {label(fed)}")
    elif fed[0] == "ok" and not isinstance(loaded[1], bomb_errors()):
        raise Finding(f"Image.open().load() -> {label(loaded)} but ImageFile.Parser accepted")
    if verified[0] == "ok" and decoded[0] == "error" and isinstance(decoded[1], lib().container.JacFormatError):
        raise Finding(f"verify() passed but codec.decode found the container damaged: {label(decoded)}")


def _preview_of(data: bytes) -> tuple[int, int, int, bytes] | None:
    """``container.unpack_preview`` of the file's ``prvw`` chunk; None if it has none or does not parse."""
    try:
        return lib().container.unpack_preview(lib().container.parse(data).preview)
    except Exception:
        return None


def _check_thumbnail(data: bytes, box: tuple[int, int], loaded: tuple[str, Any], thumb: tuple[str, Any]) -> None:
    """``thumbnail(box)`` succeeds where ``load()`` does, and elsewhere only from the preview; it fits in ``box``."""
    if thumb[0] != "ok":
        if loaded[0] == "ok":
            raise Finding(f"Image.open().load() accepted but thumbnail() -> {label(thumb)}")
        return
    used, size, mode = thumb[1]
    if loaded[0] != "ok" and not used:
        raise Finding(f"Image.open().load() -> {label(loaded)} but thumbnail() decoded the image")
    jac = lib().container.parse(data)
    if size[0] > box[0] or size[1] > box[1] or mode != jac.mode:
        raise Finding(f"thumbnail({box}) of a {jac.mode} file gave {size} {mode}")


def steps(data: bytes) -> int:
    """Wavefront steps of the latent ``data``'s header declares (0 if it has no valid header)."""
    try:
        h = lib().container.read_header(io.BytesIO(data))
    except Exception:
        return 0
    return 3 * (h.y_shape[0] - 1) + h.y_shape[1]


def check_confirmed(check: Callable[[bytes, Limits], str], data: bytes, limits: Limits) -> str:
    """``check(data, limits)``, where an :class:`Overrun` counts only if it happens twice in a row."""
    try:
        return check(data, limits)
    except Overrun:
        return check(data, limits)


def time_limit(data: bytes, limits: Limits, target: str) -> float:
    """The :func:`watchdog`'s limit for one input: ``limits.timeout``, else three times its time bounds.

    The bounds are those of the oracle calls :func:`check_confirmed` makes: the container's, and for
    ``decode`` those of both variants with :data:`DECODERS` decoders each; three times, as an overrun is run
    twice.
    """
    if limits.timeout:
        return limits.timeout
    bound = limits.seconds
    if target == "decode":
        bound += 2 * (limits.seconds + DECODERS * limits.seconds_per_step * steps(data))
    return 3 * bound


def run_one(target: str, data: bytes, limits: Limits) -> str:
    """:func:`check_confirmed` of ``target``'s check on ``data`` under the :func:`watchdog`; the outcome label."""
    check = check_decode if target == "decode" else check_container
    with watchdog(time_limit(data, limits, target)):
        return check_confirmed(check, data, limits)
