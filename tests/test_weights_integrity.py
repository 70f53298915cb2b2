"""Weights files: tampering with a tensor or the manifest is caught, and loading never unpickles anything."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pillow_jac import codec, codec_steps, engine, weights, weights_hashes, weights_manifest
from pillow_jac.weights import WeightsError

from .helpers import natural_image, safetensors_header


@pytest.fixture(autouse=True)
def private_engine_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines built from temporary copies are dropped after each test (and never seen by others)."""
    monkeypatch.setattr(engine, "_CACHE", {})


@pytest.fixture
def weights_copy(tmp_path: Path) -> Path:
    path = tmp_path / "copy.safetensors"
    shutil.copyfile(engine.default_weights_path(), path)
    return path


@pytest.fixture(scope="module")
def valid_jac() -> bytes:
    """A file made with the intact shipped weights (module scope: built before the private cache)."""
    return codec.encode(natural_image(8, 8), 2)


def tamper(path: Path, name: str, at: float = 0.5) -> None:
    """Flip one bit inside tensor ``name``'s bytes (at the relative position ``at``)."""
    start, header = safetensors_header(path)
    begin, end = header[name]["data_offsets"]
    offset = start + begin + int((end - begin - 1) * at)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def first_tensor(path: Path, prefix: str) -> str:
    _, header = safetensors_header(path)
    return sorted(k for k in header if k.startswith(prefix))[0]


@pytest.mark.parametrize("prefix", ["int.entropy_parameters.", "int.h_s.", "table.y_freqs", "table.z_", "float.g_s."])
def test_tampered_tensor_fails_with_hash_error(weights_copy: Path, prefix: str) -> None:
    tamper(weights_copy, first_tensor(weights_copy, prefix))
    with pytest.raises(WeightsError, match=r"is damaged: decoder hash [0-9a-f]{16} does not match its manifest"):
        engine.get_engine(weights=weights_copy)


@pytest.mark.parametrize("prefix", ["float.g_a.", "float.h_a.", "float.log_gain", "float.z_density."])
def test_tampered_encoder_tensor_fails_with_hash_error(weights_copy: Path, prefix: str) -> None:
    """What the encoder reads beside the decoder: z's density is its search's estimate of z's rate."""
    tamper(weights_copy, first_tensor(weights_copy, prefix))
    with pytest.raises(WeightsError, match=r"is damaged: encoder hash [0-9a-f]{16} does not match its manifest"):
        engine.get_engine(weights=weights_copy)


def test_tampered_weights_via_environment(
    weights_copy: Path, monkeypatch: pytest.MonkeyPatch, valid_jac: bytes
) -> None:
    """``JAC_WEIGHTS`` pointing at a damaged file: encoding fails with the hash error; a file of its generation
    still decodes, with the package's copy, and a warning names the damaged one."""
    tamper(weights_copy, first_tensor(weights_copy, "int.context."))
    expected = codec.decode(valid_jac)
    monkeypatch.setenv("JAC_WEIGHTS", str(weights_copy))
    monkeypatch.setattr(codec_steps, "_DAMAGED", set())
    assert engine.default_weights_path() == weights_copy
    with pytest.warns(UserWarning, match=f"{weights_copy.name} is damaged.*decoding with another copy"):
        np.testing.assert_array_equal(codec.decode(valid_jac), expected)
    with pytest.raises(WeightsError, match="damaged"):
        codec.encode(natural_image(8, 8), 2)
    assert isinstance(WeightsError("x"), OSError)  # so Pillow's load() reports it as an OSError


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("weights_hash", "weights_hash [0-9a-f]+ is not the one its manifest derives"),
        ("decoder_hash", "damaged"),
        ("encoder_hash", "damaged"),
        ("legacy_weights_hash", "damaged"),  # sealed by the decoder hash
    ],
)
def test_tampered_manifest_hash(weights_copy: Path, key: str, why: str) -> None:
    """Changing one hash of the manifest (same length, so the header size stays; release 6's weights_hash and
    legacy_weights_hash have the same value, so only the key named is changed) is caught, by its own check."""
    start, header = safetensors_header(weights_copy)
    old = header["__metadata__"][key]
    raw = weights_copy.read_bytes()
    new = ("0" if old[0] != "0" else "1") + old[1:]
    field = f'"{key}":"{old}"'.encode()
    assert raw[:start].count(field) == 1
    weights_copy.write_bytes(raw[:start].replace(field, f'"{key}":"{new}"'.encode()) + raw[start:])
    with pytest.raises(WeightsError, match=why):
        engine.get_engine(weights=weights_copy)


def test_any_flipped_byte_of_the_decoding_manifest_is_caught(weights_copy: Path) -> None:
    """model_id, config and integer_networks are sealed by the decoder hash: one flipped byte fails the check."""
    tensors, metadata = weights.load_weights(weights_copy)
    weights_manifest.verify(tensors, metadata)
    rng = np.random.default_rng(0)
    for key in ("model_id", "config", "integer_networks"):
        value = metadata[key]
        for at in sorted(set(rng.integers(0, len(value), 12).tolist())):
            changed = dict(metadata, **{key: value[:at] + chr(ord(value[at]) ^ 1) + value[at + 1 :]})
            with pytest.raises(WeightsError, match="is damaged"):
                weights_manifest.verify(tensors, changed)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("decoder_hash"), "no 'decoder_hash'"),
        (lambda m: m.pop("integer_networks"), "no 'integer_networks'"),
        (lambda m: m.update(config="{not json"), "not valid JSON"),
        (lambda m: m.update(config="[" * 100_000 + "]" * 100_000), "not valid JSON: RecursionError"),
        (lambda m: m.update(config=m["config"][:-1] + ', "x": ' + "[" * 50 + "]" * 50 + "}"), "nested more than 8"),
        (lambda m: m.update(layout="mystery"), "unknown layout"),
        (lambda m: m.update(model_id=""), "model_id"),
        (lambda m: m.update(integer_networks=m["integer_networks"].replace('"stride": 2', '"stride": 0')), "invalid"),
        (lambda m: m.update(integer_networks=m["integer_networks"].replace('"relu": true', '"relu": 1')), "invalid"),
        (lambda m: m.update(integer_networks=m["integer_networks"].replace('"h_s"', '"h_x"')), "needs"),
    ],
)
def test_malformed_manifest_is_a_weights_error(weights_copy: Path, change, message: str) -> None:
    """Missing keys, bad JSON and impossible layer layouts are WeightsErrors, never KeyError or RuntimeError."""
    tensors, metadata = weights.load_weights(weights_copy)
    change(metadata)
    path = weights_copy.with_name("changed.safetensors")
    weights.save_weights(path, tensors, metadata)
    with pytest.raises(WeightsError, match=message):
        engine.get_engine(weights=path)


def test_truncated_or_missing_weights(weights_copy: Path, tmp_path: Path) -> None:
    raw = weights_copy.read_bytes()
    weights_copy.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WeightsError, match="cannot read weights file"):
        engine.get_engine(weights=weights_copy)
    with pytest.raises(WeightsError, match="weights file not found"):
        engine.get_engine(weights=tmp_path / "nowhere.safetensors")


def test_shipped_weights_are_safetensors_not_pickle() -> None:
    path = engine.default_weights_path()
    head = path.read_bytes()[:16]
    assert not head.startswith((b"\x80", b"PK\x03\x04")), "pickle or torch.save zip archive"
    start, header = safetensors_header(path)
    assert header["__metadata__"]["weights_hash"] and start < 1 << 20
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert tensors and all(set(v) == {"dtype", "shape", "data_offsets"} for v in tensors.values())


@pytest.mark.slow
def test_weights_load_without_pickle(weights_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building an engine (and decoding with it) works with every unpickling entry point disabled."""

    def forbidden(*args, **kwargs):
        raise AssertionError("weights loading tried to unpickle")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, forbidden)
    tensors, metadata = weights.load_weights(weights_copy)
    assert weights_manifest.verify(tensors, metadata).weights_hash == metadata["weights_hash"]
    built = engine.get_engine(weights=weights_copy)
    data = codec.encode(natural_image(16, 16), 3, weights=weights_copy)
    assert codec.decode(data, weights=weights_copy).shape == (16, 16, 3)
    assert built.weights_hash.hex() == metadata["weights_hash"]


def test_values_the_hash_cannot_tell_apart_are_refused(weights_copy: Path) -> None:
    """The hashes take floats as float32 (SPEC.md 9.3) and the decoder reads the thresholds as float64: two
    float64 thresholds a quarter of a float32 step apart sealed to one hash, and decoded differently."""
    tensors, metadata = weights.load_weights(weights_copy)
    name = weights.SCALE_THRESHOLDS  # int64 in the shipped file; a file may hold them as floats
    as_float64 = dict(tensors, **{name: tensors[name].double()})
    as_float32 = dict(tensors, **{name: tensors[name].float()})  # values float32 holds: storage does not matter
    assert (
        weights_hashes.seal(as_float64, dict(metadata))["decoder_hash"]
        == weights_hashes.seal(as_float32, metadata)["decoder_hash"]
    )
    between = tensors[name].double()
    between[1] += float(np.spacing(np.float32(between[1]))) / 4
    with pytest.raises(WeightsError, match=rf"{name} holds torch.float64 values that torch.float32 does not hold"):
        weights_hashes.seal(dict(tensors, **{name: between}), dict(metadata))
    with pytest.raises(WeightsError, match="does not hold exactly"):
        weights_manifest.verify(dict(tensors, **{name: between}), metadata, weights_copy)


def test_hashed_bytes_are_little_endian_on_any_host(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.tensor([1, 2], dtype=torch.int32)
    assert bytes(weights_hashes._little_endian_bytes(t)) == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    monkeypatch.setattr(weights_hashes.sys, "byteorder", "big")  # a big-endian host holds each value's bytes reversed
    assert bytes(weights_hashes._little_endian_bytes(t)) == b"\x00\x00\x00\x01\x00\x00\x00\x02"
    assert bytes(weights_hashes._little_endian_bytes(torch.tensor([7], dtype=torch.uint8))) == b"\x07"


def _resealed(tensors: dict, metadata: dict, path: Path) -> Path:
    """``tensors`` and ``metadata`` sealed with valid hashes as an unreleased generation: only consistency can fail."""
    metadata = {k: v for k, v in metadata.items() if k != "legacy_weights_hash"}
    metadata = weights_hashes.seal(tensors, {**metadata, "model_id": "mbt-128-192-r099", "release": "99"})
    weights.save_weights(path, tensors, metadata)
    return path


def _fewer_tables(tensors: dict, part: str, count: int) -> None:
    freqs, offsets, lows = weights.read_table(tensors, part)
    tensors.update(weights.table_tensors(part, freqs[: int(offsets[count])], offsets[: count + 1], lows[:count]))


def _zero_frequency(tensors: dict) -> None:
    """The first y table's first frequency moved onto its largest: the table still sums to 2**16."""
    freqs = tensors["table.y_freqs"].clone()
    at = int(torch.argmax(freqs[:8]))
    freqs[at] += freqs[0]
    freqs[0] = 0
    tensors["table.y_freqs"] = freqs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("h_s stride", "'h_s': its layers are not those of the config's architecture"),
        ("context padding", "'context': its layers are not those"),
        ("z tables", "256 z coding tables where the model codes with 128"),
        ("y tables", "400 y coding tables where the model codes with 1024"),
        ("no thresholds", "has no tensor 'table.y_thresholds'"),
        ("float tables", "must hold integers"),
        ("zero frequency", "has a frequency below 1"),
        ("frequencies past the last table", "offsets must start at 0 and end at the number of frequencies"),
        ("float thresholds", "table.y_thresholds must hold integers, not torch.float64"),
        ("float shift", "int.h_s.0.shift must hold integers, not torch.float32"),
        ("float weight", "int.entropy_parameters.1.weight must hold integers"),
        # the manifest's widths size the model built before the tensors are checked: bounded (N=1024 beside small
        # tensors allocated 2 GB; thousands meant the OOM killer)
        ("huge widths", "N must be a whole number from 1 to 1024, got 2048"),
    ],
)
def test_weights_that_do_not_fit_their_model_are_refused_when_loaded(weights_copy: Path, change, message) -> None:
    """Hashes can be valid while the contents do not fit the model: h_s with another stride read uninitialised
    rows, 2N z tables wrote files their own weights could not decode, N/2 or too few y tables failed with an
    IndexError mid-encode, a missing table with a KeyError. Each is a WeightsError when the file loads, so that
    another copy of the generation is tried."""
    tensors, metadata = weights.load_weights(weights_copy)
    templates = json.loads(metadata["integer_networks"])
    if change == "h_s stride":
        templates["h_s"][-1]["stride"] = 2
    elif change == "context padding":
        templates["context"][0]["padding"] = 0
    elif change == "z tables":
        freqs, offsets, lows = weights.read_table(tensors, "z")
        n = len(lows)
        both = torch.cat([freqs, freqs]), torch.cat([offsets, offsets[1:] + offsets[-1]]), torch.cat([lows, lows])
        assert len(both[2]) == 2 * n
        tensors.update(weights.table_tensors("z", *both))
    elif change == "y tables":
        _fewer_tables(tensors, "y", 400)
    elif change == "no thresholds":
        del tensors["table.y_thresholds"]
    elif change == "float tables":
        tensors["table.y_freqs"] = tensors["table.y_freqs"].double()
    elif change == "zero frequency":
        _zero_frequency(tensors)
    elif change == "frequencies past the last table":  # they would set the length bound's b (CODING.md 2.4)
        tensors["table.y_freqs"] = torch.cat([tensors["table.y_freqs"], torch.tensor([1 << 20], dtype=torch.int32)])
    elif change == "float thresholds":  # 100.5 would act as 101
        tensors["table.y_thresholds"] = tensors["table.y_thresholds"].double() + 0.5
    elif change == "float shift":  # a cast would truncate 7.5 to 7
        tensors["int.h_s.0.shift"] = tensors["int.h_s.0.shift"].float() + 0.5
    elif change == "float weight":  # integral values in a float dtype: still refused
        tensors["int.entropy_parameters.1.weight"] = tensors["int.entropy_parameters.1.weight"].float()
    elif change == "huge widths":
        metadata["config"] = json.dumps({**json.loads(metadata["config"]), "N": 2048, "M": 2052})
    metadata["integer_networks"] = json.dumps(templates)
    path = _resealed(tensors, metadata, weights_copy.with_name("inconsistent.safetensors"))
    with pytest.raises(WeightsError, match=message):
        engine.get_engine(weights=path)


def test_a_manifest_sealed_with_the_older_encoder_hash_still_loads(weights_copy: Path) -> None:
    """The encoder hash without z's density (SPEC.md 9.3, ``JAC encoder 1``) is still a valid manifest."""
    tensors, metadata = weights.load_weights(weights_copy)
    metadata["encoder_hash"] = weights_hashes.encoder_hash(tensors, metadata, density=False)
    assert metadata["encoder_hash"] != weights_hashes.encoder_hash(tensors, metadata)
    path = weights_copy.with_name("older.safetensors")
    weights.save_weights(path, tensors, metadata)
    assert engine.get_engine(weights=path).encoder_hash == metadata["encoder_hash"]
    metadata["encoder_hash"] = "0" * 16  # neither form
    weights.save_weights(path, tensors, metadata)
    with pytest.raises(WeightsError, match="encoder hash"):
        engine.get_engine(weights=path)


def test_float_parameters_beside_an_integer_network_are_refused(weights_copy: Path) -> None:
    """The decoder runs h_s's integer network; the encoder's search would run float h_s parameters stored
    beside it, which neither hash binds to the integers."""
    tensors, metadata = weights.load_weights(weights_copy)
    model = engine.load_model(weights_copy)
    tensors.update({f"float.h_s.{k}": v * 1.2 for k, v in model.h_s.state_dict().items()})
    path = _resealed(tensors, metadata, weights_copy.with_name("doubled.safetensors"))
    with pytest.raises(WeightsError, match=r"doubled.safetensors cannot be used.*h_s: float parameters beside"):
        engine.get_engine(weights=path)


def test_loaded_weights_are_not_views_of_the_file(tmp_path: Path) -> None:
    """The tensors were views of the file mapped into memory: a file rewritten in place after its hash was checked
    (as ``cp`` over it does) changed the weights already loaded, which had passed no check."""
    from pillow_jac import generations

    from .helpers import safetensors_header

    path = tmp_path / "w.safetensors"
    shutil.copyfile(generations.package_weights_dir() / generations.DEFAULT_WEIGHTS_NAME, path)
    tensors, _ = weights.load_weights(path)
    name = "float.g_s.0.weight"
    before = tensors[name].clone()
    start, header = safetensors_header(path)
    with open(path, "r+b") as f:  # the same inode, rewritten in place
        f.seek(start + header[name]["data_offsets"][0])
        f.write(bytes(64))
    assert torch.equal(tensors[name], before)
