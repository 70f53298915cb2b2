"""Add a decoder generation in one command: keep the old decoder, freeze the new model, make its vectors.

``python -m pillow_jac.training.release CHECKPOINT.safetensors --release N`` (SPEC.md section 9.2):

1. freezes the checkpoint (:func:`pillow_jac.training.freeze.freeze`); its ``model_id`` must be new;
2. keeps the current generation: its decoder file (no encoder, compact storage,
   :func:`pillow_jac.weights_hashes.decoder_only`) goes to ``weights/generations/<model_id>.safetensors``,
   unless it is there already;
3. refuses the release if the package's weights (the new full file and every kept decoder file) would go
   over :data:`pillow_jac.generations.PACKAGE_BUDGET_BYTES`: no generation leaves the package;
   then makes the new generation's test vectors, from the frozen file, in a temporary folder beside
   ``format_spec/vectors/<model_id>/``;
4. checks those vectors (``format_spec/conformance.py``'s checks: file digests, exact latents, pixels
   within one level) with the frozen file, and the kept generation's vectors with its decoder file;
5. only then puts in place, each by an atomic rename, the vectors folder, the package's full weights
   file (the new generation becomes the default encoder) and the table of released generations
   (``pillow_jac/released.json``, :func:`pillow_jac.generations.released`).

A failure or Ctrl-C before step 5 leaves the package as it was (the decoder file kept for it goes too),
so the same release number can be tried again; SIGINT and SIGTERM wait for step 5. A release killed
outright (SIGKILL, the OOM killer, a power cut) before step 5 leaves at most that decoder file, which a
retry reuses, and hidden staged files ending in ``.tmp``, which a retry removes. One killed during step 5
leaves a commit marker naming it (:mod:`.release_commit`): every other release is refused until it is
finished by running it again, which takes it only with the gate's verdict, the previous generation's
decoder file in place, and the vectors in place (or staged, where a power cut lost their rename) the very
files the commit put there, passing their check with the new full file. A marker whose every rename is
done (killed before its removal) is removed by any release, which says so.

Before writing anything it refuses a ``model_id`` that exists anywhere (an installed or released
generation, a file in the weights folder, a vectors folder), a release number not above every
release it can see, and vectors of a generation nothing lists or holds: a release never replaces a
generation or its vectors, nor leaves vectors no decoder passes.

``--encoder-update`` instead replaces only the encoder of the current generation (g_a, h_a, the
forward gains, and the lambda ladder they were trained for: the encoder fields of the config,
:data:`pillow_jac.weights_hashes.ENCODER_CONFIG_FIELDS`) with the checkpoint's: the decoder and its hash
stay, so no vectors change and no generation is added. It refuses a checkpoint of another
architecture, or whose decoder, frozen, is not the generation's, and, in the package's weights folder,
an encoder that the gate did not find better on every set (``gate --bar 0.5`` of the updated full file:
:data:`.gate.ENCODER_BAR_PERCENT`).

``--weights-dir``, ``--vectors-dir`` and ``--released-table`` point elsewhere (the tests use temporary ones).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .. import generations
from ..engine import build_model
from ..files import _sync_folder
from ..model.mbt2018 import ModelConfig
from ..weights import WeightsError, load_weights, save_weights
from ..weights_hashes import ENCODER_CONFIG_FIELDS, decoder_only, seal
from ..weights_manifest import verify
from . import release_commit as commit_steps
from .freeze import MAX_RELEASE, check_notes, freeze, parse_notes
from .gate import ENCODER_BAR_PERCENT, check_verdict, measured_model

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
    fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:  # whole or absent, and readable by all who read the package (safetensors writes 0600)
        save_weights(Path(staged), *decoder_only(tensors, metadata))
        commit_steps.mode_for(Path(staged), target)
        os.replace(staged, target)
        _sync_folder(target.parent)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return target


def _existing(weights_dir: Path, vectors_dir: Path, table: Path) -> dict[str, int | None]:
    """Every generation a release must not reuse: ``{model_id: release number or None}``.

    Raises:
        WeightsError: a vectors folder is of no generation the table lists or a file holds (the vectors of a
            release cut short, or a stray copy): a release would leave vectors no decoder passes.
    """
    found: dict[str, int | None] = {g.model_id: g.release for g in generations.installed()}
    for path in [weights_dir / generations.DEFAULT_WEIGHTS_NAME, *(weights_dir / generations.KEPT_DIR).glob("*")]:
        gen = generations.generation_of(path) if path.is_file() else None
        if gen is not None:
            found[gen.model_id] = gen.release
        elif path.is_file() and path.suffix == ".safetensors":
            if not path.stat().st_size:
                raise WeightsError(
                    f"{path} is empty (a kept decoder set aside for a GPU session): put it back before a release, "
                    "python -m pillow_jac.training.travel put-back"
                )
            raise WeightsError(f"{path} is not a readable weights file: remove or repair it before a release")
    for model_id in (*generations.released(), *commit_steps.released_table(table)):
        found.setdefault(model_id, None)
    if vectors_dir.is_dir():
        for folder in vectors_dir.iterdir():
            staged = folder.name.startswith(".")  # a killed release's, which the sweep removes
            if (folder / "vectors.json").is_file() and not staged and folder.name not in found:
                raise WeightsError(
                    f"{folder} holds the vectors of {folder.name}, which no released or installed generation is "
                    "(a stray copy, or a release cut short whose commit marker is gone): "
                    "remove them before a release"
                )
    return found


def check_vectors(folder: Path, weights: Path) -> list[str]:
    """What fails when the vectors of ``folder`` are decoded with ``weights`` (empty when all pass).

    ``format_spec/conformance.py``'s checks (the file's SHA-256, the exact latents, the pixels within one
    level, in at most :data:`~pillow_jac.constants.VECTOR_OFF_BY_ONE_SHARE` of the samples), with a given
    weights file instead of the installed generations.
    """
    results = _load_script("conformance").check_folder(folder, weights)
    return [f"{folder.name}/{name}: {outcome}" for name, outcome, passed in results if not passed]


def release(
    checkpoint: Path,
    number: int,
    weights_dir: Path,
    vectors_dir: Path,
    notes: dict[str, str],
    released_table: Path | None = None,
    gate_verdict: dict | None = None,
) -> str:
    """Add the generation frozen from ``checkpoint``; returns its ``model_id``.

    ``released_table`` is the table the new generation is added to (default: the package's,
    :data:`pillow_jac.generations.RELEASED_PATH`). ``gate_verdict`` (a ``gate.json``), when given, must
    have passed the release bar on whole evaluation sets for this very decoder and encoder, against the
    generation in ``weights_dir`` (:func:`.gate.check_verdict`).
    Everything that can fail happens in temporary files
    first; the vectors, the full weights file and the table are then each put in place by a rename.

    Raises:
        WeightsError: another release's commit was cut short, the ``model_id`` exists, its vectors folder exists,
            a vectors folder is of no generation, the release number is not above every one there is (nothing
            is written then), the package's weights would exceed their budget, or the new vectors fail their
            check (the package is unchanged); or, finishing this release's commit, what is in place is not
            what the commit put there (nothing is written then).
    """
    table_path = generations.RELEASED_PATH if released_table is None else released_table
    record = commit_steps.read_marker(weights_dir)  # before any sweep: it names a commit cut short
    done = commit_steps.remove_if_done(record, weights_dir, vectors_dir, table_path)  # killed after its last rename
    record = None if done else record
    tensors, metadata = load_weights(checkpoint)
    if "step" in metadata:  # the training step the weights are of, as freeze records it
        notes = {"step": metadata["step"], **notes}
    try:
        new_tensors, new_meta = freeze(build_model(tensors, metadata), number, notes)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
    new_id = new_meta["model_id"]
    if done is not None and all(done[k] == new_meta[k] for k in ("model_id", "weights_hash", "decoder_hash")):
        return new_id
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    listed = {**generations.released(), **commit_steps.released_table(table_path)}
    target_vectors = vectors_dir / new_id
    if record is not None:
        commit_steps.refuse_other_commit(record, new_meta, weights_dir)
        if commit_steps.nothing_in_place(record, full, listed, target_vectors):  # killed before its first rename
            record = None
    if record is not None:
        stable = record["old"]["stable_model"] if record["old"] else None
    else:
        stable = measured_model(*load_weights(full)) if full.exists() else None
    if gate_verdict is not None:
        try:
            check_verdict(gate_verdict, measured_model(new_tensors, new_meta), stable)
        except ValueError as exc:
            raise WeightsError(f"{checkpoint}: {exc}") from None
    if record is not None:
        return _finish(record, new_tensors, new_meta, weights_dir, vectors_dir, table_path, listed)
    existing = _existing(weights_dir, vectors_dir, table_path)
    if new_id in existing:
        raise WeightsError(f"{new_id} is an existing generation: a release needs a new --release number")
    numbers = [n for n in existing.values() if n is not None]
    if numbers and number <= max(numbers):
        raise WeightsError(f"release {number} is not above release {max(numbers)}: the newest generation encodes")
    if target_vectors.exists():
        raise WeightsError(f"{target_vectors} exists (without a vectors table): remove it before the release")
    commit_steps.sweep(weights_dir, vectors_dir, new_id, table_path)
    (weights_dir / commit_steps.MARKER_NAME).unlink(missing_ok=True)  # this release's, of a commit that renamed nothing
    kept = old = None
    kept_before = set((weights_dir / generations.KEPT_DIR).glob("*.safetensors"))
    if full.exists():
        _, old_meta = load_weights(full)
        kept = keep_generation(full, weights_dir)
        old = {k: old_meta.get(k) for k in ("model_id", "weights_hash", "decoder_hash")}
        old.update(kept=kept.relative_to(weights_dir).as_posix(), stable_model=stable)
        print(f"kept {old['model_id']} as {kept}")
    vectors_dir.mkdir(parents=True, exist_ok=True)
    staged_full, staged_vectors, staged_table, backup = None, None, None, None
    try:
        try:
            staged_full = _staged_full(weights_dir, full, new_tensors, new_meta)
            staged_vectors = Path(tempfile.mkdtemp(prefix=f".{new_id}.", suffix=".tmp", dir=vectors_dir))
            _check_package_budget(staged_full, weights_dir)
            made = _load_script("make_vectors").make(staged_vectors, vectors_dir / "sources", weights=staged_full)
            failures = check_vectors(staged_vectors, staged_full)
            if kept is not None and (vectors_dir / str(old["model_id"]) / "vectors.json").is_file():
                failures += check_vectors(vectors_dir / str(old["model_id"]), kept)
            if failures:
                raise WeightsError("the vectors do not pass their check: " + "; ".join(failures))
            staged_table = commit_steps.staged_table(table_path, new_id, new_meta)
            commit_steps.mode_for(staged_vectors, target_vectors)
            backup = _backup(full)
        except BaseException:  # refused before the commit: the decoder file kept for it goes (a retry keeps it again)
            if kept is not None and kept not in kept_before:
                kept.unlink(missing_ok=True)
            raise
        record = {
            "model_id": new_id, "release": number, "weights_hash": new_meta["weights_hash"],
            "decoder_hash": new_meta["decoder_hash"], "vectors": commit_steps.digests(staged_vectors), "old": old,
        }  # fmt: skip
        commit_steps.commit(staged_vectors, target_vectors, staged_full, full, staged_table, table_path, backup, record)
    finally:
        for leftover in (staged_full, staged_table, backup):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        if staged_vectors is not None:
            shutil.rmtree(staged_vectors, ignore_errors=True)
    print(f"wrote {len(made)} vectors to {target_vectors}; they decode with the new file")
    print(f"wrote {full}: {new_id}, hash {new_meta['weights_hash']}")
    print(f"added {new_id} to {table_path}")
    return new_id


def _staged_full(weights_dir: Path, full: Path, tensors: dict, metadata: dict[str, str]) -> Path:
    """The new full file, written beside ``full`` under a hidden ``.tmp`` name with ``full``'s mode."""
    fd, name = tempfile.mkstemp(prefix=f".{metadata['model_id']}.", suffix=".safetensors.tmp", dir=weights_dir)
    os.close(fd)
    try:
        save_weights(Path(name), tensors, metadata)
        commit_steps.mode_for(Path(name), full)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _backup(full: Path) -> Path | None:
    """A hard link to the shipped ``full`` as it is, for :func:`.release_commit.commit` to put back on an error."""
    if not full.exists():
        return None
    backup = Path(tempfile.mkstemp(prefix=f".{full.name}.", suffix=".old.tmp", dir=full.parent)[1])
    backup.unlink()
    os.link(full, backup)
    return backup


def _finish(
    record: dict,
    new_tensors: dict,
    new_meta: dict[str, str],
    weights_dir: Path,
    vectors_dir: Path,
    table_path: Path,
    listed: dict,
) -> str:
    """Do the renames that the commit of this very release, killed part-way, left undone; returns its ``model_id``.

    ``record`` is its commit marker (:func:`.release_commit.read_marker`), naming this release, and some rename
    is done. Refused unless the generation it follows is kept as a decoder (a marker that names none, with a kept
    decoder or a full file of another generation there, is refused), the vectors in place, or in a staged folder
    whose rename a power cut lost, are the files the commit put there and pass their check with the new full
    file, and the full file is the new generation or the one it follows (none, for a first release).
    """
    new_id = new_meta["model_id"]
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    target_vectors = vectors_dir / new_id
    old = record["old"]
    how = f"restore it to finish the release of {new_id}, whose commit was cut short"
    if old is not None and not commit_steps.is_generation(weights_dir / old["kept"], old):
        raise WeightsError(f"{weights_dir / old['kept']} is not the decoder file of {old['model_id']}: {how}")
    full_done = commit_steps.is_generation(full, new_meta)
    if old is None:
        commit_steps.refuse_unnamed_previous(record, weights_dir, full_done)
    staged_vectors = commit_steps.staged_vectors(vectors_dir, record)  # None: they are in place
    if commit_steps.digests(staged_vectors or target_vectors) != record["vectors"]:
        raise WeightsError(f"{target_vectors} holds other files than the commit put there: {how}")
    entry = {"weights_hash": new_meta["weights_hash"], "decoder_hash": new_meta["decoder_hash"]}
    if new_id in listed and listed[new_id] != entry:
        raise WeightsError(f"{table_path} lists {new_id} with other hashes: {how}")
    if not full_done and not commit_steps.is_previous(full, old):
        raise WeightsError(f"{full} is neither {new_id} nor the generation it follows: {how}")
    commit_steps.sweep(weights_dir, vectors_dir, new_id, table_path, backups=False, keep=staged_vectors)
    staged_full = staged_table = backup = None
    try:
        if not full_done:
            staged_full = _staged_full(weights_dir, full, new_tensors, new_meta)
            backup = _backup(full)
        failures = check_vectors(staged_vectors or target_vectors, staged_full or full)
        if failures:
            raise WeightsError(f"the vectors in place do not pass their check: {'; '.join(failures)}; {how}")
        if new_id not in listed:
            staged_table = commit_steps.staged_table(table_path, new_id, new_meta)
        commit_steps.commit(
            staged_vectors, target_vectors, staged_full, full, staged_table, table_path, backup, record, finishing=True
        )
    finally:
        for leftover in (staged_full, staged_table, backup):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
    commit_steps.sweep(weights_dir, vectors_dir, new_id, table_path)  # the killed commit's backup of the old full file
    print(f"finished the release of {new_id}, whose commit was cut short: {full} and {table_path} hold it")
    return new_id


def _check_package_budget(full: Path, weights_dir: Path) -> None:
    """Refuse a release into the package's weights folder that would take its weights over their budget.

    The weights are :func:`pillow_jac.generations.package_weights_bytes` with ``full`` in place of the shipped
    full file; another folder is no package and has no budget. No generation may leave the package to make room:
    a user's ``pip install -U`` would then leave its files undecodable, for the package finds decoders only in
    its own folder, ``JAC_WEIGHTS`` and the folders of ``JAC_MODELS`` (:mod:`pillow_jac.generations`).
    """
    if weights_dir.resolve() != generations.package_weights_dir().resolve():
        return
    shipped = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    replaced = shipped.stat().st_size if shipped.exists() else 0
    total = generations.package_weights_bytes() - replaced + full.stat().st_size
    if total > generations.PACKAGE_BUDGET_BYTES:
        raise WeightsError(
            f"the package's weights would hold {total / 1e6:.1f} MB, over its budget of "
            f"{generations.PACKAGE_BUDGET_BYTES / 1e6:.0f} MB, and no kept generation may leave the package as it "
            "is (its files would stop decoding after an upgrade: the package finds decoders only in its weights "
            "folder, JAC_WEIGHTS and the folders named by JAC_MODELS): publish the kept decoder files for their "
            "users to install in a folder named by JAC_MODELS, say so in the release notes, and only then take "
            "them out of the package's generations/ folder"
        )


def _shipped_tables(candidate: dict, shipped: dict) -> dict:
    """The shipped coding tables that stand for ``candidate``'s own: the y tables, and the z tables if its density is.

    Freezing computes the tables in floating point: the y tables from constants only, the z tables from the
    float density (CODING.md section 2.1). Another CPU can break a near-tie the other way (2 entries of one y
    table differed on an AVX2 CPU from the AMX one that made release 6), so comparing a re-freeze with the
    shipped file would call an unchanged decoder another. What a checkpoint decides is its networks and its
    density; where those are the generation's, so are its tables, and the shipped ones are kept.
    """
    import torch

    from ..weights import Z_DENSITY_PREFIXES, table_prefix

    density = sorted(k for k in candidate if k.startswith(Z_DENSITY_PREFIXES))
    same_density = density == sorted(k for k in shipped if k.startswith(Z_DENSITY_PREFIXES)) and all(
        torch.equal(candidate[k], shipped[k]) for k in density
    )
    prefixes = (table_prefix("y"), table_prefix("z")) if same_density else (table_prefix("y"),)
    return {k: v for k, v in shipped.items() if k.startswith(prefixes)}


def encoder_update(checkpoint: Path, weights_dir: Path, notes: dict[str, str], gate_verdict: dict | None = None) -> str:
    """Replace the encoder of the current full file with the checkpoint's; the decoder must be identical.

    The encoder is the encoder tensors and the encoder fields of the config (the lambda ladder,
    :data:`pillow_jac.weights_hashes.ENCODER_CONFIG_FIELDS`): a checkpoint trained for another ladder brings it.
    ``gate_verdict`` (a ``gate.json`` of the updated full file, such as ``encoder_tune``'s
    ``best.safetensors``, against the current one), when given, must clear
    :data:`.gate.ENCODER_BAR_PERCENT` on every set (:func:`.gate.check_verdict`); a change of notes alone is
    not checked against it (the command line still asks for one in the package's folder).
    """
    check_notes(notes)
    commit_steps.refuse_any_commit(weights_dir)  # the full file may be the one a commit cut short is putting in place
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    tensors, metadata = load_weights(full)
    old = verify(tensors, metadata, full)
    source, source_meta = load_weights(checkpoint)
    from ..weights import DECODER_PREFIXES, ENCODER_PREFIXES
    from ..weights_hashes import decoder_hash

    lacking = [p.rstrip(".") for p in ENCODER_PREFIXES if not any(k.startswith(p) for k in source)]
    if lacking:  # build_model would leave them at their initial values
        raise WeightsError(f"{checkpoint} has no encoder ({', '.join(lacking)}): an encoder update needs one")
    model = build_model(source, source_meta)
    released_config = ModelConfig(**json.loads(metadata["config"]))
    if dataclasses.replace(model.config, lambdas=released_config.lambdas) != released_config:  # the ladder may move
        raise WeightsError(f"{checkpoint} is another architecture than {old.model_id}: an encoder update keeps it")
    candidate, _ = freeze(model, old.release or 0)
    frozen_decoder = {k: v for k, v in candidate.items() if k.startswith(DECODER_PREFIXES)}
    frozen_decoder.update(_shipped_tables(candidate, tensors))
    kept = {k: v for k, v in tensors.items() if not k.startswith(DECODER_PREFIXES)}
    if decoder_hash({**kept, **frozen_decoder}, metadata) != old.decoder_hash:  # the checkpoint's own decoder
        raise WeightsError("the checkpoint's decoder is not the generation's: release it as a new generation")
    updated = dict(tensors)
    updated.update({k: v for k, v in candidate.items() if k.startswith(ENCODER_PREFIXES)})
    config = json.loads(metadata["config"])
    ladder = json.loads(json.dumps({k: model.config.to_dict()[k] for k in ENCODER_CONFIG_FIELDS}))  # as JSON reads
    moved = {"config": json.dumps({**config, **ladder})} if ladder != {k: config.get(k) for k in ladder} else {}
    new_meta = seal(updated, {**metadata, **notes, **moved})
    if new_meta["decoder_hash"] != old.decoder_hash or new_meta["weights_hash"] != old.weights_hash:
        raise WeightsError("the update changes the decoder: release it as a new generation instead")
    if new_meta == metadata:
        print(f"nothing changed: {checkpoint} holds the encoder {old.model_id} has (encoder hash {old.encoder_hash})")
        return old.model_id
    if gate_verdict is not None and new_meta["encoder_hash"] != old.encoder_hash:
        try:
            check_verdict(
                gate_verdict, measured_model(updated, new_meta), measured_model(tensors, metadata), ENCODER_BAR_PERCENT
            )
        except ValueError as exc:
            raise WeightsError(f"{checkpoint}: {exc}") from None
    save_weights(full, updated, new_meta)
    if new_meta["encoder_hash"] == old.encoder_hash:
        print(f"updated the notes of {old.model_id}; the encoder is unchanged (encoder hash {old.encoder_hash})")
    else:
        print(f"updated the encoder of {old.model_id}: encoder hash {old.encoder_hash} -> {new_meta['encoder_hash']}")
    return old.model_id


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Add a decoder generation, or update the current one's encoder")
    p.add_argument("checkpoint", type=Path, help="float weights (.safetensors) of the trained model")
    p.add_argument(
        "--release", type=int, help=f"release number of the new generation (1 to {MAX_RELEASE}, part of its model id)"
    )
    p.add_argument("--encoder-update", action="store_true", help="replace only the current generation's encoder")
    p.add_argument("--note", action="append", default=[], help="KEY=VALUE added to the manifest")
    p.add_argument("--weights-dir", type=Path, default=generations.package_weights_dir())
    p.add_argument("--vectors-dir", type=Path, default=_REPO / "format_spec" / "vectors")
    p.add_argument("--released-table", type=Path, default=generations.RELEASED_PATH)
    p.add_argument(
        "--gate", type=Path, default=Path("runs/gate/gate.json"),
        help="the gate's verdict on these weights, or for --encoder-update on the updated full file "
        "(python -m pillow_jac.training.gate; default %(default)s)",
    )  # fmt: skip
    p.add_argument("--no-gate", action="store_true", help="without a gate verdict (not for the package's weights)")
    args = p.parse_args(argv)
    try:
        notes = parse_notes(args.note)
    except ValueError as exc:
        p.error(str(exc))
    if args.encoder_update and args.release is not None:
        p.error("--release: an encoder update keeps the current generation's release (leave it out)")
    if not args.encoder_update and args.release is None:
        p.error("--release is required for a new generation")
    if not args.encoder_update and not 1 <= args.release <= MAX_RELEASE:
        p.error(f"--release must be from 1 to {MAX_RELEASE}")
    # the defaults are the package's own (an encoder update writes only the weights folder)
    dests = ("weights_dir",) if args.encoder_update else ("weights_dir", "vectors_dir", "released_table")
    at_package = [
        f"--{dest.replace('_', '-')}"
        for dest in dests
        if getattr(args, dest).resolve() == p.get_default(dest).resolve()
    ]
    if args.no_gate and at_package:
        p.error(
            f"--no-gate: the package's weights change only through the gate ({', '.join(at_package)} "
            "the package's own: give folders and a table of your own for weights not for the package)"
        )
    verdict = None
    if not args.no_gate:
        try:
            verdict = json.loads(args.gate.read_text())
        except (OSError, ValueError) as exc:
            how = f"--bar {ENCODER_BAR_PERCENT:g} " if args.encoder_update else ""
            p.error(
                f"no gate verdict in {args.gate} ({exc}): gate the weights first (python -m pillow_jac.training.gate "
                f"{how}WEIGHTS; --no-gate, with folders of your own, changes weights not for the package)"
            )
    if args.encoder_update:
        encoder_update(args.checkpoint, args.weights_dir, notes, verdict)
    else:
        release(args.checkpoint, args.release, args.weights_dir, args.vectors_dir, notes, args.released_table, verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
