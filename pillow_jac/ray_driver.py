"""The driver's loop of the Ray path (:func:`pillow_jac.distributed.convert`): actors started, files submitted.

At most ``slots_each`` calls are submitted to each actor at a time (backpressure, so the driver's and the object
store's memory stay bounded whatever the number of files); an actor takes files once it has started; one that
dies is replaced, and the file it was converting is charged one of :data:`~pillow_jac.batch_plan.ATTEMPTS`.

Which file that was is known only when the actor died with one call unfinished: a process that exits at once
(``os._exit``, the out-of-memory killer) can take with it the result of a call it had finished but not yet
sent, so a death that leaves several calls unfinished charges none of them. They become *suspects*, queued
again in their order, and each suspect is converted alone: submitted to an actor with no other call, which
takes none until it is back. A suspect's death is then its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .batch_plan import ATTEMPTS
from .conversion import one_line
from .ray_worker import FileResult, Report

__all__ = ["run"]

#: how long a dead actor's calls may take to report their outcome (a result in transit, or the death)
_SETTLE_SECONDS = 30.0


def run(
    ray: Any,
    jobs: dict[Path, Path],
    new_actor: Callable[[], Any],
    workers: int,
    slots_each: int,
    options: Callable[[str, str], tuple[Any, ...]],
    report_file: Callable[[FileResult], None],
) -> Report:
    """Start the actors, then keep at most ``slots_each`` calls submitted to each until every file is back.

    ``options(src, dst)``: the arguments of ``Worker.convert`` after the source and output.

    An actor takes files once it has started, so actors the cluster cannot place yet only wait. An actor
    that dies (its process killed, its node lost) is replaced. A death that leaves one call unfinished charges
    its file one of its :data:`ATTEMPTS`; one that leaves several makes them suspects, converted alone from then
    on (the module's notes). So a file that kills every worker it meets fails alone, and the number of
    replacements is bounded by the files: a death either charges a file or makes at least two files suspects,
    and suspects die only alone.
    """
    report = Report()
    actors: list[Any] = []
    starting: dict[Any, Any] = {}  # the info() call of an actor that has not started yet -> the actor
    pending: dict[Any, tuple[Any, str, str]] = {}  # a submitted call -> its actor, source and output
    slots: deque = deque()
    started_any, start = False, 0.0
    start_error: BaseException | None = None  # why the first actor that could not start failed
    suspects: set[str] = set()  # files converted alone until done: each was unfinished when an actor died with others

    def finish(result: FileResult) -> None:
        suspects.discard(result.src)
        report.add(result)
        report_file(result)

    def add_actor() -> None:
        actor = new_actor()
        actors.append(actor)
        starting[actor.info.remote()] = actor

    try:
        for _ in range(workers):
            add_actor()
        todo = _Queue(jobs)
        attempts: dict[str, int] = {}
        dead: set[Any] = set()
        while todo or pending:
            waiting = []  # slots that cannot take the next file now: their actor converts a suspect, or it is busy
            while todo and slots:
                actor = slots.popleft()
                if actor in dead:
                    continue
                src, dst = todo.peek()
                if suspects and not _may_take(actor, src, pending, suspects):
                    waiting.append(actor)
                    continue
                todo.popleft()
                pending[actor.convert.remote(src, dst, *options(src, dst))] = (actor, src, dst)
            slots.extend(waiting)
            if not pending and not starting:
                why = "" if start_error is None else f": {_cause(start_error)}"
                if not started_any:
                    raise RuntimeError(f"the Ray workers could not start{why}") from start_error
                for src, dst in todo:  # no worker is left to take them, and none can be started
                    finish(FileResult(src, dst, "failed", f"no Ray worker could start{why}"))
                break
            refs = [*pending, *starting]
            ray.wait(refs, num_returns=1)
            # Everything back by now, in one pass over the list: at thousands of results a second, one pass per
            # result would cost the driver more than the results themselves.
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        dead.add(actor)  # it could not start: not replaced (the next would fail alike)
                        start_error = start_error or exc  # the cause, for the error if none starts
                        continue
                    if not started_any:
                        started_any, start = True, time.perf_counter()
                    slots.extend([actor] * slots_each)
                    continue
                if ref not in pending:  # a call of an actor whose death was handled earlier in this pass
                    continue
                actor, src, dst = pending[ref]
                try:
                    result = ray.get(ref)
                except _deaths(ray):
                    _lost(ray, actor, pending, todo, attempts, suspects, finish)
                    dead.add(actor)
                    if todo:  # a replacement only for files left to convert
                        add_actor()
                    continue
                except ray.exceptions.RayError as e:  # e.g. a result that could not be transferred
                    result = FileResult(src, dst, "failed", one_line(e))
                del pending[ref]
                slots.append(actor)
                finish(result)
        report.seconds = time.perf_counter() - start if started_any else 0.0
        for actor in actors:
            if actor not in dead and actor not in starting.values():
                try:
                    report.workers.append(ray.get(actor.info.remote()))
                except ray.exceptions.RayError:  # lost since its last file
                    pass
        return report
    finally:
        # Interrupted: calls not yet running are cancelled; a running one ends with its worker, which can
        # leave a temporary file beside its output (see the module's notes on resume).
        for ref in pending:
            ray.cancel(ref)
        for actor in actors:
            ray.kill(actor)


def _may_take(actor: Any, src: str, pending: dict[Any, tuple[Any, str, str]], suspects: set[str]) -> bool:
    """Whether ``actor`` may take ``src`` now: a suspect only with no other call, and nothing while it converts one.

    Read from the calls submitted, only while there are suspects (after a death, until they are done).
    """
    mine = [submitted for owner, submitted, _ in pending.values() if owner is actor]
    return not mine if src in suspects else not any(submitted in suspects for submitted in mine)


class _Queue:
    """The files still to submit: those of ``jobs`` not yet taken, after those put back.

    ``jobs`` is read as it is, not copied: a copy of every path as strings would cost the driver about 160
    more bytes a file.
    """

    def __init__(self, jobs: dict[Path, Path]) -> None:
        self._fresh = iter(jobs.items())
        self._left = len(jobs)
        self._back: deque[tuple[str, str]] = deque()

    def __len__(self) -> int:
        return self._left + len(self._back)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        while self:
            yield self.popleft()

    def popleft(self) -> tuple[str, str]:
        item = self.peek()
        self._back.popleft()
        return item

    def peek(self) -> tuple[str, str]:
        """The next file, left in the queue."""
        if not self._back:
            src, dst = next(self._fresh)
            self._left -= 1
            self._back.append((str(src), str(dst)))
        return self._back[0]

    def appendleft(self, item: tuple[str, str]) -> None:
        self._back.appendleft(item)


#: the errors of a call that mean its actor is gone: it died, was killed for memory, or lost its node
_DEATH_ERRORS = ("RayActorError", "OutOfMemoryError", "WorkerCrashedError", "NodeDiedError")


def _deaths(ray: Any) -> tuple[type[BaseException], ...]:
    """The classes of :data:`_DEATH_ERRORS` that this Ray has."""
    return tuple(getattr(ray.exceptions, name) for name in _DEATH_ERRORS if hasattr(ray.exceptions, name))


def _lost(
    ray: Any,
    actor: Any,
    pending: dict[Any, tuple[Any, str, str]],
    todo: _Queue,
    attempts: dict[str, int],
    suspects: set[str],
    finish: Callable[[FileResult], None],
) -> None:
    """Take a dead actor's calls back.

    Those it finished are reported. One unfinished call alone is the one it died converting: charged an attempt,
    and queued again while attempts are left. Several unfinished calls are queued again uncharged, as suspects:
    the oldest may have finished with its result lost in the death (the module's notes).
    """
    calls = [(ref, src, dst) for ref, (owner, src, dst) in pending.items() if owner is actor]  # submission order
    for ref, _, _ in calls:
        del pending[ref]
    # A call it finished just before dying may still be on its way: every call's outcome is waited for (they
    # all end soon, with a result or the actor's death), or a finished call would be taken for the running one.
    ray.wait([ref for ref, _, _ in calls], num_returns=len(calls), timeout=_SETTLE_SECONDS)
    unfinished = []
    for ref, src, dst in calls:
        try:
            result = ray.get(ref, timeout=0)
        except ray.exceptions.RayError:  # died before finishing it (or its outcome did not come in time)
            result = None
        if result is None:
            unfinished.append((src, dst))
        else:
            finish(result)
    if len(unfinished) > 1:
        suspects.update(src for src, _ in unfinished)
        for item in reversed(unfinished):
            todo.appendleft(item)
        return
    if not unfinished:
        return
    src, dst = unfinished[0]
    attempts[src] = attempts.get(src, 0) + 1
    if attempts[src] < ATTEMPTS:
        todo.appendleft((src, dst))
        return
    finish(FileResult(src, dst, "failed", "the worker died converting it (out of memory? a lost node?)"))


def _cause(exc: BaseException) -> str:
    r"""One line for a Ray error: the worker's own exception (its message's last ``Name: text`` line), else its first.

    Example:
        >>> _cause(RuntimeError("The actor died in its creation task\nTraceback...\nValueError: bad device"))
        'ValueError: bad device'
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        name, colon, _ = line.partition(": ")
        if colon and name.replace(".", "").isidentifier() and name.split(".")[-1][:1].isupper():
            return line
    return one_line(exc)
