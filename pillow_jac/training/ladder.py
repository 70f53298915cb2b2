"""Move a trained model onto another lambda ladder: ``--lambdas`` of the trainer.

A model's quality levels are its gain vectors, each trained for one lambda of the ladder
(``ModelConfig.lambdas``; Cui et al. 2021, the gained variable-rate scheme of
:mod:`pillow_jac.model.mbt2018`). To give the quality scale another range (a lower first
quality, say, for rates near 0.1 bpp) the networks can stay as they are: only the gains change.
Each new level starts from the old gains interpolated at its lambda, in the log domain on both
axes, as the model itself interpolates fractional qualities, and extrapolated linearly from the
nearest two levels beyond the old ladder's ends. Training then refines them; an extrapolated level
is only a starting point (quality 1's gains pushed to about 0.17 bpp without training lost
0.9 dB against WebP there).
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..model.mbt2018 import JointAutoregressiveHierarchicalPrior

__all__ = ["ladder_positions", "remap_ladder"]


def ladder_positions(old: tuple[float, ...], new: tuple[float, ...]) -> torch.Tensor:
    """Where each lambda of ``new`` falls on ``old``, as a fractional level index (0-based).

    Linear in log lambda between neighbouring levels, and beyond the ends along the end segments.

    Example:
        >>> [round(p, 6) for p in ladder_positions((0.01, 0.04), (0.005, 0.02, 0.04)).tolist()]
        [-0.5, 0.5, 1.0]
    """
    log_old = torch.tensor(old, dtype=torch.float64).log()
    log_new = torch.tensor(new, dtype=torch.float64).log()
    segment = (torch.searchsorted(log_old, log_new, right=True) - 1).clamp(0, len(old) - 2)
    t = (log_new - log_old[segment]) / (log_old[segment + 1] - log_old[segment])
    return segment.double() + t


def _resample(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` (levels x channels) at fractional ``positions``, linearly (and beyond the ends)."""
    low = positions.floor().long().clamp(0, table.shape[0] - 2)
    t = (positions - low.double()).to(table.dtype).unsqueeze(1)
    return table[low] * (1 - t) + table[low + 1] * t


@torch.no_grad()
def remap_ladder(
    model: JointAutoregressiveHierarchicalPrior, lambdas: tuple[float, ...]
) -> JointAutoregressiveHierarchicalPrior:
    """A copy of ``model`` whose quality levels stand for ``lambdas`` (see the module docstring).

    Example:
        >>> import torch
        >>> from pillow_jac.model.mbt2018 import ModelConfig
        >>> model = JointAutoregressiveHierarchicalPrior(ModelConfig(N=8, M=12))
        >>> lambdas = (0.0009,) + model.config.lambdas[1:]
        >>> moved = remap_ladder(model, lambdas)
        >>> moved.config.lambdas[0], bool(torch.equal(moved.log_gain[1:], model.log_gain[1:]))
        (0.0009, True)
    """
    config = dataclasses.replace(model.config, lambdas=tuple(lambdas), qualities=len(lambdas))
    moved = JointAutoregressiveHierarchicalPrior(config)
    state = copy.deepcopy(model.state_dict())
    positions = ladder_positions(model.config.lambdas, config.lambdas)
    for name in ("log_gain", "log_inverse_gain"):
        state[name] = _resample(state[name], positions)
    moved.load_state_dict(state)
    return moved
