"""Every variant of the study is a real codec: tiny models trained a few steps, frozen, and files round-tripped.

The coded latents must come back exactly (CODING.md sections 1-4): through files, at several thread
counts, with values far outside every table (escapes), for every entropy model and context window.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pillow_jac import codec, container
from pillow_jac.engine import get_engine, load_model
from pillow_jac.model.mbt2018 import ModelConfig
from pillow_jac.study.train import train_run
from pillow_jac.study.variants import BUDGET, VARIANTS
from pillow_jac.training.freeze import freeze
from pillow_jac.weights import WeightsError, load_weights, save_weights
from pillow_jac.weights_hashes import seal

TINY = {"N": 8, "M": 12}
#: the model ids of the tiny release-1 variants (freeze.model_id_for's flags); joint-wide is joint at this size
MODEL_IDS = {
    "joint": "mbt-8-12-r001",
    "hyper-scale": "mbtnz-8-12-r001",
    "hyper-mean-scale": "mbtn-8-12-r001",
    "context-only": "mbth-8-12-r001",
    "joint-gmm3": "mbtg3-8-12-r001",
    "joint-ctx3": "mbtc3-8-12-r001",
    "joint-ctx7": "mbtc7-8-12-r001",
    "joint-wide": "mbt-8-12-r001",
}


@pytest.fixture(scope="module")
def generations(tmp_path_factory) -> dict:
    """Each variant at N=8, M=12, trained 3 steps on noise crops, frozen as a release-1 generation."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2)]
    budget = dataclasses.replace(BUDGET, steps=3, warmup=2, batch=2, crop=64)
    out = {}
    for name, variant in VARIANTS.items():
        tiny = dataclasses.replace(variant, config={**variant.config, **TINY})
        trained, _ = train_run(tiny, 0, budget, images, root / name, log=lambda message: None)
        model = load_model(trained)
        with torch.no_grad():  # spread g_ep's outputs so that scales, means and weights all vary
            torch.manual_seed(1)
            model.entropy_parameters[-1].weight.normal_(0.0, 0.3)
            model.entropy_parameters[-1].bias.normal_(0.0, 1.0)
        path = root / f"{name}.safetensors"
        save_weights(path, *freeze(model, release=1))
        out[name] = path
    return out


def _image(height: int = 75, width: int = 110) -> np.ndarray:
    rng = np.random.default_rng(3)
    x = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    return np.clip(x + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_files_round_trip_exactly(generations, name):
    path = generations[name]
    config = get_engine("cpu", path).config
    expected = ModelConfig(**{**VARIANTS[name].config, **TINY}, lambdas=BUDGET.lambdas)
    assert config == expected
    assert get_engine("cpu", path).model_id == MODEL_IDS[name]
    image = _image()
    for quality in (1, 8):
        data = codec.encode(image, quality=quality, weights=path)
        assert container.parse(data).header.model_id == MODEL_IDS[name]
        z_hat, y_hat = codec.encode_symbols(image, quality=quality, weights=path)
        z_back, y_back = codec.decode_symbols(data, weights=path)
        np.testing.assert_array_equal(y_back, y_hat)
        if config.hyperprior:
            np.testing.assert_array_equal(z_back, z_hat)
        else:
            assert z_back is None and z_hat is None
        pixels = codec.decode(data, weights=path)
        assert pixels.shape == image.shape and pixels.dtype == np.uint8
        if not config.hyperprior:  # ZSTR is not read: any bytes, a multiple of 4 or not (CODING.md 4.1)
            parsed = container.parse(data)
            parsed.z_stream = b"abc"
            parsed.header = dataclasses.replace(parsed.header, z_stream_length=3)
            odd = container.serialize(parsed)
            np.testing.assert_array_equal(codec.decode(odd, weights=path), pixels)
            np.testing.assert_array_equal(codec.decode_symbols(odd, weights=path)[1], y_hat)


def test_variants_have_distinct_model_ids(generations):
    """Files name their decoder by model id: two different variants never share one."""
    ids = {name: get_engine("cpu", path).model_id for name, path in generations.items()}
    assert VARIANTS["joint-wide"].config.keys() == {"N", "M"}  # the same design as joint, only wider
    assert ids["joint-wide"] == ids["joint"]  # the same config at the tiny size
    del ids["joint-wide"]
    assert len(set(ids.values())) == len(ids), ids


@pytest.mark.parametrize("name", ["joint-gmm3", "joint-ctx3", "joint-ctx7", "hyper-scale"])
def test_variant_latents_exact_with_escapes_at_any_thread_count(generations, name):
    coder = get_engine("cpu", generations[name]).latents
    rng = np.random.default_rng(7)
    height, width = 9, 14
    y = rng.integers(-4, 5, (12, height, width))
    y[:, ::3, ::4] *= 40  # far outside the tables and the mixture window: escapes
    z = rng.integers(-3, 4, (8, 3, 4)) if coder.h_s is not None else None
    z_stream, y_stream = coder.encode(z, y)
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            z_back, y_back = coder.decode(z_stream, y_stream, (3, 4), (height, width))
            np.testing.assert_array_equal(y_back, y)
            if z is not None:
                np.testing.assert_array_equal(z_back, z)
    finally:
        torch.set_num_threads(saved)


def test_context_window_sets_the_wavefront(generations):
    """A k x k window reaches k // 2 columns right on the rows above: the wavefront slope is k // 2 + 1."""
    for name, slope in (("joint-ctx3", 2), ("joint", 3), ("joint-ctx7", 4)):
        coder = get_engine("cpu", generations[name]).latents
        assert coder.slope == slope
        assert coder.context.layers[0].weight.shape[-1] == 2 * slope - 1


def test_cut_mixture_stream_is_refused(generations):
    """A cut mixture stream is refused, never decoded into other latents."""
    path = generations["joint-gmm3"]
    data = codec.encode(_image(), quality=8, weights=path)
    parsed = container.parse(data)
    cut = dataclasses.replace(parsed, y_stream=parsed.y_stream[: len(parsed.y_stream) // 2 // 4 * 4])
    with pytest.raises(ValueError):
        codec.decode_symbols(cut, weights=path)


@pytest.mark.parametrize(
    ("change", "message"),
    [("entry above 2**16", "malformed mixture exponential table"), ("float", "must hold integers")],
)
def test_a_mixture_exponential_table_outside_codings_rules_is_refused(generations, tmp_path, change, message):
    """CODING.md 4.2: 4096 integers, the largest X[0] = 2**16; a larger entry overflows e_k * 2**16's int64 and a
    float one would be cast. The whole generation is refused when it loads."""
    tensors, metadata = load_weights(generations["joint-gmm3"])
    table = tensors["table.mixture_exp"].clone()
    if change == "float":
        table = table.double()
    else:
        table[5] = 1 << 48
    weights = tmp_path / "changed.safetensors"
    tensors = {**tensors, "table.mixture_exp": table}
    save_weights(weights, tensors, seal(tensors, dict(metadata)))  # valid hashes: only the table's rules can fail
    with pytest.raises(WeightsError, match=message):
        get_engine("cpu", weights)


def test_seven_by_seven_context_at_full_width_freezes():
    """The exactness bound counts a masked kernel's causal taps only: 24 * 192 inputs, not 49 * 192."""
    from pillow_jac.model.integer import integerize
    from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior

    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=16, M=192, context_size=7))
    assert integerize(model.context).layers[0].weight.shape[-1] == 7


def test_default_fields_stay_out_of_the_manifest():
    """A default model's config reads as it did before the variants existed; a variant's names them."""
    assert set(ModelConfig().to_dict()) == {"N", "M", "context", "hyperprior", "entropy", "qualities", "lambdas"}
    variant = ModelConfig(entropy="gmm", mixtures=3, context_size=7).to_dict()
    assert variant["mixtures"] == 3 and variant["context_size"] == 7
    assert ModelConfig(**variant) == ModelConfig(entropy="gmm", mixtures=3, context_size=7)


def test_a_context_free_coder_decodes_narrow_latents(generations):
    coder = get_engine("cpu", generations["hyper-mean-scale"]).latents
    y = np.random.default_rng(2).integers(-3, 4, (12, 3, 1))
    z = np.zeros((8, 1, 1), np.int64)
    z_stream, y_stream = coder.encode(z, y)
    np.testing.assert_array_equal(coder.decode(z_stream, y_stream, (1, 1), (3, 1))[1], y)


def test_a_run_records_the_precision_it_trained_in(tmp_path) -> None:
    """Measured runs named the measuring machine's precision, not the one their steps ran in."""
    from pillow_jac.study import train

    fresh, old = tmp_path / "fresh", tmp_path / "old"
    fresh.mkdir()
    old.mkdir()
    assert train.run_precision(fresh) == "bf16"  # runs before the record: every CPU then ran bf16 autocast
    train._record_precision(fresh, "float32")
    assert train.run_precision(fresh) == "float32"
    train._record_precision(fresh, "float32")
    assert train.run_precision(fresh) == "float32"
    train._record_precision(fresh, "bf16")
    assert train.run_precision(fresh) == "mixed"
    (old / "checkpoint.pt").write_bytes(b"")  # trained before precisions were recorded, resumed in float32
    train._record_precision(old, "float32")
    assert train.run_precision(old) == "mixed"


def test_training_steps_are_timed_side_by_side_for_every_variant() -> None:
    """The report's training cost: seconds per step of each variant, measured in turn on one machine."""
    from pillow_jac.study.train import step_seconds

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2)]
    budget = dataclasses.replace(BUDGET, batch=1, crop=64)
    chosen = [dataclasses.replace(VARIANTS[n], config={**VARIANTS[n].config, **TINY}) for n in ("joint", "joint-wide")]
    seconds = step_seconds(chosen, budget, images, steps=1, rounds=2)
    assert set(seconds) == {"joint", "joint-wide"} and all(0 < s < 60 for s in seconds.values())


def test_a_run_resumes_without_its_seconds_file(tmp_path):
    """The checkpoint is saved before the run's seconds: a run stopped between the two resumes (counting from 0 s)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2)]
    tiny = dataclasses.replace(VARIANTS["joint"], config={**VARIANTS["joint"].config, **TINY})
    budget = dataclasses.replace(BUDGET, steps=1, warmup=2, batch=1, crop=64)
    train_run(tiny, 0, budget, images, tmp_path / "run", log=lambda message: None)
    (tmp_path / "run" / "seconds.txt").unlink()
    said = []
    train_run(tiny, 0, dataclasses.replace(budget, steps=2), images, tmp_path / "run", log=said.append)
    assert "run: resumed at step 1" in said and (tmp_path / "run" / "seconds.txt").read_text().strip()
