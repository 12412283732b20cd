"""Media end to end: aiortc publisher and viewers through the server, in a private netns.

A publisher sends a generated 320x240 video track over WHIP; viewers on their own WHEP
sessions each decode at least 30 frames; DELETE stops a viewer's media; the publisher
leaving ends its viewers; two rooms land on different workers; a publisher's teardown
leaves no task pending. The server runs with two workers; every peer (server and
clients) lives in the test's own network namespace and uses no ICE server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from yarl import URL

from sansio_aio import webrtc as client
from sansio_aio.testing import LoopThread
from tests.helpers import Variant
from tests.webrtc.support import ServeFactory, make_offer

FRAMES = 30
TIMEOUT = 20.0
SDP = {"Content-Type": "application/sdp"}


async def until(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Re-check ``check`` every 50 ms until it holds or ``timeout`` passes (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.slow
async def test_two_viewers_decode_and_delete_stops_media(
    serve: ServeFactory, peers: LoopThread, variant: Variant
) -> None:
    async with serve(**variant, workers=2) as s:
        base = s.inner

        async def scenario() -> tuple[int, int, int, int, int]:
            pub = await client.publish(f"{base}/whip/live", [client.PatternTrack(320, 240, 30)])
            v1 = await client.view(f"{base}/whep/live")
            v2 = await client.view(f"{base}/whep/live")
            got1 = await v1.wait_frames(FRAMES, TIMEOUT)
            got2 = await v2.wait_frames(FRAMES, TIMEOUT)
            deleted = await v1.delete()
            stopped_at = v1.frames
            # v2 keeps decoding: use its next 30 frames (~1 s) as the clock for v1's silence.
            await v2.wait_frames(v2.frames + FRAMES, TIMEOUT)
            after = v1.frames - stopped_at
            for session in (v1, v2):
                await session.close()
            await pub.delete()
            await pub.close()
            return got1, got2, deleted, after, v2.frames

        got1, got2, deleted, after, v2_total = await peers.run(scenario(), 60)
    assert got1 >= FRAMES and got2 >= FRAMES
    assert deleted == 200
    assert v2_total >= got2 + FRAMES
    assert after <= 3, f"viewer decoded {after} frames after DELETE"


@pytest.mark.slow
async def test_publisher_leaving_ends_viewers(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve(workers=2) as s:
        base = s.inner

        async def scenario() -> tuple[int, str, int]:
            pub = await client.publish(f"{base}/whip/live", [client.PatternTrack()])
            viewer = await client.view(f"{base}/whep/live")
            got = await viewer.wait_frames(FRAMES, TIMEOUT)
            await pub.delete()
            await pub.close()
            return got, viewer.location, await viewer.delete()

        got, location, status = await peers.run(scenario(), 60)
        assert got >= FRAMES
        assert status == 404  # the room ended the viewer's session with the publisher's
        sid = location.rsplit("/", 1)[1]
        assert await s.server.wait_until(lambda: sid not in s.server.sessions, 5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_two_rooms_on_two_workers(serve: ServeFactory, peers: LoopThread, mode: str) -> None:
    async with serve(workers=2, mode=mode) as s:
        base = s.inner

        async def scenario() -> list[int]:
            track = client.PatternTrack
            sessions = [await client.publish(f"{base}/whip/{r}", [track()]) for r in ("a", "b")]
            viewers = [await client.view(f"{base}/whep/{room}") for room in ("a", "b")]
            counts = [await v.wait_frames(FRAMES, TIMEOUT) for v in viewers]
            for session in viewers + sessions:
                await session.delete()
                await session.close()
            return counts

        counts = await peers.run(scenario(), 60)
        assert counts[0] >= FRAMES and counts[1] >= FRAMES
        assert {s.server.rooms[r].worker for r in ("a", "b")} == {0, 1}


@pytest.mark.slow
async def test_publisher_is_consumed_without_viewers(
    serve: ServeFactory, peers: LoopThread
) -> None:
    async with serve(workers=1) as s:
        base = s.inner
        pub = await peers.run(client.publish(f"{base}/whip/solo", [client.PatternTrack()]), 20)
        rt = s.server.rt
        room = s.server.rooms["solo"]

        async def consumed() -> bool:
            stats: dict[str, int] = await rt.run_on_worker(
                room.worker, lambda core: core.drivers[0].stats()
            )
            return stats["webrtc_frames_in"] >= FRAMES

        assert await until(consumed, TIMEOUT), "the publisher's frames were not consumed"
        snap = await s.server.snapshot()
        (info,) = snap["rooms"]["solo"]["sessions"]
        assert info["role"] == "whip" and info["state"] == "connected"

        async def stop() -> None:
            await pub.delete()
            await pub.close()

        await peers.run(stop(), 10)


@pytest.mark.slow
async def test_decoded_relay_reencodes_per_viewer(serve: ServeFactory, peers: LoopThread) -> None:
    async with serve(workers=1, relay="decoded") as s:
        base = s.inner

        async def scenario() -> list[int]:
            pub = await client.publish(f"{base}/whip/live", [client.PatternTrack()])
            viewers = [await client.view(f"{base}/whep/live") for _ in range(2)]
            counts = [await v.wait_frames(FRAMES, TIMEOUT) for v in viewers]
            for session in [*viewers, pub]:
                await session.delete()
                await session.close()
            return counts

        counts = await peers.run(scenario(), 60)
        assert min(counts) >= FRAMES
        room = s.server.rooms["live"]
        stats = await s.server.rt.run_on_worker(room.worker, lambda c: c.drivers[0].stats())
        assert stats["webrtc_reencode_video"] == 2 and stats["webrtc_passthrough_video"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_late_viewer_starts_on_a_requested_keyframe(
    serve: ServeFactory, peers: LoopThread, codec: str
) -> None:
    async with serve(workers=1) as s:
        base = s.inner

        async def scenario() -> tuple[int, int]:
            track = client.PatternTrack()
            pub = await client.publish(f"{base}/whip/live", [track], video_codec=codec)
            early = await client.view(f"{base}/whep/live")
            # Two seconds of stream first: the publisher's first keyframe is long gone.
            await early.wait_frames(2 * FRAMES, TIMEOUT)
            late = await client.view(f"{base}/whep/live")
            got = await late.wait_frames(FRAMES, TIMEOUT)
            for session in (early, late, pub):
                await session.delete()
                await session.close()
            return early.frames, got

        early_frames, late_frames = await peers.run(scenario(), 60)
        assert early_frames >= 2 * FRAMES and late_frames >= FRAMES
        room = s.server.rooms["live"]
        stats = await s.server.rt.run_on_worker(room.worker, lambda c: c.drivers[0].stats())
        assert stats["webrtc_passthrough_video"] == 2
        assert stats["webrtc_keyframes"] >= 2


@pytest.mark.slow
async def test_audio_and_video_are_forwarded_encoded(
    serve: ServeFactory, peers: LoopThread
) -> None:
    from aiortc.mediastreams import AudioStreamTrack

    async with serve(workers=1) as s:
        base = s.inner

        async def scenario() -> tuple[int, int]:
            tracks = [client.PatternTrack(), AudioStreamTrack()]
            pub = await client.publish(f"{base}/whip/live", tracks)
            viewer = await client.view(f"{base}/whep/live", audio=True)
            await viewer.wait_frames(FRAMES, TIMEOUT)
            frames, audio = viewer.frames, viewer.audio_frames
            for session in (viewer, pub):
                await session.delete()
                await session.close()
            return frames, audio

        frames, audio = await peers.run(scenario(), 60)
        assert frames >= FRAMES and audio >= 10, (frames, audio)  # ~1 s of 20 ms frames
        room = s.server.rooms["live"]
        stats = await s.server.rt.run_on_worker(room.worker, lambda c: c.drivers[0].stats())
        assert stats["webrtc_passthrough_video"] == 1 and stats["webrtc_passthrough_audio"] == 1
        assert stats["webrtc_reencode_audio"] == 0


@pytest.mark.slow
async def test_publisher_teardown_leaves_no_pending_task(
    serve: ServeFactory, peers: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with serve(workers=1) as s, aiohttp.ClientSession() as http:
        # A publisher whose peer never connects (its offer's peer is already closed):
        # the relay reads tracks that never get a frame, nor an end.
        offer = await make_offer(peers, "whip")
        async with http.post(f"{s.url}/whip/live", data=offer, headers=SDP) as r:
            assert r.status == 201, await r.text()
            session = str(r.url.join(URL(r.headers["Location"])))
        async with http.delete(session) as r:
            assert r.status == 200
        rt = s.server.rt

        def collect(core: Any) -> int:
            """Collect garbage on the worker; return its loop's tasks still alive."""
            gc.collect()
            return len(asyncio.all_tasks())

        async def no_task_left() -> bool:
            left: int = await rt.run_on_worker(0, collect)
            return left == 0

        # Once the close is done, the peer is garbage: collecting it must destroy no
        # pending task (asyncio would log "Task was destroyed but it is pending!").
        assert await until(no_task_left, TIMEOUT)
    errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
