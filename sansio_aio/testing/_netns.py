"""Run code inside a fresh, private network namespace (Linux, root or ``unshare -Ur``).

Theory of operation
-------------------
Network-namespace membership is per *thread* on Linux: ``unshare(CLONE_NEWNET)`` moves
only the calling thread into a new, empty namespace (just a ``lo`` that is down), and
every thread or child process that thread starts afterwards inherits it. So each call
here starts a new thread, which unshares, brings ``lo`` up, then runs the caller's
function (or a whole coroutine on a new event loop of its own). A ``Runtime`` started
from that coroutine builds its worker threads there, so they all share the namespace;
devices created in it (TUN/TAP) and addresses given to them are invisible to the host.
When the thread and its children end, the kernel deletes the namespace and every device
in it: there is nothing to clean up and no name can clash between tests.

No ``setns`` back is ever needed (it fails with EPERM under ``unshare -Ur``), and the
host's own interfaces are never touched. Python 3.11 has no ``os.unshare``; it is
called through ctypes there.

The small link helpers (:func:`link_up`, :func:`link_delete`, :func:`set_txqueuelen`,
:func:`set_sysctl`, :func:`link_names`) act on the namespace of the *calling thread*, so
call them from inside the function you run here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import fcntl
import functools
import os
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from .._errors import SansioAioError

__all__ = [
    "NetnsError",
    "arun_in_netns",
    "in_netns",
    "link_delete",
    "link_names",
    "link_up",
    "netns_unavailable_reason",
    "run_in_netns",
    "set_sysctl",
    "set_txqueuelen",
    "unshare_net",
]

P = ParamSpec("P")
T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCSIFTXQLEN = 0x8943
_IFF_UP = 0x1
_RTM_DELLINK = 17
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLMSG_ERROR = 2


class NetnsError(SansioAioError, OSError):
    """A network namespace could not be made or configured (``errno`` says why)."""


def unshare_net() -> None:
    """Move the calling thread into a new, empty network namespace.

    Raises:
        NetnsError: not Linux, or the kernel refused (EPERM: needs root/CAP_SYS_ADMIN,
            or run under ``unshare -Urn``).
    """
    if not sys.platform.startswith("linux"):
        raise NetnsError(errno.ENOSYS, "network namespaces need Linux")
    unshare = getattr(os, "unshare", None)
    if unshare is not None:  # Python >= 3.12
        try:
            unshare(CLONE_NEWNET)
        except OSError as exc:
            raise NetnsError(exc.errno, _unshare_message(exc.errno or 0)) from None
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, _unshare_message(err))


def _unshare_message(err: int) -> str:
    if err == errno.EPERM:
        return "cannot create a network namespace (EPERM: needs root/CAP_SYS_ADMIN or unshare -Urn)"
    name = errno.errorcode.get(err, str(err))
    return f"cannot create a network namespace ({name}: {os.strerror(err)})"


def _ifreq_flags(name: str, flags: int = 0) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def link_up(name: str = "lo", up: bool = True) -> None:
    """Set link ``name`` up (or down) in the calling thread's namespace (an ioctl)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, _ifreq_flags(name))
        flags = struct.unpack("16sH22x", res)[1]
        flags = flags | _IFF_UP if up else flags & ~_IFF_UP
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _ifreq_flags(name, flags))


def set_txqueuelen(name: str, length: int) -> None:
    """Set the transmit queue length of link ``name`` (a TUN queue holds this many)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), _SIOCSIFTXQLEN, struct.pack("16si20x", name.encode(), length))


def set_sysctl(path: str, value: str | int) -> None:
    """Write ``/proc/sys/<path>`` (e.g. ``net/ipv6/conf/default/disable_ipv6``).

    ``net/`` entries belong to the calling thread's network namespace.
    """
    with open(os.path.join("/proc/sys", path), "w") as f:
        f.write(f"{value}\n")


def link_names() -> list[str]:
    """Names of the links in the calling thread's namespace (from ``/proc/thread-self``)."""
    with open("/proc/thread-self/net/dev") as f:
        lines = f.read().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines]


def link_delete(name: str) -> None:
    """Delete link ``name`` in the calling thread's namespace (``ip link del``, by netlink).

    Raises:
        OSError: the link does not exist (ENODEV) or the kernel refused.
    """
    index = socket.if_nametoindex(name)
    # nlmsghdr(len, type, flags, seq, pid) + ifinfomsg(family, pad, type, index, flags, change)
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    msg = struct.pack("IHHII", 16 + len(body), _RTM_DELLINK, _NLM_F_REQUEST | _NLM_F_ACK, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(5.0)
        s.bind((0, 0))
        s.send(msg + body)
        reply = s.recv(65536)
    _, typ, _, _, _ = struct.unpack_from("IHHII", reply)
    if typ == _NLMSG_ERROR:
        (code,) = struct.unpack_from("i", reply, 16)
        if code:
            raise OSError(-code, f"cannot delete link {name!r}: {os.strerror(-code)}")


def _enter_fresh_netns() -> None:
    unshare_net()
    try:
        link_up("lo")
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        hint = ": needs CAP_NET_ADMIN" if exc.errno == errno.EPERM else ""
        raise NetnsError(
            exc.errno, f"cannot bring lo up in the new namespace ({name}{hint})"
        ) from None


def _run_thread(
    target: Callable[[], T], name: str
) -> tuple[threading.Thread, concurrent.futures.Future[T]]:
    """Start a thread that enters a fresh netns and runs ``target``; return it and its
    future (set just before the thread ends; join it to be sure it is gone)."""
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def main() -> None:
        try:
            _enter_fresh_netns()
            result = target()
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    return thread, fut


def run_in_netns(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn(*args, **kwargs)`` in a new thread inside a fresh network namespace.

    Blocks until it returns; its result is returned and its exception re-raised. Threads
    and processes ``fn`` starts share the namespace, which dies when they have all ended.
    """
    thread, fut = _run_thread(functools.partial(fn, *args, **kwargs), "netns")
    try:
        return fut.result()
    finally:
        if fut.done():
            thread.join(5.0)


async def arun_in_netns(
    fn: Callable[P, Coroutine[Any, Any, T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Await ``fn(*args, **kwargs)`` run on its own event loop in a fresh network namespace.

    The coroutine runs with ``asyncio.run`` in a new thread that first unshared its
    network namespace, so everything it starts (a ``Runtime`` and its worker threads,
    subprocesses) lives in that namespace. The caller's loop is not blocked.
    """

    def target() -> T:
        return asyncio.run(fn(*args, **kwargs))

    thread, fut = _run_thread(target, "netns-loop")
    try:
        return await asyncio.wrap_future(fut)
    finally:
        if fut.done():
            thread.join(5.0)  # it is past its last statement: this takes microseconds


def in_netns(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate an async test so its whole body runs in a fresh network namespace.

    The body runs on its own event loop in a thread that unshared (see
    :func:`arun_in_netns`); pytest fixtures are resolved as usual (the signature is
    kept), but async fixtures belong to the test's loop, not the body's.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        async def body() -> T:
            return await fn(*args, **kwargs)

        return await arun_in_netns(body)

    return wrapper


_probe_result: list[str | None] = []


def netns_unavailable_reason() -> str | None:
    """Why a private network namespace cannot be made here, or ``None`` if it can.

    The probe runs once, in a throw-away thread (the caller's namespace is untouched).
    """
    if _probe_result:
        return _probe_result[0]
    if not sys.platform.startswith("linux"):
        reason: str | None = f"network namespaces need Linux (this is {sys.platform})"
    else:
        try:
            run_in_netns(lambda: None)
            reason = None
        except OSError as exc:
            reason = str(exc.strerror or exc)
    _probe_result.append(reason)
    return reason
