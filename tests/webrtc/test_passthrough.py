"""The viewer's switchable track and the room's timeline, alone (no peer connection).

:class:`ViewerTrack` is fed by an encoded source (it starts on a keyframe, asks for one
while it waits, empties itself when it falls behind), by a decoded one (the newest frame
only), or by nothing (it idles until attached again, and ends only when stopped).
:class:`Timeline` keeps a room's output timestamps continuous across publishers.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamError

from sansio_aio.webrtc._passthrough import (
    DecodedSource,
    EncodedSource,
    Timeline,
    ViewerTrack,
)

KEY = b"\x10\x02\x00"  # VP8: P bit 0, a keyframe
DELTA = b"\x11\x02\x00"
VP8 = SimpleNamespace(name="VP8", clockRate=90000)


def frame(data: bytes, timestamp: int) -> Any:
    return SimpleNamespace(data=data, timestamp=timestamp)


def test_a_timeline_is_continuous_across_publishers() -> None:
    line = Timeline(90000)
    first, second = object(), object()
    assert line.map(first, 1000) == 1000  # the room's first publisher: as it is
    assert line.map(first, 4000) == 4000
    out = line.map(second, 3_000_000_000)  # unrelated timestamps: placed after 4000
    assert 4000 < out < 4000 + 90000  # by the (short) time elapsed
    assert line.map(second, 3_000_003_000) == out + 3000
    assert line.map(second, 2**32 + 100) == (out + 2**32 + 100 - 3_000_000_000) % 2**32


async def test_an_encoded_viewer_starts_on_a_keyframe_and_asks_for_it() -> None:
    asked: list[int] = []
    source = EncodedSource("video", lambda: asked.append(1), Timeline(90000))
    track = ViewerTrack("video", capacity=4)
    track.attach(source)
    assert asked == [1]  # attaching asks for a keyframe
    source.on_frame(VP8, frame(DELTA, 10))
    assert track.dropped == 1 and len(asked) == 2  # and so does each frame waited through
    source.on_frame(VP8, frame(KEY, 20))
    source.on_frame(VP8, frame(DELTA, 30))
    packets = [await track.recv(), await track.recv()]
    assert [bytes(p) for p in packets] == [KEY, DELTA]
    assert packets[1].pts - packets[0].pts == 10 and track.frames == 2
    for i in range(5):  # falls behind: emptied, waits for the next keyframe
        source.on_frame(VP8, frame(DELTA, 40 + i))
    assert track.dropped == 1 + 5 and not track._queue


async def test_a_track_switches_sources_and_idles_between() -> None:
    old = EncodedSource("video", lambda: None)
    track = ViewerTrack("video")
    track.attach(old)
    old.on_frame(VP8, frame(KEY, 1))
    old.detach_all()  # the publisher left: the queued frame goes, the track idles
    assert track.source is None and not old.tracks
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert not waiting.done()
    new = DecodedSource("video")
    track.attach(new)
    picture = SimpleNamespace(pts=None)
    new.on_frame(SimpleNamespace(pts=None))
    new.on_frame(picture)  # only the newest decoded frame waits for the sender
    assert await asyncio.wait_for(waiting, 5) is picture
    assert track.dropped == 2  # the old source's frame and the superseded one
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()
    track.attach(new)  # a stopped track stays stopped
    assert track.source is None and not new.tracks
