"""The variants of the study and the budget every one of them gets (docs/study.md).

Minnen, Ballé, Toderici 2018 compare the joint model with the scale hyperprior of Ballé et al. 2018
(zero-mean Gaussian, no context), a mean-and-scale hyperprior without context, and a context model
without hyperprior (their figure 5). This study adds a K=3 Gaussian mixture (Cheng et al. 2020),
context windows of 3x3 and 7x7, and a second width, all from :class:`~pillow_jac.model.mbt2018.ModelConfig`.

The zero-mean variant is this model's networks less the context model and the mean, not Ballé's own: h_a
takes y (not |y|), and h_s is followed by the entropy-parameter network, which outputs the scales. Against
the mean-scale variant it differs only in the last layer's outputs, a clean ablation of the mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..model.mbt2018 import ModelConfig

__all__ = ["Budget", "Variant", "BUDGET", "VARIANTS", "run_name"]


#: the ladder of the study: 8 log-spaced lambdas from CompressAI's second (0.0035) to its sixth (0.0483).
#: A budget of a few thousand CPU steps does not train the whole 0.0018-0.18 range (docs/study.md,
#: "Scale"); the narrower ladder spends the steps on the middle rates.
STUDY_LAMBDAS = tuple(round(0.0035 * (0.0483 / 0.0035) ** (i / 7), 6) for i in range(8))


@dataclass(frozen=True)
class Budget:
    """What every run of the study gets: the same steps, crops, ladder and optimiser.

    Attributes:
        steps: optimiser steps.
        batch: crops per step.
        crop: side of the square training crops, pixels.
        lr: Adam's learning rate after a linear warm-up of ``warmup`` steps.
        ema: decay of the weight average that is frozen and measured.
        lambdas: the ladder of the 8 qualities (every image of a batch draws a quality).
        qualities: the qualities measured with real files (low, middle and high rate).
    """

    steps: int = 4000
    batch: int = 8
    crop: int = 128
    lr: float = 2e-4
    warmup: int = 200
    clip: float = 1.0
    ema: float = 0.995
    lambdas: tuple[float, ...] = STUDY_LAMBDAS
    qualities: tuple[float, ...] = (1.0, 4.0, 8.0)

    def to_dict(self) -> dict:
        """The budget as it reads back from JSON (lists, not tuples), so a stored budget compares equal."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Variant:
    """One model of the study: a name, what it asks, and its architecture.

    Attributes:
        name: short identifier, used in file names.
        label: what the variant is, for tables.
        question: the research question (RQ1-RQ4) it answers.
        config: keyword arguments of :class:`ModelConfig` (lambdas come from the budget).
        seeds: the seeds it is trained with (two, so that a seed's spread can be told from a difference).
    """

    name: str
    label: str
    question: str
    config: dict
    seeds: tuple[int, ...] = (0, 1)

    def model_config(self, budget: Budget) -> ModelConfig:
        """The :class:`ModelConfig` of this variant under ``budget``."""
        return ModelConfig(**self.config, lambdas=budget.lambdas)


BUDGET = Budget()
_SMALL = {"N": 64, "M": 96}
#: in training order: the headline comparisons first, then context sizes and width
VARIANTS = {
    v.name: v
    for v in (
        Variant("joint", "joint: hyperprior + 5x5 context, mean-scale (shipped design)", "RQ1-RQ4", {**_SMALL}),
        Variant(
            "hyper-scale",
            "hyperprior only, zero-mean (mbt2018 networks)",
            "RQ1, RQ2",
            {**_SMALL, "context": False, "entropy": "zero-mean"},
        ),
        Variant("hyper-mean-scale", "hyperprior only, mean-scale", "RQ1, RQ2", {**_SMALL, "context": False}),
        Variant("context-only", "context model only (no z)", "RQ1, RQ3", {**_SMALL, "hyperprior": False}),
        Variant("joint-gmm3", "joint + K=3 Gaussian mixture", "RQ2", {**_SMALL, "entropy": "gmm", "mixtures": 3}),
        Variant("joint-ctx3", "joint, 3x3 context", "RQ4", {**_SMALL, "context_size": 3}),
        Variant("joint-ctx7", "joint, 7x7 context", "RQ4", {**_SMALL, "context_size": 7}),
        Variant("joint-wide", "joint, N/M = 96/144", "RQ4", {"N": 96, "M": 144}),
    )
}


def run_name(variant: Variant, seed: int) -> str:
    """The name of one run (a variant and a seed), e.g. ``joint-s0``."""
    return f"{variant.name}-s{seed}"
