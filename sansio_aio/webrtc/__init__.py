"""WHIP (RFC 9725) and WHEP ingest/egress on aiortc, driven by sansio_aio.

The split is the runtime's own: :class:`Room` is a pure Sans-I/O task (sessions, ETags,
limits, timeouts, keyframe requests, teardown) that can run under the test harness with
no WebRTC at all; :class:`WebRtcDriver` is the I/O driver that performs its peer
commands with aiortc on the worker's loop; :class:`WhipServer` is the aiohttp layer on
the application's loop that talks to rooms with ``Runtime.request``. Start it all with
:func:`open_server` (or ``python examples/whip_whep.py``). Needs the ``webrtc`` extra
(``aiortc``, ``aiohttp``); :mod:`.events`, :mod:`.room`, :mod:`.sdp` and :mod:`.config`
import neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import IceServer, RoomConfig, ServerConfig, parse_args
from .events import (
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
    PeerTrickle,
    Refused,
    RoomInfo,
    RoomSnapshot,
    SessionEnded,
    SessionInfo,
)
from .room import Room

if TYPE_CHECKING:
    from .driver import WebRtcDriver
    from .runner import open_server
    from .server import WhipServer

__all__ = [
    "CloseSession",
    "Created",
    "Done",
    "IceServer",
    "OpenSession",
    "PatchSession",
    "PeerAnswered",
    "PeerClose",
    "PeerFailed",
    "PeerKeyframe",
    "PeerMedia",
    "PeerOpen",
    "PeerState",
    "PeerTrickle",
    "Refused",
    "Room",
    "RoomConfig",
    "RoomInfo",
    "RoomSnapshot",
    "ServerConfig",
    "SessionEnded",
    "SessionInfo",
    "WebRtcDriver",
    "WhipServer",
    "open_server",
    "parse_args",
]

_LAZY = {"WebRtcDriver": ".driver", "WhipServer": ".server", "open_server": ".runner"}


def __getattr__(name: str) -> Any:
    # aiortc and aiohttp load only when the driver or the server is used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
