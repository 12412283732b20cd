"""A simulated network: links with latency, jitter, loss, duplication, reordering,
bandwidth and MTU; partitions that heal; holds that release; one seeded random generator.

Theory of operation
-------------------
:class:`SimNetwork` is the wire between simulated sockets. The simulated drivers
(:class:`~sansio_aio.testing._sim.udp.SimUdpDriver`, ``SimTcpDriver``) own the sockets and
their addresses; to move bytes they call :meth:`SimNetwork.transmit`, which decides the
packet's fate and schedules its arrival as a timer on the shared
:class:`~sansio_aio.testing.FakeClock`.

The fate of one packet from ``src`` to ``dst`` (both ``(host, port)``):

1. the link's conditions are looked up, most specific first: the address pair, the host
   pair, then the network's default (:class:`LinkConditions`);
2. an active partition between the two ends drops it;
3. a datagram larger than the link's MTU (payload + 28 bytes of IP/UDP header) is dropped;
4. a scripted :class:`Fate` queued for that link with :meth:`SimNetwork.script` decides
   loss, copies and extra delay (hypothesis draws these); otherwise the random generator
   does: loss, then duplication, then reordering (an extra ``reorder_delay``);
5. with a bandwidth, the packet waits for the link (one FIFO per direction, a tail-drop
   queue of ``queue_bytes``) and takes ``size / bandwidth`` to serialise;
6. it arrives ``latency + uniform(0, jitter)`` later (plus any extra delay); if a
   partition cut the link meanwhile it is lost in flight;
7. if a :class:`Hold` covers the link when it arrives, it is not delivered but kept (in
   arrival order) until the hold is released: then every kept packet arrives at the
   release instant, in order (or shuffled by the generator, each stream's segments
   still in order), going through steps 6-7 again (a partition still cuts it, another
   hold still keeps it). A hold is turmoil's ``hold``/``release`` and what
   FoundationDB calls clogging: nothing is lost, everything is late.

Reliable transfers (the TCP model) skip steps 3-4: a "lost" segment costs one ``rto``
of extra delay instead, a full link queue delays a segment rather than dropping it, and
arrival times on one stream never go backwards.

Every random draw comes from ``SimNetwork.rng`` (``random.Random(seed)``), in an order
fixed by the simulation, so the same seed and scenario give the same packet fates;
every fate is written to the trace. This module imports no asyncio.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, final

from ..._driver import Driver
from .._clock import FakeClock, Timer
from .._errors import HarnessError
from .._trace import Trace

__all__ = ["Fate", "Hold", "LinkConditions", "NetStats", "Partition", "SimNetwork"]

#: Bytes of IPv4 + UDP header counted against the MTU.
HEADER_BYTES = 28

Endpoint = str | tuple[Any, ...]


@final
@dataclass(frozen=True, slots=True)
class LinkConditions:
    """How one direction of a link treats packets. Probabilities are in [0, 1]."""

    #: One-way delay in seconds.
    latency: float = 0.0
    #: Extra delay drawn uniformly in [0, jitter] per packet (jitter alone reorders too).
    jitter: float = 0.0
    #: Probability a datagram is lost.
    loss: float = 0.0
    #: Probability a datagram is delivered twice.
    duplicate: float = 0.0
    #: Probability a datagram is held back by ``reorder_delay`` (later ones overtake it).
    reorder: float = 0.0
    #: The hold-back of a reordered datagram, in seconds.
    reorder_delay: float = 0.005
    #: Link rate in bytes per second (``None``: unlimited).
    bandwidth: float | None = None
    #: Bytes that may wait for a busy link before tail drop (with ``bandwidth``).
    queue_bytes: int = 256 * 1024
    #: Largest IP packet (payload + 28 header bytes); larger datagrams are dropped.
    mtu: int | None = None
    #: Extra delay of a lost segment on a reliable stream (the TCP model's retransmission).
    rto: float = 0.2

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise HarnessError(f"{name} is a probability in [0, 1], got {p!r}")
        for name in ("latency", "jitter", "reorder_delay", "rto"):
            if getattr(self, name) < 0:
                raise HarnessError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise HarnessError(f"bandwidth must be > 0 bytes/s or None, got {self.bandwidth!r}")
        if self.mtu is not None and self.mtu < HEADER_BYTES + 1:
            raise HarnessError(f"mtu must be > {HEADER_BYTES} bytes or None, got {self.mtu!r}")
        if self.queue_bytes < 0:
            raise HarnessError(f"queue_bytes must be >= 0, got {self.queue_bytes!r}")


@final
@dataclass(frozen=True, slots=True)
class Fate:
    """A scripted fate for one packet: lost, or delivered ``copies`` times ``delay`` late."""

    lost: bool = False
    copies: int = 1
    delay: float = 0.0


@final
@dataclass(slots=True)
class NetStats:
    """Counters of a :class:`SimNetwork` (packets, not bytes)."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    mtu_dropped: int = 0
    queue_dropped: int = 0
    partitioned: int = 0
    unreachable: int = 0
    retransmitted: int = 0
    #: Packets kept by a :class:`Hold` (each counted once per hold that kept it).
    held: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@final
class Partition:
    """An active cut between two sets of endpoints; :meth:`heal` removes it."""

    __slots__ = ("_net", "_timer", "active", "side_a", "side_b")

    def __init__(self, net: SimNetwork, side_a: frozenset[Endpoint], side_b: frozenset[Endpoint]):
        self._net = net
        self.side_a = side_a
        self.side_b = side_b  # empty: "everyone not in side_a"
        self.active = True
        self._timer: Timer | None = None

    def cuts(self, src: tuple[Any, ...], dst: tuple[Any, ...]) -> bool:
        """True if a packet from ``src`` to ``dst`` crosses this cut."""
        a_src, a_dst = _in(src, self.side_a), _in(dst, self.side_a)
        if self.side_b:
            b_src, b_dst = _in(src, self.side_b), _in(dst, self.side_b)
            return (a_src and b_dst) or (b_src and a_dst)
        return a_src != a_dst

    def heal(self) -> None:
        """Remove the cut (idempotent)."""
        if not self.active:
            return
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
        self._net._healed(self)

    def __repr__(self) -> str:
        other = sorted(map(str, self.side_b)) if self.side_b else "the rest"
        return f"<Partition {sorted(map(str, self.side_a))} | {other} active={self.active}>"


#: A packet kept by a hold: source, destination, arrival callback, trace tag, stream key.
_Held = tuple[tuple[Any, ...], tuple[Any, ...], Callable[[], None], str, Hashable | None]


@final
class Hold:
    """Packets between two sets of endpoints are kept, not lost, until :meth:`release`.

    Made by :meth:`SimNetwork.hold`. ``held`` lists what it keeps now, oldest first.
    """

    __slots__ = ("_net", "_timer", "active", "both_ways", "held", "shuffle", "side_a", "side_b")

    def __init__(
        self,
        net: SimNetwork,
        side_a: frozenset[Endpoint],
        side_b: frozenset[Endpoint],
        both_ways: bool,
        shuffle: bool,
    ):
        self._net = net
        self.side_a = side_a
        self.side_b = side_b  # empty: "everyone not in side_a"
        self.both_ways = both_ways
        self.shuffle = shuffle
        self.active = True
        self.held: list[_Held] = []
        self._timer: Timer | None = None

    def covers(self, src: tuple[Any, ...], dst: tuple[Any, ...]) -> bool:
        """True if a packet from ``src`` to ``dst`` is kept by this hold."""
        a_src, a_dst = _in(src, self.side_a), _in(dst, self.side_a)
        if self.side_b:
            b_src, b_dst = _in(src, self.side_b), _in(dst, self.side_b)
        else:
            b_src, b_dst = not a_src, not a_dst
        return (a_src and b_dst) or (self.both_ways and b_src and a_dst)

    def release(self, *, shuffle: bool | None = None) -> int:
        """Stop holding; everything kept arrives now, in order (``shuffle=True``: in an
        order drawn from the network's generator, each stream's segments still in
        order; default: the hold's own setting). Returns how many packets were kept.
        Idempotent."""
        if not self.active:
            return 0
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
        return self._net._released(self, self.shuffle if shuffle is None else shuffle)

    def __repr__(self) -> str:
        other = sorted(map(str, self.side_b)) if self.side_b else "the rest"
        arrow = "<>" if self.both_ways else ">"
        return (
            f"<Hold {sorted(map(str, self.side_a))} {arrow} {other} "
            f"active={self.active} held={len(self.held)}>"
        )


def _in(addr: tuple[Any, ...], side: frozenset[Endpoint]) -> bool:
    return addr[0] in side or addr[:2] in side


def _host_key(endpoint: Endpoint) -> Endpoint:
    if isinstance(endpoint, tuple):
        return (endpoint[0], endpoint[1])
    return endpoint


class SimNetwork:
    """The simulated wire shared by the simulated drivers of every worker.

    Args:
        seed: seeds :attr:`rng`, the only source of randomness of the simulation.
        clock: the clock arrivals are scheduled on (default: a new autojump clock).
        trace: where packet fates are recorded (default: a new :class:`Trace`).
        default: the conditions of every link not set with :meth:`set_link`.
        ephemeral: the first port handed out for binds to port 0 (per host).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: FakeClock | None = None,
        trace: Trace | None = None,
        default: LinkConditions | None = None,
        ephemeral: int = 40000,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = clock if clock is not None else FakeClock(autojump=True)
        self.trace = trace if trace is not None else Trace(seed)
        self.default = default or LinkConditions()
        self.stats = NetStats()
        self.ephemeral = ephemeral
        self._links: dict[tuple[Endpoint, Endpoint], LinkConditions] = {}
        self._scripts: dict[tuple[Endpoint, Endpoint], deque[Fate]] = {}
        self._partitions: list[Partition] = []
        self._holds: list[Hold] = []
        self._busy_until: dict[tuple[Endpoint, Endpoint], float] = {}
        self._stream_last: dict[Hashable, float] = {}
        #: Registries of the simulated drivers (addresses in use), keyed by protocol.
        self.registry: dict[str, Any] = {}

    # ------------------------------------------------------------------ configuration

    def set_default(self, conditions: LinkConditions | None = None, **changes: Any) -> None:
        """Set the conditions of every link without its own (fields as keywords, too)."""
        base = conditions if conditions is not None else self.default
        self.default = replace(base, **changes) if changes else base

    def set_link(
        self,
        a: Endpoint,
        b: Endpoint,
        conditions: LinkConditions | None = None,
        *,
        both_ways: bool = True,
        **changes: Any,
    ) -> None:
        """Set the conditions from ``a`` to ``b`` (and back, unless ``both_ways=False``).

        ``a`` and ``b`` are hosts (``"10.0.0.1"``) or addresses (``("10.0.0.1", 5000)``).
        """
        cond = conditions if conditions is not None else self.default
        if changes:
            cond = replace(cond, **changes)
        ka, kb = _host_key(a), _host_key(b)
        self._links[(ka, kb)] = cond
        if both_ways:
            self._links[(kb, ka)] = cond

    def conditions(self, src: tuple[Any, ...], dst: tuple[Any, ...]) -> LinkConditions:
        """The conditions a packet from ``src`` to ``dst`` meets (most specific first)."""
        links = self._links
        if links:
            cond = links.get((src[:2], dst[:2]))
            if cond is None:
                cond = links.get((src[0], dst[0]))
            if cond is not None:
                return cond
        return self.default

    def script(self, a: Endpoint, b: Endpoint, fates: Iterable[Fate]) -> None:
        """Queue fates for the next datagrams from ``a`` to ``b`` (before any randomness)."""
        key = (_host_key(a), _host_key(b))
        self._scripts.setdefault(key, deque()).extend(fates)

    def partition(
        self,
        side_a: Iterable[Endpoint],
        side_b: Iterable[Endpoint] | None = None,
        *,
        until: float | None = None,
    ) -> Partition:
        """Cut ``side_a`` off from ``side_b`` (default: from everyone else).

        Sides are hosts or addresses. The cut heals at time ``until`` if given, or when
        :meth:`Partition.heal` (or :meth:`heal`) is called. Packets in flight across a
        new cut are lost.
        """
        a = frozenset(_host_key(e) for e in side_a)
        b = frozenset(_host_key(e) for e in side_b) if side_b is not None else frozenset()
        if not a:
            raise HarnessError("a partition needs at least one endpoint on side_a")
        part = Partition(self, a, b)
        self._partitions.append(part)
        self.trace.record(self.clock.now(), "net", "partition", repr(part))
        if until is not None:
            part._timer = self.clock.call_at(until, part.heal)
        return part

    def heal(self, partition: Partition | None = None) -> None:
        """Heal one partition, or every partition."""
        for part in [partition] if partition is not None else list(self._partitions):
            part.heal()

    def _healed(self, part: Partition) -> None:
        if part in self._partitions:
            self._partitions.remove(part)
        self.trace.record(self.clock.now(), "net", "heal", repr(part))

    def partitioned(self, src: tuple[Any, ...], dst: tuple[Any, ...]) -> bool:
        """True if an active partition separates ``src`` from ``dst``."""
        return any(p.cuts(src, dst) for p in self._partitions)

    def hold(
        self,
        side_a: Iterable[Endpoint],
        side_b: Iterable[Endpoint] | None = None,
        *,
        both_ways: bool = True,
        until: float | None = None,
        shuffle: bool = False,
    ) -> Hold:
        """Keep the packets from ``side_a`` to ``side_b`` (default: everyone else), and back
        unless ``both_ways=False``, until the hold is released.

        Sides are hosts or addresses. Packets already in flight are kept too when they
        arrive. At time ``until`` (if given), or when :meth:`Hold.release` (or
        :meth:`release`) is called, every kept packet arrives at once, in the order it
        would have arrived (``shuffle=True``: in an order drawn from :attr:`rng`, each
        TCP stream still in order). Nothing is lost.
        """
        a = frozenset(_host_key(e) for e in side_a)
        b = frozenset(_host_key(e) for e in side_b) if side_b is not None else frozenset()
        if not a:
            raise HarnessError("a hold needs at least one endpoint on side_a")
        h = Hold(self, a, b, both_ways, shuffle)
        self._holds.append(h)
        self.trace.record(self.clock.now(), "net", "hold", repr(h))
        if until is not None:
            h._timer = self.clock.call_at(until, _release_hold, h)
        return h

    def release(self, hold: Hold | None = None, *, shuffle: bool | None = None) -> int:
        """Release one hold, or every hold; how many packets were kept."""
        return sum(
            h.release(shuffle=shuffle) for h in ([hold] if hold is not None else list(self._holds))
        )

    def holds(self) -> list[Hold]:
        """The active holds, oldest first."""
        return list(self._holds)

    def _released(self, h: Hold, shuffle: bool) -> int:
        if h in self._holds:
            self._holds.remove(h)
        held, h.held = h.held, []
        now = self.clock.now()
        self.trace.record(now, "net", "release", f"{h!r} packets={len(held)} shuffle={shuffle}")
        if shuffle and len(held) > 1:
            held = _shuffle_keeping_streams(held, self.rng)
        for src, dst, arrive, tag, stream in held:
            self.clock.call_at(now, self._arrive, src, dst, arrive, tag, stream)
        return len(held)

    # ------------------------------------------------------------------ drivers

    def udp_driver(self) -> Driver:
        """A new simulated UDP driver on this network (pass ``net.udp_driver`` as a factory)."""
        from .udp import SimUdpDriver

        return SimUdpDriver(self)

    def tcp_driver(self) -> Driver:
        """A new simulated TCP driver on this network (pass ``net.tcp_driver`` as a factory)."""
        from .tcp import SimTcpDriver

        return SimTcpDriver(self)

    def drivers(self) -> list[Callable[[], Driver]]:
        """The driver factories of every simulated protocol (UDP, TCP)."""
        return [self.udp_driver, self.tcp_driver]

    # ------------------------------------------------------------------ moving packets

    def transmit(
        self,
        src: tuple[Any, ...],
        dst: tuple[Any, ...],
        size: int,
        arrive: Callable[[], None],
        *,
        what: str = "udp",
        stream: Hashable | None = None,
    ) -> bool:
        """Send one packet of ``size`` payload bytes; call ``arrive()`` at each arrival.

        With ``stream`` (a key per direction of a connection) the transfer is reliable
        and ordered: no loss, no duplication, arrival times never go backwards.
        Returns False if the packet was dropped at once.
        """
        now = self.clock.now()
        stats = self.stats
        stats.sent += 1
        trace = self.trace
        tag = f"{what} {_fmt(src)}>{_fmt(dst)} {size}B" if trace.enabled else what
        if stream is None and self._partitions and self.partitioned(src, dst):
            stats.partitioned += 1
            trace.record(now, "net", "cut", tag)
            return False
        cond = self.conditions(src, dst)
        if stream is None and cond.mtu is not None and size + HEADER_BYTES > cond.mtu:
            stats.mtu_dropped += 1
            trace.record(now, "net", "mtu-drop", tag)
            return False
        rng = self.rng
        copies, extra = 1, 0.0
        key = (src[:2], dst[:2])
        script = self._scripts.get(key) or self._scripts.get((src[0], dst[0]))
        if stream is None and script:
            fate = script.popleft()
            copies = 0 if fate.lost else max(1, fate.copies)
            extra = max(0.0, fate.delay)
        elif stream is None:
            if cond.loss and rng.random() < cond.loss:
                copies = 0
            elif cond.duplicate and rng.random() < cond.duplicate:
                copies = 2
            if copies and cond.reorder and rng.random() < cond.reorder:
                extra = cond.reorder_delay
                stats.reordered += 1
        elif cond.loss and rng.random() < cond.loss:
            extra = cond.rto  # a lost segment is retransmitted after one RTO
            stats.retransmitted += 1
        if copies == 0:
            stats.lost += 1
            trace.record(now, "net", "lost", tag)
            return False
        start = now
        if cond.bandwidth is not None:
            busy = self._busy_until.get(key, now)
            # a datagram finding the queue full is tail-dropped; a stream segment waits
            backlog = (busy - now) * cond.bandwidth if busy > now else 0.0
            if stream is None and backlog > cond.queue_bytes + 1e-6:
                stats.queue_dropped += 1
                trace.record(now, "net", "queue-drop", tag)
                return False
            start = max(busy, now) + (size + HEADER_BYTES) / cond.bandwidth
            self._busy_until[key] = start
        if copies > 1:
            stats.duplicated += copies - 1
        for _ in range(copies):
            delay = cond.latency + extra
            if cond.jitter:
                delay += rng.uniform(0.0, cond.jitter)
            when = start + delay
            if stream is not None:
                last = self._stream_last.get(stream, when)
                when = max(when, last)
                self._stream_last[stream] = when
            if trace.enabled:
                trace.record(now, "net", "send", f"{tag} eta={when:.9f}")
            self.clock.call_at(when, self._arrive, src, dst, arrive, tag, stream)
        return True

    def _arrive(
        self,
        src: tuple[Any, ...],
        dst: tuple[Any, ...],
        arrive: Callable[[], None],
        tag: str,
        stream: Hashable | None,
    ) -> None:
        now = self.clock.now()
        if self._partitions and self.partitioned(src, dst):
            if stream is not None:  # TCP keeps retransmitting: it arrives after the heal
                self.stats.retransmitted += 1
                cond = self.conditions(src, dst)
                self.clock.call_at(now + cond.rto, self._arrive, src, dst, arrive, tag, stream)
                return
            self.stats.partitioned += 1
            self.trace.record(now, "net", "cut-in-flight", tag)
            return
        if self._holds:
            for h in self._holds:
                if h.covers(src, dst):
                    h.held.append((src, dst, arrive, tag, stream))
                    self.stats.held += 1
                    self.trace.record(now, "net", "held", tag)
                    return
        self.stats.delivered += 1
        self.trace.record(now, "net", "arrive", tag)
        arrive()

    def forget_stream(self, stream: Hashable) -> None:
        """Drop the ordering state of a finished stream."""
        self._stream_last.pop(stream, None)

    def __repr__(self) -> str:
        return f"<SimNetwork seed={self.seed} t={self.clock.now()!r} {self.stats}>"


def _release_hold(h: Hold) -> None:
    h.release()


def _shuffle_keeping_streams(held: list[_Held], rng: random.Random) -> list[_Held]:
    """``held`` shuffled by ``rng``; the packets of each stream keep their relative order
    (they take, in order, the places the shuffle gave that stream)."""
    out = list(held)
    rng.shuffle(out)
    queues: dict[Hashable, deque[_Held]] = {}
    for item in held:
        if item[4] is not None:
            queues.setdefault(item[4], deque()).append(item)
    return [queues[item[4]].popleft() if item[4] is not None else item for item in out]


def _fmt(addr: tuple[Any, ...]) -> str:
    host = addr[0]
    return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
