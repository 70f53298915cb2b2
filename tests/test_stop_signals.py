"""SIGTERM and Ctrl-C stop a training loop at the end of its step, for the loop's time only
(pillow_jac.training.stop_signals; the loops themselves in test_training, test_encoder_tune, test_gpu_session)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from pillow_jac.training.stop_signals import STOP_SIGNALS, stop_on_signals


def _handlers() -> dict[int, object]:
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}


def test_each_signal_is_recorded_in_the_block_and_the_handlers_come_back(sigint_interrupts):
    before = _handlers()
    with stop_on_signals() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: recorded
        assert stop and stop.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    assert _handlers() == before


def test_the_handlers_come_back_when_the_block_raises():
    before = _handlers()
    with pytest.raises(RuntimeError, match="step failed"), stop_on_signals():
        raise RuntimeError("step failed")
    assert _handlers() == before


def test_an_ignored_signal_stays_ignored():
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_signals() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, saved)


def test_off_the_main_thread_nothing_changes():
    before, seen, errors = _handlers(), [], []

    def loop() -> None:
        try:
            with stop_on_signals() as stop:
                seen.append((bool(stop), _handlers()))
        except BaseException as exc:  # signal.signal would raise ValueError here
            errors.append(exc)

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join(timeout=30)
    assert not errors and seen == [(False, before)]


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_pools_forked_after_a_loop_still_end_their_workers():
    """The hang that a handler left behind caused: the workers inherit it, so the SIGTERM with which a pool
    ends a worker still waiting for the queue's lock (which the pool holds by then) only recorded a request,
    and leaving the pool waited on that worker for ever; with a handler left behind, one of the first 30
    pools hung in every one of six runs of this test's loop."""
    with stop_on_signals():
        pass
    finished, failed = threading.Event(), threading.Event()

    def pools() -> None:
        for _ in range(30):
            if failed.is_set():
                return
            with multiprocessing.get_context("fork").Pool(2) as workers:
                workers.map(_sleep, [0] * 4)
        finished.set()

    thread = threading.Thread(target=pools, daemon=True)
    thread.start()
    if not finished.wait(timeout=60):
        failed.set()  # end the workers that survived SIGTERM, or they would hang the test process's exit
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)
        thread.join(timeout=30)
        pytest.fail("a pool's workers did not end")
