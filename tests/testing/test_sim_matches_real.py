"""The simulated runtime and the real runtime agree, on the same scenarios.

``SimRuntime`` drives the same ``WorkerCore`` as the real ``Runtime``, with its own
worker shell (SimWorker, SimEngine) and controller; each test runs one scenario on both
(the real one on every backend) and compares what the application sees:

* a broad scenario (spawns placed by the balancer, application messages, requests, bus
  pub/sub across workers, broadcasts, task-emitted spawns, a failing task, a graceful
  shutdown): each task's outputs, the replies and the ended and failed tasks must be
  identical; only the interleaving *between* tasks may differ (threads);
* the core's fixed paths (synchronous driver delivery, a task ending in its spawn, a
  local publish from a task that ends, a task that ends on a deadline during shutdown,
  a spawn and a synchronous delivery from a tick), a host doing I/O at start, and
  random scripts on one worker, where the whole event stream must be identical.

Tests whose docstring starts with "Bug:" failed before their fix: it is their
regression note.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from sansio_aio import (
    Broadcast,
    BroadcastMessage,
    BusMessage,
    Direct,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Request,
    Runtime,
    SendTo,
    Spawn,
    Spawned,
    Subscribe,
    Task,
    TaskEnded,
    TaskFailed,
    TaskOutput,
    TaskRef,
    UnknownTarget,
)
from sansio_aio.testing import SimRuntime
from tests.drivers import Poke, Poked, SyncDriver
from tests.helpers import T, collect, outs
from tests.tasks import Instant, Poker, PubThenEnd, TaggedSubscriber

# ------------------------------------------------------------------- a broad scenario


class ScenarioTask(Task):
    """Echo, double on request, publish on demand, spawn children, fail on demand."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        if cfg == "sub":
            self.emit(Subscribe("news"))

    def on_event(self, now: float, event: Any) -> None:
        match event:
            case Ext(msg=("publish", n)):
                for i in range(n):
                    self.emit(Publish("news", i))
            case Ext(msg=("spawn", n)):
                for i in range(n):
                    self.emit(Spawn("worker", None, tag=i))
            case Ext(msg="fail"):
                raise RuntimeError("asked to fail")
            case Ext(msg=msg):
                self.emit(ExtOut(("echo", msg)))
            case Request(id=rid, msg=x):
                self.emit(Reply(rid, 2 * x))
            case BusMessage(channel=ch, msg=m):
                self.emit(ExtOut(("bus", ch, m)))
            case Spawned(tag=tag, ref=ref, error=err):
                self.emit(ExtOut(("spawned", tag, ref, err)))

    def on_shutdown(self, now: float) -> None:
        super().on_shutdown(now)
        self.emit(ExtOut("bye"))


class BroadcastingHost(Task):
    """Broadcasts on "broadcast"; reports every broadcast it receives."""

    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.worker = worker

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "broadcast":
            self.emit(Broadcast(("hello", self.worker)))
        elif type(event) is BroadcastMessage:
            self.emit(ExtOut(("bcast", self.worker, event.source, event.msg)))


SCENARIO_KINDS = {"worker": ScenarioTask}


async def scenario(rt: Any) -> dict[str, Any]:
    """Drive ``rt`` (real or simulated) through the scenario; a normalised record of it."""
    events: list[Any] = []

    async def wait_outputs(n: int) -> None:
        got = 0
        while got < n:
            ev = await asyncio.wait_for(rt.next_event(), 10)
            events.append(ev)
            got += isinstance(ev, TaskOutput)

    subs = [await rt.spawn("worker", "sub") for _ in range(3)]
    pub = await rt.spawn("worker")
    echo = await rt.spawn("worker")
    rt.send_nowait(pub, ("publish", 20))
    await wait_outputs(60)
    for i in range(10):
        rt.send_nowait(echo, i)
    await wait_outputs(10)
    replies = [await rt.request(echo, x) for x in (1, 2, 3)]
    parent = await rt.spawn("worker")
    rt.send_nowait(parent, ("spawn", 2))
    await wait_outputs(2)
    rt.send_nowait(1, "broadcast")
    await wait_outputs(2)
    doomed = await rt.spawn("worker")
    rt.send_nowait(doomed, "fail")
    while not any(isinstance(e, TaskFailed) for e in events):
        events.append(await asyncio.wait_for(rt.next_event(), 10))
    placed = [str(r) for r in (*subs, pub, echo, parent, doomed)]
    await rt.shutdown()
    events.extend(rt.poll_events())
    per_task: dict[str, list[Any]] = {}
    for ev in events:
        if isinstance(ev, TaskOutput):
            per_task.setdefault(str(ev.task), []).append(ev.msg)
    for msgs in per_task.values():
        # Spawned results come from the worker that hosts each child: different workers,
        # so no order between them (FIFO holds per source, not across sources)
        spawned = sorted((m for m in msgs if m[0] == "spawned"), key=repr)
        msgs[:] = [m for m in msgs if m[0] != "spawned"] + spawned
    return {
        "placed": placed,
        "outputs": per_task,
        "replies": replies,
        "ended": sorted(str(e.task) for e in events if isinstance(e, TaskEnded)),
        "failed": [(str(e.task), e.error) for e in events if isinstance(e, TaskFailed)],
    }


@pytest.mark.sansio_runtime(kinds=SCENARIO_KINDS, workers=2, host=BroadcastingHost)
@pytest.mark.parametrize("runtime", ["uvloop", "epoll", "poll"], indirect=True)
async def test_simulated_and_real_runtime_agree(runtime: Any) -> None:
    real = await scenario(runtime)
    async with SimRuntime(SCENARIO_KINDS, workers=2, host=BroadcastingHost) as sim:
        simulated = await scenario(sim)
    assert simulated == real
    # and the scenario really exercised what it claims
    assert real["replies"] == [2, 4, 6]
    assert [error for _, error in real["failed"]] == ["RuntimeError: asked to fail"]
    assert sum(len(v) for v in real["outputs"].values()) >= 74


# ----------------------------------------------------- the end of the last task at shutdown


class Lingers(Task):
    """On shutdown says "closing" and ends on a deadline 0.5 s later, saying "gone"."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.until: float | None = None

    def on_shutdown(self, now: float) -> None:
        self.emit(ExtOut("closing"))
        self.until = now + 0.5

    def on_tick(self, now: float) -> None:
        if self.until is not None and now >= self.until:
            self.until = None
            self.emit(ExtOut("gone"))
            self.closing = True

    def next_deadline(self) -> float | None:
        return self.until


async def test_last_task_ending_on_a_deadline_at_shutdown_reports_its_outputs() -> None:
    """Bug: when the last task of a closing worker ended in a timer callback (its
    deadline, a tick) or a driver delivery, SimWorker.stopped marked the worker done
    before the core's app buffer reached the controller, and drain_inbox never flushed
    a done worker: the task's last outputs and its TaskEnded were lost (and APP_STOPPED
    overtook them). The real worker flushes after every callback."""
    kinds = {"l": Lingers}
    for rt in (Runtime(kinds, workers=1, tick=60.0), SimRuntime(kinds, tick=60.0)):
        async with rt:
            ref = await rt.spawn("l")
        got = await collect(rt, lambda g: any(isinstance(e, TaskEnded) for e in g))
        assert outs(got) == ["closing", "gone"], type(rt).__name__
        assert [e.task for e in got if isinstance(e, TaskEnded)] == [ref]


# -------------------------------------------------------------- a task that ends in its spawn


async def test_task_that_ends_in_its_spawn_under_the_simulator() -> None:
    """SimRuntime (the same core, its own controller) agrees: the ref is not live."""
    from sansio_aio.testing import SimRuntime

    async with SimRuntime({"i": Instant}, workers=2) as rt:
        ref = await rt.spawn("i")
        got = await rt.next_events()
        assert outs(got) == ["born"] and isinstance(got[-1], TaskEnded)
        with pytest.raises(UnknownTarget):
            await rt.send(ref, "hello")


# ---------------------------------------------------------------- agreement on the fixed paths


class OnDeadline(Task):
    """On "arm": 50 ms later, from its deadline, asks for a child and pokes the driver."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.at: float | None = None
        self.busy = False

    def on_event(self, now: float, event: Any) -> None:
        if self.busy:
            self.emit(ExtOut("RE-ENTERED"))
        if type(event) is Ext and event.msg == "arm":
            self.at = now + 0.05
        elif type(event) is Poked:
            self.emit(ExtOut(event.what))
        elif type(event) is Spawned:
            self.emit(ExtOut(("spawned", event.tag, event.error)))

    def on_tick(self, now: float) -> None:
        if self.at is not None and now >= self.at:
            self.at = None
            self.emit(Spawn("instant", None, tag="kid"))
            self.emit(Poke("poked"))

    def pop_output(self, now: float) -> Any | None:
        out = super().pop_output(now)
        self.busy = out is not None
        return out

    def next_deadline(self) -> float | None:
        return self.at


AGREE_KINDS = {
    "poker": Poker,
    "instant": Instant,
    "pub": PubThenEnd,
    "sub": TaggedSubscriber,
    "deadline": OnDeadline,
    "lingers": Lingers,
}


async def fixed_paths(rt: Any) -> dict[str, Any]:
    """Drive ``rt`` (real or simulated, 2 workers) through the core's fixed paths."""
    events: list[Any] = []

    async def until(pred: Any) -> None:
        while not pred():
            events.extend(await asyncio.wait_for(rt.next_events(), T))

    def said(ref: TaskRef) -> list[Any]:
        return [e.msg for e in events if isinstance(e, TaskOutput) and e.task == ref]

    def ended(ref: TaskRef) -> bool:
        return any(isinstance(e, TaskEnded | TaskFailed) and e.task == ref for e in events)

    # a local publish from a task that ends: delivered before the next message
    sub = await rt.spawn("sub", "ch", worker=0)
    pub = await rt.spawn("pub", worker=0)
    rt.send_nowait(pub, ("end", "ch"))
    rt.send_nowait(sub, "after")
    await until(lambda: len(said(sub)) >= 2 and ended(pub))
    # synchronous driver delivery inside one application batch
    poker = await rt.spawn("poker", worker=1)
    for msg in ("go", "c", "d"):
        rt.send_nowait(poker, msg)
    await until(lambda: len(said(poker)) >= 4)
    # a task that ends in its spawn
    inst = await rt.spawn("instant", worker=1)
    await until(lambda: ended(inst))
    # a spawn and a synchronous delivery from a deadline
    timed = await rt.spawn("deadline", worker=0)
    rt.send_nowait(timed, "arm")
    await until(lambda: len(said(timed)) >= 2)
    # tasks that end on a deadline during shutdown (the last on each worker)
    lingering = [await rt.spawn("lingers", worker=w) for w in (0, 1)]
    await rt.shutdown()
    while batch := await asyncio.wait_for(rt.next_events(), T):
        events.extend(batch)

    # TaskEnded / TaskFailed come after every output of their task
    last_out: dict[TaskRef, int] = {}
    for i, e in enumerate(events):
        if isinstance(e, TaskOutput):
            last_out[e.task] = i
    for i, e in enumerate(events):
        if isinstance(e, TaskEnded | TaskFailed):
            assert last_out.get(e.task, -1) < i, f"{e} before its task's outputs"
    for ref in (sub, pub, poker, inst, timed, *lingering):
        assert ended(ref), f"{ref} never reported its end"
    per_task: dict[str, list[Any]] = {}
    for e in events:
        if isinstance(e, TaskOutput):
            per_task.setdefault(f"{e.task.kind}@w{e.task.worker}", []).append(e.msg)
    return {
        "outputs": per_task,
        "ended": sorted(str(e.task) for e in events if isinstance(e, TaskEnded)),
        "failed": sorted(str(e.task) for e in events if isinstance(e, TaskFailed)),
    }


async def test_sim_and_real_agree_on_the_fixed_paths(backend: str) -> None:
    real_rt = Runtime(AGREE_KINDS, workers=2, tick=60.0, backend=backend, drivers=[SyncDriver])
    async with real_rt:
        real = await fixed_paths(real_rt)
    sim_rt = SimRuntime(AGREE_KINDS, workers=2, tick=60.0, drivers=[SyncDriver])
    async with sim_rt:
        simulated = await fixed_paths(sim_rt)
    assert simulated == real
    assert real["outputs"]["sub@w0"] == [("bus", "end"), ("ext", "after")]
    assert real["outputs"]["poker@w1"] == ["a", "b", "c", "d"]
    assert real["outputs"]["deadline@w0"] == ["poked", ("spawned", "kid", None)]
    assert real["outputs"]["lingers@w0"] == real["outputs"]["lingers@w1"] == ["closing", "gone"]
    assert not real["failed"]


# --------------------------------------------------------------- a host doing I/O at start


class LoudHost(Task):
    """Broadcasts from its constructor, then pokes the synchronous driver (as a host
    binding its UDP socket at start would); reports every broadcast it receives."""

    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.emit(Broadcast(("hello", worker)))
        self.emit(Poke("bound"))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BroadcastMessage:
            self.emit(ExtOut(("bcast", event.source)))
        elif type(event) is Poked:
            self.emit(ExtOut(event.what))


async def test_host_doing_sync_io_at_start_does_not_lose_broadcasts(backend: str) -> None:
    """Bug: the synchronous delivery settled inside worker 0's start, before worker 1's
    host existed: worker 1 drained the broadcast and dropped it as an orphan. The real
    workers build their host before they read their inbox."""
    results = []
    for rt in (
        Runtime({}, workers=2, host=LoudHost, backend=backend, drivers=[SyncDriver]),
        SimRuntime({}, workers=2, host=LoudHost, drivers=[SyncDriver]),
    ):
        async with rt:
            got = await collect(rt, lambda g: len(outs(g)) >= 6)
        per_worker: dict[int, list[Any]] = {}
        for e in got:
            if isinstance(e, TaskOutput):
                per_worker.setdefault(e.task.worker, []).append(e.msg)
        results.append({w: sorted(m, key=repr) for w, m in per_worker.items()})
    assert results[0] == results[1]
    assert results[1][1] == ["bound", ("bcast", 0), ("bcast", 1)]


# ----------------------------------------------------------- random scripts, both runtimes


class Scripted(Task):
    """Runs the script in each application message: a list of actions.

    ("later",) first: the rest runs from a deadline 10 ms later. ("out", x) output;
    ("pub", x) publish on "ch" (every task subscribes); ("to", i, x) SendTo peer i;
    ("poke", x) synchronous driver delivery; ("end",) ends after the script; ("fail",)
    raises once the script's outputs are popped. Every input it gets from another task
    or the driver is reported as an output.
    """

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.peers: list[TaskRef] = []
        self.boom = False
        self.later: list[Any] = []
        self.at: float | None = None
        self.emit(Subscribe("ch"))

    def run(self, actions: list[Any]) -> None:
        for action in actions:
            match action:
                case ("out", x):
                    self.emit(ExtOut(("out", x)))
                case ("pub", x):
                    self.emit(Publish("ch", x))
                case ("to", i, x):
                    self.emit(SendTo(self.peers[i], x))
                case ("poke", x):
                    self.emit(Poke(x))
                case ("end",):
                    self.closing = True
                case ("fail",):
                    self.boom = True

    def on_tick(self, now: float) -> None:
        if self.at is not None and now >= self.at:
            self.at = None
            self.run(self.later)

    def next_deadline(self) -> float | None:
        return self.at

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            if event.msg[0] == "peers":
                self.peers = list(event.msg[1])
            elif event.msg[0] == ("later",):  # run it from a deadline, 10 ms from now
                self.later = event.msg[1:]
                self.at = now + 0.01
            else:
                self.run(event.msg)
        elif type(event) is BusMessage:
            self.emit(ExtOut(("bus", event.msg)))
        elif type(event) is Direct:
            self.emit(ExtOut(("direct", event.msg)))
        elif type(event) is Poked:
            self.emit(ExtOut(("poked", event.what)))

    def pop_output(self, now: float) -> Any | None:
        out = super().pop_output(now)
        if out is None and self.boom:
            raise RuntimeError("scripted failure")
        return out


def random_scripts(seed: int, tasks: int, messages: int) -> list[tuple[int, list[Any]]]:
    rng = random.Random(seed)
    scripts = []
    for m in range(messages):
        actions: list[Any] = []
        for k in range(rng.randint(1, 5)):
            x = f"{m}.{k}"
            kind = rng.choice(["out", "out", "pub", "to", "poke"])
            if kind == "to":
                actions.append(("to", rng.randrange(tasks), x))
            else:
                actions.append((kind, x))
        if rng.random() < 0.03:
            actions.append(rng.choice([("end",), ("fail",)]))
        if rng.random() < 0.3:
            actions.insert(0, ("later",))
        scripts.append((rng.randrange(tasks), actions))
    return scripts


async def run_scripts(rt: Any, seed: int) -> dict[str, Any]:
    """Spawn a few scripted tasks on one worker, send the scripts one at a time."""
    refs = [await rt.spawn("s") for _ in range(6)]
    live = set(refs)
    events: list[Any] = []
    for ref in refs:
        rt.send_nowait(ref, ("peers", refs))
    for n, (target, actions) in enumerate(random_scripts(seed, len(refs), 60)):
        ref = refs[target]
        if ref not in live:
            continue
        marker = ("out", f"marker {n}")
        rt.send_nowait(ref, [*actions, marker])
        while True:  # the marker comes with the rest of its callback's outputs
            batch = await asyncio.wait_for(rt.next_events(), T)
            events.extend(batch)
            live -= {e.task for e in batch if isinstance(e, TaskEnded | TaskFailed)}
            if any(isinstance(e, TaskOutput) and e.msg == marker for e in batch):
                break
            if ref not in live:
                break
    await rt.shutdown()
    while batch := await asyncio.wait_for(rt.next_events(), T):
        events.extend(batch)
    return {
        "events": [
            (str(e.task), e.msg if isinstance(e, TaskOutput) else type(e).__name__) for e in events
        ],
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_scripts_agree_on_one_worker(backend: str, seed: int) -> None:
    """One worker, scripts fed one at a time: the whole event stream (not only each
    task's outputs) is deterministic, so both runtimes must produce it identically."""
    kinds = {"s": Scripted}
    async with Runtime(kinds, workers=1, tick=60.0, backend=backend, drivers=[SyncDriver]) as rt:
        real = await run_scripts(rt, seed)
    async with SimRuntime(kinds, workers=1, tick=60.0, drivers=[SyncDriver]) as sim:
        simulated = await run_scripts(sim, seed)
    assert simulated == real
    assert len(real["events"]) > 150
