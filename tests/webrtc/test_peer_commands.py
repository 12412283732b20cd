"""The WebRTC driver refuses malformed peer commands: each is a value, never fatal."""

from __future__ import annotations

from sansio_aio import Runtime
from sansio_aio.webrtc import (
    PeerClose,
    PeerFailed,
    PeerKeyframe,
    PeerOpen,
    PeerTrickle,
    WebRtcDriver,
)
from tests.helpers import T, inputs
from tests.tasks import OutputProbe


async def test_garbage_peer_commands_are_refused_not_fatal(backend: str) -> None:
    """No peer connection is made here (every command is refused before aiortc)."""
    async with Runtime({"probe": OutputProbe}, backend=backend, drivers=[WebRtcDriver]) as rt:
        ref = await rt.spawn("probe")
        rt.send_nowait(
            ref,
            [
                PeerOpen(["s"], "whip", "v=0"),  # type: ignore[arg-type]
                PeerOpen("s1", None, "v=0"),  # type: ignore[arg-type]
                PeerOpen("s2", "both", "v=0"),  # type: ignore[arg-type]
                PeerTrickle({}, ()),  # type: ignore[arg-type]
                PeerTrickle("nobody", None),  # type: ignore[arg-type]
                PeerKeyframe([]),  # type: ignore[arg-type]
                PeerClose({}),  # type: ignore[arg-type]
            ],
        )
        got = await inputs(rt, 3)
        assert [type(e) for e in got] == [PeerFailed] * 3, got
        assert [e.status for e in got] == [400] * 3
        assert "session must be a str" in got[0].reason and "role" in got[1].reason
        assert await rt.request(ref, "alive?", timeout=T) == "alive?"
        stats = await rt.stats()
        assert stats.workers[0].failures == 0
