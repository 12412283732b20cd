"""The TUN/TAP vocabulary: what a task asks of the TUN driver and what it hears back.

A task emits :class:`TunBind` to open (or create) a device and receives
:class:`TunBound` with a *slot*, a small integer naming the open device queue on this
worker. Packets read from it arrive as :class:`TunPacket`; the task writes packets with
:class:`TunSend`, and closes its queue with :class:`TunUnbind`. If the device goes away
under the reader (deleted, its namespace gone) the task receives :class:`TunClosed` with
the reason; a write that fails comes back as :class:`TunError`. Slots are never reused
on a worker, so a stale slot can never reach another device.

TUN devices carry raw IP packets (IPv4 or IPv6, no header in front: the driver always
opens them with ``IFF_NO_PI``); TAP devices carry Ethernet frames.

This module imports no asyncio. Events are slotted dataclasses: treat them as immutable
and don't subclass them (the worker routes outputs by exact type).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import final

__all__ = [
    "TunBind",
    "TunBound",
    "TunClosed",
    "TunError",
    "TunPacket",
    "TunPackets",
    "TunSend",
    "TunSendMany",
    "TunUnbind",
]

# -------------------------------------------------------------------------- outputs


@final
@dataclass(slots=True)
class TunBind:
    """Open a TUN (or TAP) device queue on this worker; the answer is :class:`TunBound`.

    Attributes:
        name: the interface name (at most 15 bytes), or ``None`` to let the kernel
            pick ``tunN``/``tapN``. An existing persistent device of that name is
            attached to.
        tap: open a TAP device (Ethernet frames) instead of TUN (IP packets).
        address: IPv4 address to give the device (e.g. ``"10.77.0.1"``), or ``None`` to
            leave its addresses alone.
        netmask: the IPv4 netmask that goes with ``address`` (unused without one). The
            kernel adds the route to that subnet through the device once it is up.
        mtu: the MTU to set, or ``None`` to keep the device's. Reads are sized from the
            device's MTU, so packets are never cut.
        multi_queue: open one queue of a multi-queue device (``IFF_MULTI_QUEUE``). A task
            on each worker binds the same ``name``; the first bind creates the device,
            the others attach a queue, and the kernel spreads flows over the queues.
        up: bring the link up (if it is not up already).
        batch: deliver what one readiness event reads (up to the driver's batch size)
            as one :class:`TunPackets` input instead of one :class:`TunPacket` each.
            The per-packet cost of the runtime is then paid once per batch; answer with
            :class:`TunSendMany`.
        tag: any hashable, echoed in :class:`TunBound` to match answers to requests.
    """

    name: str | None = None
    tap: bool = False
    address: str | None = None
    netmask: str = "255.255.255.0"
    mtu: int | None = 1500
    multi_queue: bool = False
    up: bool = True
    batch: bool = False
    tag: Hashable = None


@final
@dataclass(slots=True)
class TunSend:
    """Write one packet (TUN: an IP packet; TAP: an Ethernet frame) to ``slot``.

    ``data`` is any bytes-like object (bytes, bytearray, memoryview).
    """

    slot: int
    data: bytes | bytearray | memoryview


@final
@dataclass(slots=True)
class TunSendMany:
    """Write several packets to ``slot``, in order (one output for a whole batch).

    A packet that fails is reported as :class:`TunError` and the rest are still written.
    """

    slot: int
    packets: Sequence[bytes | bytearray | memoryview]


@final
@dataclass(slots=True)
class TunUnbind:
    """Stop reading ``slot`` and close its queue (the device goes when its last queue
    closes, unless it is persistent). Unbinding an unknown slot is a no-op."""

    slot: int


# --------------------------------------------------------------------------- inputs


@final
@dataclass(slots=True)
class TunBound:
    """The answer to a :class:`TunBind`, in the order the binds were emitted.

    Attributes:
        slot: the queue's slot (use it in :class:`TunSend`), or ``None`` on error.
        name: the device's name (the kernel's pick if the bind named none), or the
            requested name on error.
        error: why the bind failed, or ``None`` on success.
        mtu: the device's MTU (0 on error).
        tag: the bind's ``tag``.
    """

    slot: int | None
    name: str | None
    error: str | None = None
    mtu: int = 0
    tag: Hashable = None


@final
@dataclass(slots=True)
class TunPacket:
    """One whole packet (TUN) or frame (TAP) read from ``slot``."""

    slot: int
    data: bytes


@final
@dataclass(slots=True)
class TunPackets:
    """The whole packets one readiness event read from ``slot``, oldest first (never
    empty); delivered instead of :class:`TunPacket` when the bind asked for ``batch``.
    The list is the task's to keep."""

    slot: int
    packets: list[bytes]


@final
@dataclass(slots=True)
class TunClosed:
    """``slot`` was closed by the driver: the device was deleted under the reader or
    failed (``error`` says how). The reader was removed first; the slot is gone."""

    slot: int
    error: str | None


@final
@dataclass(slots=True)
class TunError:
    """A :class:`TunSend` (or a read) on ``slot`` failed; the slot stays open.

    Examples: an unknown or unbound slot, data that is not bytes-like, a packet the
    kernel rejects (EINVAL), the link is down (EIO), a packet larger than the read size.
    """

    slot: int
    error: str
