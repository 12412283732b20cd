"""WHIP (RFC 9725) and WHEP ingest/egress on aiortc, driven by sansio_aio.

The split is the runtime's own: :class:`Room` is a pure Sans-I/O task (sessions, ETags,
limits, timeouts, keyframe requests, teardown) that can run under the test harness with
no WebRTC at all; :class:`WebRtcDriver` is the I/O driver that performs its peer
commands with aiortc on the worker's loop; :class:`WhipServer` is the aiohttp layer on
the application's loop that talks to rooms with ``Runtime.request``. Start it all with
:func:`open_server` (or ``python examples/whip_whep.py``). Needs the ``webrtc`` extra
(``aiortc``, ``aiohttp``) for the driver, the server and the client, which load on first
use; the rest (the room, its events, the configuration, the SDP checks) imports neither.
The command-line client is ``python -m sansio_aio.webrtc.client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import (
    IceServer,
    RoomConfig,
    ServerConfig,
    parse_args,
    parse_ice_server,
    resolve_interfaces,
)
from ._errors import SdpError, WhipError
from ._events import (
    CloseSession,
    Created,
    Done,
    OpenSession,
    PatchSession,
    PeerAnswered,
    PeerClose,
    PeerFailed,
    PeerKeyframe,
    PeerMedia,
    PeerOpen,
    PeerState,
    PeerSwitch,
    PeerTrickle,
    Refused,
    RoomInfo,
    RoomSnapshot,
    SessionEnded,
    SessionInfo,
)
from ._room import Room
from ._sdp import check_offer

if TYPE_CHECKING:
    from ._client import PatternTrack, WhipSession, publish, view
    from ._driver import WebRtcDriver
    from ._runner import open_server
    from ._server import WhipServer

__all__ = [
    "CloseSession",
    "Created",
    "Done",
    "IceServer",
    "OpenSession",
    "PatchSession",
    "PatternTrack",
    "PeerAnswered",
    "PeerClose",
    "PeerFailed",
    "PeerKeyframe",
    "PeerMedia",
    "PeerOpen",
    "PeerState",
    "PeerSwitch",
    "PeerTrickle",
    "Refused",
    "Room",
    "RoomConfig",
    "RoomInfo",
    "RoomSnapshot",
    "SdpError",
    "ServerConfig",
    "SessionEnded",
    "SessionInfo",
    "WebRtcDriver",
    "WhipError",
    "WhipServer",
    "WhipSession",
    "check_offer",
    "open_server",
    "parse_args",
    "parse_ice_server",
    "publish",
    "resolve_interfaces",
    "view",
]

_LAZY = {
    "PatternTrack": "._client",
    "WhipSession": "._client",
    "publish": "._client",
    "view": "._client",
    "WebRtcDriver": "._driver",
    "WhipServer": "._server",
    "open_server": "._runner",
}


def __getattr__(name: str) -> Any:
    # aiortc and aiohttp load only when the driver or the server is used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
