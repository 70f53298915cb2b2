"""Tests of ``pillow_jac.ray_driver``, the Ray path's driver loop, on a fake Ray (no process is started).

The fake runs each actor's calls in rounds, at the driver's blocking waits, so the driver's choices (which file
goes to which actor, what a death is charged) can be replayed exactly. Tests on a real local Ray are in
``tests/test_distributed.py``.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from pillow_jac import batch_plan, distributed, ray_driver


class _FakeRef:
    def __init__(self, actor, kind: str, src: str = "", dst: str = "") -> None:
        self.actor, self.kind, self.src, self.dst = actor, kind, src, dst
        self.done, self.value, self.error, self.in_transit = False, None, None, False
        self.rounds = 3 if "slow" in src else 1  # the waits it runs for


class _FakeActor:
    """An actor of :class:`_FakeRay`: runs its queued calls in order at a blocking wait; a "poison" file kills it.

    A result it finished becomes visible only at the next blocking wait (still on its way to the driver), as a
    result can be when its actor dies right after; with ``loses_replies``, such a result is lost with the actor
    (a process that exits at once does not send what it had not sent yet). A "slow" file runs for three waits,
    and the calls after it wait for it. Each file it is sent is noted in ``ray.sent``, with the files it had in
    flight then."""

    def __init__(self, ray, loses_replies: bool = False) -> None:
        self.ray, self.queue, self.alive, self.loses_replies = ray, [], True, loses_replies
        self.info = types.SimpleNamespace(remote=lambda: self._call("info"))
        self.convert = types.SimpleNamespace(remote=lambda src, dst, *options: self._call("convert", src, dst))
        ray.actors.append(self)

    def _call(self, kind: str, src: str = "", dst: str = "") -> _FakeRef:
        ref = _FakeRef(self, kind, src, dst)
        if kind == "convert":
            self.ray.sent.append((Path(src).stem, [Path(r.src).stem for r in self.queue if r.kind == "convert"]))
        if self.alive:
            self.queue.append(ref)
        else:
            ref.done, ref.error = True, self.ray.exceptions.RayActorError("dead")
        return ref

    def run_queue(self) -> None:
        for ref in self.queue:
            if ref.in_transit:
                ref.done, ref.in_transit = True, False
            elif ref.done:
                continue
            elif not self.alive:
                ref.done, ref.error = True, self.ray.exceptions.RayActorError("died")
            elif ref.rounds > 1:  # still running: the calls after it wait
                ref.rounds -= 1
                break
            elif "poison" in ref.src:
                self.alive = False
                ref.done, ref.error = True, self.ray.exceptions.RayActorError("died")
                for sent in self.queue if self.loses_replies else ():  # replies not yet sent die with it
                    if sent.in_transit:
                        sent.done, sent.in_transit, sent.error = True, False, ref.error
            elif ref.kind == "info":
                ref.done, ref.value = True, {"pid": id(self)}
            else:
                result = distributed.FileResult(ref.src, ref.dst, "done", None, 1, 1, pid=id(self))
                ref.in_transit, ref.value = True, result
        self.queue = [ref for ref in self.queue if not ref.done]


class _FakeRay:
    def __init__(self) -> None:
        class RayError(Exception):
            pass

        class RayActorError(RayError):
            pass

        self.exceptions = types.SimpleNamespace(RayError=RayError, RayActorError=RayActorError)
        self.actors: list[_FakeActor] = []
        self.sent: list[tuple[str, list[str]]] = []  # each file sent, with the files its actor had in flight

    def wait(self, refs, num_returns=1, timeout=None):
        if len(self.actors) > 1000:
            pytest.fail("the driver replaced actors without end")
        if timeout != 0:
            for _ in range(100):
                if sum(r.done for r in refs) >= num_returns:
                    break
                for actor in list(self.actors):
                    actor.run_queue()
        ready = [r for r in refs if r.done]
        return ready, [r for r in refs if not r.done]

    def get(self, ref, timeout=None):
        if not ref.done:
            raise self.exceptions.RayError("not ready")
        if ref.error is not None:
            raise ref.error
        return ref.value

    def cancel(self, ref):
        pass

    def kill(self, actor):
        actor.alive = False


def _jobs(*names: str) -> dict[Path, Path]:
    return {Path(f"/in/{n}.png"): Path(f"/out/{n}.jac") for n in names}


def _run(ray: _FakeRay, jobs, workers: int, slots_each: int, report_file, actor=None) -> distributed.Report:
    """``ray_driver.run`` of ``jobs`` on ``workers`` actors of ``actor`` (by default :class:`_FakeActor`)."""
    new_actor = actor or (lambda: _FakeActor(ray))
    return ray_driver.run(ray, jobs, new_actor, workers, slots_each, lambda src, dst: ("jac",), report_file)


def _bound(files: int) -> float:
    """The most replacements the driver's notes allow for ``files`` files (:mod:`pillow_jac.ray_driver`)."""
    return files * (batch_plan.ATTEMPTS + 1.5)


def test_a_result_on_its_way_when_its_actor_dies_is_not_taken_for_the_running_call() -> None:
    """An actor that finished ``b`` and then died on ``poison``: ``b``'s result, still on its way, looked like an
    unfinished call, so ``b`` (the oldest) was charged for the death, twice, and failed instead of ``poison``."""
    ray = _FakeRay()
    jobs = _jobs("b", "poison", "c")
    seen: list[distributed.FileResult] = []
    report = _run(ray, jobs, 1, 2, seen.append)
    assert [Path(f.src).stem for f in report.failed] == ["poison"], report.failed
    assert report.done == 2 and sorted(r.src for r in seen) == sorted(str(p) for p in jobs)


def test_a_finished_call_whose_reply_dies_with_its_actor_is_not_charged() -> None:
    """An actor that finished ``b`` and died on ``poison`` before sending ``b``'s result: both calls ended with the
    actor's death, so ``b`` (the older) was charged for it, at every try, and failed beside ``poison`` (as a
    clean-checkout CI run saw on a real Ray)."""
    ray = _FakeRay()
    jobs = _jobs("b", "poison1", "a", "poison2", "c", "d")
    seen: list[distributed.FileResult] = []
    report = _run(ray, jobs, 1, 2, seen.append, actor=lambda: _FakeActor(ray, loses_replies=True))
    assert sorted(Path(f.src).stem for f in report.failed) == ["poison1", "poison2"], report.failed
    assert report.done == 4 and sorted(r.src for r in seen) == sorted(str(p) for p in jobs)
    assert len(ray.actors) - 1 <= _bound(len(jobs))


def test_a_file_sent_to_an_actor_that_died_idle_is_not_charged() -> None:
    """Two actors die with no call in flight (a lost node) after their first file; the driver learns it only when
    ``d`` is sent to each. Ray's error is the same as for a death while converting, so ``d`` was charged at
    both and failed without having killed anything. A file that does kill an actor it meets idle is charged."""
    ray = _FakeRay()
    seen: list[distributed.FileResult] = []

    def lose_node(result: distributed.FileResult) -> None:
        seen.append(result)
        if Path(result.src).stem in ("a", "b"):
            next(actor for actor in ray.actors if id(actor) == result.pid).alive = False

    jobs = _jobs("a", "b", "c", "d")
    report = _run(ray, jobs, 3, 1, lose_node)
    assert report.failed == [] and report.done == 4
    assert [name for name, _ in ray.sent].count("d") == 3  # the two dead actors, then one alive
    ray = _FakeRay()
    seen.clear()
    jobs = _jobs("a", "b", "poison")
    report = _run(ray, jobs, 1, 1, seen.append)
    assert [Path(f.src).stem for f in report.failed] == ["poison"] and report.done == 2
    assert [name for name, _ in ray.sent].count("poison") == batch_plan.ATTEMPTS  # it killed every actor it met


def test_replacements_stay_bounded_when_every_actor_dies_before_its_first_file() -> None:
    """Actors that start, then die before the first file sent to them runs (a node lost as each starts): the
    deaths are charged (an actor that has converted nothing is not probed), so every file fails after its
    attempts, and the actors replaced stay within the driver's bound instead of growing for ever."""
    ray = _FakeRay()

    class DiesWhenSentAFile(_FakeActor):
        def _call(self, kind: str, src: str = "", dst: str = "") -> _FakeRef:
            if kind == "convert":
                self.alive = False  # before it runs anything sent to it, a probe included
            return super()._call(kind, src, dst)

    jobs = _jobs("a", "b", "c")
    report = _run(ray, jobs, 2, 2, lambda result: None, actor=lambda: DiesWhenSentAFile(ray))
    assert report.done == 0 and len(report.failed) == len(jobs)
    assert len(ray.actors) - 2 <= _bound(len(jobs))


def test_files_behind_a_suspect_go_to_busy_actors() -> None:
    """``poison`` kills its actor with ``m`` queued behind it: both become suspects, converted alone. ``m``, at the
    head of the queue once ``poison`` is taken, waited for an actor with nothing in flight, and ``r1``, ``r2``
    behind it waited too, although the busy actor converting ``slow`` had a free slot for them."""
    ray = _FakeRay()
    seen: list[distributed.FileResult] = []
    report = _run(ray, _jobs("a", "slow", "poison", "m", "r1", "r2"), 2, 2, seen.append)
    assert [Path(f.src).stem for f in report.failed] == ["poison"] and report.done == 5
    sent = [name for name, _ in ray.sent]
    assert sent.index("r1") < sent.index("m", sent.index("m") + 1)  # it passed the suspect ``m``
    assert sent.index("r1") < sent.index("r2")  # and the order is kept otherwise
    in_flight_with = {name: others for name, others in ray.sent[4:]}  # after the first actor's death
    assert in_flight_with["poison"] == [] and in_flight_with["m"] == []  # the suspects alone
    for name, others in ray.sent[4:]:
        assert not {"poison", "m"} & set(others), (name, others)  # and nothing beside them
    assert in_flight_with["r1"] == ["slow"]


def test_workers_that_cannot_start_say_why() -> None:
    """An actor failing in its ``__init__`` (a bad device, a missing model) was dropped with its error: the user
    saw only "the Ray workers could not start"."""
    ray = _FakeRay()

    class NotStarting(_FakeActor):
        def _call(self, kind: str, src: str = "", dst: str = "") -> _FakeRef:
            ref = _FakeRef(self, kind, src, dst)
            message = "The actor died in its creation task\nTraceback (most recent call last):\nValueError: bad device"
            ref.done, ref.error = True, self.ray.exceptions.RayActorError(message)
            return ref

    with pytest.raises(RuntimeError, match="the Ray workers could not start: ValueError: bad device") as info:
        _run(ray, _jobs("a"), 2, 1, lambda result: None, actor=lambda: NotStarting(ray))
    assert isinstance(info.value.__cause__, ray.exceptions.RayActorError)


def test_the_queue_passes_only_the_files_named() -> None:
    queue = ray_driver._Queue(_jobs("s1", "s2", "a", "b"))
    suspects = {"/in/s1.png", "/in/s2.png"}
    assert queue.pop_first_not_in(suspects) == ("/in/a.png", "/out/a.jac")
    assert [src for src, _ in queue] == ["/in/s1.png", "/in/s2.png", "/in/b.png"]  # the others in their order
    queue = ray_driver._Queue(_jobs("s1"))
    assert queue.pop_first_not_in({"/in/s1.png"}) is None and len(queue) == 1
