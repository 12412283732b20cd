"""TUN/TAP driver (devices, packets, a device deleted, cleanup) and the TUN echo example,
for real.

Every test that touches a device runs its whole body in a network namespace of its own
(``@in_netns``: a thread that unshared, with its own event loop; the runtime's worker
threads inherit the namespace). Devices and addresses exist only there and vanish with
it; the host's interfaces are never touched. IPv6 is off in each namespace so the
kernel's IPv6 chatter does not reach the tasks.

Where TUN cannot work (not Linux, no python-pytun, no /dev/net/tun, no right to make a
namespace or a device) these tests skip with the precise reason; with ``CI=true`` they
fail instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import signal
import socket
import struct
import sys
from typing import Any

import pytest

from sansio_aio import Runtime, TaskEnded, TaskFailed
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
)
from sansio_aio.testing import in_netns, link_delete, link_names, run_in_netns
from tests.helpers import EXAMPLES, ROOT, T, Variant
from tests.net.tun_helpers import (
    Puppet,
    bound,
    checksum,
    driver_counter,
    expect,
    expect_event,
    ipv4_packet,
    ping,
    quiet_netns,
    set_mtu,
    tun_fds,
    udp_checksum_ok,
    udp_flows,
)

#: every test runs on the C datagram path and on the pure-Python one (tests/net/conftest.py)
pytestmark = pytest.mark.usefixtures("datagram_path")

EXAMPLE = EXAMPLES / "tun_echo.py"


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("tun_echo_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


example = _load_example()
EchoConfig = example.EchoConfig
EchoTask = example.EchoTask


# ------------------------------------------------------------- echo logic (pure)


def test_icmp_echo_reply_matches_a_full_checksum_recompute() -> None:
    rng = random.Random(1624)
    for _ in range(3000):
        body = rng.randbytes(rng.randrange(0, 200))
        ident, seq = rng.randrange(1 << 16), rng.randrange(1 << 16)
        csum = checksum(struct.pack("!BBHHH", 8, 0, 0, ident, seq) + body)
        request = ipv4_packet(1, struct.pack("!BBHHH", 8, 0, csum, ident, seq) + body)
        reply = bytes(example.echo_ipv4(request))
        assert reply[12:16] == request[16:20] and reply[16:20] == request[12:16]
        assert checksum(reply[:20]) == 0
        icmp = reply[20:]
        assert icmp[0] == 0 and icmp[1] == 0 and icmp[4:] == request[24:]
        full = checksum(b"\0\0\0\0" + icmp[4:])
        assert checksum(icmp) == 0
        # RFC 1624 gives the same bits as a recompute except for the +0/-0 ambiguity
        assert struct.unpack("!H", icmp[2:4])[0] in (full, 0xFFFF if full == 0 else full)


def test_udp_reflection_swaps_addresses_and_ports_and_keeps_the_checksum_valid() -> None:
    rng = random.Random(7)
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 100))
        sport, dport = rng.randrange(1, 1 << 16), rng.randrange(1, 1 << 16)
        udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
        pseudo = socket.inet_aton("10.77.0.1") + socket.inet_aton("10.77.0.2")
        csum = checksum(pseudo + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
        packet = ipv4_packet(17, udp[:6] + struct.pack("!H", csum) + data)
        reply = bytes(example.echo_ipv4(packet))
        assert udp_checksum_ok(reply) and checksum(reply[:20]) == 0
        assert struct.unpack("!HH", reply[20:24]) == (dport, sport)
        assert socket.inet_ntoa(reply[12:16]) == "10.77.0.2"
        assert reply[28:] == data


def test_echo_ignores_what_it_should_not_answer() -> None:
    echo = example.echo_ipv4
    icmp_reply = struct.pack("!BBHHH", 0, 0, 0, 1, 1) + bytes(8)
    assert echo(ipv4_packet(1, icmp_reply)) is None  # an echo reply is not answered
    assert echo(ipv4_packet(6, bytes(20))) is None  # TCP
    assert echo(b"\x60" + bytes(60)) is None  # IPv6
    assert echo(b"\x45\x00") is None  # too short
    frag = bytearray(ipv4_packet(17, bytes(16)))
    frag[6] = 0x20  # MF
    assert echo(bytes(frag)) is None


def test_tap_echo_answers_arp_requests() -> None:
    mac = bytes.fromhex("020000770002")
    peer = bytes.fromhex("0a0000000001")
    arp = (
        b"\x00\x01\x08\x00\x06\x04\x00\x01"
        + peer
        + socket.inet_aton("10.78.0.1")
        + bytes(6)
        + socket.inet_aton("10.78.0.9")
    )
    frame = b"\xff" * 6 + peer + b"\x08\x06" + arp
    reply = example.echo_frame(frame, mac)
    assert reply[:6] == peer and reply[6:12] == mac and reply[12:14] == b"\x08\x06"
    assert reply[20:22] == b"\x00\x02"  # op: reply
    assert reply[22:28] == mac and reply[28:32] == socket.inet_aton("10.78.0.9")
    assert reply[32:38] == peer and reply[38:42] == socket.inet_aton("10.78.0.1")


# ---------------------------------------------------------- the namespace helper


def test_run_in_netns_is_private_and_leaves_the_host_alone(need_tun: None) -> None:
    host_links = sorted(link_names())
    host_ns = os.readlink("/proc/thread-self/ns/net")

    def inside() -> tuple[list[str], str]:
        return link_names(), os.readlink("/proc/thread-self/ns/net")

    links, ns = run_in_netns(inside)
    assert links == ["lo"]
    assert ns != host_ns
    assert sorted(link_names()) == host_links

    def fail() -> None:
        raise KeyError("from the namespace")

    with pytest.raises(KeyError, match="from the namespace"):
        run_in_netns(fail)


# -------------------------------------------------------------- round trips


ROUND_TRIP = [
    pytest.param(1, False, id="1worker-per-packet"),
    pytest.param(1, True, id="1worker-batch"),
    pytest.param(2, False, id="2workers-per-packet"),
    pytest.param(2, True, id="2workers-batch"),
]


@pytest.mark.parametrize(("workers", "batch"), ROUND_TRIP)
@in_netns
async def test_icmp_and_udp_round_trips_through_the_echo_task(
    need_tun: None, backend: str, workers: int, batch: bool
) -> None:
    quiet_netns()
    cfg = EchoConfig(name="tun0", multi_queue=workers > 1, batch=batch)
    async with Runtime(
        {"echo": EchoTask}, workers=workers, backend=backend, drivers=[TunDriver]
    ) as rt:
        refs = await example.start_echo(rt, cfg)
        assert [r.worker for r in refs] == list(range(workers))
        assert await asyncio.to_thread(ping, "10.77.0.2", 10) == 10
        flows, per_flow = 64, 2
        good = await asyncio.to_thread(udp_flows, "10.77.0.1", "10.77.0.2", flows, per_flow)
        assert good == flows * per_flow
        stats = [await rt.request(ref, "stats") for ref in refs]
        assert sum(s["echoed"] for s in stats) == 10 + flows * per_flow
        assert all(s["send_errors"] == 0 for s in stats)
        # with 2 workers, one device queue each: the kernel spread the flows over both
        assert all(s["echoed"] > 0 for s in stats), stats
        rx = [await driver_counter(rt, w, "tun_rx") for w in range(workers)]
        assert all(n > 0 for n in rx) and sum(rx) >= 10 + flows * per_flow
    assert link_names() == ["lo"]  # the device went with its last queue


@in_netns
async def test_tap_frames_arp_and_udp(need_tun: None, backend: str) -> None:
    quiet_netns()
    async with Runtime(
        {"echo": EchoTask, "puppet": Puppet}, backend=backend, drivers=[TunDriver]
    ) as rt:
        # a TAP echo answers ARP, so the kernel can reach the subnet behind it
        cfg = EchoConfig(name="tap0", tap=True, address="10.78.0.1")
        (echo,) = await example.start_echo(rt, cfg)
        # resolve ARP first: datagrams sent while the neighbour is unresolved wait in a
        # short kernel queue, and a burst can overflow it under load
        assert await asyncio.to_thread(udp_flows, "10.78.0.1", "10.78.0.2", 1, 1) == 1
        good = await asyncio.to_thread(udp_flows, "10.78.0.1", "10.78.0.2", 4, 3)
        assert good == 12
        assert (await rt.request(echo, "stats"))["echoed"] >= 13  # 12 UDP + >= 1 ARP

        # the raw frames a TAP queue reads: the kernel's ARP broadcast, as Ethernet
        puppet = await rt.spawn("puppet")
        answer = await bound(rt, puppet, TunBind("tap1", tap=True, address="10.79.0.1"))
        assert answer.name == "tap1" and answer.mtu == 1500

        def poke() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"who is there", ("10.79.0.5", 9))

        await asyncio.to_thread(poke)
        pkt = await expect(rt, TunPacket)
        frame = pkt.data
        assert frame[:6] == b"\xff" * 6 and frame[12:14] == b"\x08\x06"  # broadcast ARP
        assert frame[20:22] == b"\x00\x01"  # request
        assert frame[38:42] == socket.inet_aton("10.79.0.5")


# ----------------------------------------------------------- device deleted


@pytest.mark.parametrize("batch", [False, True], ids=["per-packet", "batch"])
@in_netns
async def test_device_deleted_under_the_reader(need_tun: None, backend: str, batch: bool) -> None:
    quiet_netns()
    before = tun_fds()
    async with Runtime({"puppet": Puppet}, backend=backend, drivers=[TunDriver]) as rt:
        ref = await rt.spawn("puppet")
        answer = await bound(rt, ref, TunBind("tun0", address="10.77.0.1", batch=batch))
        assert answer.slot is not None, answer  # narrows the type
        assert len(tun_fds() - before) == 1
        await asyncio.to_thread(link_delete, "tun0")
        closed = await expect(rt, TunClosed)
        assert closed.slot == answer.slot
        assert "EBADFD" in str(closed.error), closed.error
        assert tun_fds() == before  # the reader was removed and the fd closed
        assert await driver_counter(rt, 0, "tun_queues") == 0
        wakeups = await driver_counter(rt, 0, "tun_read_wakeups")
        # A measurement window, not synchronisation: a dead fd left registered would be
        # reported ready thousands of times in it (17k times in 0.25 s on stdlib asyncio).
        await asyncio.sleep(0.3)
        assert await driver_counter(rt, 0, "tun_read_wakeups") == wakeups
        # the slot is gone; the worker and the task carry on
        rt.send_nowait(ref, TunSend(answer.slot, ipv4_packet(17, bytes(8))))
        error = await expect(rt, TunError)
        assert error.slot == answer.slot and "no such slot" in error.error
        again = await bound(rt, ref, TunBind("tun0"))
        assert again.slot != answer.slot
        assert await rt.request(ref, "ping") == "alive"


# -------------------------------------------------------------------- cleanup


@in_netns
async def test_queues_are_released_and_no_fd_is_left(need_tun: None, backend: str) -> None:
    quiet_netns()
    before = tun_fds()
    async with Runtime({"puppet": Puppet}, workers=2, backend=backend, drivers=[TunDriver]) as rt:
        a = await rt.spawn("puppet", worker=0)
        b = await rt.spawn("puppet", worker=1)
        c = await rt.spawn("puppet", worker=0)
        d = await rt.spawn("puppet", worker=1)
        mask = "255.255.255.0"
        mq = TunBind("tun0", address="10.77.0.1", netmask=mask, multi_queue=True)
        slot_a = (await bound(rt, a, mq)).slot
        assert slot_a is not None  # narrows the type
        await bound(rt, b, TunBind("tun0", multi_queue=True, mtu=None))
        await bound(rt, c, TunBind("tun1", address="10.77.1.1", netmask=mask))
        await bound(rt, d, TunBind("tun2", address="10.77.2.1", netmask=mask))
        assert len(tun_fds() - before) == 4
        assert sorted(link_names()) == ["lo", "tun0", "tun1", "tun2"]

        # a: unbinds itself; a send on the old slot is then an error value
        rt.send_nowait(a, [TunUnbind(slot_a), TunSend(slot_a, b"\x45" + bytes(19))])
        error = await expect(rt, TunError)
        assert error.slot == slot_a and "no such slot" in error.error
        assert len(tun_fds() - before) == 3

        # b: ends without unbinding; the runtime releases its queue (tun0 goes with it)
        rt.send_nowait(b, "end")
        assert (await expect_event(rt, TaskEnded)).task == b
        assert len(tun_fds() - before) == 2
        assert sorted(link_names()) == ["lo", "tun1", "tun2"]

        # d: raises on a packet; it is dropped and its device released too
        rt.send_nowait(d, "explode")
        assert await rt.request(d, "sync") == "alive"
        await asyncio.to_thread(_send_udp, "10.77.2.9")
        failed = await expect_event(rt, TaskFailed)
        assert failed.task == d and "boom on a packet" in failed.traceback
        assert sorted(link_names()) == ["lo", "tun1"]
        # c is still bound at shutdown: the runtime closes it
    assert tun_fds() == before
    assert link_names() == ["lo"]


def _send_udp(dst: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", (dst, 9))


# ------------------------------------------------ bad input, whole packets


@in_netns
async def test_bad_binds_and_sends_are_error_values(need_tun: None, variant: Variant) -> None:
    quiet_netns()
    async with Runtime({"puppet": Puppet}, **variant, drivers=[TunDriver]) as rt:
        ref = await rt.spawn("puppet")
        bad = [
            (TunBind("x" * 16), "bad interface name"),
            (TunBind("tun0", mtu=10), "mtu must be"),
            (TunBind("tun0", address="bogus"), "IPv4 address"),
            (TunBind("tun0", address="10.77.0.1", netmask="/24"), "netmask must be"),
        ]
        for bind, text in bad:
            rt.send_nowait(ref, bind)
            answer = await expect(rt, TunBound)
            assert answer.slot is None and text in str(answer.error), answer
        good = await bound(rt, ref, TunBind("tun0", address="10.77.0.1", tag="mine"))
        assert good.tag == "mine"
        for bind, text in [
            (TunBind("tun0"), "EBUSY"),  # a second queue on a single-queue device
            (TunBind("tun0", multi_queue=True), "EINVAL"),  # flags do not match
        ]:
            rt.send_nowait(ref, bind)
            answer = await expect(rt, TunBound)
            assert answer.slot is None and text in str(answer.error), answer
        slot = good.slot
        assert slot is not None, good  # narrows the type
        rt.send_nowait(ref, TunSend(slot, "not bytes"))  # type: ignore[arg-type]
        assert "bytes-like" in (await expect(rt, TunError)).error
        rt.send_nowait(ref, TunSend(slot, bytes(20)))  # not IPv4 or IPv6: the kernel refuses
        assert "EINVAL" in (await expect(rt, TunError)).error
        rt.send_nowait(ref, TunSendMany(slot, [bytes(20), ipv4_packet(17, bytes(8)), 42]))  # type: ignore[list-item]
        errors = [await expect(rt, TunError), await expect(rt, TunError)]
        assert "EINVAL" in errors[0].error and "bytes-like" in errors[1].error
        rt.send_nowait(ref, TunUnbind(12345))  # unknown slot: a no-op
        assert await rt.request(ref, "still there?") == "alive"
        assert await driver_counter(rt, 0, "tun_tx") == 1
        stats = await rt.stats()
        assert stats.workers[0].failures == 0


@pytest.mark.parametrize("batch", [False, True], ids=["per-packet", "batch"])
@in_netns
async def test_packets_longer_than_the_read_size_are_reported_never_cut(
    need_tun: None, variant: Variant, batch: bool
) -> None:
    quiet_netns()
    async with Runtime({"puppet": Puppet}, **variant, drivers=[TunDriver]) as rt:
        ref = await rt.spawn("puppet")
        bind = TunBind("tun0", address="10.77.0.1", mtu=1500, batch=batch)
        answer = await bound(rt, ref, bind)
        assert answer.mtu == 1500
        set_mtu("tun0", 9000)  # behind the driver's back

        def send_big() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"a" * 4000, ("10.77.0.2", 9))

        await asyncio.to_thread(send_big)
        error = await expect(rt, TunError)
        assert "longer than the read size" in error.error and "9000" in error.error, error
        await asyncio.to_thread(send_big)
        if batch:
            (data,) = (await expect(rt, TunPackets)).packets
        else:
            data = (await expect(rt, TunPacket)).data
        assert len(data) == 20 + 8 + 4000 and data.endswith(b"a" * 4000)
        assert await driver_counter(rt, 0, "tun_rx_truncated") == 1


@in_netns
async def test_tun_garbage_outputs_are_error_values(need_tun: None, backend: str) -> None:
    quiet_netns()
    async with Runtime({"puppet": Puppet}, backend=backend, drivers=[TunDriver]) as rt:
        ref = await rt.spawn("puppet")
        rt.send_nowait(ref, TunBind("bad\0name"))  # embedded NUL
        answer = await expect(rt, TunBound)
        assert answer.slot is None and answer.error, answer
        good = await bound(rt, ref, TunBind("tunr0", address="10.78.0.1", up=True))
        assert good.slot is not None, good  # narrows the type
        ping = ipv4_packet(17, bytes(8))
        rt.send_nowait(
            ref,
            [
                TunSend([good.slot], ping),  # type: ignore[arg-type]
                TunSendMany({}, [ping]),  # type: ignore[arg-type]
                TunUnbind([good.slot]),  # type: ignore[arg-type]
                TunSendMany(good.slot, 42),  # type: ignore[arg-type]
                TunSend(good.slot, memoryview(ping)),  # bytes-like: written
            ],
        )
        errors = [await expect(rt, TunError) for _ in range(3)]
        assert "no such slot" in errors[0].error and "no such slot" in errors[1].error
        assert "sequence" in errors[2].error
        assert await rt.request(ref, "still there?", timeout=T) == "alive"
        assert await driver_counter(rt, 0, "tun_tx") == 1
        assert await driver_counter(rt, 0, "tun_queues") == 1  # the bad unbind closed nothing
        stats = await rt.stats()
        assert stats.workers[0].failures == 0


# ------------------------------------------------------------------ the example


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_example_selftest_runs_and_prints_a_summary(need_tun: None, mode: str) -> None:
    """With processes, each worker process opens its own queue of the multi-queue device."""
    import subprocess

    args = ["--selftest", "--count", "20", "--workers", "2", "--mode", mode]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest icmp 20/20 udp 20/20 ok" in proc.stdout
    assert "tun_echo: echoed 40 packets" in proc.stdout


@in_netns
async def test_example_serves_until_ctrl_c(need_tun: None) -> None:
    quiet_netns()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--name",
        "tun7",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)  # type: ignore[union-attr]
        assert b"ready on tun7" in line, line
        assert await asyncio.to_thread(udp_flows, "10.77.0.1", "10.77.0.2", 3, 2) == 6
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"tun_echo: echoed 6 packets" in out, out


# -------------------------------------------------------- events are plain data


def test_tun_events_are_slotted_and_have_defaults() -> None:
    bind = TunBind()
    assert (bind.name, bind.tap, bind.mtu, bind.multi_queue, bind.batch) == (
        None,
        False,
        1500,
        False,
        False,
    )
    for event in (bind, TunBound(1, "tun0"), TunPacket(1, b""), TunClosed(1, None)):
        assert not hasattr(event, "__dict__")
    assert TunBound(None, "x", "err").mtu == 0
