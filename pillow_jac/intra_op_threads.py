"""Torch's intra-op thread count inside blocks of small ops: :func:`single_threaded`.

The codec's torch work on small images and its exact entropy coding
(:func:`pillow_jac.image_transforms.torch_work`: the wavefronts of :mod:`pillow_jac.latent_coding`), and
an engine's set-up (:func:`pillow_jac.engine.get_engine`), issue thousands of small ops, which run faster
on one thread. A block sets the calling thread's count and, as it ends, the count outside the blocks,
however many threads overlap in blocks, after a KeyboardInterrupt and in a forked child. Decoded latents
do not depend on the thread count (CODING.md section 3); decoded pixels may differ by one level in rare
samples (SPEC.md section 1).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref

import torch

from .forksafe import fork_safe_lock
from .openmp_wait import threads_sleep

__all__ = ["single_threaded"]


class _Block:
    """One open :func:`single_threaded` block: held by the block's frame alone, so it lives while the block does."""

    __slots__ = ("__weakref__",)


#: the open :func:`single_threaded` blocks, and the thread count outside them (under the lock). A block whose
#: bookkeeping a KeyboardInterrupt cut short leaves no entry behind: it goes with the block's frame.
_single: dict = {"inside": weakref.WeakSet(), "outside": 1}  # 1 until a first block records more
_single_lock = fork_safe_lock()
#: per thread: ``done`` is True once the thread has left a block
_left_a_block = threading.local()


def _forget_blocks_in_child() -> None:
    """Forget the parent's blocks and thread count in a forked child.

    The child has none of its parent's threads or their blocks, and one torch thread (forksafe): its first
    block must not set the parent's count back, which would wait for OpenMP threads it lacks.
    """
    _single.update(inside=weakref.WeakSet(), outside=1)
    _left_a_block.__dict__.clear()  # the forking thread's, the child's only thread


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_blocks_in_child)


@contextlib.contextmanager
def single_threaded(keep_if_sleeping: int = 0):
    """Run torch ops of the calling thread with one intra-op thread inside the block.

    ``keep_if_sleeping``: where OpenMP's idle threads sleep (:func:`pillow_jac.openmp_wait.threads_sleep`),
    a count outside the blocks of at most this many is kept inside the block instead of one.

    Small images (short wavefronts) issue thousands of tiny ops; splitting them across threads costs
    more in synchronisation than it gains. ``torch.set_num_threads`` sets the calling thread's own
    count (OpenMP's) and also the count a thread takes at its first ``get_num_threads`` or parallel
    op (read first here, so that the 1 set below stays this thread's). A thread entering when no
    block is open records its count as the count outside the blocks, unless that count is 1 and a
    larger one was recorded before (a thread whose first torch op ran inside another's block starts
    with 1) and the thread has not left a block before (after one, its 1 is the program's or one recorded
    earlier: ``torch.set_num_threads(1)`` between blocks holds); every thread leaving a block sets the recorded
    count again, under the same lock as the entries, so overlapping blocks in several threads leave the
    count they found for the threads started later. A thread's own 1 before its first block, while
    another thread recorded more, is taken for a count it started with: ``OMP_NUM_THREADS=1`` sets it
    for every thread. Decoded latents do not depend on the thread count, so for them this only affects
    speed (decoded pixels may differ by one level in rare samples, g_s being float32: SPEC.md section 1, and
    so may effort-0 files, g_a being float32 too); the effort search's float gradients are summed in an order
    that does (a 2-thread program keeps 2 threads in the block for a small image, so its effort 1-3 files can
    differ by a few bytes from a 1-thread one's: README, "Effort"). A block nested
    in another of its thread (a call from a signal handler) sets the count outside the blocks as it ends.
    """
    block = _Block()
    entered = False
    try:
        with _single_lock:
            own = torch.get_num_threads()
            chose_one = own == 1 and getattr(_left_a_block, "done", False)  # not a count this thread started with
            if not len(_single["inside"]) and (own != 1 or _single["outside"] == 1 or chose_one):
                _single["outside"] = own
            _single["inside"].add(block)
            entered = True
            outside = _single["outside"]
            torch.set_num_threads(outside if 1 < outside <= keep_if_sleeping and threads_sleep() else 1)
        yield
    finally:
        if entered:
            with _single_lock:
                _single["inside"].discard(block)  # already gone in a child forked inside the block
                torch.set_num_threads(_single["outside"])
                _left_a_block.done = True
