"""The driver's loop of the Ray path (:func:`pillow_jac.distributed.convert`): actors started, files submitted.

At most ``slots_each`` calls are submitted to each actor at a time (backpressure, so the driver's and the object
store's memory stay bounded whatever the number of files); an actor takes files once it has started; one that
dies is replaced, and the file it was converting is charged one of :data:`~pillow_jac.batch_plan.ATTEMPTS`.

Which file that was is known only when the actor died with one call unfinished: a process that exits at once
(``os._exit``, the out-of-memory killer) can take with it the result of a call it had finished but not yet
sent, so a death that leaves several calls unfinished charges none of them. They become *suspects*, queued
again in their order, and each suspect is converted alone: submitted to an actor with no other call, which
takes none until it is back. A suspect's death is then its own. A suspect that no actor may take yet is
passed by the files behind it, which go to the actors that may take them; the order is kept otherwise.

An actor can also die with no call in flight (its node lost, the out-of-memory killer), unnoticed until a
file sent to it fails, with the error of a file that killed it: :class:`ray.exceptions.ActorDiedError` is
raised "either because the actor process dies while executing a task, or because a task is submitted to a
dead actor" (its documentation; none of its attributes, nor its message, tells which). So a file sent to an
actor that has converted a file and has no call in flight follows a *probe*, a call of its ``info()``: an
actor runs one caller's calls in the order they were submitted (Ray's "Actor Task Execution Order"), so a
probe that comes back shows the actor alive when the file's call started, and the death is the file's. When
the probe does not come back either, the actor may have died before any of its unfinished calls ran: they
are queued again, uncharged and not suspects. (A file that kills its actor at once can take the probe's
result with it, as above; it is charged where it meets an actor that needs no probe: a new one, or one with
a call in flight.)

The replacements are bounded by the files: a death either charges a file (at most :data:`ATTEMPTS` times
each), or makes at least two files suspects (suspects die only alone: at most one such death per two files),
or follows a probe that did not come back, and only actors that converted a file are probed (a different file
for each actor: at most one such death per file). So at most ``files * (ATTEMPTS + 1.5)`` actors are replaced.
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
    on; one that may have come before its calls reached it (its probe unanswered) charges none (the module's
    notes, which also bound the replacements).
    """
    report = Report()
    actors: list[Any] = []
    starting: dict[Any, Any] = {}  # the info() call of an actor that has not started yet -> the actor
    pending: dict[Any, tuple[Any, str, str]] = {}  # a submitted call -> its actor, source and output
    in_flight: dict[Any, int] = {}  # an actor -> how many of its calls are in pending
    probes: dict[Any, Any] = {}  # an actor -> its probe, until a result of its comes back (the module's notes)
    converted: set[Any] = set()  # the actors that a result came back from
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

    def submit(actor: Any, src: str, dst: str) -> None:
        if not in_flight.get(actor) and actor in converted:
            probes[actor] = actor.info.remote()
        in_flight[actor] = in_flight.get(actor, 0) + 1
        pending[actor.convert.remote(src, dst, *options(src, dst))] = (actor, src, dst)

    try:
        for _ in range(workers):
            add_actor()
        todo = _Queue(jobs)
        attempts: dict[str, int] = {}
        dead: set[Any] = set()
        while todo or pending:
            waiting = []  # slots that take no file now: their actor converts a suspect, or only suspects are left
            while todo and slots:
                actor = slots.popleft()
                if actor in dead:
                    continue
                item = _next_file(actor, todo, pending, suspects)
                if item is None:
                    waiting.append(actor)
                    continue
                submit(actor, *item)
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
                    _lost(ray, actor, probes.pop(actor, None), pending, todo, attempts, suspects, finish)
                    dead.add(actor)
                    in_flight.pop(actor, None)
                    converted.discard(actor)
                    if todo:  # a replacement only for files left to convert
                        add_actor()
                    continue
                except ray.exceptions.RayError as e:  # e.g. a result that could not be transferred
                    result = FileResult(src, dst, "failed", one_line(e))
                del pending[ref]
                in_flight[actor] -= 1
                converted.add(actor)
                probes.pop(actor, None)  # alive after this call: the next one starts on a live actor
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


def _next_file(
    actor: Any, todo: _Queue, pending: dict[Any, tuple[Any, str, str]], suspects: set[str]
) -> tuple[str, str] | None:
    """The file ``actor`` takes next, taken out of ``todo``; None where it may take none now.

    The first file, but a suspect only with no other call, and nothing while it converts one: an actor with other
    calls passes the suspects (which keep their places) and takes the first file that is none. Read from the calls
    submitted, only while there are suspects (after a death, until they are done).
    """
    if not suspects:
        return todo.popleft()
    mine = [submitted for owner, submitted, _ in pending.values() if owner is actor]
    if any(submitted in suspects for submitted in mine):
        return None
    return todo.popleft() if not mine else todo.pop_first_not_in(suspects)


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
            self._pull()
        return self._back[0]

    def pop_first_not_in(self, passed: set[str]) -> tuple[str, str] | None:
        """The first file whose source is not in ``passed``, taken out; those before it keep their places.

        None where every file left is in ``passed``. Only those are looked at, and the file after them.
        """
        i = 0
        while i < len(self._back) or self._left:
            if i == len(self._back):
                self._pull()
            item = self._back[i]
            if item[0] not in passed:
                del self._back[i]
                return item
            i += 1
        return None

    def _pull(self) -> None:
        """Move the next file of ``jobs`` behind those put back."""
        src, dst = next(self._fresh)
        self._left -= 1
        self._back.append((str(src), str(dst)))

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
    probe: Any,
    pending: dict[Any, tuple[Any, str, str]],
    todo: _Queue,
    attempts: dict[str, int],
    suspects: set[str],
    finish: Callable[[FileResult], None],
) -> None:
    """Take a dead actor's calls back.

    Those it finished are reported. With ``probe`` (the actor's probe, sent before its calls that are still
    pending) unanswered, the actor may have died before any of them ran: the unfinished ones are queued again,
    uncharged. Else one unfinished call alone is the one it died converting: charged an attempt, and queued
    again while attempts are left. Several unfinished calls are queued again uncharged, as suspects: the oldest
    may have finished with its result lost in the death (the module's notes).
    """
    calls = [(ref, src, dst) for ref, (owner, src, dst) in pending.items() if owner is actor]  # submission order
    for ref, _, _ in calls:
        del pending[ref]
    # A call it finished just before dying may still be on its way: every call's outcome is waited for (they
    # all end soon, with a result or the actor's death), or a finished call would be taken for the running one.
    refs = [ref for ref, _, _ in calls] + ([] if probe is None else [probe])
    ray.wait(refs, num_returns=len(refs), timeout=_SETTLE_SECONDS)
    unfinished = []
    for ref, src, dst in calls:
        result = _outcome(ray, ref)
        if result is None:
            unfinished.append((src, dst))
        else:
            finish(result)
    if not unfinished:
        return
    unanswered = probe is not None and _outcome(ray, probe) is None
    if unanswered or len(unfinished) > 1:
        if not unanswered:
            suspects.update(src for src, _ in unfinished)
        for item in reversed(unfinished):
            todo.appendleft(item)
        return
    src, dst = unfinished[0]
    attempts[src] = attempts.get(src, 0) + 1
    if attempts[src] < ATTEMPTS:
        todo.appendleft((src, dst))
        return
    finish(FileResult(src, dst, "failed", "the worker died converting it (out of memory? a lost node?)"))


def _outcome(ray: Any, ref: Any) -> Any:
    """The result of a call that is back, else None (its actor died before finishing it, or it is not back yet)."""
    try:
        return ray.get(ref, timeout=0)
    except ray.exceptions.RayError:
        return None


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
