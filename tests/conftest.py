"""Every test process imports torch with the codec's OpenMP wait policy before any test module does.

The suite runs in two processes (``-n 2``, README "Run the tests"). Test modules import torch at their top,
before the codec's own first import could choose the policy, so without this each process would keep
torch's spinning OpenMP threads, and every parallel op of one process would wait for the other's spinning
threads to give up a core (pillow_jac.openmp_wait: decoding beside such a process took six times as long).
"""

import signal

import pytest

import pillow_jac.passive_torch  # noqa: F401
from pillow_jac import intra_op_threads


@pytest.fixture
def sigint_interrupts():
    """SIGINT raises KeyboardInterrupt for the test, as in a program started from a terminal; the runner's
    handler is put back after. A runner started in the background of a script (``&``, as a CI job may be)
    ignores SIGINT, and its test processes inherit that."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


@pytest.fixture(autouse=True)
def torch_threads_as_found():
    """Each test leaves its process on the torch thread count it found, with the count the codec records
    outside its blocks (:func:`pillow_jac.intra_op_threads.single_threaded`): a test that runs a training entry
    point with ``--threads 1`` (an entry point sets the count for its program) would otherwise leave the
    files after it in its process on one thread."""
    import torch

    before, outside = torch.get_num_threads(), intra_op_threads._single["outside"]
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
    if not intra_op_threads._single["inside"]:
        intra_op_threads._single["outside"] = outside


@pytest.fixture
def one_torch_thread(monkeypatch):
    """One torch thread, as a training run's ``--threads 1`` asks, and the caller's count back after.

    The count outside the codec's blocks is recorded as 1 too: a thread's 1 before its own first block,
    while more was recorded, is otherwise taken for a count it started with
    (:func:`pillow_jac.intra_op_threads.single_threaded`).
    """
    import torch

    before = torch.get_num_threads()
    monkeypatch.setitem(intra_op_threads._single, "outside", 1)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
