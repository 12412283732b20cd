"""A persistent private network namespace with a veth pair, joined thread by thread.

(``sansio_aio.testing._netns`` runs one function in a fresh namespace of its own; this
module keeps one namespace alive for several threads, processes and sockets, which the
WebRTC tests and the ``whep_fanout`` benchmark need.)

aioice never offers loopback candidates, so two aiortc peers on one machine connect
through a real interface address. Tests must not send traffic to the host's interfaces,
so :class:`PrivateNetwork` makes a fresh network namespace (``unshare(CLONE_NEWNET)`` in a
short-lived thread) with ``lo`` up and a veth pair, one end carrying private addresses
(default ``10.99.0.1/24``). Nothing in it can reach the outside. Threads join it with
``setns`` (the namespace is per thread on Linux):

* :meth:`PrivateNetwork.loop_factory` wraps a runtime backend so every worker thread
  (and so every aiortc object the worker creates) lives in the namespace;
* :meth:`PrivateNetwork.loop_thread` runs an asyncio loop in the namespace (for client
  peers and HTTP clients);
* :meth:`PrivateNetwork.listen` makes a listening TCP socket inside it (serve it with
  ``aiohttp.web.SockSite`` from any thread);
* :meth:`PrivateNetwork.popen` starts a process in it (a browser).

Needs root (CAP_SYS_ADMIN) and ``ip``; :func:`privnet_unavailable_reason` says why not otherwise.
The namespace disappears once its fd is closed and its last thread, socket and process
are gone.

:class:`PrivateLan` is several such namespaces on one Ethernet segment (the cluster
tests: nodes, a Redis server, client peers). A *hub* namespace holds a bridge ``br0``;
each member is a :class:`LanMember` (a :class:`PrivateNetwork` made without a veth pair)
whose ``eth0`` is one end of a veth pair created by ``ip`` in the hub (``ip link add h<i>
type veth peer name eth0 netns /proc/self/fd/<member's fd>``: the peer end is born in the
member's namespace), the other end ``h<i>`` a port of the bridge. Members get the
subnet's addresses in order, and a route to the subnet only: they reach each other and
nothing else. Nothing is ever done in the host's namespace. Closing the LAN stops the
members' loop threads, kills what they started with ``popen`` and drops the fds; the
kernel then deletes the namespaces, and the veth pairs and the bridge with them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import fcntl
import functools
import ipaddress
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .._backends import close_loop

__all__ = [
    "LanMember",
    "LoopThread",
    "NetnsLoopFactory",
    "PrivateLan",
    "PrivateNetwork",
    "privnet_unavailable_reason",
]

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_IFF_RUNNING = 0x40
T = TypeVar("T")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def privnet_unavailable_reason() -> str | None:
    """Why a private network namespace cannot be made here, or ``None`` if it can."""
    if not hasattr(os, "getuid") or os.getuid() != 0:
        return "needs root to create a network namespace (unshare CLONE_NEWNET)"
    if shutil.which("ip") is None:
        return "needs the 'ip' command (iproute2)"
    try:
        net = PrivateNetwork()
        net.close()
    except OSError as exc:
        return f"cannot create a network namespace: {exc}"
    return None


@dataclass(frozen=True)
class NetnsLoopFactory:
    """A picklable runtime backend: join the network namespace at ``ns_path`` (a path
    to a namespace, e.g. ``/proc/<pid>/fd/<n>``), then build a loop of ``backend``."""

    ns_path: str
    backend: str

    @property
    def __name__(self) -> str:  # what Runtime.backend_name shows
        return f"netns_{self.backend}"

    def __call__(self) -> asyncio.AbstractEventLoop:
        from .._backends import resolve_backend

        fd = os.open(self.ns_path, os.O_RDONLY)
        try:
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
        finally:
            os.close(fd)
        return resolve_backend(self.backend)[1]()


class PrivateNetwork:
    """A fresh network namespace with ``lo`` and a veth pair (how: docs/whip_whep.md, "Testing")."""

    def __init__(self, addresses: Sequence[str] = ("10.99.0.1/24",)) -> None:
        self.addresses = tuple(addresses)
        #: The first address without its prefix length (what aioice will offer).
        self.address = self.addresses[0].split("/")[0] if self.addresses else "127.0.0.1"
        self._fd = -1
        result: list[BaseException | int] = []
        thread = threading.Thread(target=self._create, args=(result,), name="netns-create")
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        self._fd = result[0]

    def _create(self, result: list[BaseException | int]) -> None:
        try:
            libc = _libc()
            if libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            cmds = [["ip", "link", "set", "lo", "up"]]
            if self.addresses:
                # A veth pair (the kernel may lack the dummy driver); only one end
                # carries addresses, so each peer offers exactly those.
                cmds.append(["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"])
                cmds += [["ip", "addr", "add", a, "dev", "veth0"] for a in self.addresses]
                cmds.append(["ip", "link", "set", "veth0", "up"])
                cmds.append(["ip", "link", "set", "veth1", "up"])
            for cmd in cmds:  # children inherit this thread's namespace
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
            result.append(os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", 0))
        except BaseException as exc:
            result.append(exc)

    @property
    def inode(self) -> int:
        """The namespace's inode number: ``readlink /proc/<tid>/ns/net`` of a thread
        inside it (or of a process) reads ``net:[<inode>]``."""
        if self._fd < 0:
            raise OSError("the private network is closed")
        return os.fstat(self._fd).st_ino

    def enter(self) -> None:
        """Move the calling thread into the namespace (never call it on a shared thread)."""
        if self._fd < 0:
            raise OSError("the private network is closed")
        if _libc().setns(self._fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    def run_inside(self, fn: Callable[[], T]) -> T:
        """Call ``fn()`` on a short-lived thread inside the namespace; return its result."""
        with concurrent.futures.ThreadPoolExecutor(1, initializer=self.enter) as pool:
            return pool.submit(fn).result()

    def loop_factory(
        self, base: str | Callable[[], asyncio.AbstractEventLoop]
    ) -> Callable[[], asyncio.AbstractEventLoop]:
        """A runtime backend: join the namespace, then build the loop with ``base``.

        Given a backend *name* (``"uvloop"``...), the factory is picklable and works for
        worker processes too (``Runtime(mode="process")``): the child joins the namespace
        through this process's ``/proc`` entry of it (root only, like everything here).
        """
        if isinstance(base, str):
            if self._fd < 0:
                raise OSError("the private network is closed")
            return NetnsLoopFactory(f"/proc/{os.getpid()}/fd/{self._fd}", base)

        def factory() -> asyncio.AbstractEventLoop:
            self.enter()
            return base()

        factory.__name__ = f"netns_{getattr(base, '__name__', 'loop')}"
        return factory

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> socket.socket:
        """A listening TCP socket bound inside the namespace."""

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        return self.run_inside(make)

    def loop_thread(self, name: str = "netns-loop") -> LoopThread:
        """A started :class:`LoopThread` inside the namespace."""
        return LoopThread(self, name)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace (in its own process group)."""
        kwargs.setdefault("start_new_session", True)
        return self.run_inside(lambda: subprocess.Popen(list(args), **kwargs))

    def close(self) -> None:
        """Drop our handle; the namespace goes once nothing uses it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PrivateNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoopThread:
    """An asyncio event loop running on its own thread inside a :class:`PrivateNetwork`."""

    def __init__(self, net: PrivateNetwork, name: str) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        ready = threading.Event()
        error: list[BaseException] = []

        def main() -> None:
            try:
                net.enter()
                loop = asyncio.new_event_loop()
            except BaseException as exc:
                error.append(exc)
                ready.set()
                return
            asyncio.set_event_loop(loop)
            self.loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                close_loop(loop)

        self.thread = threading.Thread(target=main, name=name, daemon=True)
        self.thread.start()
        ready.wait()
        if error:
            raise error[0]

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on this thread's loop; await its result from another loop."""
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (cancelling what still runs) and join the thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


class LanMember(PrivateNetwork):
    """One member of a :class:`PrivateLan`: a :class:`PrivateNetwork` of its own whose
    only interface besides ``lo`` is ``eth0``, a port of the LAN's bridge.

    Everything a :class:`PrivateNetwork` offers works here (``loop_factory`` for worker
    threads and processes, ``loop_thread``, ``listen``, ``popen``, ``run_inside``).
    ``address`` is the member's address on the LAN (``addresses`` has it with the prefix
    length). Loop threads and processes started through the member are stopped and
    killed when it is closed.
    """

    def __init__(self, name: str, index: int, address: str) -> None:
        super().__init__(())
        #: The member's name (``lan["name"]``).
        self.name = name
        #: The member's index in ``PrivateLan.members`` (``lan[index]``).
        self.index = index
        self.addresses = (address,)
        self.address = address.split("/")[0]
        #: The member's interface on the LAN.
        self.interface = "eth0"
        self._threads: list[LoopThread] = []
        self._procs: list[tuple[subprocess.Popen[bytes], bool]] = []

    def loop_thread(self, name: str = "netns-loop") -> LoopThread:
        """A started :class:`LoopThread` inside the member (stopped when it is closed)."""
        lt = LoopThread(self, name)
        self._threads.append(lt)
        return lt

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process inside the member, in its own process group unless
        ``start_new_session=False``; if it still runs when the member is closed, it (and
        its group) gets SIGKILL."""
        kwargs.setdefault("start_new_session", True)
        proc = super().popen(args, **kwargs)
        self._procs.append((proc, bool(kwargs["start_new_session"])))
        return proc

    def close(self) -> None:
        """Stop the member's loop threads, kill its processes, drop the namespace's fd."""
        try:
            for lt in self._threads:
                lt.stop()
            for proc, own_group in self._procs:
                if proc.poll() is None:
                    try:
                        if own_group:
                            os.killpg(proc.pid, signal.SIGKILL)
                        else:
                            proc.kill()
                    except ProcessLookupError:
                        pass
                    proc.wait(10.0)
        finally:
            self._threads.clear()
            self._procs.clear()
            super().close()

    def __repr__(self) -> str:
        return f"<LanMember {self.name!r} {self.address}>"


class PrivateLan:
    """Several private network namespaces on one Ethernet segment, cut off from the host.

    ``members`` is a count (named ``m0``, ``m1``...) or a list of names. Member ``i``
    gets the ``i+1``-th address of ``subnet`` (an IPv4 network): ``10.98.0.1``,
    ``10.98.0.2``... on its ``eth0``, with a route to the subnet only. ``hub`` is the
    namespace of the bridge (it has no address). ``close()`` (or leaving the ``with``
    block) closes every member and the hub.
    """

    def __init__(
        self,
        members: int | Sequence[str] = 2,
        subnet: str = "10.98.0.0/24",
        *,
        ready_timeout: float = 5.0,
    ) -> None:
        if isinstance(members, int):
            names = [f"m{i}" for i in range(members)]
        else:
            names = [str(name) for name in members]
        if not names:
            raise ValueError("a PrivateLan needs at least one member")
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be distinct: {names}")
        net = ipaddress.ip_network(subnet)
        if not isinstance(net, ipaddress.IPv4Network):
            raise ValueError(f"the subnet must be an IPv4 network, not {subnet!r}")
        if len(names) > net.num_addresses - 2:
            raise ValueError(f"{subnet} has no room for {len(names)} members")
        #: The LAN's subnet (``"10.98.0.0/24"``).
        self.subnet = str(net)
        #: The members, in order of their addresses.
        self.members: list[LanMember] = []
        #: The namespace holding the bridge ``br0`` and the hub ends ``h<i>``.
        self.hub = PrivateNetwork(())
        try:
            for i, name in enumerate(names):
                address = f"{net.network_address + i + 1}/{net.prefixlen}"
                self.members.append(LanMember(name, i, address))
            commands = ["link add br0 type bridge", "link set br0 up"]
            for m in self.members:
                commands += [
                    f"link add h{m.index} type veth peer name eth0 netns /proc/self/fd/{m._fd}",
                    f"link set h{m.index} master br0 up",
                ]
            fds = [m._fd for m in self.members]
            self.hub.run_inside(lambda: _ip_batch(commands, fds))
            for m in self.members:
                up = [f"addr add {m.addresses[0]} dev eth0", "link set eth0 up"]
                m.run_inside(functools.partial(_ip_batch, up))
            # Bounded waits, not sleeps: until the kernel has noticed the carriers, the
            # links drop what they are given.
            deadline = time.monotonic() + ready_timeout
            for m in self.members:
                m.run_inside(functools.partial(_wait_running, "eth0", deadline))
            ports = [f"h{m.index}" for m in self.members]
            self.hub.run_inside(functools.partial(_wait_forwarding, ports, deadline))
        except BaseException:
            self.close()
            raise

    def __getitem__(self, key: int | str) -> LanMember:
        """A member by index or by name."""
        if isinstance(key, str):
            for m in self.members:
                if m.name == key:
                    return m
            raise KeyError(key)
        return self.members[key]

    def __iter__(self) -> Iterator[LanMember]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def close(self) -> None:
        """Close every member (its loop threads stopped, its processes killed), then the
        hub: the namespaces, the veth pairs and the bridge go with the last reference."""
        try:
            for m in self.members:
                m.close()
        finally:
            self.hub.close()

    def __enter__(self) -> PrivateLan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PrivateLan {self.subnet} {[m.name for m in self.members]}>"


def _ip_batch(commands: Sequence[str], pass_fds: Sequence[int] = ()) -> None:
    """Run ``ip -batch -`` on ``commands`` in the calling thread's namespace."""
    done = subprocess.run(
        ["ip", "-batch", "-"],
        input="".join(f"{c}\n" for c in commands),
        capture_output=True,
        text=True,
        check=False,
        pass_fds=tuple(pass_fds),
    )
    if done.returncode != 0:
        raise OSError(f"ip -batch failed: {done.stderr.strip()} (commands: {list(commands)})")


def _wait_running(link: str, deadline: float) -> None:
    """Wait until ``link`` of the calling thread's namespace is RUNNING (carrier on and
    noticed by the kernel's link watch: before that, its queue drops packets)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while True:
            ifreq = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, struct.pack("16sH14x", link.encode(), 0))
            if struct.unpack("16xH14x", ifreq)[0] & _IFF_RUNNING:
                return
            if time.monotonic() > deadline:
                raise OSError(f"{link} is not running")
            time.sleep(0.001)


def _wait_forwarding(ports: Sequence[str], deadline: float) -> None:
    """Wait until every bridge port in ``ports`` (calling thread's namespace) forwards."""
    while True:
        done = subprocess.run(
            ["ip", "-j", "-d", "link", "show", "master", "br0"],
            capture_output=True,
            text=True,
            check=False,
        )
        state = {
            link["ifname"]: link.get("linkinfo", {}).get("info_slave_data", {}).get("state")
            for link in (json.loads(done.stdout) if done.returncode == 0 else [])
        }
        waiting = [p for p in ports if state.get(p) != "forwarding"]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise OSError(f"bridge ports not forwarding: {waiting} ({done.stderr.strip()})")
        time.sleep(0.001)
