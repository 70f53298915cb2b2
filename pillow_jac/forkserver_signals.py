"""Imported first by ``jac batch``'s fork server (:data:`pillow_jac.local_batch._WORKER_PRELOAD`): Ctrl-C ignored.

The fork server ignores SIGINT once it has imported its preload modules (torch among them, a few
seconds); a Ctrl-C to the terminal's process group before that printed a KeyboardInterrupt traceback
from inside torch's import below the command's own one-line message. The server's workers set their
own handling (:func:`pillow_jac.local_batch._worker_init`); the command's process is not this one.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
