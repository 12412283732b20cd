"""TUN echo: a Sans-I/O task that answers ICMP echo and reflects UDP on a TUN (or TAP) device.

The task (:class:`EchoTask`) binds a device through the runtime's TUN driver and, for each
IPv4 packet it reads, writes back the reply: an ICMP echo request becomes an echo reply
(addresses swapped, type 8 -> 0, checksum patched incrementally per RFC 1624), a UDP
datagram is reflected (addresses and ports swapped; the checksum is unchanged because
the ones'-complement sum does not depend on the order of its words). On a TAP device it
also answers ARP, so the kernel can reach any address of the subnet behind it. Anything
else (IPv6 chatter, fragments, other protocols) is counted and ignored.

Try it by hand (root; everything stays in a private network namespace):

    sudo ip netns add tundemo
    sudo ip netns exec tundemo .venv/bin/python examples/tun_echo.py --workers 2
    # in another terminal: every address of 10.77.0.0/24 but .1 answers
    sudo ip netns exec tundemo ping -c 3 10.77.0.2
    sudo ip netns exec tundemo sh -c 'echo hi | nc -u -w1 10.77.0.9 5000'
    # Ctrl-C the echo (it prints a summary and exits 0), then
    sudo ip netns del tundemo

Or let it test itself in a namespace it makes and that vanishes with it:

    sudo .venv/bin/python examples/tun_echo.py --selftest --count 200

The address 10.77.0.1/24 goes on the device (the kernel's side); the task answers for
every other address of that subnet.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sansio_aio import (
    ExtOut,
    Reply,
    Request,
    Runtime,
    Task,
    TaskEnded,
    TaskFailed,
    TaskOutput,
    TaskRef,
)
from sansio_aio.net import (
    TunBind,
    TunBound,
    TunClosed,
    TunDriver,
    TunError,
    TunPacket,
    TunPackets,
    TunSend,
    TunSendMany,
    TunUnbind,
    tun_unavailable_reason,
)

# --------------------------------------------------------------- the echo logic (pure)

_ICMP = 1
_UDP = 17
_ETH_IPV4 = b"\x08\x00"
_ETH_ARP = b"\x08\x06"
DEFAULT_MAC = bytes.fromhex("020000770002")


def echo_ipv4(pkt: bytes) -> bytearray | None:
    """The reply to one IPv4 packet (ICMP echo request or UDP), or ``None`` to ignore it."""
    if len(pkt) < 28 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or len(pkt) < ihl + 8 or pkt[6] & 0x3F or pkt[7]:
        return None  # malformed, or a fragment (MF set or offset != 0)
    proto = pkt[9]
    if proto == _UDP:
        out = bytearray(pkt)
        out[12:16] = pkt[16:20]
        out[16:20] = pkt[12:16]
        out[ihl : ihl + 2] = pkt[ihl + 2 : ihl + 4]
        out[ihl + 2 : ihl + 4] = pkt[ihl : ihl + 2]
        return out
    if proto == _ICMP and pkt[ihl] == 8 and pkt[ihl + 1] == 0:
        out = bytearray(pkt)
        out[12:16] = pkt[16:20]
        out[16:20] = pkt[12:16]
        out[ihl] = 0
        # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), m = 0x0800 (type 8, code 0), m' = 0
        s = (~((pkt[ihl + 2] << 8) | pkt[ihl + 3]) & 0xFFFF) + 0xF7FF
        s = (s & 0xFFFF) + (s >> 16)
        s = ~s & 0xFFFF
        out[ihl + 2] = s >> 8
        out[ihl + 3] = s & 0xFF
        return out
    return None


def echo_frame(frame: bytes, mac: bytes = DEFAULT_MAC) -> bytes | None:
    """The reply to one Ethernet frame of a TAP device (ARP or IPv4), or ``None``."""
    if len(frame) < 14:
        return None
    ethertype = frame[12:14]
    if ethertype == _ETH_IPV4:
        reply = echo_ipv4(frame[14:])
        if reply is None:
            return None
        return frame[6:12] + mac + _ETH_IPV4 + reply
    if ethertype == _ETH_ARP and len(frame) >= 42:
        arp = frame[14:42]
        # Ethernet/IPv4 request (htype 1, ptype 0x0800, hlen 6, plen 4, op 1), not gratuitous
        if arp[:8] != b"\x00\x01\x08\x00\x06\x04\x00\x01" or arp[14:18] == arp[24:28]:
            return None
        sender_mac, sender_ip, target_ip = arp[8:14], arp[14:18], arp[24:28]
        body = b"\x00\x01\x08\x00\x06\x04\x00\x02" + mac + target_ip + sender_mac + sender_ip
        return sender_mac + mac + _ETH_ARP + body
    return None


# ------------------------------------------------------------------------ the task


@dataclass
class EchoConfig:
    """How an :class:`EchoTask` binds its device."""

    name: str | None = "tun0"
    tap: bool = False
    address: str | None = "10.77.0.1"
    netmask: str = "255.255.255.0"
    mtu: int | None = 1500
    multi_queue: bool = False
    #: The MAC the task answers with on a TAP device.
    mac: bytes = DEFAULT_MAC
    #: Take each readiness's packets as one ``TunPackets`` input and answer with one
    #: ``TunSendMany`` (the runtime's per-input cost is paid once per batch).
    batch: bool = True
    #: Emit ``("done", stats)`` once this many packets were echoed (0: never).
    notify_after: int = 0


class EchoTask(Task):
    """Answers ICMP echo and reflects UDP on the device it binds.

    Outputs for the application (``ExtOut``): ``("bound", name, slot, mtu)``,
    ``("error", text)`` (the bind failed; the task ends), ``("closed", text)`` (the device
    went away; the task ends) and ``("done", stats)`` (see ``notify_after``). A
    ``Request`` of anything is answered with :meth:`stats`.
    """

    def __init__(self, cfg: EchoConfig | None = None) -> None:
        cfg = cfg if cfg is not None else EchoConfig()
        super().__init__(cfg)
        self.slot: int | None = None
        self.tap = cfg.tap
        self.mac = cfg.mac
        self.notify_after = cfg.notify_after
        self.notified = False
        self.echoed = 0
        self.ignored = 0
        self.send_errors = 0
        self.last_error: str | None = None
        self.first_at = 0.0
        self.last_at = 0.0
        #: the reply function for this device kind, chosen once
        self._echo: Callable[[bytes], bytes | bytearray | None] = (
            functools.partial(echo_frame, mac=self.mac) if self.tap else echo_ipv4
        )
        self.emit(
            TunBind(
                cfg.name,
                tap=cfg.tap,
                address=cfg.address,
                netmask=cfg.netmask,
                mtu=cfg.mtu,
                multi_queue=cfg.multi_queue,
                batch=cfg.batch,
            )
        )

    def on_event(self, now: float, event: Any) -> None:
        """Echo packets; follow the device's life."""
        if type(event) is TunPacket:  # one packet per input (the default): checked first
            reply = self._echo(event.data)
            if reply is None:
                self.ignored += 1
                return
            echoed = self.echoed = self.echoed + 1
            if echoed == 1:
                self.first_at = now
            self.last_at = now
            self.emit(TunSend(event.slot, reply))
            if echoed == self.notify_after and not self.notified:
                self.notified = True
                self.emit(ExtOut(("done", self.stats())))
        elif type(event) is TunPackets:
            replies = []
            echo = self._echo
            for data in event.packets:
                reply = echo(data)
                if reply is None:
                    self.ignored += 1
                else:
                    replies.append(reply)
            if replies:
                if not self.echoed:
                    self.first_at = now
                self.echoed += len(replies)
                self.last_at = now
                self.emit(TunSendMany(event.slot, replies))
                if self.notify_after and not self.notified and self.echoed >= self.notify_after:
                    self.notified = True
                    self.emit(ExtOut(("done", self.stats())))
        elif type(event) is TunBound:
            if event.error is not None:
                self.emit(ExtOut(("error", event.error)))
                self.closing = True
            else:
                self.slot = event.slot
                self.emit(ExtOut(("bound", event.name, event.slot, event.mtu)))
        elif type(event) is TunError:
            self.send_errors += 1
            self.last_error = event.error
        elif type(event) is TunClosed:
            self.slot = None
            self.emit(ExtOut(("closed", event.error)))
            self.closing = True
        elif type(event) is Request:
            self.emit(Reply(event.id, self.stats()))

    def on_shutdown(self, now: float) -> None:
        """Close the device queue, then end."""
        if self.slot is not None:
            self.emit(TunUnbind(self.slot))
            self.slot = None
        self.closing = True

    def stats(self) -> dict[str, Any]:
        """Counters: echoed, ignored, send_errors, first_at/last_at (loop times)."""
        return {
            "echoed": self.echoed,
            "ignored": self.ignored,
            "send_errors": self.send_errors,
            "last_error": self.last_error,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }


# ----------------------------------------------------------------------- running it


async def start_echo(rt: Runtime, cfg: EchoConfig, timeout: float = 5.0) -> list[TaskRef]:
    """Spawn one :class:`EchoTask` per worker (queues of one device if multi-queue) and
    wait until each has bound. Raises ``RuntimeError`` with the driver's error if not."""
    refs = []
    for w in range(rt.workers if cfg.multi_queue else 1):
        ref = await rt.spawn("echo", cfg, worker=w)
        event = await asyncio.wait_for(rt.next_event(), timeout)
        if not isinstance(event, TaskOutput) or event.msg[0] != "bound":
            why = event.msg[1] if isinstance(event, TaskOutput) else event
            raise RuntimeError(f"the echo task on worker {w} could not bind: {why}")
        refs.append(ref)
    return refs


def _summary(stats: list[dict[str, Any]], took: float) -> str:
    echoed = sum(s["echoed"] for s in stats)
    per_queue = "/".join(str(s["echoed"]) for s in stats)
    return (
        f"tun_echo: echoed {echoed} packets (per queue {per_queue}), ignored "
        f"{sum(s['ignored'] for s in stats)}, send errors {sum(s['send_errors'] for s in stats)}"
        f", in {took:.1f} s"
    )


async def serve(args: argparse.Namespace) -> int:
    """Echo until Ctrl-C (SIGINT) or SIGTERM, then shut down and print a summary."""
    cfg = _config(args)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    async with Runtime(
        {"echo": EchoTask},
        workers=args.workers,
        backend=args.backend,
        drivers=[TunDriver],
        mode=args.mode,
    ) as rt:
        try:
            refs = await start_echo(rt, cfg)
        except RuntimeError as exc:
            print(f"tun_echo: {exc}", file=sys.stderr)
            return 1
        print(
            f"tun_echo: ready on {cfg.name} ({'TAP' if cfg.tap else 'TUN'}) "
            f"{cfg.address}/{cfg.netmask}, {len(refs)} queue(s); Ctrl-C to stop",
            flush=True,
        )
        live = set(refs)
        waiter = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            events = asyncio.ensure_future(rt.next_events())
            await asyncio.wait({waiter, events}, return_when=asyncio.FIRST_COMPLETED)
            if not events.done():
                events.cancel()
                break
            for event in events.result():
                if isinstance(event, TaskOutput) and event.msg[0] == "closed":
                    print(f"tun_echo: device closed: {event.msg[1]}", flush=True)
                elif isinstance(event, TaskEnded | TaskFailed):
                    live.discard(event.task)
            if not live:
                stop.set()
        waiter.cancel()
        stats = [await rt.request(ref, "stats") for ref in refs if ref in live]
    print(_summary(stats, time.monotonic() - t0), flush=True)
    return 0


def _internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ping_and_udp(count: int, local: str, remote: str) -> tuple[int, int]:
    """Blocking client: ``count`` pings (checksums verified) and ``count`` UDP round trips."""
    ok_icmp = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        raw.settimeout(2.0)
        ident = os.getpid() & 0xFFFF
        for seq in range(count):
            payload = struct.pack("!d", time.monotonic()) + bytes(range(48))
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            csum = _internet_checksum(hdr + payload)
            raw.sendto(struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload, (remote, 0))
            while True:
                pkt = raw.recv(65535)
                ihl = (pkt[0] & 0x0F) * 4
                icmp = pkt[ihl:]
                if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                    break
            if (
                _internet_checksum(pkt[:ihl]) == 0
                and _internet_checksum(icmp) == 0
                and icmp[8:] == payload
            ):
                ok_icmp += 1
    ok_udp = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(2.0)
        udp.bind((local, 0))
        for i in range(count):
            msg = f"datagram {i}".encode()
            udp.sendto(msg, (remote, 5000 + i % 16))
            data, src = udp.recvfrom(65535)
            if data == msg and src == (remote, 5000 + i % 16):
                ok_udp += 1
    return ok_icmp, ok_udp


async def selftest(args: argparse.Namespace) -> int:
    """Run in a private namespace: start the echo, ping it and send UDP, print a summary."""
    from sansio_aio.testing import set_sysctl

    set_sysctl("net/ipv6/conf/default/disable_ipv6", 1)  # a quiet device: no IPv6 chatter
    cfg = _config(args)
    t0 = time.monotonic()
    remote = _peer_address(cfg.address or "10.77.0.1")
    async with Runtime(
        {"echo": EchoTask},
        workers=args.workers,
        backend=args.backend,
        drivers=[TunDriver],
        mode=args.mode,
    ) as rt:
        refs = await start_echo(rt, cfg)
        ok_icmp, ok_udp = await asyncio.to_thread(
            _ping_and_udp, args.count, cfg.address or "10.77.0.1", remote
        )
        stats = [await rt.request(ref, "stats") for ref in refs]
    print(_summary(stats, time.monotonic() - t0))
    print(f"tun_echo: selftest icmp {ok_icmp}/{args.count} udp {ok_udp}/{args.count} ok")
    return 0 if ok_icmp == ok_udp == args.count else 1


def _peer_address(address: str) -> str:
    a, b, c, d = (int(x) for x in address.split("."))
    return f"{a}.{b}.{c}.{d + 1 if d < 254 else d - 1}"


def _config(args: argparse.Namespace) -> EchoConfig:
    return EchoConfig(
        name=args.name,
        tap=args.tap,
        address=args.address,
        netmask=args.netmask,
        mtu=args.mtu,
        multi_queue=args.workers > 1,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="tun0", help="device name (default tun0)")
    p.add_argument("--tap", action="store_true", help="a TAP device (answers ARP too)")
    p.add_argument("--address", default="10.77.0.1", help="the device's own address")
    p.add_argument("--netmask", default="255.255.255.0")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--workers", type=int, default=1, help=">1: one device queue per worker")
    p.add_argument("--backend", default=None, help="uvloop, epoll or poll")
    p.add_argument(
        "--mode",
        choices=["thread", "process"],
        default="thread",
        help="workers as threads, or one process each (each opens its own queue)",
    )
    p.add_argument("--selftest", action="store_true", help="test in a private netns, exit")
    p.add_argument("--count", type=int, default=100, help="selftest: pings and datagrams")
    args = p.parse_args(argv)
    reason = tun_unavailable_reason()
    if reason is not None:
        print(f"tun_echo: {reason}", file=sys.stderr)
        return 2
    if args.selftest:
        from sansio_aio.testing import run_in_netns

        try:
            return run_in_netns(lambda: asyncio.run(selftest(args)))
        except OSError as exc:
            print(f"tun_echo: {exc}", file=sys.stderr)
            return 2
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
