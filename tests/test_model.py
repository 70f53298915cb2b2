"""The float model, its training loss, and freezing any configuration into a working codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pillow_jac import codec
from pillow_jac.model.mbt2018 import JointAutoregressiveHierarchicalPrior, ModelConfig
from pillow_jac.model.objective import quality_lambda, rate_distortion_loss
from pillow_jac.training.freeze import freeze
from pillow_jac.weights import save_weights

from .helpers import natural_image


def test_config_validation():
    with pytest.raises(ValueError, match="context model, the hyperprior or both"):
        ModelConfig(N=8, M=12, context=False, hyperprior=False)
    with pytest.raises(ValueError, match="multiple of 6"):
        ModelConfig(N=8, M=10)
    # one gain row has nothing to interpolate with: CODING.md 1.2's k = min(floor(p), Q - 2) was -1, and indexing
    # the table with it took its last row by accident
    for qualities in (1, 0, True, 2.0):
        with pytest.raises(ValueError, match="qualities must be a whole number of at least 2"):
            ModelConfig(N=8, M=12, qualities=qualities, lambdas=(0.01, 0.02)[: int(qualities)])


def test_gains_interpolate_in_log_domain():
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
    g = model.gains(torch.tensor([2.0, 2.5, 3.0]))[:, :, 0, 0]
    assert torch.allclose(g[1], (g[0] * g[2]).sqrt(), rtol=1e-5)
    assert (model.gains(torch.tensor([8.0])) > model.gains(torch.tensor([1.0]))).all()


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
    x = torch.from_numpy(natural_image(64, 64)).permute(2, 0, 1)[None].float() / 255
    quality = torch.tensor([4.0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only add synchronisation
    try:
        for _ in range(30):
            out = model(x, quality)
            loss = rate_distortion_loss(out, x, quality_lambda(quality).float())["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.parametrize(("context", "hyperprior"), [(True, True), (False, True), (True, False)])
def test_frozen_tiny_model_round_trips(tmp_path, context, hyperprior):
    """Any configuration freezes into a weights file the codec encodes and decodes exactly."""
    torch.manual_seed(1)
    model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12, context=context, hyperprior=hyperprior))
    tensors, metadata = freeze(model, release=7)
    path = tmp_path / "tiny.safetensors"
    save_weights(path, tensors, metadata)
    image = natural_image(40, 72, seed=2)
    model.eval()
    for quality in (1, 8):
        data = codec.encode(image, quality, weights=path)
        decoded = codec.decode(data, weights=path)
        z_enc, y_enc = codec.encode_symbols(image, quality, weights=path)
        with torch.no_grad():  # the model that was frozen, on the latents: what the file must decode to
            inverse = model.gains(torch.tensor([float(quality)], dtype=torch.float64), inverse=True).float()
            x = model.g_s(torch.from_numpy(y_enc).float()[None] * inverse)[0, :, :40, :72]
        expected = (x.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(int)
        assert decoded.shape == image.shape and np.abs(decoded.astype(int) - expected).max() <= 1
        z_dec, y_dec = codec.decode_symbols(data, weights=path)
        np.testing.assert_array_equal(y_enc, y_dec)
        if hyperprior:
            np.testing.assert_array_equal(z_enc, z_dec)
        else:
            assert z_enc is None and z_dec is None
