"""Leak checks for tests of the real runtime: threads and file descriptors.

Theory of operation
-------------------
Take a :class:`ResourceSnapshot` before the runtime starts and compare after it shut
down. A *leaked thread* is one that appeared in between and is still alive; the
threads of the application loop's default executor (``asyncio_N``, ``uvloop_N``, used
by ``asyncio.to_thread`` and by the runtime's own join) belong to the loop, not to the
runtime, and are ignored. A *leaked fd* is a descriptor number that was free at the
snapshot, is open now, and is a socket, a pipe, an anonymous inode (epoll, eventfd) or a
device: regular files opened by pytest or logging are ignored. Numbers taken at the
snapshot are skipped even if they now name another object: the application loop may
replace its own descriptors between two ``run_until_complete`` calls (uvloop renews its
signal socket pair on each run), and a number still taken cannot have been leaked.

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


def find_leaks(before: ResourceSnapshot) -> list[str]:
    """What is open now and was not at ``before``: one description per leak."""
    found: list[str] = []
    for t in threading.enumerate():
        if (t.ident or 0) in before.threads or not t.is_alive():
            continue
        if t.name.startswith(_IGNORED_THREAD_PREFIXES):
            continue
        found.append(f"thread {t.name!r} (ident {t.ident}, daemon={t.daemon}) still alive")
    for fd, target in sorted(_fds().items()):
        if fd in before.fds:
            continue  # that number was taken at the snapshot (see the module docs)
        if target.startswith(_WATCHED_PREFIXES):
            found.append(f"fd {fd} -> {target} still open")
    return found


def wait_for_no_leaks(before: ResourceSnapshot, timeout: float = 2.0) -> list[str]:
    """Poll :func:`leaks` until it is empty or ``timeout`` seconds passed; return the last.

    Blocking: use :func:`await_no_leaks` on an event loop, so transports can close.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = find_leaks(before)
        if not found or time.monotonic() >= deadline:
            return found
        gc.collect()
        time.sleep(0.01)  # poll interval of a bounded wait on a condition


async def await_no_leaks(before: ResourceSnapshot, timeout: float = 2.0) -> list[str]:
    """Like :func:`wait_for_no_leaks`, letting the running loop finish pending closes."""
    import asyncio

    deadline = time.monotonic() + timeout
    for _ in range(3):
        await asyncio.sleep(0)  # let close callbacks scheduled by the test run
    while True:
        found = find_leaks(before)
        if not found or time.monotonic() >= deadline:
            return found
        gc.collect()
        await asyncio.sleep(0.01)  # poll interval of a bounded wait on a condition
