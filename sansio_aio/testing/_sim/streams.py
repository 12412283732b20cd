"""The state of simulated TCP: listeners, connection ends, the shared port table.

Theory of operation
-------------------
One :class:`StreamTable` per network (kept in ``SimNetwork.registry["tcp"]``) knows every
listener, by ``(host, port)``, and every local port a connection uses, so binds collide
as they would on one host; a SYN finds its listener there (a wildcard listener takes
what no specific one does; several ``reuse_port`` listeners share by a hash of the
source). A :class:`Conn` is one end of a connection: its slot and owner, the peer end,
send-side counters (sequence numbers, bytes in flight for backpressure) and receive-side
reassembly (segments by sequence number, held while reading is paused). The behaviour
lives in :class:`~sansio_aio.testing._sim.tcp.SimTcpDriver`. This module imports no asyncio.
"""

from __future__ import annotations

import errno as errno_mod
import itertools
import zlib
from typing import TYPE_CHECKING

from ..._events import TaskRef
from ...net._events import Address
from .addr import ANY

if TYPE_CHECKING:
    from .tcp import SimTcpDriver

__all__ = ["Conn", "Listener", "StreamTable"]


class Listener:
    """A listening socket of a simulated task."""

    __slots__ = ("driver", "host", "open", "owner", "port", "reuse", "slot", "version")

    def __init__(
        self,
        driver: SimTcpDriver,
        slot: int,
        owner: TaskRef,
        host: str,
        port: int,
        version: int,
        reuse: bool,
    ) -> None:
        self.driver = driver
        self.slot = slot
        self.owner = owner
        self.host = host
        self.port = port
        self.version = version
        self.reuse = reuse
        self.open = True


class Conn:
    """One end of a simulated connection."""

    __slots__ = (
        "driver",
        "eof_seen",
        "expected",
        "held",
        "inflight",
        "local",
        "open",
        "owner",
        "peer",
        "peer_addr",
        "read_paused",
        "reorder",
        "send_seq",
        "slot",
        "uid",
        "wr_closed",
        "write_paused",
    )

    def __init__(
        self,
        driver: SimTcpDriver,
        slot: int,
        owner: TaskRef,
        local: Address,
        remote: Address,
        uid: int,
    ) -> None:
        self.driver = driver
        self.slot = slot
        self.owner = owner
        self.local = local
        self.peer_addr = remote
        self.uid = uid
        self.peer: Conn | None = None
        self.open = True
        self.wr_closed = False
        self.eof_seen = False
        self.read_paused = False
        self.write_paused = False
        self.inflight = 0
        self.send_seq = 0
        self.expected = 0
        self.reorder: dict[int, tuple[str, bytes]] = {}
        self.held: list[tuple[str, bytes]] = []


class StreamTable:
    """Listeners and used ports of one network (shared by every worker's driver)."""

    def __init__(self, first_port: int) -> None:
        self.listeners: dict[tuple[str, int], list[Listener]] = {}
        self.used: set[tuple[str, int]] = set()
        self.next_port = first_port
        self.first_port = first_port
        self.uids = itertools.count(1)

    def port_busy(self, host: str, port: int, version: int) -> list[Listener]:
        out: list[Listener] = []
        for (h, p), lst in self.listeners.items():
            if p == port and (h == host or h == ANY[version] or host == ANY[version]):
                out.extend(x for x in lst if x.version == version)
        return out

    def free_port(self, host: str, version: int) -> int:
        span = 65536 - self.first_port
        for i in range(span):
            port = self.first_port + (self.next_port - self.first_port + i) % span
            if (host, port) not in self.used and not self.port_busy(host, port, version):
                self.next_port = port + 1 if port < 65535 else self.first_port
                return port
        raise OSError(errno_mod.EADDRINUSE, "no free ephemeral port")

    def find(self, host: str, port: int, version: int, src: Address) -> Listener | None:
        lst = self.listeners.get((host, port)) or self.listeners.get((ANY[version], port))
        if not lst:
            return None
        return lst[zlib.crc32(repr(tuple(src[:2])).encode()) % len(lst)]
