"""The release tools: a failed release changes nothing, the manifest's own fields are not notes, released
generations are not overwritten, and an encoder update carries the ladder it was trained for."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch

from pillow_jac import generations, weights, weights_hashes
from pillow_jac.engine import build_model
from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from pillow_jac.training import freeze as freeze_module
from pillow_jac.training import release
from pillow_jac.training.freeze import freeze, model_id_for

TINY = ModelConfig(N=8, M=12)


def tiny_model(seed: int, config: ModelConfig = TINY) -> JointAutoregressiveHierarchicalPrior:
    torch.manual_seed(seed)
    return JointAutoregressiveHierarchicalPrior(config)


@pytest.fixture()
def package(tmp_path: Path) -> types.SimpleNamespace:
    """A weights folder whose default generation is a tiny release 7, and a checkpoint of another tiny model."""
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    weights.save_weights(full, *freeze(tiny_model(1), 7))
    model = tiny_model(2)
    weights.save_float_state(tmp_path / "ckpt.safetensors", model.state_dict(), model.config, {})
    return types.SimpleNamespace(
        weights_dir=weights_dir,
        full=full,
        checkpoint=tmp_path / "ckpt.safetensors",
        vectors=tmp_path / "vectors",
        table=tmp_path / "released.json",
    )


def leftovers(package) -> set[str]:
    """What the weights and vectors folders hold, less the kept decoder and the vector sources."""
    folders = (package.weights_dir, package.vectors)
    return {p.name for f in folders if f.exists() for p in f.iterdir()} - {generations.KEPT_DIR, "sources"}


def test_a_failed_release_changes_nothing_and_can_be_retried(package, monkeypatch: pytest.MonkeyPatch) -> None:
    before = package.full.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the vectors are made

    def made_nothing(out, *args, **kwargs):
        (out / "vectors.json").write_text("{}")
        return {}

    for make, error in ((interrupted, KeyboardInterrupt), (made_nothing, weights.WeightsError)):
        monkeypatch.setattr(release, "_load_script", lambda name, make=make: types.SimpleNamespace(make=make))
        # vectors that fail their check are not put in place either
        monkeypatch.setattr(release, "check_vectors", lambda folder, path: [f"{folder.name}/x: latents differ"])
        with pytest.raises(error):
            release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
        assert package.full.read_bytes() == before  # the default generation is still release 7
        assert not package.table.exists()
        assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME}
    monkeypatch.undo()
    # the same release number then goes through, and its vectors pass the conformance checks
    new_id = release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert new_id == "mbt-8-12-r008"
    _, meta = weights.load_weights(package.full)
    assert meta["model_id"] == new_id
    assert json.loads(package.table.read_text())[new_id]["decoder_hash"] == meta["decoder_hash"]
    assert release.check_vectors(package.vectors / new_id, package.full) == []
    kept = package.weights_dir / generations.KEPT_DIR / "mbt-8-12-r007.safetensors"
    assert release.check_vectors(package.vectors / new_id, kept)  # another decoder fails them
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME, new_id}


def test_a_release_over_the_package_budget_is_refused_and_no_generation_leaves(package, monkeypatch) -> None:
    """Removing the oldest kept decoder file from the package would leave its files undecodable after an upgrade,
    so the release is refused instead, before anything is put in place (the current generation's decoder file
    made for it included)."""
    before = package.full.read_bytes()
    kept_dir = package.weights_dir / generations.KEPT_DIR
    monkeypatch.setattr(generations, "package_weights_dir", lambda: package.weights_dir)  # the budget is the package's
    # room for a full file of this size, not for the kept decoder file of release 7 beside it
    monkeypatch.setattr(generations, "PACKAGE_BUDGET_BYTES", len(before) + 1000)
    with pytest.raises(weights.WeightsError, match=r"over its budget of .*no kept generation may leave the package"):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert package.full.read_bytes() == before and not package.table.exists()
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME}
    assert not list(kept_dir.glob("*.safetensors"))
    monkeypatch.setattr(generations, "PACKAGE_BUDGET_BYTES", 10**9)
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)


def test_a_release_with_kept_decoders_set_aside_is_refused_before_anything_is_written(package) -> None:
    """A kept decoder emptied for a GPU session (pillow_jac.training.travel) is no generation: the refusal says how
    to put it back."""
    kept_dir = package.weights_dir / generations.KEPT_DIR
    kept_dir.mkdir()
    (kept_dir / "mbt-8-12-r005.safetensors").touch()
    before = package.full.read_bytes()
    with (
        pytest.warns(UserWarning, match=r"mbt-8-12-r005.safetensors is skipped: it is empty"),
        pytest.raises(weights.WeightsError, match=r"mbt-8-12-r005.safetensors is empty .*travel put-back"),
    ):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert package.full.read_bytes() == before and not package.table.exists()
    assert sorted(p.name for p in kept_dir.iterdir()) == ["mbt-8-12-r005.safetensors"]


def test_a_leftover_vectors_folder_is_refused_before_anything_is_written(package) -> None:
    (package.vectors / "mbt-8-12-r008").mkdir(parents=True)
    before = package.full.read_bytes()
    with pytest.raises(weights.WeightsError, match="exists"):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert package.full.read_bytes() == before
    assert not (package.weights_dir / generations.KEPT_DIR).exists()


def test_notes_cannot_set_the_manifests_own_fields(package, capsys) -> None:
    for key in ("model_id", "release", "config", "layout", "decoder_hash", "weights_hash", "encoder_hash"):
        with pytest.raises(ValueError, match="not a note"):
            freeze(tiny_model(1), 8, {key: "x"})
    for main in (release.main, freeze_module.main):
        for note in ("model_id=mbt-128-192-r006", "foo"):
            target = [] if main is release.main else [str(package.vectors / "out.safetensors")]
            with pytest.raises(SystemExit) as stop:
                main([str(package.checkpoint), *target, "--release", "8", "--note", note])
            assert stop.value.code == 2  # an argparse error, not a traceback
    assert "not a note" in capsys.readouterr().err
    assert package.full.read_bytes() and not package.vectors.exists()
    _, meta = freeze(tiny_model(1), 8, {"data": "a=b"})
    assert (meta["data"], meta["model_id"]) == ("a=b", "mbt-8-12-r008")


def test_freeze_refuses_a_released_id_with_another_decoder_and_the_package_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in (-1, 1000):
        with pytest.raises(ValueError, match="three digits"):
            model_id_for(TINY, number)
    model = tiny_model(1)
    weights.save_float_state(tmp_path / "ckpt.safetensors", model.state_dict(), model.config, {})
    _, pinned = freeze(tiny_model(1), 7)
    table = {"mbt-8-12-r007": {"weights_hash": pinned["weights_hash"], "decoder_hash": pinned["decoder_hash"]}}
    monkeypatch.setattr(generations, "released", lambda: table)
    with pytest.raises(SystemExit, match="inside the package's weights folder"):
        freeze_module.main(
            [
                str(tmp_path / "ckpt.safetensors"),
                str(generations.package_weights_dir() / "x.safetensors"),
                "--release",
                "9",
            ]
        )
    freeze_module.main([str(tmp_path / "ckpt.safetensors"), str(tmp_path / "same.safetensors"), "--release", "7"])
    assert (tmp_path / "same.safetensors").exists()  # the released decoder itself, frozen again
    other = tiny_model(2)
    weights.save_float_state(tmp_path / "other.safetensors", other.state_dict(), other.config, {})
    with pytest.raises(SystemExit, match="mbt-8-12-r007 is a released generation"):
        freeze_module.main(
            [str(tmp_path / "other.safetensors"), str(tmp_path / "other_frozen.safetensors"), "--release", "7"]
        )
    assert not (tmp_path / "other_frozen.safetensors").exists()
    with pytest.raises(SystemExit) as stop:
        freeze_module.main([str(tmp_path / "other.safetensors"), str(tmp_path / "x.safetensors"), "--release", "1000"])
    assert stop.value.code == 2


def test_an_encoder_update_brings_its_ladder(package, capsys) -> None:
    model = tiny_model(1)
    ladder = tuple(round(v * 1.1, 6) for v in TINY.lambdas)
    moved = JointAutoregressiveHierarchicalPrior(dataclasses.replace(TINY, lambdas=ladder))
    moved.load_state_dict(model.state_dict())
    weights.save_float_state(package.checkpoint, moved.state_dict(), moved.config, {})
    _, before = weights.load_weights(package.full)
    assert release.encoder_update(package.checkpoint, package.weights_dir, {}) == "mbt-8-12-r007"
    _, after = weights.load_weights(package.full)
    assert tuple(json.loads(after["config"])["lambdas"]) == ladder
    assert (after["decoder_hash"], after["weights_hash"]) == (before["decoder_hash"], before["weights_hash"])
    assert after["encoder_hash"] != before["encoder_hash"]
    assert "updated the encoder" in capsys.readouterr().out
    written = package.full.read_bytes()
    release.encoder_update(package.checkpoint, package.weights_dir, {})
    assert "nothing changed" in capsys.readouterr().out
    assert package.full.read_bytes() == written
    with pytest.raises(ValueError, match="not a note"):
        release.encoder_update(package.checkpoint, package.weights_dir, {"encoder_hash": "0" * 16})


def _quick_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors made and checked instantly: what is tested is how they are put in place."""

    def make(out, *args, **kwargs):
        (out / "vectors.json").write_text("{}")
        return {}

    monkeypatch.setattr(release, "_load_script", lambda name: types.SimpleNamespace(make=make))
    monkeypatch.setattr(release, "check_vectors", lambda folder, path: [])


def test_a_release_whose_last_rename_fails_puts_everything_back(package, monkeypatch: pytest.MonkeyPatch) -> None:
    _quick_vectors(monkeypatch)
    before = package.full.read_bytes()
    package.table.write_text("{}\n")
    real_replace = release.os.replace

    def full_disk(src, dst):
        if Path(dst) == package.table:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(release.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert package.full.read_bytes() == before and package.table.read_text() == "{}\n"
    assert leftovers(package) == {generations.DEFAULT_WEIGHTS_NAME}  # no vectors, no staged or backup file
    monkeypatch.setattr(release.os, "replace", real_replace)
    assert release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)


def test_a_release_keeps_the_modes_of_what_it_replaces(package, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    _quick_vectors(monkeypatch)
    package.table.write_text("{}\n")
    package.table.chmod(0o644)
    package.full.chmod(0o640)
    new_id = release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    umask = os.umask(0)
    os.umask(umask)
    assert package.table.stat().st_mode & 0o777 == 0o644  # readable by others, as before (mkstemp makes 0600)
    assert package.full.stat().st_mode & 0o777 == 0o640
    assert (package.vectors / new_id).stat().st_mode & 0o777 == 0o777 & ~umask  # as a new folder (mkdtemp: 0700)
    (kept,) = (package.weights_dir / generations.KEPT_DIR).iterdir()  # a new file (safetensors writes 0600)
    assert kept.stat().st_mode & 0o777 == 0o666 & ~umask


def test_freeze_never_writes_over_another_generation_or_the_vectors(tmp_path: Path, monkeypatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    kept = models / "mbt-8-12-r007.safetensors"
    weights.save_weights(kept, *freeze(tiny_model(1), 7))
    monkeypatch.setenv("JAC_MODELS", str(models))
    before = kept.read_bytes()
    other = tiny_model(2)
    weights.save_float_state(tmp_path / "other.safetensors", other.state_dict(), other.config, {})
    with pytest.raises(SystemExit, match="holds the generation mbt-8-12-r007"):
        freeze_module.main([str(tmp_path / "other.safetensors"), str(kept), "--release", "9"])
    assert kept.read_bytes() == before
    variant = next((Path(freeze_module.__file__).parents[2] / "format_spec" / "vectors" / "variants").glob("*"))
    with pytest.raises(SystemExit, match="pin the test vectors"):
        freeze_module.main([str(tmp_path / "other.safetensors"), str(variant / "weights.safetensors"), "--release=1"])
    # a training run frozen again over its own earlier file (same id, a newer decoder) is the usual case
    run = tmp_path / "run.safetensors"
    freeze_module.main([str(tmp_path / "other.safetensors"), str(run), "--release", "0"])
    first = weights.load_weights(run)[1]["decoder_hash"]
    trained_on = tiny_model(3)
    weights.save_float_state(tmp_path / "later.safetensors", trained_on.state_dict(), trained_on.config, {})
    freeze_module.main([str(tmp_path / "later.safetensors"), str(run), "--release", "0"])
    assert weights.load_weights(run)[1]["decoder_hash"] != first  # replaced by the newer decoder


def passing_verdict(model: dict, stable: dict) -> dict:
    """A ``gate.json`` that clears the bar: whole evaluation sets, every quality, 10% smaller files on each set."""
    from pillow_jac.bench.metrics import portable_path
    from pillow_jac.training import gate

    bpp = [0.1 * 1.4**i for i in range(8)]
    psnr = [25.0 + 1.8 * i for i in range(8)]
    curves = {"stable": {"bpp": bpp, "psnr": psnr}, "candidate": {"bpp": [0.9 * b for b in bpp], "psnr": psnr}}
    sets = {name: {"data": portable_path(path), "curves": curves} for name, path in gate.SETS.items()}
    return {
        "passes": True, "limit": None, "model": model, "stable_model": stable,
        "bar_percent": gate.BAR_PERCENT, "qualities": list(gate.QUALITIES), "sets": sets,
    }  # fmt: skip


def test_a_release_needs_the_gates_whole_set_verdict_on_these_very_weights(
    package, tmp_path, capsys, monkeypatch
) -> None:
    """The gate measured the candidate frozen with --release 0; the release freezes it again with its number and
    takes it only if that verdict passed the bar on the whole evaluation sets at every quality, of the same decoder
    and encoder, against the generation it follows."""
    from pillow_jac.training.gate import measured_model

    measured = measured_model(*freeze(build_model(*weights.load_weights(package.checkpoint)), 0))
    stable = measured_model(*weights.load_weights(package.full))
    other = measured_model(*freeze(tiny_model(3), 0))
    good = passing_verdict(measured, stable)
    sets = good["sets"]
    worse = {**sets["kodak"]["curves"], "candidate": sets["kodak"]["curves"]["stable"]}
    stable_curve = sets["kodak"]["curves"]["stable"]  # 25.0-37.6 dB; the candidate's meets it at 36.0-37.6 dB only
    sliver = {**sets["kodak"]["curves"], "candidate": {"bpp": [0.5 * b for b in stable_curve["bpp"]],
                                                       "psnr": [p + 11.0 for p in stable_curve["psnr"]]}}  # fmt: skip
    refused = {
        "did not pass": {**good, "passes": False},
        "--limit": {**good, "limit": 2},
        "another model": {**good, "model": other},
        "another model than": {k: v for k, v in good.items() if k != "model"},  # before it recorded the model
        "another generation": {**good, "stable_model": other},
        "bar was -1000": {**good, "bar_percent": -1000.0},
        "qualities": {**good, "qualities": [1.0, 8.0]},
        "sets": {**good, "sets": {"kodak": sets["kodak"]}},
        "urban20 was elsewhere": {**good, "sets": {**sets, "urban20": {**sets["urban20"], "data": "elsewhere"}}},
        r"kodak set does not pass: [+-][0-9.]+% BD-rate is not past": {
            **good,
            "sets": {**sets, "kodak": {**sets["kodak"], "curves": worse}},
        },
        "meet over 13% of the current": {**good, "sets": {**sets, "kodak": {**sets["kodak"], "curves": sliver}}},
    }
    before = package.full.read_bytes()
    for reason, verdict in refused.items():
        with pytest.raises(weights.WeightsError, match=reason):
            release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table, verdict)
        assert package.full.read_bytes() == before and not package.vectors.exists()
    with pytest.raises(SystemExit) as stop:  # the command line wants a verdict, or --no-gate said aloud
        release.main([str(package.checkpoint), "--release", "8", "--gate", str(tmp_path / "none.json")])
    assert stop.value.code == 2 and "--no-gate" in capsys.readouterr().err
    for argv, why in (
        (["--release", "8", "--no-gate"], "only through the gate"),  # the package's own weights folder
        # a folder of one's own, but the package's table and vectors: an ungated entry in the package's table
        (["--release", "8", "--no-gate", "--weights-dir", str(package.weights_dir)], "--vectors-dir, --released-table"),
        (["--release", "8", "--encoder-update"], "keeps the current generation's release"),
    ):
        with monkeypatch.context() as never:  # a refusal that failed must not write the package's own table
            never.setattr(release, "release", lambda *a, argv=argv, **k: pytest.fail(f"released with {argv}"))
            never.setattr(release, "encoder_update", lambda *a, argv=argv, **k: pytest.fail(f"updated with {argv}"))
            with pytest.raises(SystemExit) as stop:
                release.main([str(package.checkpoint), *argv])
        assert stop.value.code == 2 and why in capsys.readouterr().err
    assert package.full.read_bytes() == before
    new_id = release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table, good)
    assert new_id == "mbt-8-12-r008" and package.full.read_bytes() != before


def test_an_encoder_update_of_the_package_needs_the_gates_verdict_on_the_updated_file(
    package, tmp_path, capsys, monkeypatch
) -> None:
    """``release --encoder-update`` replaced the package's encoder with any checkpoint whose decoder matched (an
    encoder of zeros too), with no gate: every new file would be written by an encoder nobody measured."""
    import shutil

    from pillow_jac.training.gate import ENCODER_BAR_PERCENT, measured_model

    model = tiny_model(1)  # the generation's own decoder, another encoder (the ladder it was trained for)
    ladder = tuple(round(v * 1.1, 6) for v in TINY.lambdas)
    moved = JointAutoregressiveHierarchicalPrior(dataclasses.replace(TINY, lambdas=ladder))
    moved.load_state_dict(model.state_dict())
    weights.save_float_state(package.checkpoint, moved.state_dict(), moved.config, {})
    gated = tmp_path / "gated"  # the updated full file as the gate measures it (encoder_tune's best.safetensors)
    shutil.copytree(package.weights_dir, gated)
    release.encoder_update(package.checkpoint, gated, {})
    measured = measured_model(*weights.load_weights(gated / generations.DEFAULT_WEIGHTS_NAME))
    stable = measured_model(*weights.load_weights(package.full))
    good = {**passing_verdict(measured, stable), "bar_percent": ENCODER_BAR_PERCENT}
    sets = good["sets"]
    same = {**sets["urban20"]["curves"], "candidate": sets["urban20"]["curves"]["stable"]}
    before = package.full.read_bytes()
    for reason, verdict in {
        "did not pass": {**good, "passes": False},
        "another model": {**good, "model": stable},  # the current encoder measured against itself
        "another generation": {**good, "stable_model": measured},
        "bar was 0.1": {**good, "bar_percent": 0.1},
        "urban20 set does not pass": {**good, "sets": {**sets, "urban20": {**sets["urban20"], "curves": same}}},
    }.items():
        with pytest.raises(weights.WeightsError, match=reason):
            release.encoder_update(package.checkpoint, package.weights_dir, {}, verdict)
        assert package.full.read_bytes() == before
    for argv, why in (  # the package's own folder: a verdict, or nothing is written
        (["--encoder-update", "--gate", str(tmp_path / "none.json")], "--bar 0.5"),
        (["--encoder-update", "--no-gate"], "only through the gate"),
    ):
        with monkeypatch.context() as never:
            never.setattr(release, "encoder_update", lambda *a, argv=argv, **k: pytest.fail(f"updated with {argv}"))
            with pytest.raises(SystemExit) as stop:
                release.main([str(package.checkpoint), *argv])
        assert stop.value.code == 2 and why in capsys.readouterr().err
    (tmp_path / "gate.json").write_text(json.dumps(good))
    argv = [str(package.checkpoint), "--encoder-update", "--weights-dir", str(package.weights_dir)]
    assert release.main([*argv, "--gate", str(tmp_path / "gate.json")]) == 0
    assert measured_model(*weights.load_weights(package.full)) == measured
    # a folder of one's own may be updated without a verdict, as a generation not for the package is released
    package.full.write_bytes(before)
    assert release.main([*argv, "--no-gate"]) == 0
    assert measured_model(*weights.load_weights(package.full)) == measured


def test_a_release_records_the_training_step_as_freeze_does(package) -> None:
    model = tiny_model(2)
    weights.save_float_state(package.checkpoint, model.state_dict(), model.config, {"step": "4321"})
    release.release(package.checkpoint, 8, package.weights_dir, package.vectors, {}, package.table)
    assert weights.load_weights(package.full)[1]["step"] == "4321"


def test_an_encoder_update_keeps_the_files_mode_and_needs_an_encoder(package) -> None:
    model = tiny_model(1)
    ladder = tuple(round(v * 1.1, 6) for v in TINY.lambdas)
    moved = JointAutoregressiveHierarchicalPrior(dataclasses.replace(TINY, lambdas=ladder))
    moved.load_state_dict(model.state_dict())
    weights.save_float_state(package.checkpoint, moved.state_dict(), moved.config, {})
    package.full.chmod(0o644)
    release.encoder_update(package.checkpoint, package.weights_dir, {})
    assert package.full.stat().st_mode & 0o777 == 0o644  # others still read it (safetensors alone writes 0600)
    # a checkpoint without an encoder (the generation's own decoder file) would install untrained values
    decoder_file = package.checkpoint.with_name("decoder.safetensors")
    weights.save_weights(decoder_file, *weights_hashes.decoder_only(*weights.load_weights(package.full)))
    written = package.full.read_bytes()
    with pytest.raises(weights.WeightsError, match="has no encoder"):
        release.encoder_update(decoder_file, package.weights_dir, {})
    assert package.full.read_bytes() == written
