"""Where the Ray path's workers run: the cluster's address checked, a local instance started, workers placed.

:func:`pillow_jac.distributed.convert` connects to ``address`` (after :func:`check_reachable`), or starts a
local instance with :func:`start_ray` (which leaves the process's environment, random generator and fault
handler as it found them), and sizes its workers with :func:`placement`.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["CONNECT_SECONDS", "check_reachable", "placement", "start_ray"]


def placement(
    resources: dict[str, float],
    files: int,
    workers: int | None,
    num_cpus: float,
    num_gpus: float | None,
    device: str | None,
    grows: bool = True,
) -> tuple[int, float, str | None]:
    """``(workers, num_gpus, device)`` for ``files`` files on a cluster of ``resources``.

    :func:`pillow_jac.distributed.convert`'s defaults.

    A worker gets a GPU when the cluster has some, unless ``device`` is not a GPU device; ``workers``
    defaults to as many as the cluster holds now, and is never more than the files. More than the cluster
    holds is warned about: they wait for room (an autoscaling cluster may grow), and the others convert
    meanwhile.

    Raises:
        ValueError: the cluster holds no worker at all now and ``workers`` is not given, or it cannot grow
            (``grows`` False: a local instance started for this call) and holds none.
    """
    if num_gpus is None:
        wants_gpu = device is None or str(device).split(":")[0] in ("cuda", "auto")
        num_gpus = 1.0 if wants_gpu and resources.get("GPU", 0) > 0 else 0.0
    if device is None and num_gpus > 0:
        device = "cuda"
    fits = resources.get("CPU", 0) / num_cpus
    if num_gpus > 0:
        fits = min(fits, resources.get("GPU", 0) / num_gpus)
    kind = f"{num_cpus:g} CPU and {num_gpus:g} GPU"
    if int(fits) == 0 and files and (workers is None or not grows):
        raise ValueError(
            f"the cluster holds no worker of {kind} now ({resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs): ask for less"
            + (", or give workers= to wait until it has room" if grows else "; this local instance does not grow")
        )
    asked = workers
    workers = min(max(1, int(fits)) if workers is None else workers, files)
    if asked is not None and workers > int(fits) and not grows:  # the others would hold their place, unstarted
        warnings.warn(
            f"{workers} workers of {kind} each asked for, but this local instance holds {int(fits)} and does not "
            f"grow: {int(fits)} convert",
            stacklevel=3,
        )
        workers = int(fits)
    if asked is not None and workers > int(fits):
        then = "the others start when it has room" if int(fits) else "nothing converts until it has room"
        warnings.warn(
            f"{workers} workers of {kind} each asked for, but the cluster holds {int(fits)} now: {then}",
            stacklevel=3,
        )
    return workers, num_gpus, device


#: seconds to wait for a Ray address to take a connection before saying it cannot be reached
CONNECT_SECONDS = 10.0


def check_reachable(address: str) -> None:
    """Raise :class:`ConnectionError` at once when ``HOST:PORT`` (or ``ray://HOST:PORT``) takes no connection.

    ``ray.init`` itself retries an address that does not answer for many minutes, printing only its own log
    lines. ``auto`` and other forms are left to Ray.
    """
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from None


def start_ray(ray: Any, options: dict[str, Any]) -> Callable[[], None]:
    """``ray.init(**options)``; returns the function that stops that instance and puts the process back.

    ``ray.init`` changes the calling process for good, beyond the instance it starts: it installs its own
    SIGTERM handler (exit 15 and a stack dump), which would replace the caller's (``jac``'s stops as Ctrl-C
    does: status 143, temporary files removed, the workers cancelled), so the caller's is put back at once,
    also when ``ray.init`` fails; and it sets environment variables (``PYTHONBREAKPOINT`` among them, after
    which ``breakpoint()`` no longer stops in the caller's debugger), enables :mod:`faulthandler` and draws
    from :mod:`random`'s shared generator. After ``ray.shutdown()`` (or a failed ``ray.init``) the
    variables it changed are put back, unless something has changed them since, and so are faulthandler's
    state and the generator's, unless something other than ``ray.init`` and ``ray.shutdown`` has drawn
    from it meanwhile: a program that seeded :mod:`random` then draws the numbers it would have drawn
    without the batch.
    """
    import faulthandler
    import random
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    environ, generator, fault_handler = dict(os.environ), random.getstate(), faulthandler.is_enabled()

    def changes() -> tuple[dict[str, str], list[str]]:
        """The variables Ray has set so far, and those it has removed."""
        return {k: v for k, v in os.environ.items() if environ.get(k) != v}, [k for k in environ if k not in os.environ]

    def put_back(changed: dict[str, str], removed: list[str], untouched: bool) -> None:
        for key, value in changed.items():
            if os.environ.get(key) == value:
                if key in environ:
                    os.environ[key] = environ[key]
                else:
                    del os.environ[key]
        for key in removed:
            os.environ.setdefault(key, environ[key])
        if untouched:
            random.setstate(generator)
        if not fault_handler:
            faulthandler.disable()

    try:
        ray.init(**options)
    except BaseException:
        put_back(*changes(), untouched=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    started, drawn = changes(), random.getstate()

    def stop() -> None:
        untouched = random.getstate() == drawn  # ray.shutdown draws too
        ray.shutdown()
        put_back(*started, untouched=untouched)

    return stop
