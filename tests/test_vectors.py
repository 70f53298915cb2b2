"""The test vectors of every released generation (format_spec/vectors/<model_id>/) decode exactly.

Each generation's vectors are decoded on every run: exact latents, and pixels equal to the references
on the machine that made them (one level of tolerance elsewhere, where a platform may round g_s's float
output differently: SPEC.md section 1). ``python format_spec/conformance.py`` runs the same check
without pytest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pillow_jac import codec, container
from pillow_jac.constants import VECTOR_OFF_BY_ONE_SHARE

from .helpers import assert_within_one_level_in_a_few_samples

VECTORS = Path(__file__).resolve().parents[1] / "format_spec" / "vectors"
_spec = importlib.util.spec_from_file_location("make_vectors", VECTORS.parent / "make_vectors.py")
make_vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_vectors)
GENERATIONS = sorted(p.parent.name for p in VECTORS.glob("*/vectors.json"))
CASES = [
    (gen, name, entry)
    for gen in GENERATIONS
    for name, entry in json.loads((VECTORS / gen / "vectors.json").read_text()).items()
]


def test_every_generation_has_all_cases():
    assert "mbt-128-192-r006" in GENERATIONS
    for gen in GENERATIONS:
        table = json.loads((VECTORS / gen / "vectors.json").read_text())
        assert set(table) == set(make_vectors.VECTORS), gen
        assert {e["model_id"] for e in table.values()} == {gen}


@pytest.mark.parametrize(("gen", "name", "entry"), CASES, ids=[f"{g}/{n}" for g, n, _ in CASES])
def test_vector_decodes_exactly(gen, name, entry):
    data = (VECTORS / gen / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["file_sha256"]
    header = container.parse(data).header
    assert [header.width, header.height] == entry["size"] and header.layout == entry["mode"]
    assert header.model_id == gen and header.weights_hash.hex() == entry["weights_hash"]
    assert make_vectors.symbols_digest(data) == entry["symbols_sha256"]
    pixels = codec.decode(data)
    expected = np.asarray(Image.open(VECTORS / gen / entry["decoded"]))
    assert pixels.shape == expected.shape
    assert make_vectors.digest(expected) == entry["pixels_sha256"]
    # latents are exact everywhere; g_s is float, so allow one level where platforms round differently, in
    # a few samples only: a changed rounding rule moves a fifth to a half of them by one level
    assert_within_one_level_in_a_few_samples(pixels, expected)


def _same_search(entry: dict) -> bool:
    """Whether today's encoder search is the one that chose the vector's latents (always, at effort 0).

    A vector at effort 1-3 records its schedule (``search``); one without it was made by an earlier
    search than any that records one."""
    from pillow_jac.model.refine import schedule

    return entry.get("search") == schedule(entry["effort"])


def _encoder_hash(gen: str) -> str:
    from pillow_jac import generations, weights

    _, manifest = weights.load_weights(generations.encoder(gen).path)
    return manifest["encoder_hash"]


@pytest.mark.parametrize(("gen", "name", "entry"), CASES, ids=[f"{g}/{n}" for g, n, _ in CASES])
def test_encoder_reproduces_vector(gen, name, entry):
    """The encoder that made a vector writes it again byte for byte (its header hash included); after an
    encoder update (another encoder hash or search schedule, SPEC.md section 9.2) the new encoder's file
    is a file of the same generation, which decodes to the source's size."""
    from pillow_jac import generations

    if gen not in [g.model_id for g in generations.installed() if g.can_encode]:
        pytest.skip(f"{gen} is kept as a decoder only: its vectors are decode-only")
    with Image.open(VECTORS / "sources" / entry["source"]) as im:
        source = np.asarray(im)
    extra = make_vectors.METADATA if entry["metadata"] else {}
    data = codec.encode(source, entry["quality"], effort=entry["effort"], model=gen, **extra)
    if _encoder_hash(gen) == entry["encoder_hash"] and _same_search(entry):
        assert data == (VECTORS / gen / entry["file"]).read_bytes()
    else:
        header = container.parse(data).header
        assert (header.model_id, header.weights_hash.hex()) == (gen, entry["weights_hash"])
        assert codec.decode(data).shape == source.shape


def test_conformance_script_passes_and_reports_each_vector(capsys):
    spec = importlib.util.spec_from_file_location("conformance", VECTORS.parent / "conformance.py")
    conformance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conformance)
    assert conformance.main(["--generation", "mbt-128-192-r005"]) == 1  # no vectors: one line, no traceback
    assert "no vectors for generation 'mbt-128-192-r005'" in capsys.readouterr().err
    assert conformance.main(["--generation", "mbt-128-192-r006"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == len(make_vectors.VECTORS) and "FAIL" not in out
    assert f"{len(make_vectors.VECTORS)} of {len(make_vectors.VECTORS)} vectors" in out


VARIANTS = sorted(p.parent for p in (VECTORS / "variants").glob("*/vectors.json"))
VARIANT_CASES = [
    (folder, name, entry)
    for folder in VARIANTS
    for name, entry in json.loads((folder / "vectors.json").read_text()).items()
]


def test_variant_vectors_cover_the_mixture_and_every_context_window():
    configs = [json.loads(weights_manifest(folder)["config"]) for folder in VARIANTS]
    assert {(c["entropy"], c["mixtures"], c["context_size"]) for c in configs} >= {("gmm", 3, 7), ("zero-mean", 1, 3)}


def weights_manifest(folder: Path) -> dict:
    from pillow_jac.weights import load_weights

    return load_weights(folder / "weights.safetensors")[1]


@pytest.mark.parametrize(("folder", "name", "entry"), VARIANT_CASES, ids=[f"{f.name}/{n}" for f, n, _ in VARIANT_CASES])
def test_variant_vector_decodes_exactly_and_re_encodes(folder, name, entry, monkeypatch):
    """A model variant's vectors (CODING.md section 4): exact latents at 1 and 3 threads, pixels, the same bytes."""
    import torch

    from pillow_jac import image_transforms, latent_coding

    weights = folder / "weights.safetensors"
    data = (folder / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["file_sha256"]
    assert container.parse(data).header.model_id == entry["model_id"] == folder.name
    # small images decode on one thread (image_transforms.SMALL_IMAGE_PIXELS): here they run on those asked for
    monkeypatch.setattr(image_transforms, "SMALL_IMAGE_PIXELS", 0)
    seen, stripes = [], latent_coding.LatentCoder.hyper_stripes

    def counting(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return stripes(self, *args, **kwargs)

    monkeypatch.setattr(latent_coding.LatentCoder, "hyper_stripes", counting)
    saved = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            assert make_vectors.symbols_digest(data, weights=weights) == entry["symbols_sha256"]
    finally:
        torch.set_num_threads(saved)
    assert seen == [1, 3]  # the latents were decoded at each thread count
    pixels = codec.decode(data, weights=weights)
    assert_within_one_level_in_a_few_samples(pixels, np.asarray(Image.open(folder / entry["decoded"])))
    with Image.open(VECTORS / "sources" / entry["source"]) as im:
        source = np.asarray(im)
    extra = make_vectors.METADATA if entry["metadata"] else {}
    assert _same_search(entry)  # the variants' vectors are re-made when the search changes
    assert codec.encode(source, entry["quality"], effort=entry["effort"], weights=weights, **extra) == data


def test_a_released_generations_vectors_are_never_re_made():
    with pytest.raises(ValueError, match="not a variant"):
        make_vectors.refresh_search(VECTORS / "mbt-128-192-r006")


def test_vectors_at_effort_record_the_search_that_made_them():
    for folder in VARIANTS:
        table = json.loads((folder / "vectors.json").read_text())
        assert all(("search" in e) == bool(e["effort"]) for e in table.values())
        assert all(_same_search(e) for e in table.values())


def _load_format_script(name: str):
    spec = importlib.util.spec_from_file_location(name, VECTORS.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_invalid_vectors_are_rejected_and_made_again_byte_for_byte(tmp_path, monkeypatch):
    """Each invalid vector breaks one rule of SPEC 8.2 and is rejected with the error invalid.json names, by
    conformance.py's check as by the decoder itself; the script that made them makes the same bytes (its tests
    of the rules stay what they were)."""
    table = json.loads((VECTORS / "invalid" / "invalid.json").read_text())
    reasons = {  # what the reference reports: each vector is rejected by the rule it names
        "ystr-partial-word": "not a multiple of 4",
        "ystr-two-extra-words": "data left after the last symbol",
        "zstr-cut-short": "data left after the last symbol",
        "y-latent-out-of-range": "decoded latent out of range",
        "ystr-invalid-data": "invalid for the employed entropy model",
        "ystr-too-short": "symbols need at least",
        "ystr-runs-out": "the data ends with at least",
        "z-latent-out-of-range": "decoded hyper-latent out of range",
        "alph-plane-short": "expected 33x20 = 660",
        "alph-trailing-byte": "unexpected bytes after the alpha plane",
        "alph-preset-dictionary": "corrupt alpha plane",
        "ends-before-jend": "no JEND chunk",
        "chunk-longer-than-file": "chunk 'abcd' data needs 1000 bytes but only 16 remain",
        "chunk-type-not-a-letter": "invalid chunk type b'1abc'",
        "ystr-bad-crc": "CRC mismatch in chunk 'YSTR'",
        "first-chunk-not-jhdr": "the first chunk must be JHDR",
        "jhdr-major-version-2": "unsupported JAC format version 2.0",
        "jhdr-flags-set": "JHDR flags are 0x01",
        "jhdr-quality-above-2048": "got q16 2049",
        "jhdr-model-id-after-nul": "is not 1 to 16 printable ASCII characters padded with NULs",
        "jhdr-latent-shape": "y shape (6, 8) does not match (12, 8)",
        "unknown-critical-chunk": "unknown critical chunk 'QUUX'",
        "second-ystr": "duplicate chunk 'YSTR'",
        "ystr-length-not-jhdrs": "chunk 'YSTR' is 4068 bytes but must be 4064 bytes",
        "alph-in-rgb": "layout RGB has no alpha channel",
        "alph-empty": "chunk 'ALPH' is empty",
        "jend-not-empty": "chunk 'JEND' is 1 bytes but must be 0 bytes",
        "byte-after-jend": "unexpected data after the JEND chunk",
        "exif-bad-crc": "CRC mismatch in chunk 'exif'",
        "jhdr-bad-crc": "CRC mismatch in chunk 'JHDR'",
        "jend-bad-crc": "CRC mismatch in chunk 'JEND'",
        "chunk-type-byte-3-not-allowed": "invalid chunk type b'abc-'",
        "jhdr-55-bytes": "chunk 'JHDR' is 55 bytes but must be 54 bytes",
        "jhdr-layout-4": "unknown layout code 4",
        "jhdr-width-0": "width must be from 1 to 65535, got 0",
        "jhdr-height-65536": "height must be from 1 to 65535, got 65536",
        "jhdr-quality-below-256": "got q16 255",
        "jhdr-model-id-all-nul": "is not 1 to 16 printable ASCII characters padded with NULs",
        "jhdr-model-id-not-printable": "r00\\x7f' is not 1 to 16 printable ASCII characters",
        "second-jhdr": "duplicate chunk 'JHDR'",
        "second-zstr": "duplicate chunk 'ZSTR'",
        "second-exif": "duplicate chunk 'exif'",
        "zstr-missing": "missing 'ZSTR' chunk",
        "rgba-without-alph": "missing 'ALPH' chunk: layout RGBA",
        "alph-method-1": "unknown alpha method 1",
        "alph-plane-long": "decompresses to more than 33x20 = 660 bytes",
        "alph-bad-adler32": "incorrect data check",
        "alph-unfinished": "the zlib stream does not end",
        "zstr-partial-word": "stream length 41 is not a multiple of 4",
    }
    assert set(table) == set(reasons)
    errors, real_decode = {}, codec.decode

    def decode(data, device=None):  # each vector is decoded once, by the conformance check
        try:
            return real_decode(data, device=device)
        except Exception as e:
            errors[hashlib.sha256(data).hexdigest()] = e
            raise

    monkeypatch.setattr(codec, "decode", decode)
    conformance = _load_format_script("conformance")
    results = conformance.check_invalid()
    assert sorted(name for name, _, _ in results) == sorted(table)
    assert all(passed for _, _, passed in results), results
    for name, entry in table.items():
        error = errors[entry["file_sha256"]]
        assert type(error).__name__ == entry["error"], name
        assert reasons[name] in str(error), (name, str(error))
    again = _load_format_script("make_invalid").make(tmp_path)
    assert {n: e["file_sha256"] for n, e in again.items()} == {n: e["file_sha256"] for n, e in table.items()}


def test_an_invalid_vector_whose_generation_is_missing_is_not_counted_as_rejected(monkeypatch):
    """A decoder that cannot load the generation never reached the broken rule: that is a failure, not a pass."""
    conformance = _load_format_script("conformance")

    def missing(data, device=None):
        raise codec.ModelNotInstalledError("generation mbt-128-192-r006 is not installed")

    monkeypatch.setattr(codec, "decode", missing)
    results = conformance.check_invalid()
    assert results and not any(passed for _, _, passed in results)
    assert all("not tested" in outcome for _, outcome, _ in results)


def test_edge_vectors_decode_and_the_container_cases_as_the_file_they_come_from(tmp_path):
    """Escapes in both streams, a preview with unknown chunks, another chunk order, a later minor version, one
    word appended to a stream, empty and unprefixed metadata, previews to ignore: each decodes with exact
    latents, the others to the pixels (and, but for the metadata vector, the metadata) of their source; a preview
    a reader must ignore is not served."""
    conformance = _load_format_script("conformance")
    results = conformance.check_edge()
    assert len(results) == 9 and all(passed for _, _, passed in results), results
    table = json.loads((VECTORS / "edge" / "edge.json").read_text())
    bad_previews = ("preview-short-and-spaced-type", "preview-unknown-format", "preview-png-as-jpeg")
    same = ("preview-and-unknown", "chunks-reordered", "minor-version", "ystr-one-extra-word", *bad_previews)
    for name in (*same, "metadata-empty-and-unprefixed"):
        edge = VECTORS / "edge" / table[name]["file"]
        source = VECTORS / table[name]["from"]
        assert np.array_equal(codec.decode(edge), codec.decode(source)), name
        with Image.open(edge) as a, Image.open(source) as b:
            if name in same:
                assert a.info == b.info, name
            else:  # empty metadata is no metadata to Pillow; the EXIF is carried as stored, without its prefix
                assert "icc_profile" not in a.info and "xmp" not in a.info
                assert b"Exif\0\0" + a.info["exif"] == b.info["exif"]
    for name in ("preview-and-unknown", *bad_previews):  # a sound preview serves draft(); each bad one does not
        with Image.open(VECTORS / "edge" / table[name]["file"]) as im:
            assert (im.draft("RGB", (20, 20)) is None) == (name in bad_previews), name
    z_hat, y_hat = codec.decode_symbols(VECTORS / "edge" / table["escapes"]["file"])
    assert np.abs(z_hat).max() == 4095 and np.abs(y_hat).max() == 4095
    again = _load_format_script("make_edge").make(tmp_path)  # the preview's WebP bytes depend on libwebp
    remade = ("escapes", "chunks-reordered", "minor-version", "ystr-one-extra-word", "metadata-empty-and-unprefixed")
    for name in remade:
        assert again[name]["file_sha256"] == table[name]["file_sha256"], name


def test_growing_a_vector_set_keeps_the_entries_it_holds_and_adds_only_new_ones(tmp_path):
    """A machine whose decode differs by one level in a sample (SPEC.md 9.4) makes the same files with other
    recorded pixels: the recorded entries stay as they are, and a new vector is added."""
    make_vectors = _load_format_script("make_vectors")
    kept = {"file": "a.jac", "file_sha256": "aa", "pixels_sha256": "recorded"}
    (tmp_path / "a.jac").write_bytes(b"a")
    (tmp_path / "set.json").write_text(json.dumps({"a": kept}))

    def make_into(folder):
        (folder / "a.jac").write_bytes(b"a")
        (folder / "b.jac").write_bytes(b"b")
        return {
            "a": {**kept, "pixels_sha256": "one level off here"},
            "b": {"file": "b.jac", "file_sha256": "bb", "pixels_sha256": "new"},
        }

    assert make_vectors.add_missing(tmp_path, "set.json", make_into, "test") == 0
    table = json.loads((tmp_path / "set.json").read_text())
    assert table == {"a": kept, "b": {"file": "b.jac", "file_sha256": "bb", "pixels_sha256": "new"}}
    assert (tmp_path / "b.jac").read_bytes() == b"b"


def test_the_edge_preview_is_made_from_the_recorded_pixels_not_this_machines_decode(monkeypatch):
    make_edge = _load_format_script("make_edge")
    source = (VECTORS / "mbt-128-192-r006" / "rgb-130x70-q7.jac").read_bytes()
    before = make_edge._preview_and_unknown(source)
    real = codec.decode

    def one_level_off(data, **kw):
        pixels = real(data, **kw).copy()
        pixels[0, 0, 0] ^= 1
        return pixels

    monkeypatch.setattr(codec, "decode", one_level_off)
    assert make_edge._preview_and_unknown(source) == before


def test_conformance_refuses_a_one_level_change_of_many_samples(monkeypatch):
    """A changed rounding rule moves a fifth to a half of a vector's samples by one level: every sample within
    one level, yet not the rare pixels of SPEC.md section 1, so conformance.py (and the release tool) fail it."""
    conformance = _load_format_script("conformance")
    real = codec.decode
    folder = VECTORS / "mbt-128-192-r006"
    assert all(passed for _, _, passed in conformance.check_folder(folder))
    monkeypatch.setattr(codec, "decode", lambda data, **kw: np.maximum(real(data, **kw), 1) - 1)  # floor, not round
    for share in (None, VECTOR_OFF_BY_ONE_SHARE):
        checked = {name: passed for name, _, passed in conformance.check_folder(folder, share=share)}
        assert not checked["rgb-130x70-q7"] and not checked["rgb-24x40-q1"]


def test_conformance_checks_that_metadata_is_carried_unchanged(tmp_path):
    """SPEC 5.2: metadata is carried unchanged, yet conformance.py compared only latents and pixels; an entry's
    ``metadata_sha256`` now holds a reader to each chunk's bytes."""
    folder = tmp_path / "edge"
    shutil.copytree(VECTORS / "edge", folder)
    table = json.loads((folder / "edge.json").read_text())
    table["metadata-empty-and-unprefixed"]["metadata_sha256"]["exif"] = hashlib.sha256(b"other").hexdigest()
    (folder / "edge.json").write_text(json.dumps(table))
    checked = {name: (outcome, passed) for name, outcome, passed in _load_format_script("conformance").check_folder(
        folder, None, table="edge.json")}  # fmt: skip
    assert checked["metadata-empty-and-unprefixed"] == ("metadata not carried unchanged: exif (SPEC.md 5.2)", False)
    assert all(passed for name, (_, passed) in checked.items() if name != "metadata-empty-and-unprefixed")


def test_conformance_holds_alpha_to_the_reference_exactly(monkeypatch):
    """Alpha is lossless (SPEC.md 5.1), yet conformance.py let up to 1% of all samples, alpha among them, be one
    level off: a decoder that moved 13 alpha samples of ``la-20x33-q2`` by one level passed."""
    conformance = _load_format_script("conformance")
    real = codec.decode
    folder = VECTORS / "mbt-128-192-r006"

    def alpha_off(data, **kw):
        pixels = real(data, **kw).copy()
        if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
            pixels[0, :2, -1] ^= 1  # two alpha samples: within the colour samples' allowance
        return pixels

    monkeypatch.setattr(codec, "decode", alpha_off)
    checked = {name: (outcome, passed) for name, outcome, passed in conformance.check_folder(folder)}
    assert checked["la-20x33-q2"] == ("2 alpha samples differ (alpha is returned exactly)", False)
    assert checked["rgba-16x16-q8"][1] is False and checked["rgb-130x70-q7"][1] is True


def test_conformance_checks_the_reference_pixels_against_their_digest(tmp_path):
    """A damaged ``.decoded.png`` is reported, not used as the reference a decoder is held to."""
    folder = tmp_path / "vectors"
    shutil.copytree(VECTORS / "mbt-128-192-r006", folder)
    entry = json.loads((folder / "vectors.json").read_text())["rgb-24x40-q1"]
    pixels = np.asarray(Image.open(folder / entry["decoded"])).copy()
    pixels[0, 0, 0] ^= 1  # one level: a decoder within one level of it would still pass
    Image.fromarray(pixels).save(folder / entry["decoded"])
    checked = _load_format_script("conformance").check_folder(folder)
    outcomes = {name: (outcome, passed) for name, outcome, passed in checked}
    assert outcomes["rgb-24x40-q1"] == (f"the reference pixels {entry['decoded']} are damaged", False)
    assert all(passed for name, (_, passed) in outcomes.items() if name != "rgb-24x40-q1")
