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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .._backends import close_loop

__all__ = ["LoopThread", "NetnsLoopFactory", "PrivateNetwork", "privnet_unavailable_reason"]

CLONE_NEWNET = 0x40000000
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
