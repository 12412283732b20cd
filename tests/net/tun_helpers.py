"""Helpers of the TUN tests: IPv4 packets and checksums, traffic through a device from
the test's side, and ``Puppet``, a task the test scripts output by output."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import random
import socket
import struct
from typing import Any

from sansio_aio import Ext, ExtOut, Reply, Request, Runtime, Task, TaskOutput, TaskRef
from sansio_aio.net import TunBind, TunBound, TunDriver, TunPacket, TunPackets
from sansio_aio.testing import set_sysctl


def quiet_netns() -> None:
    """No IPv6 on devices made from now on in this namespace (no RS/MLD chatter)."""
    set_sysctl("net/ipv6/conf/default/disable_ipv6", 1)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``; 0 when verifying a valid one."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_checksum_ok(ip: bytes) -> bool:
    """Verify the UDP checksum of IPv4 packet ``ip`` (pseudo-header included)."""
    ihl = (ip[0] & 0x0F) * 4
    udp = ip[ihl:]
    if udp[6:8] == b"\0\0":
        return True  # no checksum
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return checksum(pseudo + udp) == 0


def ipv4_packet(
    proto: int, payload: bytes, src: str = "10.77.0.1", dst: str = "10.77.0.2"
) -> bytes:
    """An IPv4 packet (no options) of protocol ``proto``, with a valid header checksum."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0x1234,
        0x4000,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def tun_fds() -> set[int]:
    """This process's fds open on /dev/net/tun."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/net/tun":
                out.add(int(name))
        except OSError:
            pass
    return out


def ping(remote: str, count: int) -> int:
    """Send ``count`` ICMP echo requests; return how many replies were correct
    (matching id/seq/payload, valid IPv4 header and ICMP checksums)."""
    good = 0
    ident = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        raw.settimeout(3.0)
        for seq in range(count):
            payload = os.urandom(56)
            csum = checksum(struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload)
            raw.sendto(struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload, (remote, 0))
            for _ in range(100):
                pkt = raw.recv(65535)
                ihl = (pkt[0] & 0x0F) * 4
                icmp = pkt[ihl:]
                if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                    break
            else:
                continue
            assert checksum(pkt[:ihl]) == 0, "bad IPv4 header checksum"
            assert checksum(icmp) == 0, "bad ICMP checksum"
            assert icmp[8:] == payload
            assert socket.inet_ntoa(pkt[12:16]) == remote
            good += 1
    return good


def udp_flows(local: str, remote: str, flows: int, per_flow: int) -> int:
    """``flows`` UDP flows (a socket and a destination port each), ``per_flow`` datagrams
    each. Returns the number of reflected datagrams that came back right: same payload,
    from the address and port they were sent to, with a valid UDP checksum."""
    socks = []
    capture = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    capture.settimeout(3.0)
    good = 0
    try:
        for _ in range(flows):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3.0)
            s.bind((local, 0))
            socks.append(s)
        for k in range(per_flow):
            for i, s in enumerate(socks):
                s.sendto(f"flow {i} #{k}".encode(), (remote, 20000 + i))
        for i, s in enumerate(socks):
            for k in range(per_flow):
                data, src = s.recvfrom(2048)
                if data == f"flow {i} #{k}".encode() and src == (remote, 20000 + i):
                    good += 1
        for _ in range(flows * per_flow):  # the same datagrams, as the kernel got them
            pkt = capture.recv(65535)
            assert udp_checksum_ok(pkt), "bad UDP checksum"
    finally:
        capture.close()
        for s in socks:
            s.close()
    return good


class Puppet(Task):
    """Emits what the test sends it (``Ext(output or [outputs])``), reports every other
    input as ``ExtOut(input)``. ``Ext("end")`` makes it end; ``Ext("explode")`` makes it
    raise on the next packet."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.explode = False

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            if event.msg == "end":
                self.closing = True
            elif event.msg == "explode":
                self.explode = True
            else:
                for out in event.msg if isinstance(event.msg, list) else [event.msg]:
                    self.emit(out)
        elif type(event) is Request:
            self.emit(Reply(event.id, "alive"))
        else:
            if self.explode and type(event) in (TunPacket, TunPackets):
                raise RuntimeError("boom on a packet")
            self.emit(ExtOut(event))


async def expect(rt: Runtime, cls: type, timeout: float = 5.0) -> Any:
    """The next application event, which must be a task output of type ``cls``."""
    event = await asyncio.wait_for(rt.next_event(), timeout)
    assert isinstance(event, TaskOutput), event
    assert isinstance(event.msg, cls), event.msg
    return event.msg


async def expect_event(rt: Runtime, cls: type, timeout: float = 5.0) -> Any:
    """The next application event, which must be of type ``cls``."""
    event = await asyncio.wait_for(rt.next_event(), timeout)
    assert isinstance(event, cls), event
    return event


async def bound(rt: Runtime, ref: TaskRef, bind: TunBind) -> TunBound:
    """Make the puppet ``ref`` bind, and return the (successful) answer."""
    rt.send_nowait(ref, bind)
    answer: TunBound = await expect(rt, TunBound)
    assert answer.error is None, answer.error
    return answer


async def driver_counter(rt: Runtime, worker: int, name: str) -> int:
    """A TUN driver counter read on the worker's own thread (or process)."""
    return await rt.run_on_worker(worker, functools.partial(tun_counter, name=name))


def tun_counter(core: Any, name: str) -> int:
    """Run on a worker: the TUN driver's counter ``name`` (module level: crosses processes)."""
    (driver,) = [d for d in core.drivers if isinstance(d, TunDriver)]
    return int(driver.stats()[name])


def set_mtu(name: str, mtu: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), 0x8922, struct.pack("16si20x", name.encode(), mtu))
