"""Add a decoder generation in one command: keep the old decoder, freeze the new model, make its vectors.

``python -m pillow_jac.training.release CHECKPOINT.safetensors --release N`` (SPEC.md section 9.2):

1. keeps the current generation: its decoder file (no encoder, compact storage,
   :func:`pillow_jac.weights.decoder_only`) goes to ``weights/generations/<model_id>.safetensors``,
   unless it is there already;
2. freezes the checkpoint (:func:`pillow_jac.training.freeze.freeze`) into the package's full weights
   file, which makes it the default encoder; its ``model_id`` must be new;
3. makes the new generation's test vectors in ``format_spec/vectors/<model_id>/``;
4. checks that every generation's vectors still decode (``format_spec/conformance.py``).

``--encoder-update`` instead replaces only the encoder of the current generation (g_a, h_a, the
forward gains) with the checkpoint's: the decoder and its hash stay, so no vectors change and no
generation is added. It refuses a checkpoint whose decoder differs.

``--weights-dir`` and ``--vectors-dir`` point elsewhere (the tests use temporary folders).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .. import generations
from ..engine import build_model
from ..weights import WeightsError, decoder_only, load_weights, save_weights, seal, verify
from .freeze import freeze

__all__ = ["keep_generation", "release", "encoder_update", "main"]

_REPO = Path(__file__).resolve().parents[2]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, _REPO / "format_spec" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keep_generation(full: Path, weights_dir: Path) -> Path:
    """Write the decoder file of the generation in ``full`` into ``weights_dir/generations/`` (once)."""
    tensors, metadata = load_weights(full)
    manifest = verify(tensors, metadata, full)
    target = weights_dir / generations.KEPT_DIR / f"{manifest.model_id}.safetensors"
    if target.exists():
        _, kept = load_weights(target)
        if kept.get("decoder_hash") != manifest.decoder_hash:
            raise WeightsError(f"{target} exists and holds another decoder than {full}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    save_weights(target, *decoder_only(tensors, metadata))
    return target


def release(checkpoint: Path, number: int, weights_dir: Path, vectors_dir: Path, notes: dict[str, str]) -> str:
    """Add the generation frozen from ``checkpoint``; returns its ``model_id``."""
    tensors, metadata = load_weights(checkpoint)
    new_tensors, new_meta = freeze(build_model(tensors, metadata), number, notes)
    new_id = new_meta["model_id"]
    taken = {g.model_id for g in generations.installed()}
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    if full.exists():
        _, old_meta = load_weights(full)
        taken.add(old_meta.get("model_id"))
        kept = keep_generation(full, weights_dir)
        print(f"kept {old_meta.get('model_id')} as {kept}")
    if new_id in taken:
        raise WeightsError(f"{new_id} is an existing generation: a release needs a new --release number")
    save_weights(full, new_tensors, new_meta)
    print(f"wrote {full}: {new_id}, hash {new_meta['weights_hash']}")
    make_vectors = _load_script("make_vectors")
    table = make_vectors.make(vectors_dir / new_id, vectors_dir / "sources", weights=full)
    print(f"wrote {len(table)} vectors to {vectors_dir / new_id}")
    total = sum(f.stat().st_size for f in [full, *(weights_dir / generations.KEPT_DIR).glob("*.safetensors")])
    if total > generations.PACKAGE_BUDGET_BYTES:
        print(
            f"warning: the weights folder holds {total / 1e6:.1f} MB, over the package budget of "
            f"{generations.PACKAGE_BUDGET_BYTES / 1e6:.0f} MB: publish the oldest kept decoder file on its own "
            "(users keep it through JAC_MODELS) and remove it from weights/generations/"
        )
    return new_id


def encoder_update(checkpoint: Path, weights_dir: Path, notes: dict[str, str]) -> str:
    """Replace the encoder of the current full file with the checkpoint's; the decoder must be identical."""
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    tensors, metadata = load_weights(full)
    old = verify(tensors, metadata, full)
    source, source_meta = load_weights(checkpoint)
    candidate, _ = freeze(build_model(source, source_meta), old.release or 0)
    from ..weights import ENCODER_PREFIXES

    updated = dict(tensors)
    updated.update({k: v for k, v in candidate.items() if k.startswith(ENCODER_PREFIXES)})
    new_meta = seal(updated, {**metadata, **notes})
    if new_meta["decoder_hash"] != old.decoder_hash or new_meta["weights_hash"] != old.weights_hash:
        raise WeightsError("the update changes the decoder: release it as a new generation instead")
    save_weights(full, updated, new_meta)
    print(f"updated the encoder of {old.model_id}: encoder hash {old.encoder_hash} -> {new_meta['encoder_hash']}")
    return old.model_id


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Add a decoder generation, or update the current one's encoder")
    p.add_argument("checkpoint", type=Path, help="float weights (.safetensors) of the trained model")
    p.add_argument("--release", type=int, help="release number of the new generation (part of its model id)")
    p.add_argument("--encoder-update", action="store_true", help="replace only the current generation's encoder")
    p.add_argument("--note", action="append", default=[], help="KEY=VALUE added to the manifest")
    p.add_argument("--weights-dir", type=Path, default=generations.package_weights_dir())
    p.add_argument("--vectors-dir", type=Path, default=_REPO / "format_spec" / "vectors")
    args = p.parse_args(argv)
    notes = dict(n.split("=", 1) for n in args.note)
    if args.encoder_update:
        encoder_update(args.checkpoint, args.weights_dir, notes)
        return 0
    if args.release is None:
        p.error("--release is required for a new generation")
    release(args.checkpoint, args.release, args.weights_dir, args.vectors_dir, notes)
    conformance = _load_script("conformance")
    return conformance.main([])


if __name__ == "__main__":
    sys.exit(main())
