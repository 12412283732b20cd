"""The runtime's UDP echo with N workers on one SO_REUSEPORT port (bench/udp_scale.py).

    python -m bench._scale_servers MODE WORKERS [--batch] [--backend uvloop]

MODE is ``process`` (``Runtime(mode="process")``: every worker a process of its own) or
``thread`` (every worker a thread of this process). One echo task is spawned on each
worker; each binds its own socket to the same port with ``UdpBind(reuse=True)``
(SO_REUSEPORT), so the kernel spreads the client's flows over the workers by its 4-tuple
hash. Prints the port on its first line, then echoes until it is killed.

The task class and its config are module level and picklable (process mode pickles
them to the worker processes, started with ``spawn``), and the entry point is guarded by
``if __name__ == "__main__"``, as process mode requires.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from typing import Any, NamedTuple

from sansio_aio import ExtOut, Runtime, Task
from sansio_aio.net import UdpBind, UdpDriver, UdpPacket, UdpPackets, UdpSend, UdpSendBatch

BUF = 4 << 20


class EchoCfg(NamedTuple):
    """Where to bind, and whether the socket is fed per readiness (``batch``)."""

    host: str
    port: int
    batch: bool


class ScaleEcho(Task):
    """Per datagram (UdpPacket -> UdpSend) or, with ``batch``, per readiness
    (UdpPackets -> UdpSendBatch); everything else (the UdpBound) goes to the application."""

    def __init__(self, cfg: EchoCfg) -> None:
        super().__init__(cfg)
        self.emit(
            UdpBind((cfg.host, cfg.port), reuse=True, rcvbuf=BUF, sndbuf=BUF, batch=cfg.batch)
        )

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            self.emit(UdpSend(event.slot, event.source, event.data))
        elif type(event) is UdpPackets:
            self.emit(UdpSendBatch(event.slot, event.packets))
        else:
            self.emit(ExtOut(event))


async def _bound(rt: Runtime) -> Any:
    ev = await rt.next_event()
    bound = ev.msg  # type: ignore[union-attr]
    if not bound.ok:
        raise SystemExit(f"bind failed: {bound.error}")
    return bound


async def serve(mode: str, workers: int, batch: bool, backend: str, host: str) -> None:
    """Run the echo on ``workers`` workers of ``mode``, one socket each on one port."""
    async with Runtime(
        {"echo": ScaleEcho}, workers=workers, backend=backend, drivers=[UdpDriver], mode=mode
    ) as rt:
        await rt.spawn("echo", EchoCfg(host, 0, batch), worker=0)
        port = (await _bound(rt)).addr[1]
        for w in range(1, workers):
            await rt.spawn("echo", EchoCfg(host, port, batch), worker=w)
            await _bound(rt)
        print(port, flush=True)
        await asyncio.Event().wait()  # serve until killed


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="the runtime's UDP echo on N workers, one port")
    p.add_argument("mode", choices=["process", "thread"])
    p.add_argument("workers", type=int)
    p.add_argument("--batch", action="store_true")
    p.add_argument("--backend", default="uvloop")
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    # the process ends when the bench kills it (its worker processes die with it); a
    # watchdog bounds a forgotten one
    watchdog = threading.Timer(600, os._exit, args=(0,))
    watchdog.daemon = True
    watchdog.start()
    asyncio.run(serve(args.mode, args.workers, args.batch, args.backend, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
