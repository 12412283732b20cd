"""worker_restart: how long a SIGKILLed worker process is gone (``restart="on-failure"``).

    python -m bench worker_restart             # 7 rounds, about 20 seconds
    BENCH_QUICK=1 python -m bench worker_restart

Each round builds a fresh ``Runtime(mode="process", workers=2, restart="on-failure")``
with an echo host task on every worker and one echo task on worker 1, checks that
worker 1 answers, then SIGKILLs worker 1's process (its pid comes from
``run_on_worker``) and measures, from the kill:

* ``exited``: until the application reads ``WorkerExited(1, ..., restarting=True)``
  (after the ``TaskFailed`` of each task it hosted: the order is checked);
* ``rejoined``: until a message to worker 1 is accepted again (the application tries
  ``send_nowait(1, ...)`` every millisecond; it raises ``UnknownTarget`` while the
  worker is down);
* ``served``: until the replacement's host task answers that message: the first
  message served by the replacement;
* ``respawned``: until a task the application spawns again on worker 1 answers.

A fresh runtime per round, because the restart back-off grows with every restart of a
worker (0.1 s, doubling, at most 5 s). The record also has the delays of four kills in a
row in one runtime, to show that back-off. Another worker's service during the restart
(worker 0 keeps answering) is checked too.

Baseline, in the same rounds: a hand-written supervisor on the same loop that spawns
(``multiprocessing``, ``spawn``) a child importing the same packages (sansio_aio, uvloop)
and echoing on a socketpair, notices its death by its sentinel and starts a new one at
once: the floor of any spawn-based restart on this machine, with no back-off.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

import uvloop

from bench.common import median, write_result
from bench.controller_echo import EchoTask
from sansio_aio import Runtime, TaskFailed, TaskOutput, UnknownTarget, WorkerExited
from sansio_aio._core import WorkerCore

ROUNDS = 7
BURST = 4  # kills in a row in one runtime (the back-off)
TIMEOUT = 15.0  # bound on every wait


def worker_pid(core: WorkerCore) -> int:
    """Run on a worker (module level: it crosses to the worker process)."""
    return os.getpid()


async def _next(rt: Runtime, deadline: float) -> list[Any]:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("worker_restart: no event in time")
    return await asyncio.wait_for(rt.next_events(), left)


async def _echo(rt: Runtime, target: Any, tag: Any, deadline: float) -> None:
    """Send ``tag`` to ``target`` and wait for its echo (other events are skipped)."""
    rt.send_nowait(target, tag)
    while True:
        for ev in await _next(rt, deadline):
            if type(ev) is TaskOutput and ev.msg == tag:
                return


async def _kill_and_recover(rt: Runtime, victim: int, n: int) -> dict[str, float]:
    """SIGKILL worker ``victim``; the times (from the kill) of what follows."""
    perf = time.perf_counter
    deadline = time.monotonic() + TIMEOUT
    pid = await rt.run_on_worker(victim, worker_pid)
    ref = await rt.spawn("echo", worker=victim)
    await _echo(rt, ref, ("before", n), deadline)
    t0 = perf()
    os.kill(pid, signal.SIGKILL)
    failed_first = False
    failed = 0
    exited = None
    while exited is None:
        for ev in await _next(rt, deadline):
            if type(ev) is TaskFailed and ev.task.worker == victim:
                failed += 1
            elif type(ev) is WorkerExited and ev.worker == victim:
                exited = perf() - t0
                failed_first = failed >= 2  # its echo task and its host task
                assert ev.restarting, ev
    # the other worker serves on meanwhile
    other = 1 - victim
    t_other = perf()
    await _echo(rt, other, ("other", n), deadline)
    other_rtt = perf() - t_other
    # the application tries every millisecond until worker `victim` takes messages again
    tag = ("probe", n)
    while True:
        try:
            rt.send_nowait(victim, tag)
            break
        except UnknownTarget:
            if time.monotonic() > deadline:
                raise TimeoutError("worker_restart: the worker did not come back") from None
            await asyncio.sleep(0.001)
    rejoined = perf() - t0
    while True:
        got = [ev for ev in await _next(rt, deadline) if type(ev) is TaskOutput]
        if any(ev.msg == tag for ev in got):
            break
    served = perf() - t0
    ref = await rt.spawn("echo", worker=victim)
    await _echo(rt, ref, ("after", n), deadline)
    respawned = perf() - t0
    return {
        "exited": exited,
        "rejoined": rejoined,
        "served": served,
        "respawned": respawned,
        "task_failed_first": float(failed_first),
        "other_worker_rtt": other_rtt,
    }


def _runtime() -> Runtime:
    return Runtime(
        {"echo": EchoTask},
        workers=2,
        mode="process",
        restart="on-failure",
        host=EchoTask,
        backend="uvloop",
    )


async def _runtime_round() -> dict[str, float]:
    async with _runtime() as rt:
        await _echo(rt, 1, "up", time.monotonic() + TIMEOUT)
        return await _kill_and_recover(rt, 1, 0)


async def _runtime_burst() -> list[float]:
    """Kill worker 1 ``BURST`` times in one runtime: time to served, each time."""
    out: list[float] = []
    async with _runtime() as rt:
        for n in range(BURST):
            m = await _kill_and_recover(rt, 1, n)
            out.append(m["served"])
    return out


# ------------------------------------------------------------------ baseline


def _child(sock: socket.socket) -> None:
    """The baseline's child: the same imports as a worker, then a blocking echo."""
    import uvloop  # noqa: F401

    import sansio_aio  # noqa: F401

    sock.setblocking(True)
    sock.sendall(b"R")  # ready
    while data := sock.recv(4096):
        sock.sendall(data)


class _Supervisor:
    """Spawns an echo child; when its sentinel fires, spawns the next one at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ctx = multiprocessing.get_context("spawn")
        self.died: asyncio.Future[float] = loop.create_future()
        self.proc: Any = None
        self.sock: socket.socket | None = None

    def start(self) -> None:
        parent, child = socket.socketpair()
        self.proc = self.ctx.Process(target=_child, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        parent.setblocking(False)
        self.sock = parent
        self.loop.add_reader(self.proc.sentinel, self._on_death)

    def _on_death(self) -> None:
        self.loop.remove_reader(self.proc.sentinel)
        self.proc.join(1)
        assert self.sock is not None
        self.sock.close()
        if not self.died.done():
            self.died.set_result(time.perf_counter())
        self.start()

    async def echo(self, data: bytes) -> None:
        assert self.sock is not None
        sock = self.sock
        await self.loop.sock_sendall(sock, data)
        got = b""
        while len(got) < len(data):
            got += await self.loop.sock_recv(sock, 4096)

    async def ready(self) -> None:
        assert self.sock is not None
        assert await self.loop.sock_recv(self.sock, 1) == b"R"

    def stop(self) -> None:
        if self.proc is not None:
            self.loop.remove_reader(self.proc.sentinel)
            self.proc.kill()
            self.proc.join(5)
        if self.sock is not None:
            self.sock.close()


async def _baseline_round() -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sup = _Supervisor(loop)
    sup.start()
    try:
        await asyncio.wait_for(sup.ready(), TIMEOUT)
        await asyncio.wait_for(sup.echo(b"up"), TIMEOUT)
        t0 = time.perf_counter()
        os.kill(sup.proc.pid, signal.SIGKILL)
        noticed = await asyncio.wait_for(asyncio.shield(sup.died), TIMEOUT) - t0
        await asyncio.wait_for(sup.ready(), TIMEOUT)
        await asyncio.wait_for(sup.echo(b"probe"), TIMEOUT)
        served = time.perf_counter() - t0
    finally:
        sup.stop()
    return {"exited": noticed, "served": served}


# ------------------------------------------------------------------ run


def _on_uvloop(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run(rounds: int = ROUNDS) -> dict[str, Any]:
    """Run the benchmark and write ``bench/results/worker_restart.json``."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    rounds = 2 if quick else rounds
    rt_rounds: list[dict[str, float]] = []
    base_rounds: list[dict[str, float]] = []
    for r in range(rounds):  # alternate: runtime, baseline; baseline, runtime; ...
        pair = [(_runtime_round, rt_rounds), (_baseline_round, base_rounds)]
        for fn, into in pair if r % 2 == 0 else pair[::-1]:
            m = _on_uvloop(fn())
            into.append(m)
            print(
                f"  {fn.__name__:15s} "
                + "  ".join(
                    f"{k} {v * 1e3:7.1f} ms" for k, v in m.items() if k != "task_failed_first"
                ),
                file=sys.stderr,
                flush=True,
            )
    burst = _on_uvloop(_runtime_burst())
    print(f"  burst (served, ms): {[round(b * 1e3, 1) for b in burst]}", file=sys.stderr)

    def med(table: list[dict[str, float]], key: str) -> float:
        return round(median([m[key] for m in table]) * 1e3, 2)

    keys = ("exited", "rejoined", "served", "respawned", "other_worker_rtt")
    return write_result(
        "worker_restart",
        metric="ms_from_sigkill_to_first_message_served_by_the_replacement",
        value=med(rt_rounds, "served"),
        baseline=(
            "hand-written supervisor: spawn a child with the same imports, restart it "
            "at once when its sentinel fires, first echo"
        ),
        baseline_value=med(base_rounds, "served"),
        higher_is_better=False,
        params={
            "rounds": rounds,
            "workers": 2,
            "backend": "uvloop",
            "restart": "on-failure",
            "burst": BURST,
            "quick": quick,
        },
        runtime_ms={k: med(rt_rounds, k) for k in keys},
        runtime_ms_per_round={k: [round(m[k] * 1e3, 2) for m in rt_rounds] for k in keys},
        task_failed_before_worker_exited=all(m["task_failed_first"] for m in rt_rounds),
        baseline_ms={k: med(base_rounds, k) for k in ("exited", "served")},
        baseline_ms_per_round={
            k: [round(m[k] * 1e3, 2) for m in base_rounds] for k in ("exited", "served")
        },
        burst_served_ms=[round(b * 1e3, 1) for b in burst],
    )
