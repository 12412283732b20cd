"""soak: a bounded mixed load on the real runtime, every message and resource counted.

Everything runs inside one private network namespace (``PrivateNetwork``: its own
loopback, its own kernel UDP counters), on a loop thread inside it, in this process:

* **UDP echo** on 127.0.0.1: ``examples/udp_echo_server.py``'s ``EchoServer`` on two
  workers sharing a port (``SO_REUSEPORT``), two ``EchoClient`` tasks
  (``tests/sim/scenarios.py``) sending paced numbered datagrams and checking every echo;
* **bus**: subscribers on both workers, publishers publishing bursts on deadlines;
  every subscriber counts per publisher and checks FIFO;
* **spawn/end churn**: short-lived tasks spawned in a loop, each ending at its first
  tick (``TaskEnded`` expected for each);
* **requests**: ``Runtime.request`` round trips to a replying task, in batches;
* **WHIP/WHEP sessions**: ``sansio_aio.webrtc.open_server`` (two worker threads, its own
  runtime) and HTTP-only sessions: a real aiortc offer is POSTed (the server builds a
  real aiortc peer connection and answers), two viewers join, then all are DELETEd. No
  client peer connects (aiortc peers sending video would need the CPU the load needs).

The result: RSS, fds and threads of the process at the start, after the load and at the
end; per kind, messages sent and received; every loss explained (UDP: the namespace's
kernel counters ``RcvbufErrors``/``SndbufErrors``/``InErrors`` and the runtime's
``udp_tx_dropped``/``udp_tx_errors``/``udp_rx_errors``; ``unexplained`` must be 0, and
nothing else may lose anything); errors. The metric is the share of messages delivered
over all kinds (1.0 is the goal); the baseline is 1.0.

``python -m bench soak`` (3 minutes); ``run(quick=True)`` (about 10 seconds). Needs root
(``ip``) for the namespace and the ``webrtc`` extra.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import write_result  # noqa: E402
from sansio_aio import (  # noqa: E402
    Ext,
    Publish,
    Reply,
    Request,
    Runtime,
    Subscribe,
    Task,
    TaskEnded,
    TaskFailed,
)
from sansio_aio.net import UdpDriver  # noqa: E402
from tests.sim.scenarios import EchoClient, load_example  # noqa: E402

SECONDS = 180.0
QUICK_SECONDS = 8.0


# ------------------------------------------------------------------ tasks


class CountSub(Task):
    """Subscribes to ``cfg`` (a channel); counts per publisher, checks FIFO; a ``Request``
    gets ``{publisher: (count, last_seq, fifo_errors)}``."""

    def __init__(self, cfg: str) -> None:
        super().__init__(cfg)
        self.seen: dict[str, list[int]] = {}
        self.emit(Subscribe(cfg))

    def on_event(self, now: float, event: Any) -> None:
        """Count a bus message; answer a request."""
        kind = type(event).__name__
        if kind == "BusMessage":
            pub, seq = event.msg
            entry = self.seen.setdefault(pub, [0, -1, 0])
            entry[0] += 1
            if seq != entry[1] + 1:
                entry[2] += 1
            entry[1] = seq
        elif type(event) is Request:
            self.emit(Reply(event.id, {k: tuple(v) for k, v in self.seen.items()}))


class RatePub(Task):
    """Publishes ``(id, seq)`` on its channel, ``burst`` every ``interval`` s, until
    ``Ext("stop")``; a ``Request`` gets the number published."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.id: str = cfg["id"]
        self.channel: str = cfg["channel"]
        self.burst: int = cfg["burst"]
        self.interval: float = cfg["interval"]
        self.seq = 0
        self.due: float | None = None

    def on_event(self, now: float, event: Any) -> None:
        """Start, stop, or say how many were published."""
        if type(event) is Ext and event.msg == "start":
            self.due = now
        elif type(event) is Ext and event.msg == "stop":
            self.due = None
        elif type(event) is Request:
            self.emit(Reply(event.id, self.seq))

    def on_tick(self, now: float) -> None:
        """Publish a burst when due."""
        if self.due is None or now < self.due:
            return
        for _ in range(self.burst):
            self.emit(Publish(self.channel, (self.id, self.seq)))
            self.seq += 1
        self.due = now + self.interval

    def next_deadline(self) -> float | None:
        """The next burst."""
        return self.due


class Blip(Task):
    """Ends at its first tick or deadline (right away)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.due = -1.0

    def on_tick(self, now: float) -> None:
        """End."""
        self.closing = True

    def next_deadline(self) -> float | None:
        """At once."""
        return None if self.closing else 0.0


class Replier(Task):
    """Answers every request with its message."""

    def on_event(self, now: float, event: Any) -> None:
        """Reply."""
        if type(event) is Request:
            self.emit(Reply(event.id, event.msg))


# ------------------------------------------------------------------ measuring


def resources() -> dict[str, int]:
    """RSS (kB), open fds and threads of this process."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(fields["Threads"]),
    }


def thread_names() -> dict[str, int]:
    """This process's threads, counted by name."""
    return dict(
        Counter(
            Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            for tid in os.listdir("/proc/self/task")
        )
    )


def udp_snmp() -> dict[str, int]:
    """The kernel's UDP counters of the calling thread's network namespace."""
    lines = [ln.split() for ln in Path("/proc/thread-self/net/snmp").read_text().splitlines()]
    head, values = [ln for ln in lines if ln[0] == "Udp:"]
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


class Load:
    """The mixed load and its counters."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.errors: list[str] = []
        self.ended: Counter[str] = Counter()
        self.failed: list[str] = []
        self.stop = asyncio.Event()

    def error(self, what: str, exc: BaseException) -> None:
        """Count an error (the first few kept in full)."""
        self.sent["errors"] += 1
        if len(self.errors) < 10:
            self.errors.append(f"{what}: {exc!r}")

    async def events(self, rt: Runtime) -> None:
        """The only reader of the runtime's events."""
        while True:
            for event in await rt.next_events():
                if isinstance(event, TaskEnded):
                    self.ended[event.task.kind] += 1
                elif isinstance(event, TaskFailed):
                    self.failed.append(f"{event.task}: {event.error}")

    async def churn(self, rt: Runtime) -> None:
        """Spawn short-lived tasks until told to stop."""
        while not self.stop.is_set():
            try:
                await rt.spawn("blip")
                self.sent["spawn"] += 1
            except Exception as exc:
                self.error("spawn", exc)
            await asyncio.sleep(0.002)

    async def requests(self, rt: Runtime, ref: Any) -> None:
        """Request round trips in batches of 20."""
        i = 0
        while not self.stop.is_set():
            batch = list(range(i, i + 20))
            i += 20
            self.sent["request"] += len(batch)
            got = await asyncio.gather(
                *(rt.request(ref, n, timeout=5.0) for n in batch), return_exceptions=True
            )
            for n, reply in zip(batch, got, strict=True):
                if isinstance(reply, BaseException):
                    self.error("request", reply)
                elif reply == n:
                    self.received["request"] += 1
            await asyncio.sleep(0.002)

    async def whip(self, base: str, offers: dict[str, str]) -> None:
        """HTTP-only WHIP/WHEP sessions: a publisher and two viewers, then DELETEs."""
        import aiohttp

        sdp = {"Content-Type": "application/sdp"}
        k = 0
        async with aiohttp.ClientSession() as http:
            while not self.stop.is_set():
                k += 1
                room = f"soak{k % 4}"
                locations: list[str] = []
                try:
                    for role in ("whip", "whep", "whep"):
                        self.sent["whip_post"] += 1
                        url = f"{base}/{role}/{room}"
                        async with http.post(url, data=offers[role], headers=sdp) as resp:
                            await resp.read()
                            if resp.status == 201:
                                self.received["whip_post"] += 1
                                locations.append(resp.headers["Location"])
                            else:
                                self.error("whip POST", RuntimeError(f"{role} {resp.status}"))
                    for loc in reversed(locations):
                        self.sent["whip_delete"] += 1
                        target = loc if loc.startswith("http") else base + loc
                        async with http.delete(target) as resp:
                            await resp.read()
                            if resp.status == 200:
                                self.received["whip_delete"] += 1
                            else:
                                self.error("whip DELETE", RuntimeError(f"{resp.status}"))
                except Exception as exc:
                    self.error("whip", exc)
                await asyncio.sleep(0.05)


async def _offers() -> dict[str, str]:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from sansio_aio.webrtc import PatternTrack

    out: dict[str, str] = {}
    for role in ("whip", "whep"):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if role == "whip":
            pc.addTransceiver(PatternTrack(), direction="sendonly")
        else:
            pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        out[role] = pc.localDescription.sdp
        await pc.close()
    return out


async def _soak(seconds: float, loop_factory: Any) -> dict[str, Any]:
    from sansio_aio.webrtc import ServerConfig, open_server

    echo = load_example("udp_echo_server")
    kinds = {
        "echo": echo.EchoServer,
        "client": EchoClient,
        "sub": CountSub,
        "pub": RatePub,
        "blip": Blip,
        "rr": Replier,
    }
    load = Load(seconds)
    offers = await _offers()  # aiortc and its friends imported: not counted as growth
    start = resources()
    snmp0 = udp_snmp()
    config = ServerConfig(host="127.0.0.1", port=0, workers=2, rate_limit=0.0)
    async with (
        Runtime(kinds, workers=2, drivers=[UdpDriver], backend=loop_factory) as rt,
        open_server(config, backend=loop_factory) as server,
    ):
        reader = asyncio.create_task(load.events(rt))
        addr = await echo.start_servers(rt, "127.0.0.1", 0, 2)
        clients = [
            await rt.spawn("client", {"id": i, "addr": ("127.0.0.1", 0), "dest": addr}, worker=i)
            for i in range(2)
        ]
        subs = [await rt.spawn("sub", ch, worker=w) for ch in ("a", "b") for w in (0, 1)]
        pubs = [
            await rt.spawn(
                "pub", {"id": f"p{i}", "channel": "ab"[i % 2], "burst": 5, "interval": 0.002}
            )
            for i in range(3)
        ]
        for ref in pubs:
            rt.send_nowait(ref, "start")
        replier = await rt.spawn("rr")
        base = server.url.rstrip("/")
        tasks = [
            asyncio.create_task(load.churn(rt)),
            asyncio.create_task(load.requests(rt, replier)),
            asyncio.create_task(load.whip(base, offers)),
        ]
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:  # the UDP clients, paced by the second
            for ref in clients:
                rt.send_nowait(ref, ("send", 1000, 0.001))
            await asyncio.sleep(1.0)
        load.stop.set()
        for ref in [*pubs, *clients]:
            rt.send_nowait(ref, "stop")
        await asyncio.gather(*tasks)
        await asyncio.sleep(1.5)  # the last datagrams, the last blips, the rooms settle
        # UDP: what was sent, what came back, what the kernel and the runtime dropped
        reports = [await rt.request(ref, "report") for ref in clients]
        totals = await echo.driver_totals(rt)
        snmp1 = udp_snmp()
        udp_sent = sum(r["sent"] for r in reports)
        udp_got = sum(len(r["got"]) for r in reports)
        load.sent["udp"] = udp_sent
        load.received["udp"] = udp_got
        kernel = {k: snmp1[k] - snmp0[k] for k in ("RcvbufErrors", "SndbufErrors", "InErrors")}
        runtime_drops = {
            k: totals.get(k, 0) for k in ("udp_tx_dropped", "udp_tx_errors", "udp_rx_errors")
        }
        # each datagram crosses twice (to the echo, back): each drop loses one echo
        explained = sum(kernel.values()) + sum(runtime_drops.values())
        udp_lost = udp_sent - udp_got
        udp = {
            "sent": udp_sent,
            "echoed": udp_got,
            "duplicates": sum(n - 1 for r in reports for n in r["got"].values()),
            "bad": sum(len(r["bad"]) for r in reports),
            "lost": udp_lost,
            "kernel_drops": kernel,
            "runtime_drops": runtime_drops,
            "unexplained": max(0, udp_lost - explained),
        }
        # bus: every subscriber got every message of its channel's publishers, in order
        published = {f"p{i}": await rt.request(ref, "count") for i, ref in enumerate(pubs)}
        bus_fifo = 0
        for i, ref in enumerate(subs):
            channel = "ab"[i // 2]
            seen = await rt.request(ref, "count")
            for pid, n in published.items():
                if "ab"[int(pid[1:]) % 2] != channel:
                    continue
                count, _last, fifo = seen.get(pid, (0, -1, 0))
                load.sent["bus"] += n
                load.received["bus"] += count
                bus_fifo += fifo
        load.received["spawn"] = load.ended["blip"]
        snap = await server.snapshot()
        middle = resources()
        reader.cancel()
    end = resources()
    names = thread_names()
    delivered = sum(load.received[k] for k in ("udp", "bus", "spawn", "request"))
    offered = sum(load.sent[k] for k in ("udp", "bus", "spawn", "request"))
    return {
        "share": delivered / offered if offered else 0.0,
        "resources": {"start": start, "after_load": middle, "end": end},
        "threads_at_end": names,
        "sent": dict(load.sent),
        "received": dict(load.received),
        "udp": udp,
        "bus_fifo_errors": bus_fifo,
        "whip_sessions_left": snap["sessions"],
        "whip_rooms_left": len(snap["rooms"]),
        "task_failures": load.failed[:10],
        "errors": load.errors,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run the soak (in a private network namespace); write ``bench/results/soak.json``."""
    from sansio_aio.testing import PrivateNetwork, privnet_unavailable_reason

    seconds = QUICK_SECONDS if quick else SECONDS
    params = {"seconds": seconds, "workers": 2, "whip": "HTTP-only sessions, 2 server workers"}
    reason = privnet_unavailable_reason()
    if reason is not None:
        return write_result(
            "soak",
            metric="share of messages delivered",
            value=0.0,
            baseline="all delivered",
            baseline_value=1.0,
            params=params,
            error=f"no private network namespace: {reason}",
        )

    async def main() -> dict[str, Any]:
        net = PrivateNetwork()
        lt = net.loop_thread("soak")
        try:
            return await lt.run(_soak(seconds, net.loop_factory("uvloop")), seconds + 120)
        finally:
            lt.stop()
            net.close()

    t0 = time.perf_counter()
    try:
        out = asyncio.run(main())
    except Exception as exc:
        out = {"share": 0.0, "error": "".join(traceback.format_exception(exc))[-2000:]}
    return write_result(
        "soak",
        metric="share of messages delivered (UDP, bus, spawns, requests)",
        value=round(out.pop("share"), 6),
        baseline="all delivered",
        baseline_value=1.0,
        params=params,
        wall_s=round(time.perf_counter() - t0, 1),
        **out,
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
