"""OpenMP's wait policy for the torch the codec imports: idle worker threads sleep rather than spin.

Torch runs its CPU ops in OpenMP parallel regions. Between regions, OpenMP's worker threads spin for a
while (GNU libgomp's default: 300,000 iterations) before they sleep. The wavefront decoder (CODING.md
section 1.3) runs thousands of small regions, one after another. With the cores idle the spinning saves
a wake-up per region. With other torch work on the machine, whose threads spin too, a region waits until
both of its threads hold a core at once: the decoder took six times as long as with sleeping threads,
even beside a background job at the lowest priority (with autogroups, Linux shares the CPU between
sessions before it looks at niceness). Measured on a 2-core AVX2 machine with torch's libgomp, kodim01
(768x512) at quality 4 on two torch threads, beside one ``nice -n 19`` torch training process started in
another session: torch's default policy, encode 2.57 s and decode 14.2 s (idle: 1.03 s and 1.36 s);
``OMP_WAIT_POLICY=PASSIVE``, encode 1.90 s and decode 2.29 s (idle: 1.01 s and 1.36 s). Where a program's
threads spin all the same (it imported torch first), the codec runs the exact entropy coding on one
thread (:func:`pillow_jac.image_transforms.torch_work`): on a 2-core AMD EPYC with AVX-512 bf16, beside
such a process, decode 0.70 s against 0.53 s with sleeping threads (benchmarks/results/contention/contention.md).

``python -m pillow_jac.bench.contention`` measures both side by side, also at ``nice 0``. OpenMP reads
the policy once, when torch's native libraries load, so it can only be chosen before torch is imported:
the codec's first import of torch (:func:`pillow_jac.codec_steps.guarded_engine`) sets
``OMP_WAIT_POLICY=PASSIVE`` for the import and removes it again after, so that child processes inherit
the environment they would have had (a process started by another thread during the import, 1-3 s,
inherits the variable); the workers of ``jac batch`` and of :mod:`pillow_jac.distributed`
import torch the same way. A program that imported torch before its first encode or decode
keeps torch's policy, and one that set ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``
itself keeps its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from .forksafe import fork_safe_lock

__all__ = ["passive_unless_chosen", "threads_sleep", "CHOSEN_BY_USER"]

#: variables by which a program chooses OpenMP's waiting itself (standard OpenMP, GNU libgomp, LLVM/Intel)
CHOSEN_BY_USER = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

_lock = fork_safe_lock()  # a fork waits while another thread holds it (pillow_jac/forksafe.py)
#: "passive": True once this process's torch was imported inside :func:`passive_unless_chosen` with the
#: policy set there; "chosen": the program's own policy, read at the first :func:`threads_sleep` after
#: torch's import (None until then)
_state: dict[str, bool | None] = {"passive": False, "chosen": None}


def threads_sleep() -> bool:
    """Whether torch's idle OpenMP threads sleep in this process: the codec set the passive policy, or the program did.

    A program's own ``OMP_WAIT_POLICY=passive`` counts as it was when first asked after torch's import (a
    variable set later does not change the threads OpenMP already made).

    Example:
        >>> isinstance(threads_sleep(), bool)
        True
    """
    if _state["passive"]:
        return True
    if _state["chosen"] is None and "torch" in sys.modules:
        _state["chosen"] = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"
    return bool(_state["chosen"])


@contextlib.contextmanager
def passive_unless_chosen() -> Iterator[None]:
    """Import torch inside this block with ``OMP_WAIT_POLICY=PASSIVE``, unless torch or the program chose already.

    Does nothing when torch is imported (or being imported) or any of :data:`CHOSEN_BY_USER` is set. The
    variable is removed on leaving, so only this process's OpenMP sees it.

    Example:
        >>> import os, sys
        >>> before = os.environ.get("OMP_WAIT_POLICY")
        >>> with passive_unless_chosen():
        ...     during = os.environ.get("OMP_WAIT_POLICY")
        >>> during == ("PASSIVE" if "torch" not in sys.modules and before is None else before)
        True
        >>> os.environ.get("OMP_WAIT_POLICY") == before
        True
    """
    with _lock:
        set_here = "torch" not in sys.modules and not any(name in os.environ for name in CHOSEN_BY_USER)
        if set_here:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        yield
    finally:
        if set_here:
            with _lock:
                os.environ.pop("OMP_WAIT_POLICY", None)
                _state["passive"] = "torch" in sys.modules
