"""Make or check the test vectors of a decoder generation (SPEC.md section 9.4).

``python format_spec/make_vectors.py`` writes the vectors of the default encoding generation into
``format_spec/vectors/<model_id>/`` and refuses if that folder exists: a released generation's vectors
never change. ``python format_spec/make_vectors.py --model ID --out DIR`` makes them for another
installed generation, or into another folder (the tests use that for a test-only generation).
``python format_spec/make_vectors.py --variant '{"entropy": "gmm", "mixtures": 3}'`` makes a tiny
(N=8, M=12) generation of a model variant (CODING.md section 4) and its vectors, weights included, in
``format_spec/vectors/variants/<model_id>/``: the variants' coding rules are pinned without a
trained model of each being shipped; ``--refresh-search FOLDER`` re-makes such a variant's effort 1-3
vectors after the encoder's search changed (an encoder update, SPEC.md section 9.2).

Each vector is a small ``.jac`` file made from a committed source PNG, plus the SHA-256 of its decoded
latents (exact on every machine, CODING.md section 3) and of its decoded pixels, and the decoded pixels
as a PNG. The cases cover every layout, the quality range, the encoder's effort levels and metadata,
so that a generation's whole decoding surface stays pinned.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent / "vectors"
#: name -> (height, width, mode, quality, effort, with metadata)
VECTORS = {
    "rgb-24x40-q1": (24, 40, "RGB", 1.0, 0, False),
    "rgb-70x33-q4.5": (70, 33, "RGB", 4.5, 0, False),
    "rgba-16x16-q8": (16, 16, "RGBA", 8.0, 0, False),
    "gray-1x1-q3": (1, 1, "L", 3.0, 0, False),
    "la-20x33-q2": (20, 33, "LA", 2.0, 0, False),
    "rgb-130x70-q7": (130, 70, "RGB", 7.0, 0, False),
    "rgb-48x64-q6-e1": (48, 64, "RGB", 6.0, 1, False),
    "rgb-40x40-q5-e2": (40, 40, "RGB", 5.0, 2, False),
    "rgb-32x32-q4-meta": (32, 32, "RGB", 4.0, 0, True),
}
#: metadata of the vectors that carry it (the ICC profile is Pillow's sRGB profile's header shape)
METADATA = {
    "icc_profile": b"\x00\x00\x02\x0cjac test profile" + bytes(range(32)),
    "exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00",
    "xmp": b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>',
}


def source_image(height: int, width: int, mode: str, seed: int) -> Image.Image:
    """A deterministic smooth, textured image (the vector's input)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        128 + 100 * np.sin(rng.uniform(0.05, 0.3) * xx + c) * np.cos(rng.uniform(0.05, 0.3) * yy) for c in range(3)
    ]
    rgb = np.clip(np.stack(planes, 2) + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode in ("RGBA", "LA"):
        image.putalpha(Image.fromarray((xx * 255 / max(1, width - 1)).astype(np.uint8)))
    return image.convert(mode)


def digest(array: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes."""
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.shape}|{a.dtype}|".encode() + a.tobytes()).hexdigest()


def symbols_digest(data: bytes, **kwargs) -> str:
    """SHA-256 over the decoded integer latents (z then y, int64)."""
    from pillow_jac import codec

    z_hat, y_hat = codec.decode_symbols(data, **kwargs)
    return hashlib.sha256(((digest(z_hat) if z_hat is not None else "") + digest(y_hat)).encode()).hexdigest()


def make(out: Path, sources: Path, **encode_kwargs) -> dict:
    """Write every vector into ``out`` (sources are read from, or first written to, ``sources``).

    ``encode_kwargs`` name the weights file (``weights=``) and may name a ``device``; each vector records
    the ``encoder_hash`` of the encoder that made it, and a vector at effort 1-3 the search schedule
    that chose its latents (``search``, ``pillow_jac.model.refine.schedule``).
    """
    out.mkdir(parents=True, exist_ok=True)
    sources.mkdir(parents=True, exist_ok=True)
    made_by = _encoder_hash(encode_kwargs["weights"])
    table = {name: _make_one(out, sources, name, made_by, encode_kwargs) for name in VECTORS}
    (out / "vectors.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def add_missing(out: Path, table_name: str, make_into: Callable[[Path], dict], kind: str, files=("file",)) -> int:
    """Make every vector of a set in a temporary folder, and add to ``out`` those it lacks.

    For the sets that only ever grow (``invalid/``, ``edge/``): nothing is written, and 1 is returned, when a
    vector ``out`` already holds would be made with other bytes (or no longer made). The entries and files
    ``out`` holds are kept as they are (on another machine a decode may differ by one level in a few samples,
    SPEC.md 9.4, and the vectors' recorded pixels are this folder's); only new entries are added.
    ``make_into(folder)`` writes the vectors and returns their table; ``files`` are the entry keys naming
    each vector's files.
    """
    path = out / table_name
    existing = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        table = make_into(Path(tmp))
        differ = [n for n, e in existing.items() if table.get(n, {}).get("file_sha256") != e["file_sha256"]]
        if differ:
            print(f"{out}: this script would change {', '.join(differ)}; {kind} vectors never change", file=sys.stderr)
            return 1
        added = [name for name in table if name not in existing]
        out.mkdir(parents=True, exist_ok=True)
        for name in added:
            for key in files:
                shutil.copyfile(Path(tmp) / table[name][key], out / table[name][key])
    path.write_text(json.dumps({**existing, **{name: table[name] for name in added}}, indent=2) + "\n")
    print(f"added {len(added)} {kind} vector(s) to {out}: {', '.join(added) or 'none'}")
    return 0


def refresh_search(folder: Path) -> list[str]:
    """Re-make a variant's effort 1-3 vectors with today's search (its weights and other vectors stay).

    Only for the tiny variant generations, whose vectors pin coding rules; a released generation's
    vectors never change. Returns the names re-made.
    """
    weights = folder / "weights.safetensors"
    if not weights.exists():
        raise ValueError(f"{folder} is not a variant's folder (no weights.safetensors)")
    table = json.loads((folder / "vectors.json").read_text())
    names = [name for name, entry in table.items() if entry["effort"]]
    made_by = _encoder_hash(weights)
    for name in names:
        table[name] = _make_one(folder, ROOT / "sources", name, made_by, {"weights": weights})
    (folder / "vectors.json").write_text(json.dumps(table, indent=2) + "\n")
    return names


def _encoder_hash(path: Path) -> str:
    """The ``encoder_hash`` of the weights file at ``path`` (recorded in each vector it makes)."""
    from pillow_jac import weights

    return weights.load_weights(path)[1]["encoder_hash"]


def _make_one(out: Path, sources: Path, name: str, encoder_hash: str, encode_kwargs: dict) -> dict:
    """Encode one case of :data:`VECTORS` into ``out`` with the encoder of ``encoder_hash``; its entry."""
    from pillow_jac import codec, container
    from pillow_jac.model.refine import schedule

    height, width, mode, quality, effort, meta = VECTORS[name]
    source = sources / f"{name}.source.png"
    if not source.exists():
        source_image(height, width, mode, seed=list(VECTORS).index(name)).save(source)
    with Image.open(source) as im:
        data = codec.encode(np.asarray(im), quality, effort=effort, **(METADATA if meta else {}), **encode_kwargs)
    (out / f"{name}.jac").write_bytes(data)
    decode_kwargs = {k: v for k, v in encode_kwargs.items() if k in ("device", "weights")}
    pixels = codec.decode(data, **decode_kwargs)
    Image.fromarray(pixels).save(out / f"{name}.decoded.png")
    header = container.parse(data).header
    entry = {
        "file": f"{name}.jac",
        "source": source.name,
        "decoded": f"{name}.decoded.png",
        "mode": mode,
        "size": [width, height],
        "quality": quality,
        "effort": effort,
        "metadata": meta,
        "model_id": header.model_id,
        "weights_hash": header.weights_hash.hex(),
        "encoder_hash": encoder_hash,
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "symbols_sha256": symbols_digest(data, **decode_kwargs),
        "pixels_sha256": digest(pixels),
    }
    if meta:  # the bytes a reader returns unchanged (SPEC.md 5.2), checked by conformance.py
        entry["metadata_sha256"] = container.parse(data).metadata_digests()
    if effort:
        entry["search"] = schedule(effort)
    return entry


def variant_weights(config: dict, path: Path) -> str:
    """Write a tiny generation of a model variant to ``path``; return its model id.

    N=8, M=12, seeded initial weights, with g_ep's last layer spread (weights N(0, 0.3), biases
    N(0, 1)) so that scales, means and mixture weights take many values: the vectors then exercise
    many tables, window positions and escapes.
    """
    import torch

    from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
    from pillow_jac.training.freeze import freeze
    from pillow_jac.weights import save_weights

    torch.manual_seed(0)
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(**{"N": 8, "M": 12, **config}))
    with torch.no_grad():
        model.entropy_parameters[-1].weight.normal_(0.0, 0.3)
        model.entropy_parameters[-1].bias.normal_(0.0, 1.0)
    tensors, metadata = freeze(model, release=1)
    save_weights(path, tensors, metadata)
    return metadata["model_id"]


def main(argv: list[str] | None = None) -> int:
    """Write the vectors of one generation; refuse to overwrite a released one."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model_id of an installed generation (default: the default encoder)")
    p.add_argument("--out", type=Path, help="output folder (default: format_spec/vectors/<model_id>)")
    p.add_argument("--variant", type=json.loads, help="ModelConfig fields (JSON) of a tiny variant generation")
    p.add_argument("--refresh-search", type=Path, metavar="FOLDER", help="re-make a variant's effort 1-3 vectors")
    args = p.parse_args(argv)
    if args.refresh_search is not None:
        print(f"re-made {', '.join(refresh_search(args.refresh_search))} in {args.refresh_search}")
        return 0
    if args.variant is not None:
        scratch = ROOT / "variants" / "weights.tmp.safetensors"
        scratch.parent.mkdir(parents=True, exist_ok=True)
        model_id = variant_weights(args.variant, scratch)
        out = args.out or ROOT / "variants" / model_id
        if (out / "vectors.json").exists():
            scratch.unlink()
            print(f"{out} exists: a generation's vectors never change", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        weights = scratch.replace(out / "weights.safetensors")
        table = make(out, ROOT / "sources", weights=weights)
        print(f"wrote {len(table)} vectors of the variant {model_id} to {out}")
        return 0
    from pillow_jac import generations

    gen = generations.encoder(args.model)
    out = args.out or ROOT / gen.model_id
    if (out / "vectors.json").exists():
        print(f"{out} exists: a released generation's vectors never change", file=sys.stderr)
        return 1
    table = make(out, ROOT / "sources", weights=gen.path)
    print(f"wrote {len(table)} vectors of {gen.model_id} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
