"""Hypothesis strategies for property tests of Sans-I/O tasks.

Import this module only in tests (it needs ``hypothesis``)::

    from hypothesis import given
    from sansio_aio.testing import strategies as st_sansio

    @given(st_sansio.fates(max_size=50), st_sansio.datagrams())
    def test_echo(fates, payloads): ...

Network conditions come in two flavours. :func:`link_conditions` draws the parameters
of a random link (the simulation's seeded generator then decides each packet), good
for exploring. :func:`fates` draws the fate of every packet explicitly (lost, copies,
extra delay), so hypothesis shrinks a failure down to the few packets that matter; feed
them to :meth:`SimNetwork.script`.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ..net._events import MAX_UDP_PAYLOAD, UdpPacket
from ._sim.net import Fate, LinkConditions

__all__ = [
    "addresses",
    "datagrams",
    "fates",
    "link_conditions",
    "seeds",
    "timed",
    "udp_packets",
]


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``SimNetwork`` / ``SimRuntime``."""
    return st.integers(min_value=0, max_value=2**31 - 1)


def datagrams(min_size: int = 0, max_size: int = 1200) -> st.SearchStrategy[bytes]:
    """UDP payloads (``max_size`` at most 65507, the largest IPv4 UDP payload)."""
    if max_size > MAX_UDP_PAYLOAD:
        raise ValueError(f"max_size {max_size} exceeds the UDP limit {MAX_UDP_PAYLOAD}")
    return st.binary(min_size=min_size, max_size=max_size)


def addresses(hosts: tuple[str, ...] = ("127.0.0.1",)) -> st.SearchStrategy[tuple[str, int]]:
    """``(host, port)`` pairs on the given hosts, ports 1..65535."""
    return st.tuples(st.sampled_from(hosts), st.integers(min_value=1, max_value=65535))


def udp_packets(
    slot: int = 1,
    sources: st.SearchStrategy[tuple[str, int]] | None = None,
    payloads: st.SearchStrategy[bytes] | None = None,
) -> st.SearchStrategy[UdpPacket]:
    """``UdpPacket`` inputs for a task bound on ``slot``."""
    return st.builds(
        UdpPacket,
        st.just(slot),
        sources if sources is not None else addresses(),
        payloads if payloads is not None else datagrams(),
    )


def link_conditions(
    *,
    max_latency: float = 0.2,
    max_jitter: float = 0.05,
    max_loss: float = 0.5,
    max_duplicate: float = 0.2,
    max_reorder: float = 0.3,
    bandwidth: bool = False,
    mtu: bool = False,
) -> st.SearchStrategy[LinkConditions]:
    """Random :class:`LinkConditions` within the given bounds."""

    def build(draw: Any) -> LinkConditions:
        return LinkConditions(
            latency=draw(st.floats(0.0, max_latency)),
            jitter=draw(st.floats(0.0, max_jitter)),
            loss=draw(st.floats(0.0, max_loss)),
            duplicate=draw(st.floats(0.0, max_duplicate)),
            reorder=draw(st.floats(0.0, max_reorder)),
            bandwidth=draw(st.one_of(st.none(), st.floats(1e4, 1e8))) if bandwidth else None,
            mtu=draw(st.one_of(st.none(), st.integers(576, 9000))) if mtu else None,
        )

    return st.composite(build)()


def fates(
    *,
    min_size: int = 0,
    max_size: int = 100,
    max_copies: int = 2,
    max_delay: float = 0.1,
) -> st.SearchStrategy[list[Fate]]:
    """Explicit per-packet fates (for :meth:`SimNetwork.script`); shrinks to "all fine"."""
    fate = st.builds(
        Fate,
        lost=st.booleans(),
        copies=st.integers(min_value=1, max_value=max_copies),
        delay=st.floats(min_value=0.0, max_value=max_delay, allow_nan=False),
    )
    return st.lists(fate, min_size=min_size, max_size=max_size)


def timed(
    events: st.SearchStrategy[Any], *, max_gap: float = 1.0, max_size: int = 50
) -> st.SearchStrategy[list[tuple[float, Any]]]:
    """Lists of ``(gap_seconds, event)`` to feed a :class:`TaskHarness` at chosen times."""
    gap = st.floats(min_value=0.0, max_value=max_gap, allow_nan=False)
    return st.lists(st.tuples(gap, events), max_size=max_size)
