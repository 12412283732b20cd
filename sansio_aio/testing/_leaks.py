"""Leak checks for tests of the real runtime: threads and file descriptors.

Theory of operation
-------------------
Take a :class:`ResourceSnapshot` before the runtime starts and compare after it shut
down. A *leaked thread* is one that appeared in between and is still alive; the
threads of the application loop's default executor (``asyncio_N``, ``uvloop_N``, used
by ``asyncio.to_thread``) belong to the loop, not to the
runtime, and are ignored. A *leaked fd* is a descriptor number that was free at the
snapshot, is open now, and is a socket, a pipe, an anonymous inode (epoll, eventfd) or a
device: regular files opened by pytest or logging are ignored. Numbers taken at the
snapshot are skipped even if they now name another object: the application loop may
replace its own descriptors between two ``run_until_complete`` calls (uvloop renews its
signal socket pair on each run), and a number still taken cannot have been leaked.

Who leaked it: given a second snapshot taken right after the runtime started (before the
test body ran) and the prefix of the runtime's worker thread names, each leak says
whether it is the runtime's (a worker thread that did not stop, a descriptor opened while
the runtime started) or was opened while the test body ran (by the test itself, or by a
driver acting for one of its tasks: drivers close what a task held when it ends).

Closing is not always synchronous (an asyncio transport closes on the next loop
iteration, a thread needs a moment to finish after it was told to), so
:func:`wait_for_no_leaks` polls the condition for a bounded time before it reports.
This module imports no asyncio at import time.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field
from typing import final

__all__ = ["ResourceSnapshot", "await_no_leaks", "find_leaks", "wait_for_no_leaks"]

_FD_DIR = "/proc/self/fd"
_WATCHED_PREFIXES = ("socket:", "pipe:", "anon_inode:", "/dev/")
_IGNORED_THREAD_PREFIXES = ("asyncio_", "uvloop_", "ThreadPoolExecutor")


def _fds() -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return out  # no procfs: fd checks are skipped
    for name in names:
        try:
            out[int(name)] = os.readlink(f"{_FD_DIR}/{name}")
        except (OSError, ValueError):
            continue  # closed meanwhile (e.g. the listdir fd itself)
    return out


@final
@dataclass(frozen=True)
class ResourceSnapshot:
    """The live threads and open file descriptors of this process at one moment."""

    threads: frozenset[int]
    fds: dict[int, str] = field(default_factory=dict)

    @classmethod
    def take(cls) -> ResourceSnapshot:
        """Snapshot the current process."""
        return cls(frozenset(t.ident or 0 for t in threading.enumerate()), _fds())


_RUNTIME = "leaked by the runtime"
_BODY = "opened while the test body ran (by the test, or by a driver for one of its tasks)"


def find_leaks(
    before: ResourceSnapshot,
    *,
    started: ResourceSnapshot | None = None,
    runtime_threads: str | None = None,
) -> list[str]:
    """What is open now and was not at ``before``: one description per leak.

    With ``started`` (a snapshot taken after the runtime started, before the test body)
    and ``runtime_threads`` (the prefix of the runtime's worker thread names), each
    description also says whose leak it is (see the module docs).
    """
    found: list[str] = []
    for t in threading.enumerate():
        if (t.ident or 0) in before.threads or not t.is_alive():
            continue
        if t.name.startswith(_IGNORED_THREAD_PREFIXES):
            continue
        owner = ""
        if runtime_threads is not None:
            mine = t.name.startswith(runtime_threads)
            owner = (
                f": {_RUNTIME} (a worker that did not stop)"
                if mine
                else ": started while the test body ran"
            )
        found.append(f"thread {t.name!r} (ident {t.ident}, daemon={t.daemon}) still alive{owner}")
    for fd, target in sorted(_fds().items()):
        if fd in before.fds:
            continue  # that number was taken at the snapshot (see the module docs)
        if target.startswith(_WATCHED_PREFIXES):
            owner = ""
            if started is not None:
                at_start = started.fds.get(fd) == target
                owner = f": {_RUNTIME} (opened while it started)" if at_start else f": {_BODY}"
            found.append(f"fd {fd} -> {target} still open{owner}")
    return found


def wait_for_no_leaks(
    before: ResourceSnapshot,
    timeout: float = 2.0,
    *,
    started: ResourceSnapshot | None = None,
    runtime_threads: str | None = None,
) -> list[str]:
    """Poll :func:`find_leaks` until it is empty or ``timeout`` seconds passed; return the
    last. Blocking: use :func:`await_no_leaks` on an event loop, so transports can close.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = find_leaks(before, started=started, runtime_threads=runtime_threads)
        if not found or time.monotonic() >= deadline:
            return found
        gc.collect()
        time.sleep(0.01)  # poll interval of a bounded wait on a condition


async def await_no_leaks(
    before: ResourceSnapshot,
    timeout: float = 2.0,
    *,
    started: ResourceSnapshot | None = None,
    runtime_threads: str | None = None,
) -> list[str]:
    """Like :func:`wait_for_no_leaks`, letting the running loop finish pending closes."""
    import asyncio

    deadline = time.monotonic() + timeout
    for _ in range(3):
        await asyncio.sleep(0)  # let close callbacks scheduled by the test run
    while True:
        found = find_leaks(before, started=started, runtime_threads=runtime_threads)
        if not found or time.monotonic() >= deadline:
            return found
        gc.collect()
        await asyncio.sleep(0.01)  # poll interval of a bounded wait on a condition
