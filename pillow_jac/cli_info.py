"""``jac info``: what a ``.jac`` file holds, read from its container alone (no decoder, no torch).

SPEC.md sections 3-5 define the fields shown; :func:`pillow_jac.models` says whether the decoder
generation a file names is installed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .constants import METADATA_FIELDS
from .conversion import PROG, STDIO, ConversionError, one_line, read_jac
from .preview import usable_preview_size

__all__ = ["file_info", "show_info"]


def file_info(path: Path, models: Sequence[Any] | None = None) -> dict[str, Any]:
    """Return a JSON-friendly description of a ``.jac`` file, reading the container only (no torch).

    Keys: ``file``, ``version``, ``width``, ``height``, ``mode``, ``quality``, ``model_id``,
    ``weights_hash`` (hex), ``file_bytes``, ``bpp`` (file bits per pixel), ``z_stream_bytes``,
    ``y_stream_bytes``, ``alpha_bytes``, ``icc_profile_bytes``, ``exif_bytes``, ``xmp_bytes``, ``preview_bytes``,
    ``metadata`` (which of ``icc_profile``, ``exif``, ``xmp`` and ``preview`` the file holds, an empty one too),
    ``preview_size`` (``[width, height]`` of a usable preview, else None),
    ``unknown_chunks`` (the types of the chunks this version does not know, each once, in file order: the
    first :data:`UNKNOWN_TYPES_KEPT`), ``unknown_chunks_all_listed`` (whether that list holds every type),
    ``unknown_chunk_count`` (how many chunks there are), ``decoder_installed``, ``model_installed`` (a generation of
    that ``model_id``, whatever its hash) and ``decoder_path``. ``path``
    ``-`` reads standard input. ``models``: :func:`pillow_jac.models`, when the caller has it already.
    """
    import pillow_jac

    unknown: dict[bytes, None] = {}  # the first types, in file order: memory bounded whatever the file holds
    counts = [0, 0]  # chunks, and chunks of a type not kept

    def note(ctype: bytes) -> None:
        counts[0] += 1
        if ctype in unknown or len(unknown) < UNKNOWN_TYPES_KEPT:
            unknown[ctype] = None
        else:
            counts[1] += 1

    jac, file_bytes = read_jac(path, on_unknown=note)
    h = jac.header
    models = pillow_jac.models() if models is None else models
    decoder = [g for g in models if (g.model_id, g.weights_hash) == (h.model_id, h.weights_hash)]
    preview = usable_preview_size(jac) if jac.preview is not None else None  # what a reader would serve
    return {
        "file": str(path),
        "version": f"{h.version[0]}.{h.version[1]}",
        "width": h.width,
        "height": h.height,
        "mode": h.layout,
        "quality": h.quality,
        "model_id": h.model_id,
        "weights_hash": h.weights_hash.hex(),
        "file_bytes": file_bytes,
        "bpp": round(8 * file_bytes / (h.width * h.height), 4),
        "z_stream_bytes": len(jac.z_stream),
        "y_stream_bytes": len(jac.y_stream),
        "alpha_bytes": len(jac.alpha) if jac.alpha is not None else 0,
        "icc_profile_bytes": len(jac.icc_profile or b""),
        "exif_bytes": len(jac.exif or b""),
        "xmp_bytes": len(jac.xmp or b""),
        "preview_bytes": len(jac.preview or b""),
        "metadata": [name for name in (*METADATA_FIELDS, "preview") if getattr(jac, name) is not None],
        "preview_size": list(preview) if preview is not None else None,
        "unknown_chunks": [ctype.decode("latin-1") for ctype in unknown],
        "unknown_chunks_all_listed": counts[1] == 0,
        "unknown_chunk_count": counts[0],
        "decoder_installed": bool(decoder),
        "model_installed": any(g.model_id == h.model_id for g in models),
        "decoder_path": str(decoder[0].path) if decoder else None,
    }


#: unknown chunk types named in ``jac info``'s text (up to :data:`UNKNOWN_TYPES_KEPT` are in ``--json``)
_LISTED_TYPES = 8
#: distinct unknown chunk types that :func:`file_info` keeps (a file may hold millions, SPEC.md 5.3)
UNKNOWN_TYPES_KEPT = 64


def _print(info: dict[str, Any]) -> None:
    meta = [f"{n} {info[n + '_bytes']} B" for n in METADATA_FIELDS if n in info["metadata"]]
    if "preview" in info["metadata"]:
        size = info["preview_size"]
        shown = f"{size[0]}x{size[1]} " if size else "(unusable) "
        meta.append(f"preview {shown}{info['preview_bytes']} B")
    meta += [f"unknown chunk {t!r}" for t in info["unknown_chunks"][:_LISTED_TYPES]]
    if info["unknown_chunk_count"] > len(info["unknown_chunks"][:_LISTED_TYPES]):
        types = len(info["unknown_chunks"])
        kinds = f"{types} type{'s' if types > 1 else ''}"
        kinds = kinds if info["unknown_chunks_all_listed"] else f"over {kinds}"
        meta.append(f"{info['unknown_chunk_count']} unknown chunks of {kinds}")
    streams = f"z {info['z_stream_bytes']} B, y {info['y_stream_bytes']} B"
    if info["alpha_bytes"]:
        streams += f", alpha {info['alpha_bytes']} B"
    lines = [
        f"{info['file']}: JAC {info['version']}, {info['width']}x{info['height']} {info['mode']}",
        f"  quality:   {info['quality']:g}",
        f"  decoder:   {info['model_id']} (weights {info['weights_hash']}), "
        + (
            "installed"
            if info["decoder_installed"]
            else "NOT installed: the installed one has another hash (the file is damaged or was made by an "
            "unreleased build)"
            if info["model_installed"]
            else "NOT installed: get it with a pillow_jac release that "
            "ships it, or put its weights file in a directory named by JAC_MODELS"
        ),
        f"  size:      {info['file_bytes']} bytes, {info['bpp']:.4f} bpp",
        f"  streams:   {streams}",
        f"  metadata:  {', '.join(meta) if meta else 'none'}",
    ]
    print_out("\n".join(lines))


def print_out(text: str = "") -> None:
    """Print ``text`` on standard output now; an error of it names standard output.

    What the output's encoding cannot hold (a path's undecodable bytes, a name outside an ASCII locale) is shown
    with Python's backslash escapes, as its own error messages show it.

    Raises:
        ConversionError: there is no standard output (the process started with it closed: ``print`` would
            print nothing and the command would succeed).
        OSError: writing failed (``standard output: No space left on device``); BrokenPipeError as it is,
            for the command line's quiet stop when the reader goes away.
    """
    if sys.stdout is None:
        raise ConversionError("there is no standard output (the process started with it closed)")
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        print(text.encode(encoding, "backslashreplace").decode(encoding), flush=True)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror, "standard output") from e


def show_info(paths: list[Path], as_json: bool) -> None:
    """``jac info``: each file's description, in order; one that fails is reported and the rest still shown."""
    import pillow_jac

    if len(paths) == 1:  # one file: its error is the command's own
        infos = [file_info(paths[0])]
    else:
        if sum(str(path) == STDIO for path in paths) > 1:
            raise ConversionError("standard input (-) can be read only once")
        models, infos = pillow_jac.models(), []
        for path in paths:  # in text, each file is shown as soon as it is read
            try:
                infos.append(file_info(path, models))
            except (ConversionError, OSError) as e:
                print(f"{PROG}: error: {one_line(e)}", file=sys.stderr, flush=True)
                continue
            if not as_json:
                if len(infos) > 1:
                    print_out()
                _print(infos[-1])
    if as_json:
        print_out(json.dumps(infos[0] if len(paths) == 1 else infos, indent=2))
    elif len(paths) == 1:
        _print(infos[0])
    if len(infos) < len(paths):
        raise ConversionError(f"{len(paths) - len(infos)} of {len(paths)} files could not be read")
