"""Every test process imports torch with the codec's OpenMP wait policy before any test module does.

The suite runs in two processes (``-n 2``, README "Run the tests"). Test modules import torch at their top,
before the codec's own first import could choose the policy, so without this each process would keep
torch's spinning OpenMP threads, and every parallel op of one process would wait for the other's spinning
threads to give up a core (pillow_jac.openmp_wait: decoding beside such a process took six times as long).
"""

import signal

import pytest

import pillow_jac.passive_torch  # noqa: F401


@pytest.fixture
def sigint_interrupts():
    """SIGINT raises KeyboardInterrupt for the test, as in a program started from a terminal (an xdist
    worker, like a command started with ``&``, ignores it); the runner's handler is put back after."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)
