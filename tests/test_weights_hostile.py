"""Hostile or malformed weights files are refused with a WeightsError, and an unhashed field chooses nothing
(SPEC.md sections 9.2, 9.3)."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch

from pillow_jac import engine, generations, weights, weights_hashes
from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from pillow_jac.training.freeze import freeze

from .helpers import safetensors_header


@pytest.fixture(autouse=True)
def private_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines and registry entries of temporary files stay private to each test."""
    monkeypatch.setattr(engine, "_CACHE", {})
    monkeypatch.setattr(generations, "_CACHE", {})
    monkeypatch.setattr(generations, "_SKIPPED", {})
    monkeypatch.setattr(generations, "_WARNED_SKIPPED", set())
    monkeypatch.delenv("JAC_MODELS", raising=False)
    monkeypatch.delenv("JAC_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def tiny() -> tuple[dict, dict]:
    torch.manual_seed(0)
    return freeze(JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12)), release=7)


def _with_junk(good: Path, path: Path, name: str, size: int) -> Path:
    """``good`` with one more tensor of ``size`` bytes, sparse: the file declares bytes the disk does not hold."""
    start, header = safetensors_header(good)
    body = good.read_bytes()[start:]
    header[name] = {"dtype": "U8", "shape": [size], "data_offsets": [len(body), len(body) + size]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + body)
        f.truncate(8 + len(raw) + len(body) + size)
    return path


def test_a_sparse_file_declaring_too_many_bytes_is_refused_before_reading(tiny, tmp_path: Path, monkeypatch) -> None:
    """A sparse file with a 1 GiB tensor no hash covers passed its checks and allocated 2 GiB when loaded."""
    good = tmp_path / "good.safetensors"
    weights.save_weights(good, *tiny)
    (tmp_path / "models").mkdir()
    bad = _with_junk(good, tmp_path / "models" / "bad.safetensors", "float.junk", 1 << 30)
    with pytest.raises(weights.WeightsError, match="bad.safetensors is refused: it is .* bytes, more than"):
        weights.load_weights(bad)
    monkeypatch.setenv("JAC_MODELS", str(bad.parent))
    with pytest.warns(UserWarning, match="bad.safetensors is skipped: it is .* bytes, more than"):
        assert generations.generation_of(bad) is None


def test_a_tensor_outside_the_known_prefixes_is_refused(tiny, tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    weights.save_weights(good, *tiny)
    bad = _with_junk(good, tmp_path / "junk.safetensors", "junk", 1000)
    with pytest.raises(weights.WeightsError, match="the tensor 'junk' is none of a weights file's"):
        engine.get_engine("cpu", bad)


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("table.y_lows", lambda t: torch.tensor(0)),
        ("table.y_freqs", lambda t: t.reshape(-1, 1)),
        ("table.z_lows", lambda t: t.reshape(1, -1)),
        ("table.y_thresholds", lambda t: torch.tensor(5)),
    ],
)
def test_a_coding_table_of_another_dimension_is_a_weights_error(tiny, tmp_path: Path, name, change) -> None:
    """A resealed unreleased generation with a 0-d or 2-d table gave a TypeError from deep in the engine."""
    tensors, metadata = tiny
    tensors = dict(tensors, **{name: change(tensors[name])})
    path = tmp_path / "bad.safetensors"
    weights.save_weights(path, tensors, weights_hashes.seal(tensors, dict(metadata)))
    with pytest.raises(weights.WeightsError, match=f"damaged: {name} must have one dimension"):
        engine.get_engine("cpu", path)


def test_a_decoder_file_with_another_tensor_is_refused(tiny, tmp_path: Path) -> None:
    """SPEC.md 9.2: a decoder file has only the decoder tensors."""
    tensors, metadata = weights_hashes.decoder_only(*tiny)
    tensors = dict(tensors, **{"float.z_density.extra": torch.zeros(3)})
    path = tmp_path / "decoder.safetensors"
    weights.save_weights(path, tensors, weights_hashes.seal(tensors, dict(metadata)))
    with pytest.raises(weights.WeightsError, match="a decoder file holds only decoder tensors"):
        engine.get_engine("cpu", path)


def test_a_boolean_tensor_is_refused(tiny, tmp_path: Path) -> None:
    """SPEC.md 9.3 lists the stored dtypes; no tensor of a weights file is boolean."""
    tensors, metadata = tiny
    tensors = dict(tensors, **{"float.g_a.extra": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(weights.WeightsError, match="stored as torch.bool"):
        weights_hashes.seal(tensors, dict(metadata))


def test_a_release_of_thousands_of_digits_is_skipped_and_refused(tiny, tmp_path: Path, monkeypatch) -> None:
    """int() of a 5000-digit release raised ValueError on loading, and the listing dropped the file silently."""
    tensors, metadata = tiny
    path = tmp_path / "r.safetensors"
    weights.save_weights(path, tensors, {**metadata, "release": "9" * 5000})
    with pytest.warns(UserWarning, match=r"r.safetensors is skipped: its manifest's release '99999.*' is not the"):
        assert generations.generation_of(path) is None
    with pytest.raises(weights.WeightsError, match="release .* is not the release its model_id 'mbt-8-12-r007'"):
        engine.get_engine("cpu", path)


def test_the_default_encoder_is_chosen_by_the_model_ids_release(tiny, tmp_path: Path, monkeypatch) -> None:
    """A copy of release 6 whose manifest says release 999 (a field no hash covers) became the default encoder."""
    weights.save_weights(tmp_path / "r007.safetensors", *tiny)
    tensors, metadata = weights.load_weights(generations.default_weights_path())
    weights.save_weights(tmp_path / "r006-copy.safetensors", tensors, {**metadata, "release": "999"})
    monkeypatch.setenv("JAC_MODELS", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = generations.encoder()
    assert (chosen.model_id, chosen.release, chosen.path.name) == ("mbt-8-12-r007", 7, "r007.safetensors")
    assert "is not the release its model_id" in generations._SKIPPED[str(tmp_path / "r006-copy.safetensors")]


def test_the_package_budget_counts_the_files_the_listing_reads(tmp_path: Path, monkeypatch) -> None:
    """A release's staged (hidden) files are not generations, and do not count against the budget."""
    (tmp_path / generations.KEPT_DIR).mkdir()
    (tmp_path / generations.DEFAULT_WEIGHTS_NAME).write_bytes(bytes(10))
    (tmp_path / generations.KEPT_DIR / "kept.safetensors").write_bytes(bytes(5))
    (tmp_path / generations.KEPT_DIR / ".kept.staged.safetensors").write_bytes(bytes(1000))
    monkeypatch.setattr(generations, "package_weights_dir", lambda: tmp_path)
    assert generations.package_weights_bytes() == 15
