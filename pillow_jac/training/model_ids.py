"""Model ids of released generations: ``mbt[flags]-N-M-rNNN`` (SPEC.md sections 3.2 and 9.2).

Apart from :mod:`pillow_jac.training.freeze` so that the trainer names its model without importing the range
coder: a GPU machine that only trains has no constriction (docs/training_on_a_gpu.md).
"""

from __future__ import annotations

from ..constants import MODEL_ID_BYTES
from ..model.mbt2018 import ModelConfig

__all__ = ["MAX_RELEASE", "model_id_for"]

#: the largest release number a model id holds (``-rNNN``)
MAX_RELEASE = 999


def model_id_for(config: ModelConfig, release: int) -> str:
    """The model id of a release: ``mbt[flags]-N-M-rNNN``, e.g. ``mbt-128-192-r001``.

    Flags name what differs from the shipped design: ``n`` no context model, ``h`` no hyperprior,
    ``cK`` a K x K context window, ``z`` zero-mean Gaussians, ``gK`` a K-component mixture. An id
    longer than the header's 16 bytes drops the ``mbt`` prefix; one still too long is an error.

    Example:
        >>> model_id_for(ModelConfig(), 6), model_id_for(ModelConfig(N=96, M=144, entropy="gmm", mixtures=3), 1)
        ('mbt-128-192-r006', 'g3-96-144-r001')
    """
    flags = "" if config.context else "n"
    flags += "" if config.hyperprior else "h"
    flags += f"c{config.context_size}" if config.context and config.context_size != 5 else ""
    flags += {"gaussian": "", "zero-mean": "z", "gmm": f"g{config.mixtures}"}[config.entropy]
    if not (isinstance(release, int) and 0 <= release <= MAX_RELEASE):
        raise ValueError(f"release {release!r} is not a number from 0 to {MAX_RELEASE} (the id holds three digits)")
    name = f"mbt{flags}-{config.N}-{config.M}-r{release:03d}"
    if len(name) > MODEL_ID_BYTES:
        name = name.removeprefix("mbt")
    if len(name) > MODEL_ID_BYTES:
        raise ValueError(f"model id {name!r} is longer than {MODEL_ID_BYTES} characters")
    return name
