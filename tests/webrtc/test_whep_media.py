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
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from yarl import URL

from sansio_aio import webrtc as client
from sansio_aio.testing import LoopThread, PrivateNetwork
from tests.helpers import ROOT, Variant
from tests.webrtc.support import ServeFactory, make_offer
from tests.webrtc.support import until as holds

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
    async with serve(workers=2, publisher_grace=0) as s:
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


# ------------------------------------------------------------------ publisher grace


def driver_counters(core: Any) -> dict[str, int]:
    """The WebRTC driver's counters (run on a worker: module-level, so it pickles)."""
    return dict(core.drivers[0].stats())


async def driver_stats(s: Any, room: str) -> dict[str, int]:
    """The WebRTC driver's counters on the worker of ``room`` (thread or process)."""
    stats: dict[str, int] = await s.server.rt.run_on_worker(
        s.server.rooms[room].worker, driver_counters
    )
    return stats


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "second", "mode"), [("VP8", "VP8", "thread"), ("VP8", "H264", "process")]
)
async def test_a_new_publisher_takes_the_viewers_over(
    serve: ServeFactory, peers: LoopThread, first: str, second: str, mode: str
) -> None:
    """An encoder restart: the publisher DELETEs and a new one (another picture size,
    maybe another codec) publishes within the grace. The viewer keeps its session and
    its peer connection, and decodes the new publisher's frames; a viewer that joined
    during the gap gets them too. Same codec: still forwarded encoded; another codec:
    re-encoded for the viewer, whose codec was fixed at its negotiation. (One case runs
    the room in a worker process: ``PeerSwitch`` crosses to it like any command.)"""
    async with serve(workers=1, mode=mode, publisher_grace=10.0) as s:
        base = s.inner

        async def scenario() -> dict[str, Any]:
            pub1 = await client.publish(
                f"{base}/whip/live", [client.PatternTrack(320, 240)], video_codec=first
            )
            viewer = await client.view(f"{base}/whep/live")
            await viewer.wait_frames(FRAMES, TIMEOUT)
            assert await pub1.delete() == 200
            await pub1.close()
            late = await client.view(f"{base}/whep/live")  # joins while the room waits
            before = viewer.frames
            pub2 = await client.publish(
                f"{base}/whip/live", [client.PatternTrack(160, 120)], video_codec=second
            )
            after = await viewer.wait_frames(before + FRAMES, TIMEOUT)
            late_frames = await late.wait_frames(FRAMES, TIMEOUT)
            out = {
                "before": before,
                "after": after,
                "sizes": dict(viewer.sizes),
                "late": late_frames,
                "late_sizes": dict(late.sizes),
                "location": viewer.location,
            }
            for session in (viewer, late, pub2):
                out[f"delete_{session is pub2}"] = await session.delete()
                await session.close()
            return out

        out = await peers.run(scenario(), 60)
        assert out["before"] >= FRAMES and out["after"] >= out["before"] + FRAMES
        # the frames after the switch are the new publisher's
        assert out["sizes"].get((320, 240), 0) >= FRAMES
        assert out["sizes"].get((160, 120), 0) >= FRAMES - 5, out["sizes"]
        assert out["late"] >= FRAMES and set(out["late_sizes"]) == {(160, 120)}
        assert out["delete_False"] == 200  # the viewers' sessions lived on
        stats = await driver_stats(s, "live")
        assert stats["webrtc_switched"] == 2  # the viewer and the late one
        if first == second:
            assert stats["webrtc_passthrough_video"] == 3 and stats["webrtc_reencode_video"] == 0
        else:  # the viewer negotiated VP8: H264 cannot be forwarded to it
            assert stats["webrtc_reencode_video"] >= 1


@pytest.mark.slow
async def test_a_killed_publisher_is_replaced_and_the_viewer_keeps_decoding(
    serve: ServeFactory, peers: LoopThread, netns: PrivateNetwork
) -> None:
    """The publisher (a child process) is SIGKILLed: no DELETE, no DTLS close. The room
    drops it after ``disconnected_timeout`` of silence, keeps the viewer for the grace,
    and a new publisher (another picture size) takes it over."""
    async with serve(workers=1, disconnected_timeout=2.0, publisher_grace=10.0) as s:
        url = f"{s.inner}/whip/crash"
        args = ["publish", url, "--seconds", "60", "--size", "320x240"]
        proc = netns.popen(
            [sys.executable, "-m", "sansio_aio.webrtc.client", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def publishers() -> list[str]:
            return [sid for sid, e in s.server.sessions.items() if e.role == "whip"]

        try:
            assert await holds(lambda: bool(publishers()), 20.0), "the publisher did not start"
            viewer = await peers.run(client.view(f"{s.inner}/whep/crash"), 20)
            assert await peers.run(viewer.wait_frames(FRAMES, TIMEOUT), 30) >= FRAMES
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert await s.server.wait_until(lambda: not publishers(), 10.0)  # a session's end
        sid = viewer.location.rsplit("/", 1)[1]
        assert sid in s.server.sessions  # kept for the grace

        async def replace() -> tuple[int, int, dict[tuple[int, int], int], int]:
            before = viewer.frames
            pub = await client.publish(f"{s.inner}/whip/crash", [client.PatternTrack(160, 120)])
            after = await viewer.wait_frames(before + FRAMES, TIMEOUT)
            status = await viewer.delete()
            await pub.delete()
            for session in (viewer, pub):
                await session.close()
            return before, after, dict(viewer.sizes), status

        before, after, sizes, status = await peers.run(replace(), 40)
        assert after >= before + FRAMES, (before, after)
        assert sizes.get((160, 120), 0) >= FRAMES - 5, sizes
        assert status == 200


# ------------------------------------------------------------------ session numbers


@pytest.mark.slow
async def test_stats_and_metrics_show_each_sessions_numbers(
    serve: ServeFactory, peers: LoopThread
) -> None:
    """``/stats`` carries every session's bitrates, loss, jitter and RTT (from aiortc's
    statistics), ``/metrics`` their per-room aggregates, and neither shows a session id
    to a metrics token."""
    operator, scraper = "numbers-operator", "numbers-scraper"
    async with (
        serve(workers=1, tokens=(operator,), metrics_token=scraper) as s,
        aiohttp.ClientSession() as http,
    ):
        base = s.inner

        async def start() -> tuple[Any, Any]:
            pub = await client.publish(f"{base}/whip/m", [client.PatternTrack()], token=operator)
            viewer = await client.view(f"{base}/whep/m", token=operator)
            await viewer.wait_frames(FRAMES, TIMEOUT)
            return pub, viewer

        pub, viewer = await peers.run(start(), 30)

        async def get(path: str, token: str) -> Any:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{s.url}/{path}", headers=headers) as r:
                assert r.status == 200
                return await (r.json() if path == "stats" else r.text())

        sessions: list[dict[str, Any]] = []

        async def known() -> bool:
            sessions[:] = (await get("stats", operator))["rooms"]["m"]["sessions"]
            fields = ("bitrate_in", "bitrate_out", "packets_lost", "jitter")
            return len(sessions) == 2 and all(
                all(x[f] is not None for f in fields) and (x["role"] == "whip" or x["rtt"])
                for x in sessions
            )

        assert await until(known, TIMEOUT), sessions
        by_role = {x["role"]: x for x in sessions}
        publisher, watcher = by_role["whip"], by_role["whep"]
        assert publisher["bitrate_in"] > 10_000 and watcher["bitrate_out"] > 10_000  # bits/s
        assert publisher["rtt"] is None  # aiortc's receiver does not measure it
        assert 0 < watcher["rtt"] < 1.0 and 0 <= watcher["jitter"] < 1.0
        for x in sessions:
            assert isinstance(x["bitrate_in"], int) and isinstance(x["packets_lost"], int)
        metrics = await get("metrics", scraper)
        lines = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if "{" in line)
        assert lines['whip_room_viewers{room="m"}'] == "1"
        assert lines['whip_room_publishers{room="m"}'] == "1"
        assert lines['whip_room_waiting{room="m"}'] == "0"
        assert float(lines['whip_room_bitrate_in_bits_per_second{room="m"}']) > 10_000
        assert float(lines['whip_room_bitrate_out_bits_per_second{room="m"}']) > 10_000
        assert 'whip_room_rtt_seconds{room="m"}' in lines
        for x in sessions:  # no session id in the metrics, nor in the scraper's stats
            assert x["session"] not in metrics
            assert x["session"] not in json.dumps(await get("stats", scraper))

        async def stop() -> None:
            for session in (viewer, pub):
                await session.delete()
                await session.close()

        await peers.run(stop(), 20)
