"""Add a decoder generation in one command: keep the old decoder, freeze the new model, make its vectors.

``python -m pillow_jac.training.release CHECKPOINT.safetensors --release N`` (SPEC.md section 9.2):

1. keeps the current generation: its decoder file (no encoder, compact storage,
   :func:`pillow_jac.weights.decoder_only`) goes to ``weights/generations/<model_id>.safetensors``,
   unless it is there already;
2. freezes the checkpoint (:func:`pillow_jac.training.freeze.freeze`) into the package's full weights
   file, which makes it the default encoder; its ``model_id`` must be new;
3. makes the new generation's test vectors in ``format_spec/vectors/<model_id>/``;
4. adds it to the table of released generations (``pillow_jac/released.json``,
   :func:`pillow_jac.generations.released`);
5. checks that every generation's vectors still decode (``format_spec/conformance.py``).

Before writing anything it refuses a ``model_id`` that exists anywhere (an installed or released
generation, a file in the weights folder, a vectors folder) and a release number not above every
release it can see: a release never replaces a generation or its vectors.

``--encoder-update`` instead replaces only the encoder of the current generation (g_a, h_a, the
forward gains) with the checkpoint's: the decoder and its hash stay, so no vectors change and no
generation is added. It refuses a checkpoint of another architecture, or whose decoder, frozen, is
not the generation's.

``--weights-dir``, ``--vectors-dir`` and ``--released-table`` point elsewhere (the tests use temporary ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

from .. import generations
from ..engine import build_model
from ..model.mbt2018 import ModelConfig
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


def _existing(weights_dir: Path, vectors_dir: Path, table: Path) -> dict[str, int | None]:
    """Every generation a release must not reuse: ``{model_id: release number or None}``."""
    found: dict[str, int | None] = {g.model_id: g.release for g in generations.installed()}
    for path in [weights_dir / generations.DEFAULT_WEIGHTS_NAME, *(weights_dir / generations.KEPT_DIR).glob("*")]:
        gen = generations.generation_of(path) if path.is_file() else None
        if gen is not None:
            found[gen.model_id] = gen.release
        elif path.is_file() and path.suffix == ".safetensors":
            raise WeightsError(f"{path} is not a readable weights file: remove or repair it before a release")
    for model_id in (*generations.released(), *_released_table(table)):
        found.setdefault(model_id, None)
    if vectors_dir.is_dir():
        for folder in vectors_dir.iterdir():
            if (folder / "vectors.json").is_file():
                found.setdefault(folder.name, None)
    return found


def _released_table(path: Path) -> dict[str, dict[str, str]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def release(
    checkpoint: Path,
    number: int,
    weights_dir: Path,
    vectors_dir: Path,
    notes: dict[str, str],
    released_table: Path | None = None,
) -> str:
    """Add the generation frozen from ``checkpoint``; returns its ``model_id``.

    ``released_table`` is the table the new generation is added to (default: the package's,
    :data:`pillow_jac.generations.RELEASED_PATH`).

    Raises:
        WeightsError: the ``model_id`` exists, or the release number is not above every one there is (nothing
            is written then).
    """
    tensors, metadata = load_weights(checkpoint)
    new_tensors, new_meta = freeze(build_model(tensors, metadata), number, notes)
    new_id = new_meta["model_id"]
    table_path = generations.RELEASED_PATH if released_table is None else released_table
    existing = _existing(weights_dir, vectors_dir, table_path)
    if new_id in existing:
        raise WeightsError(f"{new_id} is an existing generation: a release needs a new --release number")
    numbers = [n for n in existing.values() if n is not None]
    if numbers and number <= max(numbers):
        raise WeightsError(f"release {number} is not above release {max(numbers)}: the newest generation encodes")
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    if full.exists():
        _, old_meta = load_weights(full)
        kept = keep_generation(full, weights_dir)
        print(f"kept {old_meta.get('model_id')} as {kept}")
    save_weights(full, new_tensors, new_meta)
    print(f"wrote {full}: {new_id}, hash {new_meta['weights_hash']}")
    make_vectors = _load_script("make_vectors")
    table = make_vectors.make(vectors_dir / new_id, vectors_dir / "sources", weights=full)
    print(f"wrote {len(table)} vectors to {vectors_dir / new_id}")
    entries = {**generations.released(), **_released_table(table_path)}
    entries[new_id] = {"weights_hash": new_meta["weights_hash"], "decoder_hash": new_meta["decoder_hash"]}
    table_path.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"added {new_id} to {table_path}")
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
    model = build_model(source, source_meta)
    released_config = ModelConfig(**json.loads(metadata["config"]))
    if dataclasses.replace(model.config, lambdas=released_config.lambdas) != released_config:  # the ladder may move
        raise WeightsError(f"{checkpoint} is another architecture than {old.model_id}: an encoder update keeps it")
    candidate, _ = freeze(model, old.release or 0)
    from ..weights import DECODER_PREFIXES, ENCODER_PREFIXES, decoder_hash

    frozen_decoder = {k: v for k, v in candidate.items() if k.startswith(DECODER_PREFIXES)}
    kept = {k: v for k, v in tensors.items() if not k.startswith(DECODER_PREFIXES)}
    if decoder_hash({**kept, **frozen_decoder}, metadata) != old.decoder_hash:  # the checkpoint's own decoder
        raise WeightsError("the checkpoint's decoder is not the generation's: release it as a new generation")
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
    p.add_argument("--released-table", type=Path, default=generations.RELEASED_PATH)
    args = p.parse_args(argv)
    notes = dict(n.split("=", 1) for n in args.note)
    if args.encoder_update:
        encoder_update(args.checkpoint, args.weights_dir, notes)
        return 0
    if args.release is None:
        p.error("--release is required for a new generation")
    release(args.checkpoint, args.release, args.weights_dir, args.vectors_dir, notes, args.released_table)
    conformance = _load_script("conformance")
    return conformance.main([])


if __name__ == "__main__":
    sys.exit(main())
