"""Malformed task outputs for the UDP and TCP drivers together: bad input is a value.

Every field of the wrong type, unhashable slots included, comes back as an error input;
the task and the worker live on, and nothing else is lost.
"""

from __future__ import annotations

import errno
from typing import Any

from sansio_aio import Runtime
from sansio_aio.net import (
    TcpClose,
    TcpDriver,
    TcpError,
    TcpPauseReading,
    TcpResumeReading,
    TcpSend,
    TcpShutdown,
    UdpBind,
    UdpBound,
    UdpDriver,
    UdpError,
    UdpSend,
    UdpSendBatch,
    UdpSendMany,
    UdpSendPairs,
    UdpUnbind,
    UdpUnbound,
)
from tests.helpers import LO, T, inputs
from tests.tasks import OutputProbe


async def test_unhashable_slots_are_error_values_not_task_failures(backend: str) -> None:
    """A slot of the wrong type (a list, a dict) used to raise TypeError in the driver's
    dict lookup, which failed the whole task and lost the rest of its drain."""
    drivers = [UdpDriver, TcpDriver]
    async with Runtime({"probe": OutputProbe}, backend=backend, drivers=drivers) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(ref, [UdpBind((LO, 0))])
        (bound,) = await inputs(rt, 1)
        assert isinstance(bound, UdpBound) and bound.ok
        bad: list[Any] = [
            UdpSend([1], (LO, 9), b"x"),  # type: ignore[arg-type]
            UdpSendMany({}, [(LO, 9)], b"x"),  # type: ignore[arg-type]
            UdpSendBatch([], [((LO, 9), b"x")]),  # type: ignore[arg-type]
            UdpSendPairs([([1], (LO, 9))], b"x"),  # type: ignore[list-item]
            UdpUnbind([1]),  # type: ignore[arg-type]
            TcpSend([1], b"x"),  # type: ignore[arg-type]
            TcpShutdown({}),  # type: ignore[arg-type]
            TcpClose([1]),  # type: ignore[arg-type]
            TcpPauseReading([]),  # type: ignore[arg-type]
            TcpResumeReading([]),  # type: ignore[arg-type]
        ]
        # the good send last: it must still happen after all the bad ones
        rt.send_nowait(ref, [*bad, UdpUnbind(bound.slot)])
        got = await inputs(rt, len(bad) + 1)
        kinds = [type(e) for e in got]
        assert kinds == [UdpError] * 4 + [UdpUnbound] + [TcpError] * 5 + [UdpUnbound], got
        assert got[4].error is not None and got[-1].error is None
        assert all(e.errno == errno.EBADF for e in got if isinstance(e, UdpError | TcpError))
        assert await rt.request(ref, "alive?", timeout=T) == "alive?"
