"""Imported last by ``jac batch``'s fork server: Python's SIGINT handler back (:mod:`pillow_jac.forkserver_signals`).

The server then ignores SIGINT by its own choice, and the processes it forks start with the handler it
had before, Python's, as they would without ``jac batch``'s preload.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.default_int_handler)
