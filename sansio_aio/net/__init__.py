"""I/O drivers: UDP, TCP and TUN/TAP, each a :class:`~sansio_aio.driver.Driver`.

Give the drivers to the runtime (``Runtime(kinds, drivers=[UdpDriver, TcpDriver])``);
tasks speak their vocabularies. Task modules should import the vocabularies from
``sansio_aio.net._events`` and ``sansio_aio.net._tun_events``, which import no asyncio;
this package also re-exports them for applications.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._addr import check_address
from ._events import (
    MAX_UDP_PAYLOAD,
    Address,
    TcpAccepted,
    TcpClose,
    TcpClosed,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpEof,
    TcpError,
    TcpListen,
    TcpListening,
    TcpPaused,
    TcpPauseReading,
    TcpResumed,
    TcpResumeReading,
    TcpSend,
    TcpShutdown,
    UdpBind,
    UdpBound,
    UdpError,
    UdpPacket,
    UdpPackets,
    UdpSend,
    UdpSendBatch,
    UdpSendMany,
    UdpSendPairs,
    UdpUnbind,
    UdpUnbound,
)
from ._tun_events import (
    TunBind,
    TunBound,
    TunClosed,
    TunError,
    TunPacket,
    TunPackets,
    TunSend,
    TunSendMany,
    TunUnbind,
)

if TYPE_CHECKING:  # the drivers import asyncio: loaded on first use (__getattr__)
    from ._tcp import TcpDriver
    from ._tun import TunDriver, tun_unavailable_reason
    from ._udp import UdpDriver

_LAZY = {
    "TcpDriver": "._tcp",
    "TunDriver": "._tun",
    "tun_unavailable_reason": "._tun",
    "UdpDriver": "._udp",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sansio_aio.net' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_UDP_PAYLOAD",
    "Address",
    "TcpAccepted",
    "TcpClose",
    "TcpClosed",
    "TcpConnect",
    "TcpConnected",
    "TcpData",
    "TcpDriver",
    "TcpEof",
    "TcpError",
    "TcpListen",
    "TcpListening",
    "TcpPauseReading",
    "TcpPaused",
    "TcpResumeReading",
    "TcpResumed",
    "TcpSend",
    "TcpShutdown",
    "TunBind",
    "TunBound",
    "TunClosed",
    "TunDriver",
    "TunError",
    "TunPacket",
    "TunPackets",
    "TunSend",
    "TunSendMany",
    "TunUnbind",
    "UdpBind",
    "UdpBound",
    "UdpDriver",
    "UdpError",
    "UdpPacket",
    "UdpPackets",
    "UdpSend",
    "UdpSendBatch",
    "UdpSendMany",
    "UdpSendPairs",
    "UdpUnbind",
    "UdpUnbound",
    "check_address",
    "tun_unavailable_reason",
]
