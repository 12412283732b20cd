"""controller_echo: application <-> task round trips through the runtime.

The seed's "external communication" benchmark: N messages in flight between the
application (the controller's loop) and one echo task on one worker; each message is
re-sent as soon as it comes back. Side by side, in the same run, a plain-Python baseline
with the same shape: a worker thread with its own loop, one ``call_soon_threadsafe``
per message in each direction.

The baseline the issue names is plain asyncio (stdlib loops on both sides); the same
shape on uvloop (whose ``call_soon_threadsafe`` coalesces wake-ups in C) is reported too.
Reports throughput (msgs/s), mean and p99 wait (time from send to return) at 400 in
flight, and the one-message round trip p50. Rounds are interleaved; medians are kept.

Process mode (``Runtime(mode="process")``: the worker is a process of its own, batches
cross a socketpair pickled) runs in the same rounds, with the same application code
(``runtime_process``), and with an application that yields to its loop after every
:data:`CHUNK` sends (``runtime_process_chunked``), so that its sends leave as several
batches and both processes can work at once. For the runtime variants the record also
has the CPU time per message on each side (the application's thread; the worker's thread
or process), read from ``/proc``: what bounds the rate.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import uvloop

from bench.common import interleaved, median, percentile, write_result
from sansio_aio import Ext, ExtOut, Runtime
from sansio_aio._core import WorkerCore

IN_FLIGHT = 400
CHUNK = 100  # runtime_process_chunked: the application yields after this many sends
DURATION = 1.5  # seconds per throughput run
ROUNDS = 3
RTT_SAMPLES = 3000


class EchoTask:
    """The smallest echo task: one pending output slot."""

    __slots__ = ("_closing", "_out")

    def __init__(self, cfg: Any = None) -> None:
        self._out: ExtOut | None = None
        self._closing = False

    def on_tick(self, now: float) -> None:
        pass

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self._out = ExtOut(event.msg)

    def pop_output(self, now: float) -> ExtOut | None:
        out = self._out
        self._out = None
        return out

    def on_shutdown(self, now: float) -> None:
        self._closing = True

    def is_empty(self) -> bool:
        return self._closing


# ------------------------------------------------------------------ runtime


def worker_cpu_id(core: WorkerCore) -> tuple[int, int]:
    """Run on a worker: its (pid, native thread id) (module level: it may cross to a
    worker process)."""
    return os.getpid(), threading.get_native_id()


def _cpu(pid: int, tid: int | None) -> float:
    """CPU seconds (user + system) of thread ``tid`` of ``pid``, or of all of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    tids = [tid] if tid is not None else os.listdir(f"/proc/{pid}/task")
    total = 0
    for t in tids:
        with open(f"/proc/{pid}/task/{t}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


async def _runtime_throughput(
    backend: str,
    in_flight: int,
    mode: str = "thread",
    chunk: int = 0,
    many: bool = False,
    limit: int = 0,
) -> dict[str, float]:
    """Throughput at ``in_flight``: one ``send_nowait`` per returning message, or with
    ``many`` one ``send_many`` per returned batch (the batch APIs). With ``limit`` it stops
    after that many messages instead of after :data:`DURATION` (the instruction count)."""
    perf = time.perf_counter
    async with Runtime({"echo": EchoTask}, backend=backend, tick=1.0, mode=mode) as rt:
        ref = await rt.spawn("echo")
        wpid, wtid = await rt.run_on_worker(0, worker_cpu_id)
        worker_cpu = (wpid, wtid if mode == "thread" else None)
        app_cpu = (os.getpid(), threading.get_native_id())
        send = rt.send_nowait
        waits: list[float] = []
        count = 0
        for i in range(in_flight):
            send(ref, perf())
            if chunk and (i + 1) % chunk == 0:
                await asyncio.sleep(0)
        c_app, c_worker = _cpu(*app_cpu), _cpu(*worker_cpu)
        t0 = perf()
        end = t0 + DURATION if not limit else float("inf")
        send_many = rt.send_many
        while True:
            batch = await rt.next_events()
            now = perf()
            if many:
                k = len(batch)
                waits.extend(now - ev.msg for ev in batch[-count % 64 :: 64])  # type: ignore[union-attr]
                send_many(ref, [now] * k)
                count += k
                if now >= end or (limit and count >= limit):
                    break
                continue
            for n, ev in enumerate(batch, 1):
                sent = ev.msg  # type: ignore[union-attr]
                if count % 64 == 0:
                    waits.append(now - sent)
                send(ref, now)
                count += 1
                if chunk and n % chunk == 0:
                    await asyncio.sleep(0)  # let this chunk leave as a batch of its own
            if now >= end or (limit and count >= limit):
                break
        took = perf() - t0
        c_app, c_worker = _cpu(*app_cpu) - c_app, _cpu(*worker_cpu) - c_worker
        # let the in-flight messages come back before shutting down
        got = 0
        while got < in_flight:
            got += len(await rt.next_events())
    return {
        "rate": count / took,
        "mean_wait": sum(waits) / len(waits),
        "p99_wait": percentile(waits, 99),
        "app_cpu_us": c_app / count * 1e6,
        "worker_cpu_us": c_worker / count * 1e6,
        "app_busy": c_app / took,
        "worker_busy": c_worker / took,
    }


async def _runtime_rtt(backend: str, mode: str = "thread") -> dict[str, float]:
    perf = time.perf_counter
    async with Runtime({"echo": EchoTask}, backend=backend, mode=mode) as rt:
        ref = await rt.spawn("echo")
        samples = []
        for i in range(RTT_SAMPLES):
            t0 = perf()
            rt.send_nowait(ref, i)
            await rt.next_events()
            samples.append(perf() - t0)
    return {"p50": median(samples), "p99": percentile(samples, 99)}


# ------------------------------------------------------------------ baseline


class _Baseline:
    """Plain Python: a worker loop in a thread, call_soon_threadsafe per message."""

    def __init__(self, loop_factory: Any) -> None:
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.factory = loop_factory
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        loop = self.factory()
        self.loop = loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self.ready.set)
        loop.run_forever()
        loop.close()

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(5)

    def stop(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _baseline_throughput(in_flight: int, loop_factory: Any) -> dict[str, float]:
    perf = time.perf_counter
    app = asyncio.get_running_loop()
    worker = _Baseline(loop_factory)
    worker.start()
    assert worker.loop is not None
    wloop = worker.loop
    back = app.call_soon_threadsafe
    fwd = wloop.call_soon_threadsafe
    state = {"count": 0}
    waits: list[float] = []
    done = app.create_future()
    end = perf() + DURATION

    def on_reply(sent: float) -> None:
        now = perf()
        c = state["count"] = state["count"] + 1
        if c % 64 == 0:
            waits.append(now - sent)
        if now < end:
            fwd(echo, now)
        elif not done.done():
            done.set_result(None)

    def echo(msg: float) -> None:
        back(on_reply, msg)

    t0 = perf()
    for _ in range(in_flight):
        fwd(echo, perf())
    await done
    took = perf() - t0
    worker.stop()
    return {
        "rate": state["count"] / took,
        "mean_wait": sum(waits) / len(waits),
        "p99_wait": percentile(waits, 99),
    }


async def _baseline_rtt(loop_factory: Any) -> dict[str, float]:
    perf = time.perf_counter
    app = asyncio.get_running_loop()
    worker = _Baseline(loop_factory)
    worker.start()
    assert worker.loop is not None
    samples = []
    for _ in range(RTT_SAMPLES):
        fut = app.create_future()
        t0 = perf()
        worker.loop.call_soon_threadsafe(app.call_soon_threadsafe, fut.set_result, None)
        await fut
        samples.append(perf() - t0)
    worker.stop()
    return {"p50": median(samples), "p99": percentile(samples, 99)}


# ------------------------------------------------------------------ run


def _on_uvloop(coro: Any) -> dict[str, float]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result: dict[str, float] = runner.run(coro)
    return result


def _on_asyncio(coro: Any) -> dict[str, float]:
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        result: dict[str, float] = runner.run(coro)
    return result


def run(rounds: int = ROUNDS) -> dict[str, Any]:
    """Run the benchmark and write ``bench/results/controller_echo.json``."""
    runs = interleaved(
        {
            "runtime_uvloop": lambda: _on_uvloop(_runtime_throughput("uvloop", IN_FLIGHT)),
            "runtime_uvloop_many": lambda: _on_uvloop(
                _runtime_throughput("uvloop", IN_FLIGHT, many=True)
            ),
            "runtime_epoll": lambda: _on_uvloop(_runtime_throughput("epoll", IN_FLIGHT)),
            "runtime_process": lambda: _on_uvloop(
                _runtime_throughput("uvloop", IN_FLIGHT, mode="process")
            ),
            "runtime_process_chunked": lambda: _on_uvloop(
                _runtime_throughput("uvloop", IN_FLIGHT, mode="process", chunk=CHUNK)
            ),
            "baseline": lambda: _on_asyncio(
                _baseline_throughput(IN_FLIGHT, asyncio.SelectorEventLoop)
            ),
            "uvloop_per_message": lambda: _on_uvloop(
                _baseline_throughput(IN_FLIGHT, uvloop.new_event_loop)
            ),
        },
        rounds,
    )
    rtts = interleaved(
        {
            "runtime_uvloop": lambda: _on_uvloop(_runtime_rtt("uvloop")),
            "runtime_process": lambda: _on_uvloop(_runtime_rtt("uvloop", mode="process")),
            "baseline": lambda: _on_asyncio(_baseline_rtt(asyncio.SelectorEventLoop)),
            "uvloop_per_message": lambda: _on_uvloop(_baseline_rtt(uvloop.new_event_loop)),
        },
        rounds,
    )

    def med(name: str, key: str, table: dict[str, list[dict[str, float]]] = runs) -> float:
        return median([r[key] for r in table[name]])

    ratios = [
        rt["rate"] / base["rate"]
        for rt, base in zip(runs["runtime_uvloop"], runs["baseline"], strict=True)
    ]
    return write_result(
        "controller_echo",
        metric="msgs_per_s",
        value=round(med("runtime_uvloop", "rate")),
        baseline="plain asyncio: call_soon_threadsafe per message (stdlib loops both sides)",
        baseline_value=round(med("baseline", "rate")),
        params={
            "in_flight": IN_FLIGHT,
            "duration_s": DURATION,
            "rounds": rounds,
            "rtt_samples": RTT_SAMPLES,
        },
        ratio_per_round=[round(r, 2) for r in ratios],
        runtime_epoll_msgs_per_s=round(med("runtime_epoll", "rate")),
        mean_wait_ms=round(med("runtime_uvloop", "mean_wait") * 1e3, 3),
        p99_wait_ms=round(med("runtime_uvloop", "p99_wait") * 1e3, 3),
        baseline_mean_wait_ms=round(med("baseline", "mean_wait") * 1e3, 3),
        uvloop_per_message_msgs_per_s=round(med("uvloop_per_message", "rate")),
        ratio_vs_uvloop_per_message=round(
            med("runtime_uvloop", "rate") / med("uvloop_per_message", "rate"), 3
        ),
        uvloop_per_message_rtt_p50_us=round(med("uvloop_per_message", "p50", rtts) * 1e6, 1),
        rtt_p50_us=round(med("runtime_uvloop", "p50", rtts) * 1e6, 1),
        rtt_p99_us=round(med("runtime_uvloop", "p99", rtts) * 1e6, 1),
        baseline_rtt_p50_us=round(med("baseline", "p50", rtts) * 1e6, 1),
        targets={"msgs_per_s": 1_000_000, "ratio": 10, "mean_wait_ms": 0.5, "rtt_p50_us": 100},
        process_mode={
            name: {
                "msgs_per_s": round(med(name, "rate")),
                "msgs_per_s_per_round": [round(r["rate"]) for r in runs[name]],
                "ratio_vs_thread_per_round": [
                    round(p["rate"] / t["rate"], 3)
                    for p, t in zip(runs[name], runs["runtime_uvloop"], strict=True)
                ],
                "mean_wait_ms": round(med(name, "mean_wait") * 1e3, 3),
                "p99_wait_ms": round(med(name, "p99_wait") * 1e3, 3),
                "app_cpu_us_per_msg": round(med(name, "app_cpu_us"), 3),
                "worker_cpu_us_per_msg": round(med(name, "worker_cpu_us"), 3),
                "app_busy_share": round(med(name, "app_busy"), 3),
                "worker_busy_share": round(med(name, "worker_busy"), 3),
            }
            for name in ("runtime_process", "runtime_process_chunked")
        },
        process_rtt_p50_us=round(med("runtime_process", "p50", rtts) * 1e6, 1),
        process_rtt_p99_us=round(med("runtime_process", "p99", rtts) * 1e6, 1),
        thread_mode_cpu={
            "app_cpu_us_per_msg": round(med("runtime_uvloop", "app_cpu_us"), 3),
            "worker_cpu_us_per_msg": round(med("runtime_uvloop", "worker_cpu_us"), 3),
            "app_busy_share": round(med("runtime_uvloop", "app_busy"), 3),
            "worker_busy_share": round(med("runtime_uvloop", "worker_busy"), 3),
        },
        process_target_msgs_per_s=1_000_000,
        batch_api={
            "how": "the application answers each next_events() batch with one send_many()",
            "msgs_per_s": round(med("runtime_uvloop_many", "rate")),
            "msgs_per_s_per_round": [round(r["rate"]) for r in runs["runtime_uvloop_many"]],
            "ratio_vs_one_message_api_per_round": [
                round(m["rate"] / o["rate"], 3)
                for m, o in zip(runs["runtime_uvloop_many"], runs["runtime_uvloop"], strict=True)
            ],
            "mean_wait_ms": round(med("runtime_uvloop_many", "mean_wait") * 1e3, 3),
            "app_cpu_us_per_msg": round(med("runtime_uvloop_many", "app_cpu_us"), 3),
            "worker_cpu_us_per_msg": round(med("runtime_uvloop_many", "worker_cpu_us"), 3),
        },
        instructions_per_msg=instructions_per_message() if shutil.which("valgrind") else None,
    )


#: Messages in the two instruction-counting runs; their difference cancels start-up.
COUNTS = (10_000, 60_000)


def _collected(mode: str, count: int) -> int:
    """Instructions callgrind counts for one whole run of ``count`` messages."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    cmd += [sys.executable, "-m", "bench.controller_echo", "--count", str(count), mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
    match = re.search(r"Collected : (\d+)", proc.stderr)
    assert match, proc.stderr[-2000:]
    return int(match.group(1))


def instructions_per_message() -> dict[str, Any]:
    """Instructions per message (both threads, runtime on uvloop, 400 in flight), from
    callgrind: the same for the same code whatever the machine's load, unlike msgs/s.

    Two runs of :data:`COUNTS` messages each; (I2 - I1) / (N2 - N1) leaves out start-up
    and shutdown. Under valgrind the threads run one at a time, so how many messages one
    wake-up carries differs from a real run's, and changes when either side gets faster:
    ``send_nowait`` and ``send_many`` are the whole pipeline (both threads, wake-ups
    included); ``worker_core`` is the worker's part alone, deterministic: batches of
    400 messages handed to ``WorkerCore.handle_from`` on the worker's thread (what one
    wake-up does), the task's outputs dropped.
    """
    out: dict[str, Any] = {"counts": list(COUNTS)}
    for name in ("send_nowait", "send_many", "worker_core"):
        low, high = (_collected(name, n) for n in COUNTS)
        out[name] = round((high - low) / (COUNTS[1] - COUNTS[0]))
    return out


def core_batches(core: WorkerCore, count: int) -> None:
    """Run on the worker: ``count`` messages to its echo task, 400 per ``handle_from``."""
    from collections import deque

    (ref,) = core.refs()
    q: deque[Any] = deque()
    for _ in range(count // IN_FLIGHT):
        q.extend([(ref, 0.0)] * IN_FLIGHT)
        core.handle_from(q, IN_FLIGHT, 0.0)
        core.app_buffer.clear()


async def _core_only(count: int) -> None:
    async with Runtime({"echo": EchoTask}, backend="uvloop", tick=1.0) as rt:
        await rt.spawn("echo")
        await rt.run_on_worker(0, functools.partial(core_batches, count=count))


if __name__ == "__main__":  # the child of instructions_per_message()
    _args = sys.argv[1:]
    _count = int(_args[_args.index("--count") + 1])
    if "worker_core" in _args:
        _on_uvloop(_core_only(_count))  # type: ignore[arg-type]
    else:
        _on_uvloop(
            _runtime_throughput("uvloop", IN_FLIGHT, many="send_many" in _args, limit=_count)
        )
