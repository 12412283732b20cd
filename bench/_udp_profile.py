"""Where the runtime's UDP echo spends its time: ``python -m bench._udp_profile``.

Runs inside one uvloop worker thread, with no load generator and no network noise.
A client pre-fills the echo task's socket with N datagrams while the socket's reader is
paused. Then one worker callback times draining them three ways:

* ``raw``: ``recvfrom`` + ``sendto``, nothing else (the floor);
* ``task+driver``: the same socket calls plus building a ``UdpPacket``, the task's
  ``on_event``/``pop_output`` and the driver's ``handle`` (Sans-I/O without the core);
* ``runtime``: the driver's real readiness callback (``ctx.deliver`` -> core -> task ->
  driver).

It prints the min and median microseconds per datagram over the rounds.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from sansio_aio import ExtOut, Runtime, Task
from sansio_aio.net import UdpBind, UdpPacket, UdpSend
from sansio_aio.net._udp import RECV_SIZE, UdpDriver

N = 2000


class Echo(Task):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.emit(UdpBind(("127.0.0.1", 0), rcvbuf=4 << 20))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is UdpPacket:
            self.emit(UdpSend(event.slot, event.source, event.data))
        else:
            self.emit(ExtOut(event))


def _drain(kind: str, ref: Any) -> Callable[[Any], float]:
    def fn(core: Any) -> float:
        drv = core.drivers[0]
        s = next(iter(drv._socks.values()))
        task, owner = core.lookup(ref), s.owner
        recv, send = s.sock.recvfrom, s.sock.sendto
        t0 = time.perf_counter()
        n = 0
        if kind == "runtime":
            cb, n0 = drv._reader(s), drv.rx
            while drv.rx - n0 < N:
                cb()
        elif kind == "task+driver":
            on_event, pop, handle = task.on_event, task.pop_output, drv.handle
            while n < N:
                try:
                    data, addr = recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                on_event(0.0, UdpPacket(s.slot, addr, data))
                out = pop(0.0)
                while out is not None:
                    handle(owner, out)
                    out = pop(0.0)
                n += 1
        else:
            while n < N:
                try:
                    data, addr = recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                send(data, addr)
                n += 1
        took = (time.perf_counter() - t0) / N
        asyncio.get_running_loop().add_reader(s.fd, drv._reader(s))
        return took

    return fn


def _pause(core: Any) -> None:
    s = next(iter(core.drivers[0]._socks.values()))
    asyncio.get_running_loop().remove_reader(s.fd)


async def main(rounds: int = 12, size: int = 100) -> dict[str, list[float]]:
    async with Runtime({"echo": Echo}, drivers=[UdpDriver], backend="uvloop") as rt:
        ref = await rt.spawn("echo")
        addr = (await rt.next_event()).msg.addr  # type: ignore[union-attr]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        payload = bytes(size)
        res: dict[str, list[float]] = {}
        for _ in range(rounds):
            for kind in ("runtime", "task+driver", "raw"):
                await rt.run_on_worker(0, _pause)
                for _ in range(N):
                    client.sendto(payload, addr)
                res.setdefault(kind, []).append(await rt.run_on_worker(0, _drain(kind, ref)))
        client.close()
    return res


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    for kind, values in asyncio.run(main(size=size)).items():
        values.sort()
        lo, mid = values[0] * 1e6, values[len(values) // 2] * 1e6
        print(f"{kind:12s} min {lo:5.2f} us  median {mid:5.2f} us  per {size} B datagram")
