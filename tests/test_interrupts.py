"""A Ctrl-C anywhere leaves the codec usable, and the codec runs from signal handlers and exit handlers.

A KeyboardInterrupt lands between any two bytecodes of the main thread. Where it cut the codec's
bookkeeping short, a lock stayed held (the next decode, or the exit, waited for ever), a count stayed up
(the exit waited 30 s), or the program's thread count or convolution precision was not given back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pillow_jac import image_transforms, intra_op_threads

from .helpers import natural_image

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def test_a_ctrl_c_as_a_codec_lock_is_taken_leaves_it_free() -> None:
    """Another thread gives the lock up and sends SIGINT: the main thread takes it, and the interrupt follows.
    A lock class written in Python stayed held every time (its __enter__ ran bytecode after the acquire)."""
    result = _run(
        """
        import os, signal, threading, time
        from pillow_jac.forksafe import fork_safe_lock

        def trial():
            lock = fork_safe_lock()
            taken = threading.Event()

            def other():
                lock.acquire()
                taken.set()
                time.sleep(0.2)
                lock.release()
                os.kill(os.getpid(), signal.SIGINT)

            threading.Thread(target=other).start()
            try:  # the interrupt may land anywhere here on a loaded machine: only the lock's state is judged
                taken.wait()
                with lock:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            probe = []
            t = threading.Thread(target=lambda: probe.append(lock.acquire(timeout=1)))
            t.start()
            t.join()
            return probe == [True]

        print([trial() for _ in range(3)])
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[True, True, True]"


def test_a_count_the_main_thread_left_does_not_hold_the_exit_up() -> None:
    """A region of torch work the main thread left counted (an interrupt between its steps): the exit handler
    waited EXIT_WAIT_SECONDS (30 s) for it. The main thread is the one exiting: its count is not waited for."""
    start = time.monotonic()
    result = _run(
        """
        import threading
        from pillow_jac import interpreter_exit
        interpreter_exit.watch()
        interpreter_exit._inside[threading.get_ident()] = 1  # left behind
        assert interpreter_exit.threads_inside() == 1 and interpreter_exit.threads_inside(threading.get_ident()) == 0
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 15  # a standard-library import and an exit, not 30 s of waiting


def test_a_block_this_thread_left_behind_does_not_keep_the_programs_thread_count(monkeypatch) -> None:
    """single_threaded's bookkeeping cut short left its depth at 1: from then on the count outside the blocks
    was never recorded again, and every block set the program's own count back to a stale one. An open block
    is now an entry that lives with the block's frame."""
    import weakref

    class InterruptedAfterAdding(weakref.WeakSet):
        def add(self, item):
            super().add(item)
            raise KeyboardInterrupt  # between the entry and the mark that the block was entered

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setitem(intra_op_threads._single, "inside", InterruptedAfterAdding())
        with pytest.raises(KeyboardInterrupt), intra_op_threads.single_threaded():
            pass
        assert not len(intra_op_threads._single["inside"])  # the entry went with the block
        torch.set_num_threads(3)  # the program's own choice between blocks
        monkeypatch.setitem(intra_op_threads._single, "inside", weakref.WeakSet(intra_op_threads._single["inside"]))
        with intra_op_threads.single_threaded():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(saved)


def test_an_interrupted_restore_of_the_convolution_precision_is_made_good(monkeypatch) -> None:
    """An interrupt as the last block gave oneDNN's setting back lost the program's setting for good."""
    get, put, ieee = image_transforms._conv_precision("cpu")
    calls = []

    def interrupted_once(value):
        calls.append(value)
        if len(calls) == 2:  # the restore at the first block's end
            raise KeyboardInterrupt
        put(value)

    monkeypatch.setattr(image_transforms, "_conv_precision", lambda device_type: (get, interrupted_once, ieee))
    before = get()
    put("bf16")  # the program's choice
    try:
        try:
            with image_transforms.ieee_float32_convolutions("cpu"):
                assert get() == ieee
        except KeyboardInterrupt:
            pass
        assert get() == ieee  # not given back yet
        with image_transforms.ieee_float32_convolutions("cpu"):
            assert get() == ieee
        assert get() == "bf16"  # the next block gave back the program's setting, not its own
    finally:
        put(before)
        image_transforms._precision_saved.pop("cpu", None)


def test_the_codec_runs_from_a_handler_that_interrupted_it_and_from_an_exit_handler(tmp_path: Path) -> None:
    """A decode from a signal handler or finaliser that interrupted the codec in the same thread waited for
    ever on the codec's own lock; a first decode in an exit handler raised "can't register atexit after
    shutdown"."""
    from pillow_jac import codec

    (tmp_path / "a.jac").write_bytes(codec.encode(natural_image(16, 16), 2))
    result = _run(
        """
        import atexit, sys
        import pillow_jac
        from pillow_jac import codec

        def at_exit():
            print("at exit", codec.decode(open(sys.argv[1], "rb").read()).shape, flush=True)

        atexit.register(at_exit)
        """,
        str(tmp_path / "a.jac"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "at exit (16, 16, 3)"
    # through the public API and the plugin, with no codec module imported before exit: the standard modules
    # torch's import needs came first at exit, when they can no longer register their exit handlers
    result = _run(
        """
        import atexit, sys
        import pillow_jac
        from PIL import Image

        def at_exit():
            print("at exit", pillow_jac.decode(sys.argv[1]).shape, flush=True)
            with Image.open(sys.argv[1]) as im:
                print("at exit", im.load() is not None and im.size, flush=True)

        atexit.register(at_exit)
        """,
        str(tmp_path / "a.jac"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["at exit (16, 16, 3)", "at exit (16, 16)"], (result.stdout, result.stderr)
    result = _run(
        """
        import sys
        from pillow_jac import codec, engine, generations, image_transforms, interpreter_exit, intra_op_threads
        data = open(sys.argv[1], "rb").read()
        locks = [engine._LOCK, generations._CACHE_LOCK, intra_op_threads._single_lock, image_transforms._precision_lock,
                 interpreter_exit._idle_lock]
        for lock in locks:  # as held by the code a handler interrupted
            lock.acquire()
        print(codec.decode(data).shape)
        """,
        str(tmp_path / "a.jac"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(16, 16, 3)"


def test_the_fork_server_ignores_ctrl_c_while_it_preloads_and_its_children_do_not(tmp_path: Path) -> None:
    """jac batch's fork server ignores SIGINT only after its preload (torch, some seconds): a Ctrl-C to the
    process group before that would print a traceback from inside torch's import and end the server. The
    processes the server forks get Python's handler back (a program's own pool on that server included)."""
    (tmp_path / "interrupt_self.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    (tmp_path / "probe.py").write_text(
        "import signal\n"
        "def default_handler():\n"
        "    return signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))  # the server's own path
    result = _run(
        """
        import multiprocessing
        import probe
        from pillow_jac import local_batch

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("forkserver")
            first, last = local_batch._WORKER_PRELOAD[0], local_batch._WORKER_PRELOAD[-1]
            ctx.set_forkserver_preload([first, "interrupt_self", last])
            with ctx.Pool(1) as pool:
                print(pool.apply(abs, (-3,)), pool.apply(probe.default_handler))
        """,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip() == "3 True"


def test_a_ctrl_c_as_the_fork_server_starts_is_discarded_there_and_raised_in_the_batch(tmp_path: Path) -> None:
    """jac batch's fork server took a Ctrl-C that came before its first preload module (the interpreter's own
    start-up, about half a second) as KeyboardInterrupt, printed a traceback under the command's one-line
    message and ended. Here the SIGINT is sent before that module; the server lives and says nothing. A Ctrl-C
    to the batch while the server starts is raised in the batch, not lost."""
    (tmp_path / "interrupt_self.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))  # the server's own path
    result = _run(
        """
        import multiprocessing, os, signal
        from multiprocessing import forkserver
        from pillow_jac import local_batch

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("forkserver")
            first, last = local_batch._WORKER_PRELOAD[0], local_batch._WORKER_PRELOAD[-1]
            ctx.set_forkserver_preload(["interrupt_self", first, last])
            local_batch._start_fork_server()
            with ctx.Pool(1) as pool:
                print(pool.apply(abs, (-3,)))
            forkserver.ensure_running = lambda: os.kill(os.getpid(), signal.SIGINT)
            try:
                local_batch._start_fork_server()
                for _ in range(1000):
                    pass
            except KeyboardInterrupt:
                print("interrupted")
        """,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.split() == ["3", "interrupted"]


def test_a_worker_asked_for_by_a_pool_that_is_gone_ends_without_a_traceback(tmp_path: Path) -> None:
    """A Ctrl-C while jac batch waited for its first worker left the request with the fork server, which forked
    the worker once its preload was done; the batch had removed the pool's semaphores on its way out, and the
    worker printed a FileNotFoundError traceback below "jac: interrupted". Other start-up errors still print."""
    (tmp_path / "slow_preload.py").write_text("import time\ntime.sleep(1.5)\n")
    (tmp_path / "unpicklable.py").write_text(
        "class Missing:\n"
        "    def __init__(self):\n"
        "        self.state = 1\n"
        "    def __setstate__(self, state):\n"
        "        raise FileNotFoundError('not a semaphore')\n"
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = _run(
        """
        import multiprocessing, threading
        from multiprocessing import util
        import unpicklable
        from pillow_jac import local_batch

        def remove(name):  # as the semaphore's finaliser does once its pool is gone
            for finalizer in list(util._finalizer_registry.values()):
                if finalizer._args == (name,):
                    finalizer()

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("forkserver")
            first, last = local_batch._WORKER_PRELOAD[0], local_batch._WORKER_PRELOAD[-1]
            ctx.set_forkserver_preload([first, "slow_preload", last])
            lock = ctx.Lock()
            threading.Timer(0.5, remove, (lock._semlock.name,)).start()
            gone = ctx.Process(target=print, args=(lock,))
            gone.start()  # returns once the server, done with its preload, has forked the worker
            gone.join()
            other = ctx.Process(target=print, args=(unpicklable.Missing(),))
            other.start()
            other.join()
            print(gone.exitcode, other.exitcode)
        """,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]
    assert result.stderr.count("Traceback") == 1 and "not a semaphore" in result.stderr, result.stderr


def test_a_block_nested_in_its_thread_keeps_the_programs_thread_count() -> None:
    """A decode from a signal handler that interrupted one nests single_threaded in a thread: the inner block
    took the outer one's 1 for the program's count, and every block after it set the program's count to 1."""
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with intra_op_threads.single_threaded():
            with intra_op_threads.single_threaded():
                assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2 and intra_op_threads._single["outside"] == 2
        with intra_op_threads.single_threaded():
            pass
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_inside_a_precision_block_has_the_programs_setting_back() -> None:
    """A child forked while a thread was inside the block kept its count: the block never gave the program's
    setting back there, nor set IEEE again in a later block after the program chose bf16."""
    get, put, ieee = image_transforms._conv_precision("cpu")
    before = get()
    put("bf16")
    try:
        with image_transforms.ieee_float32_convolutions("cpu"):
            pid = os.fork()
            if pid == 0:  # the child: no block open here
                ok = get() == "bf16" and not image_transforms._precision_users
                with image_transforms.ieee_float32_convolutions("cpu"):
                    ok = ok and get() == ieee
                os._exit(0 if ok and get() == "bf16" else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        put(before)
