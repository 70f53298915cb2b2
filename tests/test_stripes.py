"""Striped g_a / g_s (bounded memory for large images) give the values of the whole image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pillow_jac import codec, stripes
from tests.helpers import natural_image


@pytest.mark.parametrize("quality", [1, 8])
def test_striped_codec_matches_whole_image(quality, monkeypatch):
    image = natural_image(300, 200, seed=3)  # a 20-row latent (padded to 320 rows): stripes of 8, 8 and 4 rows
    data = codec.encode(image, quality)
    pixels = codec.decode(data)
    _, symbols = codec.encode_symbols(image, quality)
    monkeypatch.setattr(stripes, "STRIPE_PIXELS", 1)  # the smallest stripes: 8 latent rows
    assert stripes.stripe_rows_for(13) == 8
    seen, whole = [], stripes.stripes
    monkeypatch.setattr(stripes, "stripes", lambda *a, **k: [seen.append(s) or s for s in whole(*a, **k)])
    _, striped_symbols = codec.encode_symbols(image, quality)
    assert [(a, b) for a, b, _, _ in seen] == [(0, 8), (8, 16), (16, 20)]  # g_a ran in three stripes
    seen.clear()
    striped_pixels = codec.decode(data)
    assert [(a, b) for a, b, _, _ in seen] == [(0, 8), (8, 16), (16, 20)]  # and g_s
    # equal up to float summation order: in practice bit-identical here
    assert (striped_symbols != symbols).mean() < 1e-3
    assert np.abs(striped_pixels.astype(int) - pixels).max() <= 1
    assert (striped_pixels != pixels).mean() < 1e-3


def test_stripes_cover_every_row_once():
    covered = []
    for a, b, lo, hi in stripes.stripes(19, 8):
        assert lo == max(0, a - stripes.HALO_ROWS) and hi == min(19, b + stripes.HALO_ROWS)
        covered.extend(range(a, b))
    assert covered == list(range(19))


def test_synthesis_sink_receives_every_stripe_in_order():
    g_s = torch.nn.Sequential(*(torch.nn.ConvTranspose2d(2, 2, 5, 2, 2, 1) for _ in range(4)))
    y = torch.randn(1, 2, 20, 3)
    seen = []
    with torch.no_grad():
        whole = g_s(y)
        stripes.synthesize_in_stripes(g_s, y, stripe_rows=8, sink=lambda row, x: seen.append((row, x)))
    assert [row for row, _ in seen] == [0, 128, 256]
    assert torch.allclose(torch.cat([x for _, x in seen], dim=2), whole, atol=1e-5)


def test_halo_is_needed():
    """With no halo the stripes' borders show: the halo is what makes striping exact."""
    g_s = torch.nn.Sequential(*(torch.nn.ConvTranspose2d(2, 2, 5, 2, 2, 1) for _ in range(4)))
    y = torch.randn(1, 2, 20, 3)
    with torch.no_grad():
        whole = g_s(y)
        cut = torch.cat([g_s(y[:, :, a : a + 8]) for a in range(0, 20, 8)], dim=2)
        striped = stripes.synthesize_in_stripes(g_s, y, stripe_rows=8)
    assert not torch.allclose(cut, whole, atol=1e-3)
    assert torch.allclose(striped, whole, atol=1e-5)


@pytest.mark.parametrize("quality", [1, 8])
def test_exact_path_in_chunks_is_identical(quality, monkeypatch):
    """h_s in z stripes and the encoder's parameters row by row: exact, so bit-identical files."""
    from pillow_jac import latent_coding
    from pillow_jac.engine import get_engine

    image = natural_image(300, 260, seed=5)
    data = codec.encode(image, quality)
    z_hat, y_hat = codec.decode_symbols(data)
    prior = get_engine().latents
    psi = prior.hyper_features(torch.from_numpy(z_hat), y_hat.shape[1:])
    monkeypatch.setattr(latent_coding, "CHUNK_POSITIONS", 1)  # one latent row / z row per chunk
    monkeypatch.setattr(latent_coding, "_H_S_MIN_ROWS", 1)
    assert codec.encode(image, quality) == data
    assert torch.equal(prior.hyper_features(torch.from_numpy(z_hat), y_hat.shape[1:]), psi)
    assert prior.h_s_halo == latent_coding.rows_reach(prior.h_s, 4) == (1, 2)  # the shipped h_s's reach
    for short in ((0, 2), (1, 1), (0, 0)):  # one row fewer above or below, and none: h_s in stripes is wrong
        monkeypatch.setattr(prior, "h_s_halo", short)
        assert not torch.equal(prior.hyper_features(torch.from_numpy(z_hat), y_hat.shape[1:]), psi), short


def test_h_s_in_column_tiles_is_exact(monkeypatch) -> None:
    """A stripe of h_s ran the whole width at once: 13 z rows of a 65,535-pixel-wide image were 30% of a 2,730-high
    one, computed (7.8 GB, 2 minutes) before the first symbol of a forged file failed. Wide images now run in
    tiles of columns with the same halo, in stripes of fewer rows; the integers are those of the whole."""
    from pillow_jac import latent_coding
    from pillow_jac.engine import get_engine

    prior = get_engine().latents
    z = torch.from_numpy(np.random.default_rng(3).integers(-6, 7, (prior.h_s.layers[0].weight.shape[0], 6, 20)))
    y_shape = (4 * 6, 4 * 20)
    monkeypatch.setattr(latent_coding, "_H_S_TILE_COLUMNS", 10**9)
    whole = prior.hyper_features(z, y_shape)
    monkeypatch.setattr(latent_coding, "_H_S_TILE_COLUMNS", 6)  # 4 tiles, the last one of 2 columns
    monkeypatch.setattr(latent_coding, "_H_S_WIDE_STRIPE", 20 * 4)  # 4 rows a stripe: the wide images' rule
    monkeypatch.setattr(latent_coding, "CHUNK_POSITIONS", 1)
    stripes_seen = [(first, end) for first, end, _ in prior.hyper_stripes(z, y_shape)]
    assert stripes_seen == [(0, 16), (16, 24)]
    assert torch.equal(prior.hyper_features(z, y_shape), whole)
    for short in ((0, 2), (1, 1)):  # a halo one column short on either side: the tiles are wrong
        monkeypatch.setattr(prior, "h_s_halo", short)
        assert not torch.equal(prior.hyper_features(z, y_shape), whole), short


def test_the_halo_follows_the_layers_of_h_s() -> None:
    """A generation whose h_s has other layers gets the halo its layers need, not the shipped one's."""
    from types import SimpleNamespace

    from pillow_jac.latent_coding import rows_reach

    def layer(kind, k, s, p):
        return SimpleNamespace(kind=kind, weight=torch.zeros(1, 1, k, k), stride=s, padding=p)

    shipped = SimpleNamespace(layers=[layer("deconv", 5, 2, 2), layer("deconv", 5, 2, 2), layer("conv", 3, 1, 1)])
    assert rows_reach(shipped, 4) == (1, 2)
    wider = SimpleNamespace(layers=[layer("deconv", 5, 2, 2), layer("deconv", 5, 2, 2), layer("conv", 5, 1, 2)])
    assert rows_reach(wider, 4) == (2, 2)
    # checked against the layers themselves: the rows of a stripe computed from that many rows around it
    torch.manual_seed(0)
    for spec in (shipped, wider):
        convs = [
            torch.nn.ConvTranspose2d(1, 1, 5, 2, 2, 1).double()
            if lay.kind == "deconv"
            else torch.nn.Conv2d(1, 1, lay.weight.shape[2], 1, lay.padding).double()
            for lay in spec.layers
        ]
        net = torch.nn.Sequential(*convs)
        z = torch.randn(1, 1, 12, 3, dtype=torch.float64)
        above, below = rows_reach(spec, 4)
        with torch.no_grad():
            whole = net(z)
            a, b = 5, 7
            part = net(z[:, :, a - above : b + below])[:, :, 4 * above : 4 * above + 4 * (b - a)]
            assert torch.allclose(part, whole[:, :, 4 * a : 4 * b], rtol=0, atol=1e-12)
            short = net(z[:, :, a - above + 1 : b + below])[:, :, 4 * (above - 1) : 4 * (above - 1) + 4 * (b - a)]
            assert not torch.allclose(short, whole[:, :, 4 * a : 4 * b], rtol=0, atol=1e-12)


def test_a_batch_shares_one_stripes_pixels() -> None:
    """decode_batch ran g_s over its images in stripes sized for one image: a batch of 8 took 8 times one
    image's stripe memory (3 decodes of 1000x1000 at batch_size 8: 680 MB above the process, 386 MB now)."""
    from pillow_jac.stripes import stripe_rows_for, synthesize_in_stripes

    calls = []

    def g_s(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape)
        return t.repeat_interleave(16, 2).repeat_interleave(16, 3)

    y = torch.randn(8, 3, 40, 48)
    assert stripe_rows_for(48) >= 40 > stripe_rows_for(48 * 8)  # one image alone: a single stripe
    out = synthesize_in_stripes(g_s, y)
    assert len(calls) > 1 and max(shape[2] for shape in calls) < 40
    torch.testing.assert_close(out, g_s(y), rtol=0, atol=0)
