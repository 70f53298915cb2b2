"""Decoder generations (SPEC.md section 9): files keep decoding whatever is released after them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pillow_jac
from pillow_jac import (
    codec,
    codec_steps,
    container,
    engine,
    generations,
    release_rules,
    weights,
    weights_hashes,
    weights_manifest,
)
from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from pillow_jac.training.freeze import freeze

from .helpers import assert_within_one_level_in_a_few_samples, natural_image, safetensors_header

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "format_spec" / "vectors"
SHIPPED_ID = "mbt-128-192-r006"


@pytest.fixture(autouse=True)
def private_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines and registry entries of temporary files stay private to each test."""
    monkeypatch.setattr(engine, "_CACHE", {})
    monkeypatch.setattr(generations, "_CACHE", {})
    monkeypatch.setattr(codec_steps, "_DAMAGED", set())
    monkeypatch.setattr(generations, "_SKIPPED", {})
    monkeypatch.delenv("JAC_MODELS", raising=False)
    monkeypatch.delenv("JAC_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def tiny_generation(tmp_path_factory) -> Path:
    """A second generation made here: a tiny model frozen as release 7, in a folder of its own."""
    torch.manual_seed(0)
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
    tensors, metadata = freeze(model, release=7)
    folder = tmp_path_factory.mktemp("models")
    weights.save_weights(folder / "tiny.safetensors", tensors, metadata)
    return folder


def shipped() -> tuple[dict, dict]:
    return weights.load_weights(generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME)


def r006_vectors() -> list[dict]:
    table = json.loads((VECTORS / SHIPPED_ID / "vectors.json").read_text())
    return list(table.values())


# -- the hash covers exactly what a decoder runs ---------------------------------------------------


def bump(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] += 1
    return t


def test_encoder_change_keeps_the_header_hash() -> None:
    tensors, metadata = shipped()
    for name in [k for k in tensors if k.startswith(weights.ENCODER_PREFIXES)][:3] + ["float.log_gain"]:
        changed = dict(tensors, **{name: bump(tensors[name])})
        sealed = weights_hashes.seal(changed, metadata)
        assert sealed["weights_hash"] == metadata["weights_hash"] == "19772a6335c73e41", name
        assert sealed["decoder_hash"] == metadata["decoder_hash"], name
        assert sealed["encoder_hash"] != metadata["encoder_hash"], name
    # the lambda ladder is the encoder's too
    config = json.loads(metadata["config"])
    config["lambdas"] = [v * 1.01 for v in config["lambdas"]]
    sealed = weights_hashes.seal(tensors, dict(metadata, config=json.dumps(config)))
    assert sealed["decoder_hash"] == metadata["decoder_hash"] and sealed["encoder_hash"] != metadata["encoder_hash"]


@pytest.mark.parametrize(
    "prefix", ["int.h_s.", "int.context.", "int.entropy_parameters.", "table.", "float.g_s.", "float.log_inverse"]
)
def test_every_decoder_tensor_changes_the_decoder_hash(prefix: str) -> None:
    tensors, metadata = shipped()
    names = sorted(k for k in tensors if k.startswith(prefix))
    assert names
    for name in {names[0], names[len(names) // 2], names[-1]}:  # the first, a middle and the last
        changed = dict(tensors, **{name: bump(tensors[name])})
        assert weights_hashes.decoder_hash(changed, metadata) != metadata["decoder_hash"], name


def test_decoding_fields_of_the_manifest_change_the_decoder_hash() -> None:
    tensors, metadata = shipped()
    templates = json.loads(metadata["integer_networks"])
    templates["h_s"][0]["relu"] = not templates["h_s"][0]["relu"]
    config = json.loads(metadata["config"])
    for changed in (
        dict(metadata, integer_networks=json.dumps(templates)),
        dict(metadata, config=json.dumps(dict(config, N=129))),
        dict(metadata, model_id="mbt-128-192-r999"),
        dict(metadata, legacy_weights_hash="0" * 16),
    ):
        assert weights_hashes.decoder_hash(tensors, changed) != metadata["decoder_hash"]


def test_the_z_density_is_in_the_encoder_hash_not_the_decoders() -> None:
    """No decoder reads z's float density; the encoder's search estimates z's rate with it."""
    tensors, metadata = shipped()
    name = next(k for k in tensors if k.startswith("float.z_density."))
    sealed = weights_hashes.seal(dict(tensors, **{name: bump(tensors[name])}), metadata)
    assert sealed["decoder_hash"] == metadata["decoder_hash"] and sealed["encoder_hash"] != metadata["encoder_hash"]


# -- a second generation -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:encoding for .* not one this package released")  # r007 is a test's
def test_a_new_generation_leaves_old_files_decodable(tiny_generation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = codec.encode(natural_image(24, 40), 3)
    old_pixels = codec.decode(old)
    monkeypatch.setenv("JAC_MODELS", str(tiny_generation))
    ids = [g.model_id for g in pillow_jac.models()]
    assert ids[0] == "mbt-8-12-r007" and SHIPPED_ID in ids
    new = codec.encode(natural_image(24, 40), 3)  # the newest generation by default
    assert container.parse(new).header.model_id == "mbt-8-12-r007"
    assert codec.decode(new).shape == (24, 40, 3)
    np.testing.assert_array_equal(codec.decode(old), old_pixels)
    from .test_vectors import make_vectors

    for entry in r006_vectors():  # every vector of the old generation: the same latents, beside the new one
        data = (VECTORS / SHIPPED_ID / entry["file"]).read_bytes()
        assert make_vectors.symbols_digest(data) == entry["symbols_sha256"], entry["file"]
    # and the old generation still encodes when asked for
    again = codec.encode(natural_image(24, 40), 3, model=SHIPPED_ID)
    assert again == old


def test_missing_generation_names_the_model_and_the_remedy(tiny_generation: Path) -> None:
    data = codec.encode(natural_image(16, 16), 2, weights=tiny_generation / "tiny.safetensors")
    with pytest.raises(codec.ModelNotInstalledError, match=r"needs decoder 'mbt-8-12-r007'.*JAC_MODELS"):
        codec.decode(data)
    with pytest.raises(codec.ModelNotInstalledError, match="cannot encode here"):
        codec.encode(natural_image(16, 16), 2, model="mbt-8-12-r007")


def test_a_kept_generation_decodes_from_its_decoder_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder-only layout decodes every release-6 vector to the same pixels, and refuses to encode."""
    tensors, metadata = shipped()
    small, meta = weights_hashes.decoder_only(tensors, metadata)
    assert not [k for k in small if k.startswith(weights.ENCODER_PREFIXES)]
    assert (meta["weights_hash"], meta["decoder_hash"]) == (metadata["weights_hash"], metadata["decoder_hash"])
    path = tmp_path / f"{SHIPPED_ID}.safetensors"
    weights.save_weights(path, small, meta)
    for entry in r006_vectors()[:4]:
        data = (VECTORS / SHIPPED_ID / entry["file"]).read_bytes()
        np.testing.assert_array_equal(codec.decode(data, weights=path), codec.decode(data))
    with pytest.raises(codec.ModelNotInstalledError, match="decoder only"):
        codec.encode(natural_image(8, 8), 2, weights=path)
    monkeypatch.setenv("JAC_MODELS", str(tmp_path))
    found = generations.find(SHIPPED_ID, bytes.fromhex(metadata["weights_hash"]))
    assert found.path.name == generations.DEFAULT_WEIGHTS_NAME  # the shipped full file comes first
    assert [g.can_encode for g in generations.installed() if g.model_id == SHIPPED_ID] == [True]


def test_an_encoder_update_keeps_every_file_valid(tmp_path: Path) -> None:
    """New g_a weights under the same decoder: same hash, old files decode, new files decode with the old file."""
    tensors, metadata = shipped()
    name = "float.g_a.0.weight"
    updated = dict(tensors, **{name: tensors[name] * 1.01})
    path = tmp_path / "updated.safetensors"
    weights.save_weights(path, updated, weights_hashes.seal(updated, metadata))
    image = natural_image(32, 48)
    new = codec.encode(image, 4, weights=path)
    assert new != codec.encode(image, 4)  # the encoder changed what it writes...
    header = container.parse(new).header
    assert (header.model_id, header.weights_hash.hex()) == (SHIPPED_ID, metadata["weights_hash"])
    np.testing.assert_array_equal(codec.decode(new, weights=path), codec.decode(new))  # ...not how it decodes
    old = (VECTORS / SHIPPED_ID / r006_vectors()[0]["file"]).read_bytes()
    np.testing.assert_array_equal(codec.decode(old, weights=path), codec.decode(old))


def test_listing_generations_does_not_import_torch() -> None:
    code = "import sys, pillow_jac; print(len(pillow_jac.models())); assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert int(out.stdout) >= 1


def test_release_command_keeps_the_old_generation_and_makes_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One command: the old decoder is kept, the new model becomes the default, and its vectors decode."""
    import shutil

    from pillow_jac.training import release

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    shutil.copyfile(generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME, weights_dir / "full")
    (weights_dir / "full").rename(weights_dir / generations.DEFAULT_WEIGHTS_NAME)
    torch.manual_seed(1)
    tiny = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
    weights.save_float_state(tmp_path / "ckpt.safetensors", tiny.state_dict(), tiny.config, {})
    table_path = tmp_path / "released.json"
    new_id = release.release(tmp_path / "ckpt.safetensors", 7, weights_dir, tmp_path / "vectors", {}, table_path)
    assert new_id == "mbt-8-12-r007"
    kept = weights_dir / generations.KEPT_DIR / f"{SHIPPED_ID}.safetensors"
    _, kept_meta = weights.load_weights(kept)
    assert kept_meta["layout"] == "decoder" and kept_meta["weights_hash"] == "19772a6335c73e41"
    _, new_meta = weights.load_weights(weights_dir / generations.DEFAULT_WEIGHTS_NAME)
    table = json.loads(table_path.read_text())
    assert table[new_id] == {"weights_hash": new_meta["weights_hash"], "decoder_hash": new_meta["decoder_hash"]}
    assert table[SHIPPED_ID] == generations.released()[SHIPPED_ID]
    listing = sorted(p.name for p in weights_dir.rglob("*"))
    with pytest.raises(weights.WeightsError, match="existing generation"):
        release.release(tmp_path / "ckpt.safetensors", 7, weights_dir, tmp_path / "vectors2", {}, table_path)
    with pytest.raises(weights.WeightsError, match="release 5 is not above release 7"):
        release.release(tmp_path / "ckpt.safetensors", 5, weights_dir, tmp_path / "vectors2", {}, table_path)
    (tmp_path / "vectors3" / "mbt-8-12-r009").mkdir(parents=True)
    (tmp_path / "vectors3" / "mbt-8-12-r009" / "vectors.json").write_text("{}")
    with pytest.raises(weights.WeightsError, match="vectors of mbt-8-12-r009, which no released"):
        release.release(tmp_path / "ckpt.safetensors", 9, weights_dir, tmp_path / "vectors3", {}, table_path)
    assert sorted(p.name for p in weights_dir.rglob("*")) == listing  # a refused release writes nothing
    assert not (tmp_path / "vectors2").exists()
    monkeypatch.setenv("JAC_WEIGHTS", str(weights_dir / generations.DEFAULT_WEIGHTS_NAME))
    table = json.loads((tmp_path / "vectors" / new_id / "vectors.json").read_text())
    assert len(table) == 9
    for entry in table.values():
        data = (tmp_path / "vectors" / new_id / entry["file"]).read_bytes()
        assert container.parse(data).header.model_id == new_id
        from .test_vectors import make_vectors

        assert make_vectors.digest(codec.decode(data)) == entry["pixels_sha256"]
    # the kept decoder file alone decodes the old generation's files
    old = (VECTORS / SHIPPED_ID / r006_vectors()[1]["file"]).read_bytes()
    np.testing.assert_array_equal(codec.decode(old, weights=kept), codec.decode(old))


def test_shipped_weights_fit_the_package_budget() -> None:
    assert 0 < generations.package_weights_bytes() <= generations.PACKAGE_BUDGET_BYTES
    kept = sorted((generations.package_weights_dir() / generations.KEPT_DIR).glob("*.safetensors"))
    kept_ids = set()
    for path in kept:  # every kept generation is a decoder file, and has its vectors
        _, meta = weights.load_weights(path)
        assert meta["layout"] == "decoder" and (VECTORS / meta["model_id"] / "vectors.json").exists()
        kept_ids.add(meta["model_id"])
    # every released generation but the newest (shipped in full) is kept as a decoder file: none yet beside r006
    released = json.loads((ROOT / "pillow_jac" / "released.json").read_text())
    assert kept_ids == set(released) - {generations.encoder(None).model_id}


def test_the_wheel_ships_every_weights_file_and_every_package() -> None:
    """Every released generation's file (the full one and the kept decoder files) and every subpackage are in the
    wheel's configuration: a narrowed glob would leave a generation out of the package, and its files
    undecodable after an upgrade."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = config["package-data"]["pillow_jac._weights"]
    assert config["package-dir"]["pillow_jac._weights"] == "weights"
    files = [p.relative_to(ROOT / "weights").as_posix() for p in (ROOT / "weights").rglob("*.safetensors")]
    assert files and all(any(fnmatch.fnmatchcase(f, g) and f.count("/") == g.count("/") for g in globs) for f in files)
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pillow_jac").rglob("__init__.py")}
    assert packages <= set(config["packages"]), packages - set(config["packages"])


def test_jac_weights_that_names_no_encoder_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped ``JAC_WEIGHTS`` is refused, not silently replaced by the newest model; a decoder-only file
    there is a generation that decodes (SPEC.md 9.2), and the newest full file encodes, with a warning."""
    monkeypatch.setenv("JAC_WEIGHTS", str(tmp_path / "typo.safetensors"))
    with pytest.raises(generations.ModelNotInstalledError, match="typo.safetensors: no such file"):
        generations.encoder()
    with pytest.raises(codec.ModelNotInstalledError, match="no such file"):
        codec.encode(natural_image(8, 8), 2)
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    monkeypatch.setenv("JAC_WEIGHTS", str(tmp_path / "junk.safetensors"))
    with pytest.raises(generations.ModelNotInstalledError, match="not a weights file"):
        generations.encoder()
    tensors, metadata = shipped()
    weights.save_weights(tmp_path / "half.safetensors", tensors, metadata)
    with open(tmp_path / "half.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "half.safetensors") // 2)
    monkeypatch.setenv("JAC_WEIGHTS", str(tmp_path / "half.safetensors"))
    for _ in range(2):  # the reason each time, not only in the first call's warning
        with pytest.raises(generations.ModelNotInstalledError, match="half.safetensors: it is .* shorter than"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                generations.encoder()
    small, meta = weights_hashes.decoder_only(tensors, metadata)
    weights.save_weights(tmp_path / "decoder.safetensors", small, meta)
    monkeypatch.setenv("JAC_WEIGHTS", str(tmp_path / "decoder.safetensors"))
    with pytest.warns(UserWarning, match="decoder-only file: encoding with the newest full weights file"):
        assert generations.encoder().can_encode
    full = generations.encoder(SHIPPED_ID).path
    monkeypatch.setenv("JAC_WEIGHTS", str(Path(os.path.relpath(full))))  # the shipped file by another path
    assert generations.encoder().model_id == SHIPPED_ID


# -- released generations are pinned ------------------------------------------------------------------


def test_the_released_table_pins_release_6() -> None:
    """The released decoder of release 6, as the model card records it; every shipped or kept generation and
    every vectors folder of a generation is in the table, and every generation in the table has its vectors.
    A changed release-6 decoder, re-sealed, keeps its header hash (a legacy hash does not cover the decoder):
    this table is what catches it."""
    table = generations.released()
    assert table[SHIPPED_ID] == {"weights_hash": "19772a6335c73e41", "decoder_hash": "1aa14a9029b4f76c"}
    for gen in generations.installed():
        _, meta = weights.load_weights(gen.path)
        assert table[gen.model_id] == {"weights_hash": meta["weights_hash"], "decoder_hash": meta["decoder_hash"]}
    folders = [f.name for f in VECTORS.iterdir() if (f / "vectors.json").is_file()]
    assert folders and set(folders) == set(table)  # and every released generation has its vectors


def lookalike(folder: Path) -> Path:
    """Release 6's full file with one decoder tensor changed and re-sealed: same model_id and header hash."""
    tensors, metadata = shipped()
    tensors = dict(tensors, **{"float.g_s.6.bias": tensors["float.g_s.6.bias"] + 0.05})
    folder.mkdir(exist_ok=True)
    path = folder / "finetuned.safetensors"
    weights.save_weights(path, tensors, weights_hashes.seal(tensors, metadata))
    return path


def test_a_lookalike_of_a_released_generation_is_skipped_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = lookalike(tmp_path / "models")
    entry = r006_vectors()[0]
    data = (VECTORS / SHIPPED_ID / entry["file"]).read_bytes()
    monkeypatch.setenv("JAC_MODELS", str(path.parent))
    monkeypatch.setattr(generations, "_WARNED_SKIPPED", set())
    with pytest.warns(UserWarning, match="skipped: it claims the released generation 'mbt-128-192-r006'"):
        found = generations.find(SHIPPED_ID, bytes.fromhex("19772a6335c73e41"))
    assert found.path.name == generations.DEFAULT_WEIGHTS_NAME  # the package's own file, not the lookalike
    expected = np.asarray(Image.open(VECTORS / SHIPPED_ID / entry["decoded"]))
    assert_within_one_level_in_a_few_samples(codec.decode(data), expected)  # the package's own generation's pixels
    with pytest.raises(weights.WeightsError, match="refused: it claims the released generation"):
        codec.decode(data, weights=path)


def test_a_listing_skips_a_model_id_no_file_could_name_and_a_release_that_is_no_number(tmp_path, monkeypatch) -> None:
    """The listing took a weights file's model_id and release from its header unchecked: ``jac models`` printed a
    model_id holding terminal escapes, and a release of ``"²"`` passed ``isdigit`` and failed ``int``."""
    torch.manual_seed(1)
    tensors, metadata = freeze(JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)), release=51)
    models = tmp_path / "models"
    models.mkdir()
    weights.save_weights(models / "escape.safetensors", tensors, {**metadata, "model_id": "mbt-8-12\x1b[2J"})
    superscript = weights_hashes.seal(tensors, {**metadata, "release": "\u00b2"})
    weights.save_weights(models / "super.safetensors", tensors, superscript)
    monkeypatch.setenv("JAC_MODELS", str(models))
    monkeypatch.setattr(generations, "_WARNED_SKIPPED", set())
    with pytest.warns(UserWarning, match="escape.safetensors is skipped: its model_id .* printable ASCII"):
        with pytest.warns(UserWarning, match="super.safetensors is skipped: release must be a number"):
            listed = {g.path.name: g for g in pillow_jac.models()}
    assert "escape.safetensors" not in listed and "super.safetensors" not in listed
    with pytest.raises(weights.WeightsError, match="release must be a number"):
        weights_manifest.read_manifest(weights.load_weights(models / "super.safetensors")[1])


def test_a_legacy_hash_is_refused_on_a_generation_that_was_not_released(tmp_path: Path, monkeypatch) -> None:
    """A legacy hash does not cover the decoder: two unreleased decoders sealed with one shared it, and a file of
    one decoded with the other. Only a generation of the released table may carry one (SPEC.md 9.3)."""
    torch.manual_seed(1)
    tensors, metadata = freeze(JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)), release=50)
    metadata = weights_hashes.seal(tensors, dict(metadata, legacy_weights_hash="00000000000000aa"))
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "legacy.safetensors"
    weights.save_weights(path, tensors, metadata)
    with pytest.raises(weights.WeightsError, match="refused: it carries a legacy_weights_hash.*'mbt-8-12-r050'"):
        codec.encode(natural_image(16, 16), 3, weights=path)
    monkeypatch.setenv("JAC_MODELS", str(path.parent))
    monkeypatch.setattr(generations, "_WARNED_SKIPPED", set())
    with pytest.warns(UserWarning, match="legacy.safetensors is skipped: it carries a legacy_weights_hash"):
        assert "mbt-8-12-r050" not in [g.model_id for g in pillow_jac.models()]


@pytest.mark.filterwarnings("ignore:encoding for .* not one this package released")  # r007 is a test's
def test_a_generation_whose_model_id_is_released_later_with_another_decoder_still_decodes_its_files(
    tiny_generation: Path, tmp_path: Path, monkeypatch
) -> None:
    """A file made with a frozen candidate whose model_id was released later with another decoder names its own
    hash: its weights were refused as a lookalike, found through JAC_MODELS or named by weights=, and the file
    decoded nowhere. It decodes with them (SPEC.md 9.2)."""
    monkeypatch.setenv("JAC_MODELS", str(tiny_generation))
    image = natural_image(16, 16)
    data = codec.encode(image, 3)
    assert container.parse(data).header.model_id == "mbt-8-12-r007"
    before = codec.decode(data)
    table = dict(generations.released(), **{"mbt-8-12-r007": {"weights_hash": "0" * 16, "decoder_hash": "0" * 16}})
    (tmp_path / "released.json").write_text(json.dumps(table))
    monkeypatch.setattr(release_rules, "RELEASED_PATH", tmp_path / "released.json")
    monkeypatch.setattr(generations, "_CACHE", {})  # as in a new process, after the upgrade
    monkeypatch.setattr(engine, "_CACHE", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not skipped
        np.testing.assert_array_equal(codec.decode(data), before)
        np.testing.assert_array_equal(codec.decode(data, weights=tiny_generation / "tiny.safetensors"), before)


def test_a_file_no_generation_decodes_names_the_copies_that_were_skipped(
    tiny_generation: Path, tmp_path: Path, monkeypatch
) -> None:
    """An empty weights file was silently no generation, and the error only said to install a release; it names
    the empty file, and ``travel put-back`` only for a kept decoder of the package's own folder, which
    ``travel set-aside`` empties (an empty file in JAC_MODELS is a failed download or copy, not travel's)."""
    monkeypatch.setenv("JAC_MODELS", str(tiny_generation))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = codec.encode(natural_image(16, 16), 3)
    (tmp_path / "tiny.safetensors").write_bytes(b"")
    monkeypatch.setenv("JAC_MODELS", str(tmp_path))
    monkeypatch.setattr(generations, "_WARNED_SKIPPED", set())
    with pytest.warns(UserWarning, match=r"tiny.safetensors is skipped: it is empty \(0 bytes\)$"):
        with pytest.raises(
            codec.ModelNotInstalledError,
            match=r"not installed; skipped: .*tiny.safetensors \(it is empty \(0 bytes\)\)",
        ):
            codec.decode(data)
    package = tmp_path / "package"
    (package / generations.KEPT_DIR).mkdir(parents=True)
    (package / generations.KEPT_DIR / "kept.safetensors").write_bytes(b"")
    monkeypatch.setattr(generations, "package_weights_dir", lambda: package)
    with pytest.warns(UserWarning, match=r"kept.safetensors is skipped: it is empty \(0 bytes\): .*travel put-back"):
        assert generations.generation_of(package / generations.KEPT_DIR / "kept.safetensors") is None


def test_a_truncated_copy_does_not_hide_a_good_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME
    (tmp_path / "copy.safetensors").write_bytes(full.read_bytes()[:15_000_000])
    monkeypatch.setenv("JAC_MODELS", str(tmp_path))
    monkeypatch.setattr(generations, "_WARNED_SKIPPED", set())
    with pytest.warns(UserWarning, match="shorter than the .* its header declares"):
        assert [g.path for g in generations.installed() if g.model_id == SHIPPED_ID] == [full]


def _damaged_copy(good: Path, folder: Path, how: str) -> Path:
    """A copy of ``good`` in ``folder`` whose manifest still reads as the generation: a byte flipped, or bytes added."""
    folder.mkdir()
    data = bytearray(good.read_bytes())
    if how == "flipped":
        data[-1] ^= 0x01  # a tensor's last byte: the manifest and the size are as before
    elif how == "dtype":  # one more tensor, of a dtype torch cannot copy (NotImplementedError where it was hashed)
        import struct

        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        end = len(data) - 8 - size
        header["int.zz"] = {"dtype": "F4", "shape": [2], "data_offsets": [end, end + 1]}
        raw = json.dumps(header).encode()
        data = bytearray(struct.pack("<Q", len(raw)) + raw + data[8 + size :] + b"\x01")
    else:
        data += bytes(8)  # longer than its header says
    (folder / good.name).write_bytes(bytes(data))
    return folder / good.name


@pytest.mark.parametrize("how", ["flipped", "longer", "dtype"])
def test_a_damaged_copy_gives_way_to_a_good_one(tiny_generation: Path, tmp_path: Path, monkeypatch, how) -> None:
    """The listing reads manifests only; a copy found damaged when loaded is passed over, once, with a warning."""
    good = tiny_generation / "tiny.safetensors"
    bad = _damaged_copy(good, tmp_path / "first", how)
    image = natural_image(16, 24)
    data = codec.encode(image, 3, weights=good)
    monkeypatch.setenv("JAC_MODELS", os.pathsep.join([str(bad.parent), str(tiny_generation)]))
    stamp = container.parse(data).header.weights_hash
    assert [g.path for g in generations.copies("mbt-8-12-r007", stamp)] == [bad, good]
    with pytest.warns(UserWarning, match=r"tiny.safetensors.*decoding with another copy of its generation"):
        pixels = codec.decode(data)
    np.testing.assert_array_equal(pixels, codec.decode(data, weights=good))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once in a process, not once per file
        codec.decode(data)
    with pytest.warns(UserWarning, match="not one this package released"):  # r007 here is a test's, unreleased
        assert codec.encode(image, 3) == data  # the newest generation encodes from its good copy too
    monkeypatch.setenv("JAC_MODELS", str(bad.parent))
    monkeypatch.setattr(codec_steps, "_DAMAGED", set())
    with pytest.raises(weights.WeightsError, match=str(bad.parent.name)):
        codec.decode(data)  # no good copy: the damaged one's error


@pytest.mark.filterwarnings("ignore:encoding for .* not one this package released")  # r007 is a test's
def test_a_copy_replaced_by_another_generation_after_the_listing_never_decodes(
    tiny_generation: Path, tmp_path: Path, monkeypatch
) -> None:
    """A release or an rsync replaces a listed file between the listing and the load: the generation found there
    is not the file's, so it does not decode it (it decoded with another g_s, up to 26 levels off, no error)."""
    models = tmp_path / "models"
    models.mkdir()
    tensors, metadata = weights.load_weights(tiny_generation / "tiny.safetensors")
    weights.save_weights(models / "g.safetensors", tensors, metadata)
    other = dict(tensors, **{"float.g_s.6.bias": tensors["float.g_s.6.bias"] + 0.1})
    weights.save_weights(
        tmp_path / "r008.safetensors",
        other,
        weights_hashes.seal(other, dict(metadata, release="8", model_id="mbt-8-12-r008")),
    )
    monkeypatch.setenv("JAC_MODELS", str(models))
    data = codec.encode(natural_image(16, 24), 3)
    real = generations.copies
    # another time than the replaced file's (the same size: one bias changed), as a release or an rsync gives it;
    # one file system tick apart the two could share a time, and the engine built before would be the one asked for
    stamp = (models / "g.safetensors").stat().st_mtime_ns + 10**10
    os.utime(tmp_path / "r008.safetensors", ns=(stamp, stamp))

    def listed_then_replaced(*args):
        listed = real(*args)
        os.replace(tmp_path / "r008.safetensors", models / "g.safetensors")
        return listed

    monkeypatch.setattr(generations, "copies", listed_then_replaced)
    with pytest.raises(codec.ModelNotInstalledError, match=r"g.safetensors was replaced while it was read.*r008"):
        codec.decode(data)


def test_an_encoder_update_refuses_another_decoder_or_architecture(tmp_path: Path) -> None:
    """release --encoder-update took only the encoder tensors, so it compared the old decoder with itself."""
    import shutil

    from pillow_jac.engine import load_model
    from pillow_jac.training import release

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    full = weights_dir / generations.DEFAULT_WEIGHTS_NAME
    shutil.copyfile(generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME, full)
    before = full.read_bytes()
    model = load_model(full)
    with torch.no_grad():
        model.g_s[0].weight.mul_(1.5)
    weights.save_float_state(tmp_path / "other_decoder.safetensors", model.state_dict(), model.config, {})
    with pytest.raises(weights.WeightsError, match="decoder is not the generation's"):
        release.encoder_update(tmp_path / "other_decoder.safetensors", weights_dir, {})
    tiny = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
    weights.save_float_state(tmp_path / "tiny.safetensors", tiny.state_dict(), tiny.config, {})
    with pytest.raises(weights.WeightsError, match="another architecture"):
        release.encoder_update(tmp_path / "tiny.safetensors", weights_dir, {})
    assert full.read_bytes() == before
    model = load_model(full)
    with torch.no_grad():
        model.g_a[0].weight.mul_(1.01)
    weights.save_float_state(tmp_path / "new_encoder.safetensors", model.state_dict(), model.config, {})
    assert release.encoder_update(tmp_path / "new_encoder.safetensors", weights_dir, {}) == SHIPPED_ID
    _, meta = weights.load_weights(full)
    assert (meta["weights_hash"], meta["decoder_hash"]) == ("19772a6335c73e41", "1aa14a9029b4f76c")
    assert meta["encoder_hash"] != "1c51823b1006abe9"


def test_jac_weights_alone_need_no_package_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The released table is part of the code: an installation whose weights come only from JAC_WEIGHTS works."""
    import shutil

    full = generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME
    shutil.copyfile(full, tmp_path / "copy.safetensors")
    (tmp_path / "no-package-weights").mkdir()
    monkeypatch.setattr(generations, "package_weights_dir", lambda: tmp_path / "no-package-weights")
    monkeypatch.setenv("JAC_WEIGHTS", str(tmp_path / "copy.safetensors"))
    assert [g.path for g in generations.installed()] == [tmp_path / "copy.safetensors"]
    entry = r006_vectors()[0]
    data = (VECTORS / SHIPPED_ID / entry["file"]).read_bytes()
    expected = np.asarray(Image.open(VECTORS / SHIPPED_ID / entry["decoded"]))
    assert_within_one_level_in_a_few_samples(codec.decode(data), expected)


def test_a_malformed_weights_header_is_not_a_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in JAC_MODELS whose header parses but is not a safetensors one is skipped; listing went on to
    fail with a TypeError on every decode."""
    import struct

    meta = {"model_id": "x", "weights_hash": "00" * 8, "decoder_hash": "00" * 8, "layout": "full"}
    for i, offsets in enumerate((5, ["a", "b"], None, [0, float("inf")])):
        tensor = {"dtype": "F32", "shape": [1], **({} if offsets is None else {"data_offsets": offsets})}
        header = json.dumps({"__metadata__": meta, "t": tensor}).encode()
        (tmp_path / f"{i}.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    monkeypatch.setenv("JAC_MODELS", str(tmp_path))
    assert [g.model_id for g in generations.installed()] == [SHIPPED_ID]


def test_a_header_too_deep_or_a_pipe_in_the_models_folder_is_not_a_generation(tmp_path: Path) -> None:
    """A header nested too deeply for the JSON parser raised RecursionError on every decode; a named pipe
    called ``*.safetensors`` blocked every listing forever."""
    import struct

    header = b'{"__metadata__":{"a":"b"},"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (tmp_path / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    os.mkfifo(tmp_path / "pipe.safetensors")
    code = "import pillow_jac; print([m.model_id for m in pillow_jac.models()])"
    env = {**os.environ, "JAC_MODELS": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{SHIPPED_ID!r}]"


def test_a_header_of_megabytes_is_not_read_by_every_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16 MiB safetensors header was parsed by every listing (every ``jac info``, a process's first decode):
    about 3 s and 400 MB each time, for what is not one of our weights files (their headers are ~10 kB)."""
    import struct

    full = generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME
    start, header = safetensors_header(full)
    header["__metadata__"] = dict(header["__metadata__"], padding="x" * (1 << 20))
    raw = json.dumps(header).encode()
    (tmp_path / "padded.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + full.read_bytes()[start:])
    monkeypatch.setenv("JAC_MODELS", str(tmp_path))
    assert [g.path for g in generations.installed() if g.model_id == SHIPPED_ID] == [full]


@pytest.mark.parametrize("layout", [None, "encoder", ""])
def test_a_manifest_without_a_known_layout_is_not_a_generation(
    tiny_generation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str | None
) -> None:
    """The listing asks of the manifest's layout what loading does (weights_manifest.read_manifest): a file that loading
    refuses is not listed as a generation that can encode (or decode), and a warning says why it is skipped."""
    tensors, metadata = weights.load_weights(tiny_generation / "tiny.safetensors")
    metadata = {k: v for k, v in metadata.items() if k != "layout"} | ({} if layout is None else {"layout": layout})
    weights.save_weights(tmp_path / "tiny.safetensors", tensors, metadata)
    with pytest.raises(weights.WeightsError, match="layout"):
        weights_manifest.verify(*weights.load_weights(tmp_path / "tiny.safetensors"), tmp_path / "tiny.safetensors")
    monkeypatch.setenv("JAC_MODELS", str(tmp_path))
    with pytest.warns(UserWarning, match=r"tiny.safetensors is skipped: its manifest's layout is"):
        assert [g.model_id for g in generations.installed()] == [SHIPPED_ID]


# -- a weights file's integer networks hold what CODING.md section 3 allows ----------------------------


def _resealed(tmp_path: Path, folder: Path, change) -> Path:
    tensors, metadata = weights.load_weights(folder / "tiny.safetensors")
    tensors = dict(tensors)
    change(tensors)
    path = tmp_path / "changed.safetensors"
    weights.save_weights(path, tensors, weights_hashes.seal(tensors, metadata))
    return path


def _unmask(tensors: dict) -> None:
    kernel = tensors["int.context.0.weight"].clone()
    kernel[:, :, 2, 2] = 1  # the centre tap: the decoder cannot know it, the encoder would use it
    tensors["int.context.0.weight"] = kernel


def _set(name: str, value: int, dtype: torch.dtype):
    def change(tensors: dict) -> None:
        t = tensors[name].to(dtype).clone()
        t.view(-1)[0] = value
        tensors[name] = t

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_unmask, "not a masked square window"),
        (_set("int.h_s.0.shift", 0, torch.int8), "shift lies outside 1..24"),
        (_set("int.h_s.0.shift", 25, torch.int8), "shift lies outside 1..24"),
        (_set("int.entropy_parameters.0.weight", 40000, torch.int32), "weight lies outside"),
        (_set("int.context.0.bias", 2**60, torch.int64), "could reach 2"),
        (lambda t: t.pop("int.h_s.1.bias"), "lacks the tensor"),
    ],
    ids=["unmasked-context", "shift-0", "shift-25", "weight-16-bits", "bias-too-large", "missing-tensor"],
)
def test_integer_networks_outside_the_spec_are_refused_when_loaded(tmp_path, tiny_generation, change, message):
    path = _resealed(tmp_path, tiny_generation, change)
    with pytest.raises(weights.WeightsError, match=message):
        engine.get_engine("cpu", path)


def test_the_shipped_and_variant_weights_pass_the_value_checks(tiny_generation):
    files = [generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME, tiny_generation / "tiny.safetensors"]
    files += sorted((VECTORS / "variants").glob("*/weights.safetensors"))
    for path in files:
        assert engine.get_engine("cpu", path).latents is not None, path


def test_a_hidden_weights_file_is_not_a_generation(tiny_generation: Path, tmp_path: Path, monkeypatch) -> None:
    """A release stages its new file under a hidden name beside the others, then renames it; killed between, it left
    the staged file, which every listing took for a generation (the newest, so the default encoder)."""
    import shutil

    shutil.copyfile(tiny_generation / "tiny.safetensors", tmp_path / ".mbt-8-12-r007.x5k_e35e.safetensors")
    monkeypatch.setenv("JAC_MODELS", str(tmp_path))
    assert [g.model_id for g in generations.installed()] == [SHIPPED_ID]
    shutil.copyfile(tiny_generation / "tiny.safetensors", tmp_path / "tiny.safetensors")
    assert sorted(g.model_id for g in generations.installed()) == sorted([SHIPPED_ID, "mbt-8-12-r007"])


def test_an_unreleased_newest_generation_encodes_with_a_warning(tiny_generation: Path, monkeypatch) -> None:
    """A full weights file of a higher release in JAC_MODELS became the default encoder without a word: its files
    decode only where that file is installed. It still encodes (a developer's candidate), once warned a process."""
    monkeypatch.setenv("JAC_MODELS", str(tiny_generation))
    monkeypatch.setattr(generations, "_WARNED_UNRELEASED", set())
    with pytest.warns(UserWarning, match=r"'mbt-8-12-r007' .* not one this package released"):
        assert generations.encoder().model_id == "mbt-8-12-r007"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generations.encoder()  # once
        assert generations.encoder(SHIPPED_ID).model_id == SHIPPED_ID  # named: no warning
    monkeypatch.delenv("JAC_MODELS")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generations.encoder().model_id == SHIPPED_ID  # the released default: no warning


def another_r006(folder: Path) -> Path:
    """A generation built elsewhere under release 6's model_id: its full file with one decoder tensor halved,
    sealed with a hash of its own (no legacy hash), so it is another generation, not a lookalike."""
    tensors, metadata = shipped()
    tensors = dict(tensors, **{"float.g_s.6.bias": tensors["float.g_s.6.bias"] * 0.5})
    metadata = {k: v for k, v in metadata.items() if k != "legacy_weights_hash"}
    folder.mkdir(exist_ok=True)
    path = folder / "r006-other.safetensors"
    weights.save_weights(path, tensors, weights_hashes.seal(tensors, metadata))
    return path


def test_another_generation_of_a_released_model_id_never_encodes_by_default(tmp_path: Path, monkeypatch) -> None:
    """A full file with release 6's model_id and a hash of its own, in JAC_MODELS (searched before the package),
    was the default encoder and the encoder of ``model="mbt-128-192-r006"``: every file written named its hash
    and decoded only where it was installed. The released one encodes (SPEC.md 9.2); the other encodes only when
    JAC_WEIGHTS names it, with a warning, and decodes its own files."""
    path = another_r006(tmp_path / "models")
    other = generations.generation_of(path)
    assert other is not None and other.model_id == SHIPPED_ID and other.weights_hash.hex() != "19772a6335c73e41"
    monkeypatch.setenv("JAC_MODELS", str(path.parent))
    monkeypatch.setattr(generations, "_WARNED_UNRELEASED", set())
    package_file = generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME
    image = natural_image(16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generations.encoder().path == package_file
        assert generations.encoder(SHIPPED_ID).path == package_file
        assert container.parse(codec.encode(image, 3)).header.weights_hash.hex() == "19772a6335c73e41"
    monkeypatch.setenv("JAC_WEIGHTS", str(path))
    with pytest.warns(UserWarning, match=r"r006-other.safetensors\), named by JAC_WEIGHTS, .* not the released one"):
        data = codec.encode(image, 3)
    assert container.parse(data).header.weights_hash == other.weights_hash
    assert generations.encoder(SHIPPED_ID).path == package_file  # a named model_id is the released one
    monkeypatch.delenv("JAC_WEIGHTS")
    assert codec.decode(data).shape == image.shape  # it decodes its own files
    monkeypatch.setattr(generations, "package_weights_dir", lambda: tmp_path / "no-package-weights")
    for model_id in (None, SHIPPED_ID):
        with pytest.raises(generations.ModelNotInstalledError, match=r"r006-other.safetensors holds .* JAC_WEIGHTS"):
            generations.encoder(model_id)


def test_a_batch_takes_no_file_of_another_generation_of_the_model_id_for_done(tmp_path: Path, monkeypatch) -> None:
    """Resuming compared the model_id alone: a file an earlier run wrote with another generation of release 6's
    model_id (JAC_WEIGHTS named it then) counted as done, though the released one encodes now and the file decodes
    only where that other one is installed."""
    from pillow_jac import resume_checks

    path = another_r006(tmp_path / "models")
    monkeypatch.setenv("JAC_MODELS", str(path.parent))
    src, dst = tmp_path / "a.png", tmp_path / "a.jac"
    Image.fromarray(natural_image(32, 32)).save(src)
    monkeypatch.setenv("JAC_WEIGHTS", str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dst.write_bytes(codec.encode(np.asarray(Image.open(src)), 3))
    assert resume_checks.is_done(src, dst, "jac", 3)  # as the other one encodes: done
    monkeypatch.delenv("JAC_WEIGHTS")
    assert not resume_checks.is_done(src, dst, "jac", 3)
    assert not resume_checks.is_done(src, dst, "jac", 3, model=SHIPPED_ID)


def test_jac_models_says_another_generation_of_a_released_model_id_encodes_only_as_jac_weights(tmp_path: Path) -> None:
    """Listed as "encode+decode", it encodes only when JAC_WEIGHTS names it (SPEC.md 9.2)."""
    other = generations.generation_of(another_r006(tmp_path / "models"))
    shipped_full = generations.generation_of(generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME)
    assert "encodes only as JAC_WEIGHTS" in other.describe() and other.role == "decode; encodes only as JAC_WEIGHTS"
    assert "encode+decode" in shipped_full.describe() and shipped_full.role == "encode+decode"
