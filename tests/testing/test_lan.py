"""``PrivateLan``: members in namespaces of their own on one bridge, cut off from the host.

Real namespaces, real veth pairs and a real bridge, real sockets and processes. Without
root or ``ip`` the tests skip with the reason; with ``CI=true`` they fail instead. Every
wait is bounded by a socket timeout or ``asyncio.wait_for``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sansio_aio import Runtime
from sansio_aio.lowlevel import WorkerCore
from sansio_aio.testing import LanMember, PrivateLan, PrivateNetwork, privnet_unavailable_reason

T = 10.0  # the bound of every wait

# A TCP client and a UDP sender for popen'd processes: argv is host, port.
TCP_CLIENT = (
    "import socket, sys\n"
    "with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:\n"
    "    s.sendall(b'hello\\n')\n"
    "    print(s.makefile().readline().strip())\n"
)
UDP_SENDER = (
    "import socket, sys\n"
    "with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
    "    s.sendto(b'from a process', (sys.argv[1], int(sys.argv[2])))\n"
)
# A TCP server that prints its port, then answers each connection with 'alive'.
TCP_SERVER = (
    "import socket, sys\n"
    "srv = socket.create_server((sys.argv[1], 0))\n"
    "print(srv.getsockname()[1], flush=True)\n"
    "while True:\n"
    "    conn, _ = srv.accept()\n"
    "    conn.sendall(b'alive')\n"
    "    conn.close()\n"
)


@functools.cache
def lan_reason() -> str | None:
    """Why namespaces cannot be made here (probed once), or None."""
    return privnet_unavailable_reason()


def need_lan() -> None:
    """Skip (or fail when CI=true) unless private network namespaces can be made."""
    reason = lan_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the PrivateLan tests cannot run: {reason}")
        pytest.skip(reason)


@pytest.fixture
def lan() -> Iterator[PrivateLan]:
    """Three members on 10.98.0.0/24."""
    need_lan()
    with PrivateLan(3, "10.98.0.0/24") as made:
        yield made


def sh(member: PrivateNetwork | None, *args: str) -> str:
    """The output of a command run inside ``member`` (in the test's own namespace if None)."""

    def run() -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True, timeout=T).stdout

    return run() if member is None else member.run_inside(run)


def links(net: PrivateNetwork | None) -> list[str]:
    """The interfaces of ``net`` (of the test's own namespace if None), by name, in order."""
    lines = sh(net, "ip", "-o", "link").splitlines()
    return [line.split(":")[1].strip().split("@")[0] for line in lines]


def tcp_exchange(client: LanMember, server: LanMember, address: str | None = None) -> bytes:
    """Connect from ``client`` to a listener of ``server``; what the server sent back (its
    view of the client's address)."""
    listener = server.listen(address or server.address, 0)
    listener.setblocking(True)
    listener.settimeout(T)
    port = listener.getsockname()[1]
    try:
        conn = client.run_inside(
            lambda: socket.create_connection((address or server.address, port), timeout=T)
        )
        with conn:
            accepted, peer = listener.accept()  # the connection is already queued
            with accepted:
                accepted.sendall(peer[0].encode())
            return conn.recv(100)
    finally:
        listener.close()


def test_members_have_their_addresses_in_order(lan: PrivateLan) -> None:
    assert [m.address for m in lan.members] == ["10.98.0.1", "10.98.0.2", "10.98.0.3"]
    assert [m.name for m in lan] == ["m0", "m1", "m2"] and len(lan) == 3
    assert lan["m1"] is lan[1] is lan.members[1] and lan.subnet == "10.98.0.0/24"
    inodes = {lan.hub.inode} | {m.inode for m in lan}
    assert len(inodes) == 4 and os.stat("/proc/self/ns/net").st_ino not in inodes
    for m in lan:
        assert m.addresses == (f"{m.address}/24",) and m.interface == "eth0"
        assert sh(m, "ip", "-4", "-o", "addr").split("\n")[1].split()[1:4] == [
            "eth0",
            "inet",
            f"{m.address}/24",
        ]
        assert links(m) == ["lo", "eth0"]
        assert "state UP" in sh(m, "ip", "-o", "link", "show", "eth0")
    assert links(lan.hub) == ["lo", "br0", "h0", "h1", "h2"]
    assert "10.98" not in sh(lan.hub, "ip", "-4", "-o", "addr")  # the hub has no address


def test_named_members() -> None:
    need_lan()
    with PrivateLan(["redis", "node1", "client"], "10.96.5.0/24") as named:
        assert [(m.name, m.index, m.address) for m in named] == [
            ("redis", 0, "10.96.5.1"),
            ("node1", 1, "10.96.5.2"),
            ("client", 2, "10.96.5.3"),
        ]
        assert named["client"] is named[2]
        with pytest.raises(KeyError):
            named["nobody"]
        assert tcp_exchange(named["client"], named["redis"]) == b"10.96.5.3"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PrivateLan(0)
    with pytest.raises(ValueError, match="distinct"):
        PrivateLan(["a", "a"])
    with pytest.raises(ValueError, match="IPv4"):
        PrivateLan(2, "fd00::/64")
    with pytest.raises(ValueError, match="no room"):
        PrivateLan(3, "10.98.0.0/30")
    with pytest.raises(ValueError):
        PrivateLan(2, "10.98.0.1/24")  # host bits set


async def test_tcp_from_a_loop_thread_and_from_a_process(lan: PrivateLan) -> None:
    server_member = lan[0]
    sock = server_member.listen(server_member.address, 0)
    port = sock.getsockname()[1]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(f"{writer.get_extra_info('peername')[0]}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, sock=sock)  # served from the test's loop
    try:
        lt = lan[1].loop_thread()

        async def client() -> bytes:
            reader, writer = await asyncio.open_connection(server_member.address, port)
            writer.write(b"hello\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line

        assert await lt.run(client(), T) == b"10.98.0.2\n"

        proc = lan[2].popen(
            [sys.executable, "-c", TCP_CLIENT, server_member.address, str(port)],
            stdout=subprocess.PIPE,
        )
        out, _ = await asyncio.to_thread(proc.communicate, timeout=T)
        assert (proc.returncode, out) == (0, b"10.98.0.3\n")
    finally:
        server.close()
        await server.wait_closed()


def test_udp_between_members(lan: PrivateLan) -> None:
    def udp(member: LanMember) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((member.address, 0))
        s.settimeout(T)
        return s

    a, b = lan[0].run_inside(lambda: udp(lan[0])), lan[1].run_inside(lambda: udp(lan[1]))
    with a, b:
        b.sendto(b"ping", a.getsockname())
        data, source = a.recvfrom(100)
        assert (data, source) == (b"ping", b.getsockname())
        a.sendto(b"pong", source)
        assert b.recvfrom(100) == (b"pong", a.getsockname())

        proc = lan[2].popen(
            [sys.executable, "-c", UDP_SENDER, lan[0].address, str(a.getsockname()[1])]
        )
        assert proc.wait(T) == 0
        data, source = a.recvfrom(100)
        assert (data, source[0]) == (b"from a process", "10.98.0.3")


def test_members_cannot_reach_the_host(lan: PrivateLan) -> None:
    member = lan[1]
    # Only the LAN's route: no default, nothing towards the host.
    assert sh(member, "ip", "-4", "route", "show", "table", "main").split() == [
        "10.98.0.0/24",
        "dev",
        "eth0",
        "proto",
        "kernel",
        "scope",
        "link",
        "src",
        "10.98.0.2",
    ]
    # 127.0.0.1 inside is the member's own loopback: the host's listener is not there.
    with socket.create_server(("127.0.0.1", 0)) as host_listener:
        port = host_listener.getsockname()[1]

        def connect(host: str) -> int:
            try:
                socket.create_connection((host, port), timeout=T).close()
            except OSError as exc:
                return exc.errno or 0
            return 0

        assert member.run_inside(lambda: connect("127.0.0.1")) == errno.ECONNREFUSED
        host_listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            host_listener.accept()  # nothing arrived
        # The host's other addresses have no route at all.
        lines = sh(None, "ip", "-4", "-o", "addr", "show", "scope", "global").splitlines()
        for address in [line.split()[3].split("/")[0] for line in lines]:
            if not address.startswith("10.98.0."):
                assert member.run_inside(functools.partial(connect, address)) == errno.ENETUNREACH
    assert member.run_inside(lambda: connect("192.0.2.1")) == errno.ENETUNREACH


def test_two_lans_do_not_interfere() -> None:
    need_lan()
    with (
        PrivateLan(2, "10.98.0.0/24") as a,
        PrivateLan(2, "10.97.0.0/24") as b,
        PrivateLan(2, "10.98.0.0/24") as c,  # the same subnet as a: a LAN of its own
    ):
        assert tcp_exchange(a[1], a[0]) == b"10.98.0.2"
        assert tcp_exchange(b[1], b[0]) == b"10.97.0.2"
        # c's 10.98.0.1 is not a's: the same port on both answers separately.
        la, lc = a[0].listen(a[0].address, 0), c[0].listen(c[0].address, 0)
        port = la.getsockname()[1]
        lc.close()
        lc = c[0].listen(c[0].address, port)
        try:
            for listener in (la, lc):
                listener.setblocking(True)
                listener.settimeout(T)
            conn_a = a[1].run_inside(lambda: socket.create_connection(("10.98.0.1", port), T))
            conn_c = c[1].run_inside(lambda: socket.create_connection(("10.98.0.1", port), T))
            with conn_a, conn_c:
                for listener, tag in ((la, b"a"), (lc, b"c")):
                    accepted, _ = listener.accept()
                    with accepted:
                        accepted.sendall(tag)
                assert (conn_a.recv(10), conn_c.recv(10)) == (b"a", b"c")
        finally:
            la.close()
            lc.close()
        # No route from one subnet to the other.
        with pytest.raises(OSError) as caught:
            a[1].run_inside(lambda: socket.create_connection(("10.97.0.1", port), T))
        assert caught.value.errno == errno.ENETUNREACH


def test_a_killed_process_leaves_the_lan_up(lan: PrivateLan) -> None:
    def start_server() -> tuple[subprocess.Popen[bytes], int]:
        proc = lan[0].popen(
            [sys.executable, "-c", TCP_SERVER, lan[0].address], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        with proc.stdout:
            return proc, int(proc.stdout.readline())

    def fetch(port: int) -> bytes:
        with socket.create_connection((lan[0].address, port), timeout=T) as s:
            return s.recv(10)

    proc, port = start_server()
    assert lan[1].run_inside(lambda: fetch(port)) == b"alive"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(T) == -signal.SIGKILL
    # Member 0 is still there and answers (a reset: nothing listens on the port now).
    with pytest.raises(ConnectionRefusedError):
        lan[1].run_inside(lambda: fetch(port))
    proc, port = start_server()  # and it runs processes again
    assert lan[2].run_inside(lambda: fetch(port)) == b"alive"
    assert proc.poll() is None  # left running: closing the LAN kills it


def held_netns() -> set[int]:
    """The network namespaces (inodes) any process's thread or fd holds right now."""
    held: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        links = [*proc.glob("task/*/ns/net"), *proc.glob("fd/*")]
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if target.startswith("net:["):
                held.add(int(target[5:-1]))
    return held


def test_close_leaves_nothing_behind() -> None:
    need_lan()
    before = links(None)
    lan = PrivateLan(3, "10.95.0.0/24")
    inodes = {lan.hub.inode} | {m.inode for m in lan}
    assert inodes <= held_netns()
    assert links(None) == before  # the devices never show on the host
    lt = lan[1].loop_thread()
    sleeper = lan[2].popen(["sleep", "60"])
    lan.close()
    assert sleeper.wait(T) == -signal.SIGKILL  # killed by close()
    assert not lt.thread.is_alive()
    assert not inodes & held_netns()  # no thread, fd or process holds them: the kernel frees them
    assert links(None) == before
    with pytest.raises(OSError, match="closed"):
        lan[0].enter()
    lan.close()  # twice is fine


def worker_netns(core: WorkerCore) -> str:
    """Run on a worker: the network namespace of its thread (module level: crosses processes)."""
    return os.readlink("/proc/thread-self/ns/net")


async def test_worker_processes_join_the_member(lan: PrivateLan) -> None:
    member = lan[1]
    backend = member.loop_factory("uvloop")
    async with Runtime({}, workers=1, mode="process", backend=backend) as rt:
        got = await asyncio.wait_for(rt.run_on_worker(0, worker_netns), T)
    assert got == f"net:[{member.inode}]"


async def test_aioice_offers_the_member_address(lan: PrivateLan) -> None:
    ice = pytest.importorskip("aioice.ice")  # the webrtc extra
    lt = lan[2].loop_thread()

    async def addresses() -> list[str]:
        found: list[str] = ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
        return found

    assert await lt.run(addresses(), T) == ["10.98.0.3"]
