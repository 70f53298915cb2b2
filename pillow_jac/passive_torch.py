"""Torch, imported with the codec's OpenMP wait policy (:mod:`pillow_jac.openmp_wait`), as a module to preload by name.

``jac batch``'s fork server preloads modules by name before it forks the workers
(:mod:`pillow_jac.local_batch`): preloading ``torch`` itself would give every worker spinning OpenMP threads.
"""

from __future__ import annotations

from .openmp_wait import passive_unless_chosen

with passive_unless_chosen():
    import torch  # noqa: F401 - imported for the processes forked from this one
