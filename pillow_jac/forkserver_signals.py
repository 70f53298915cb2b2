"""Imported first by ``jac batch``'s fork server (:data:`pillow_jac.local_batch._WORKER_PRELOAD`): Ctrl-C ignored.

The fork server ignores SIGINT once it has imported its preload modules (torch among them, a few
seconds); before that, a Ctrl-C to the terminal's process group would print a KeyboardInterrupt traceback
from inside torch's import below the command's own one-line message, and end the server.
:mod:`pillow_jac.forkserver_signals_restored`, imported last, puts back the handler the server had (Python's,
or SIGINT ignored where ``jac batch`` ignores it), so that the processes the server forks get it as they would
without this module.
"""

from __future__ import annotations

import signal

#: the server's SIGINT handler before this module (put back by pillow_jac.forkserver_signals_restored)
BEFORE = signal.getsignal(signal.SIGINT)
signal.signal(signal.SIGINT, signal.SIG_IGN)
