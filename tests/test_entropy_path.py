"""Unit tests of the exact entropy path: coding tables, escapes, integer networks, wavefronts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pillow_jac.constants import CDF_PRECISION, MEAN_STEPS, SCALE_LEVELS
from pillow_jac.engine import get_engine
from pillow_jac.entropy_coding import CodingTables, EntropyCodingError, gaussian_tables, quantize_pmf
from pillow_jac.latent_coding import CAUSAL_TAPS, SYMBOL_LIMIT, wavefront_steps
from pillow_jac.model.integer import integerize, to_fixed
from pillow_jac.model.layers import MaskedConv2d


@pytest.fixture(scope="module")
def y_tables() -> CodingTables:
    return CodingTables(*gaussian_tables())


def test_gaussian_tables_are_normalised(y_tables):
    freqs, offsets, _ = gaussian_tables()
    assert len(offsets) - 1 == SCALE_LEVELS * MEAN_STEPS == len(y_tables)
    sums = np.add.reduceat(freqs.astype(np.int64), offsets[:-1])
    assert (sums == 2**CDF_PRECISION).all() and freqs.min() >= 1


def test_quantize_pmf_keeps_order_of_magnitude():
    freqs = quantize_pmf(np.array([0.7, 0.2, 0.1, 0.0]))
    assert freqs.sum() == 2**16 and freqs[3] == 1 and freqs[0] > freqs[1] > freqs[2]


def test_round_trip_including_escapes(y_tables):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, len(y_tables), 5000)
    values = rng.integers(-3, 4, 5000)
    values[::97] = rng.integers(-8000, 8000, len(values[::97]))  # far outside every table: escapes
    data = y_tables.encode_to_bytes(values, ids)
    np.testing.assert_array_equal(y_tables.decode_from_bytes(data, ids), values)


def test_rate_tracks_the_distribution(y_tables):
    """Values that match a narrow table cost far less than values that do not."""
    ids = np.full(2000, 0)  # the narrowest scale, mean 0
    cheap = len(y_tables.encode_to_bytes(np.zeros(2000, np.int64), ids))
    costly = len(y_tables.encode_to_bytes(np.full(2000, 5), ids))
    assert cheap * 20 < costly


def test_garbage_stream_raises_entropy_error(y_tables):
    ids = np.zeros(10000, np.int64)
    with pytest.raises(EntropyCodingError):
        y_tables.decode_from_bytes(b"\xff" * 6, ids)


def test_integer_network_matches_float_and_is_thread_independent():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.ConvTranspose2d(8, 12, 5, 2, 2, 1), nn.ReLU(), nn.Conv2d(12, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 6, 1)
    )
    x = torch.randn(1, 8, 6, 7) * 3
    exact = integerize(net)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = exact(to_fixed(x))
        torch.set_num_threads(2)
        two = exact(to_fixed(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.equal(one, torch.floor(one))  # integers
    with torch.no_grad():
        reference = net(x).double()
    assert (one / 256 - reference).abs().max() < 0.05


def test_masked_context_conv_equals_gathered_taps():
    """The encoder's masked convolution and the decoder's 12-tap gather give identical integers."""
    torch.manual_seed(1)
    layer = integerize(MaskedConv2d(4, 8, 5)).layers[0]
    y = torch.randint(-20, 21, (1, 4, 7, 9)).double() * 256
    full = layer(y)[0]
    padded = torch.nn.functional.pad(y[0], (2, 2, 2, 2))
    for r, c in [(0, 0), (3, 4), (6, 8), (2, 0)]:
        taps = torch.stack([padded[:, r + 2 + dr, c + 2 + dc] for dr, dc in CAUSAL_TAPS], dim=1)  # (M, 12)
        weight = torch.stack([layer.weight[:, :, 2 + dr, 2 + dc] for dr, dc in CAUSAL_TAPS], dim=2)
        acc = (weight * taps[None]).sum(dim=(1, 2)) + layer.bias
        assert torch.equal(layer.rescale(acc[None], 1)[0], full[:, r, c])


def test_the_decoders_context_matrix_equals_the_masked_convolution():
    """The shipped decoder's gather matrix (LatentCoder: taps in CAUSAL_TAPS order, then input channels) times
    the causal taps gives, at every position, the integers of the encoder's masked convolution."""
    coder = get_engine().latents
    layer, h = coder.context.layers[0], coder.reach
    torch.manual_seed(2)
    y = torch.randint(-20, 21, (1, coder.M, 7, 9)).double() * 256
    full = layer(y)[0]
    padded = torch.nn.functional.pad(y[0], (h, h, h, h))
    for r, c in [(0, 0), (3, 4), (6, 8), (2, 0), (5, 7)]:
        taps = torch.stack([padded[:, r + h + dr, c + h + dc] for dr, dc in CAUSAL_TAPS])  # (taps, M)
        acc = taps.reshape(1, -1) @ coder._context_matrix.to(taps.device) + layer.bias
        assert torch.equal(layer.rescale(acc, 1)[0], full[:, r, c]), (r, c)


VARIANTS = Path(__file__).resolve().parents[1] / "format_spec" / "vectors" / "variants"


@pytest.mark.parametrize("weights", [None, VARIANTS / "mbtc3z-8-12-r001", VARIANTS / "c7g3-8-12-r001"])
def test_the_encoders_context_features_equal_the_masked_convolution(weights):
    """The encoder's gathered causal taps (LatentCoder._context_features) give the masked k x k convolution's
    integers at every position of any stripe of rows (the rows above it read, not computed): the shipped 5x5
    window and the variants' 3x3 and 7x7, on latents up to the symbol limit."""
    coder = get_engine("cpu", None if weights is None else weights / "weights.safetensors").latents
    layer = coder.context.layers[0]
    assert layer.weight.shape[-1] == 2 * coder.reach + 1 and layer.padding == coder.reach
    rng = np.random.default_rng(3)
    y_hat = rng.integers(-20, 21, (coder.M, 11, 9))
    y_hat[:, ::4, ::3] = rng.choice([-SYMBOL_LIMIT, SYMBOL_LIMIT], y_hat[:, ::4, ::3].shape)
    full = layer(torch.from_numpy(y_hat).double()[None] * 256)[0]
    for first, end in [(0, 11), (0, 1), (1, 4), (2, 3), (3, 11), (10, 11)]:
        expected = full[:, first:end].reshape(coder.M * 2, -1).t()
        assert torch.equal(coder._context_features(y_hat, first, end), expected), (first, end)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 9), (9, 1), (4, 6), (32, 48)])
def test_wavefronts_cover_grid_once_and_respect_causality(height, width):
    steps = wavefront_steps(height, width)
    done = np.full((height, width), -1)
    for t, (rows, cols) in enumerate(steps):
        assert (done[rows, cols] == -1).all()
        done[rows, cols] = t
    assert (done >= 0).all()
    for r in range(height):
        for c in range(width):
            for dr, dc in CAUSAL_TAPS:
                if 0 <= r + dr < height and 0 <= c + dc < width:
                    assert done[r + dr, c + dc] < done[r, c]
    if (height, width) == (32, 48):
        assert len(steps) == 141


def test_a_latent_coder_refuses_thresholds_out_of_order_and_z_tables_without_a_hyperprior():
    """CODING.md 2.2 and 4.1: the scale index counts thresholds at or below a scale, which a binary search
    finds only in ascending order; z is decoded exactly when the model has a hyperprior."""
    from pillow_jac.engine import get_engine
    from pillow_jac.latent_coding import LatentCoder

    c = get_engine("cpu").latents
    parts = [c.h_s, c.context, c.entropy_parameters, c.thresholds, c.y_tables, c.z_tables, c.M, c.device]
    LatentCoder(*parts)  # the shipped generation's own
    shuffled = c.thresholds.flip(0)
    with pytest.raises(ValueError, match="63 values in ascending order"):
        LatentCoder(*parts[:3], shuffled, *parts[4:])
    with pytest.raises(ValueError, match="63 values in ascending order"):
        LatentCoder(*parts[:3], c.thresholds[:-1], *parts[4:])
    with pytest.raises(ValueError, match="z coding tables without a hyperprior"):
        LatentCoder(None, *parts[1:])
    LatentCoder(*parts[:5], None, *parts[6:])  # a hyperprior without the range coder's tables: a rate-only coder


def test_the_decoded_latents_are_made_once_in_the_layout_returned() -> None:
    """The wavefront wrote y_hat position-major and returned a transposed copy of it: the whole latent grid twice
    at the peak (6 bytes a pixel, 535 MB at Pillow's 89-megapixel limit)."""
    import tracemalloc

    from pillow_jac import codec

    base = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    data = codec.encode(np.kron(base, np.ones((16, 16, 1), np.uint8)), 4)
    codec.decode_symbols(data)  # the engine built
    tracemalloc.start()
    try:
        _, y_hat = codec.decode_symbols(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert y_hat.shape == (192, 32, 32) and y_hat.flags.c_contiguous
    # one grid, the wavefront's padded float64 grid of the context (numpy's zeros on the CPU: committed as it is
    # reached), a border of 2 latents and 4 rows of slack, and small temporaries
    padded = (32 + 2 + 4) * (32 + 2 * 2) * 192 * 8
    assert peak < 1.5 * y_hat.nbytes + padded, (peak - padded) / y_hat.nbytes


def test_the_hyperprior_the_decoder_holds_in_float32_is_exact() -> None:
    """decode_y holds h_s's outputs for the wavefront in float32: exact because every integer activation has
    |a| <= 2**ACTIVATION_LIMIT_BITS - 1 (CODING.md section 3) and float32 holds every integer up to 2**24."""
    from pillow_jac.constants import ACTIVATION_LIMIT_BITS

    assert ACTIVATION_LIMIT_BITS <= 24
    coder = get_engine().latents
    channels = coder.h_s.layers[0].weight.shape[0]
    z = torch.from_numpy(np.random.default_rng(4).choice([-SYMBOL_LIMIT, 0, SYMBOL_LIMIT], (channels, 3, 5)))
    psi = coder.hyper_features(z, (12, 20))
    assert psi.abs().max() == 2**ACTIVATION_LIMIT_BITS - 1  # the bound is reached, and held exactly
    assert torch.equal(psi.float().double(), psi)


def test_the_encoder_reads_h_s_stripe_by_stripe_whatever_the_chunks(monkeypatch) -> None:
    """encode_y takes h_s's stripes as its chunks of latent rows reach them: chunks of 3 rows over stripes of 4
    (a chunk in two stripes, one inside one) give the streams of h_s given whole, and they decode back."""
    from pillow_jac import latent_coding

    coder = get_engine().latents
    rng = np.random.default_rng(6)
    z = rng.integers(-3, 4, (coder.h_s.layers[0].weight.shape[0], 4, 5))
    y = rng.integers(-6, 7, (coder.M, 16, 20))
    streams = coder.encode(z, y)
    whole = coder.hyper_features(torch.from_numpy(z), y.shape[1:])
    assert streams == (coder.encode_z(z), coder.encode_y(y, iter([(0, 16, whole)])))
    monkeypatch.setattr(latent_coding, "CHUNK_POSITIONS", 3 * 20)  # 3 latent rows a chunk
    monkeypatch.setattr(latent_coding, "_H_S_MIN_ROWS", 1)  # 1 z row (4 latent rows) a stripe
    assert [(first, end) for first, end, _ in coder.hyper_stripes(torch.from_numpy(z), (16, 20))] == [
        (0, 4), (4, 8), (8, 12), (12, 16)
    ]  # fmt: skip
    assert coder.encode(z, y) == streams
    z_back, y_back = coder.decode(*streams, (4, 5), (16, 20))
    assert np.array_equal(z_back, z) and np.array_equal(y_back, y)
