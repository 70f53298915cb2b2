"""Imported last by ``jac batch``'s fork server: its SIGINT handler back (:mod:`pillow_jac.forkserver_signals`).

The server then ignores SIGINT by its own choice, and the processes it forks start with the handler it
had before (Python's, or SIGINT ignored), as they would without ``jac batch``'s preload.
"""

from __future__ import annotations

import signal

from .forkserver_signals import BEFORE

signal.signal(signal.SIGINT, signal.default_int_handler if BEFORE is None else BEFORE)
