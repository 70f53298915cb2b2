"""The fuzz harness's seed corpus, ``fuzz/seeds/*.jac``, and reading corpora from disk.

:data:`SEED_SPECS` lists twelve tiny valid files: every layout, qualities 1 to 8 with fractions, ICC,
EXIF and XMP metadata, unknown ancillary chunks and two with a ``prvw`` preview (SPEC.md section 5.4).
:func:`make_seeds` encodes them with the installed weights (``python fuzz/fuzz_jac.py seeds``);
:func:`load_corpus` reads the files of a corpus.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .oracle import lib

SEEDS_DIR = Path(__file__).resolve().parent / "seeds"

SEED_SPECS: tuple[tuple[str, str, int, int, float, tuple[str, ...]], ...] = (
    ("rgb-8x8-q1", "RGB", 8, 8, 1.0, ()),
    ("rgb-64x48-q8-meta", "RGB", 64, 48, 8.0, ("icc", "exif", "xmp")),
    ("rgb-48x64-q2.25-icc", "RGB", 48, 64, 2.25, ("icc",)),
    ("l-17x9-q3-xmp", "L", 17, 9, 3.0, ("xmp",)),
    ("l-64x64-q6", "L", 64, 64, 6.0, ()),
    ("la-33x20-q5.5-exif-unknown", "LA", 33, 20, 5.5, ("exif", "unknown")),
    ("la-1x1-q1", "LA", 1, 1, 1.0, ()),
    ("rgba-64x48-q4-meta-unknown", "RGBA", 64, 48, 4.0, ("icc", "exif", "xmp", "unknown")),
    ("rgba-8x12-q7", "RGBA", 8, 12, 7.0, ()),
    ("rgb-65x16-q4", "RGB", 65, 16, 4.0, ("exif",)),
    ("rgba-40x24-q3-preview", "RGBA", 40, 24, 3.0, ("preview",)),
    ("l-24x36-q5-xmp-preview", "L", 24, 36, 5.0, ("xmp", "preview")),
)
#: long side of the seeds' previews (``encode(..., preview=N)`` stores one when the image is larger)
SEED_PREVIEW = 16


def seed_image(layout: str, width: int, height: int, seed: int) -> Any:
    """A small smooth image with a little noise (so its streams look like a photo's), uint8."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        128 + 100 * np.sin(xx * rng.uniform(0.05, 0.3) + c) * np.cos(yy * rng.uniform(0.05, 0.3)) for c in range(4)
    ]
    image = np.clip(np.stack(planes, axis=2) + rng.normal(0, 5, (height, width, 4)), 0, 255).astype(np.uint8)
    channels = {"L": [0], "LA": [0, 3], "RGB": [0, 1, 2], "RGBA": [0, 1, 2, 3]}[layout]
    image = image[:, :, channels]
    return image[:, :, 0] if layout == "L" else image


def make_seeds(out: Path = SEEDS_DIR) -> list[Path]:
    """Encode :data:`SEED_SPECS` with the installed weights into ``out``; returns the paths."""
    L = lib()
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "icc": ("icc_profile", b"\0\0\0\x30fake-icc-profile" + bytes(32)),
        "exif": ("exif", b"Exif\0\0MM\0*\0\0\0\x08\0\0"),
        "xmp": ("xmp", b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'),
    }
    paths = []
    for i, (name, layout, w, h, q, extras) in enumerate(SEED_SPECS):
        kwargs: dict[str, Any] = dict(meta[e] for e in extras if e in meta)
        if "preview" in extras:
            kwargs["preview"] = SEED_PREVIEW
        data = L.codec.encode(seed_image(layout, w, h, i), q, **kwargs)
        if "unknown" in extras:
            jac = L.container.parse(data)
            jac.unknown_chunks = [(b"abcd", b"unknown ancillary"), (b"zz 9", b"")]
            data = L.container.serialize(jac)
        path = out / f"{name}.jac"
        path.write_bytes(data)
        paths.append(path)
    return paths


def load_corpus(paths: Iterable[Path]) -> list[bytes]:
    """The bytes of every file in the given files and directories (sorted by name)."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
        out += [f.read_bytes() for f in files]
    return out
