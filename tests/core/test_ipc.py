"""The process transport's pieces, in one process: frames over a real socketpair, the
batch pickling that survives a bad item, and the credits that keep a lane's bound."""

from __future__ import annotations

import asyncio
import pickle
import socket
import threading
from typing import Any

import pytest

from sansio_aio import TaskOutput, TaskRef
from sansio_aio._ipc import FrameReader, FrameWriter, ProcLane, dumps_batch

REF = TaskRef(0, "t", 0)


def test_a_batch_with_an_unpicklable_item_keeps_the_others() -> None:
    lock = threading.Lock()
    outputs = [TaskOutput(REF, 1), TaskOutput(REF, lock), TaskOutput(REF, 3)]
    payload, kept, dropped = dumps_batch(["a", lock, outputs, "b"])
    assert kept == 3
    assert pickle.loads(payload) == ["a", [TaskOutput(REF, 1), TaskOutput(REF, 3)], "b"]
    assert [item for item, _ in dropped] == [lock, TaskOutput(REF, lock)]
    payload, kept, dropped = dumps_batch([1, 2])
    assert (pickle.loads(payload), kept, dropped) == ([1, 2], 2, [])


async def test_frames_cross_in_order_even_when_the_kernel_takes_them_in_pieces() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frames = [bytes([i % 256]) * (i * 3000) for i in range(40)]  # up to 117 kB each
    got: list[bytes] = []
    eof = asyncio.Event()
    all_in = asyncio.Event()

    def on_frames(payloads: list[bytes]) -> None:
        got.extend(payloads)
        if len(got) >= len(frames):
            all_in.set()

    reader = FrameReader(b, on_frames, eof.set)
    loop.add_reader(b.fileno(), reader.on_readable)
    writer = FrameWriter(a, loop)
    try:
        for frame in frames:
            writer.write(frame)
        assert writer.pending() > 0  # the kernel did not take it all at once
        async with asyncio.timeout(10):
            await all_in.wait()
        assert got == frames
        assert writer.pending() == 0
        writer.close()
        a.close()
        async with asyncio.timeout(10):
            await eof.wait()
    finally:
        loop.remove_reader(b.fileno())
        b.close()
        if a.fileno() != -1:
            a.close()


def test_a_writer_without_a_loop_writes_blocking_and_survives_a_closed_peer() -> None:
    a, b = socket.socketpair()
    received = bytearray()

    def read_all() -> None:
        while len(received) < 300_004:
            chunk = b.recv(1 << 16)
            if not chunk:
                return
            received.extend(chunk)

    reading = threading.Thread(target=read_all)
    reading.start()
    try:
        a.setblocking(False)
        writer = FrameWriter(a, None)
        writer.write(b"x" * 300_000)  # more than the socket buffer: finished blocking
        assert writer.pending() == 0
        reading.join(10)
        assert bytes(received) == (300_000).to_bytes(4, "big") + b"x" * 300_000
        b.close()
        writer.write(b"y")
        writer.write(b"z")
        assert writer.broken
    finally:
        reading.join(10)
        a.close()
        if b.fileno() != -1:
            b.close()


def test_a_proc_lane_keeps_its_bound_with_credits() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        lane = ProcLane(3, FrameWriter(a, None))
        lane.wake = lambda: None  # deferred, as the controller does: flushed below
        room: list[int] = []
        assert lane.push(1) and lane.push(2) and lane.push(3)
        assert not lane.push(4)  # full
        lane.flush()  # three in flight now
        assert lane.depth() == 3 and lane.capacity == 0
        assert not lane.push(4)  # still full: nothing was handled yet
        assert lane.on_room(lambda: room.append(1))
        lane.credit(2)  # the consumer handled two
        assert room == [1]
        assert lane.push(4) and lane.push(5) and not lane.push(6)
        lane.push_force("past the bound")
        lane.flush()
        assert lane.depth() == 4
        data = b.recv(1 << 16)
        frames = _split(data)
        assert [pickle.loads(f) for f in frames] == [[1, 2, 3], [4, 5, "past the bound"]]
    finally:
        a.close()
        b.close()


def test_a_proc_lane_does_not_count_what_it_dropped() -> None:
    a, b = socket.socketpair()
    dropped: list[Any] = []
    try:
        lane = ProcLane(10, FrameWriter(a, None), lambda d: dropped.extend(i for i, _ in d))
        lane.wake = lambda: None
        lock = threading.Lock()
        lane.push("ok")
        lane.push(lock)
        lane.flush()
        assert dropped == [lock]
        assert lane.depth() == 1  # only what crossed waits for a credit
    finally:
        a.close()
        b.close()


def _split(data: bytes) -> list[bytes]:
    out = []
    while data:
        n = int.from_bytes(data[:4], "big")
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


@pytest.mark.parametrize("size", [0, 1, 70_000])
def test_a_frame_split_across_reads_is_joined(size: int) -> None:
    a, b = socket.socketpair()
    got: list[bytes] = []
    try:
        b.setblocking(False)
        reader = FrameReader(b, got.extend, lambda: None)
        payload = b"p" * size
        frame = len(payload).to_bytes(4, "big") + payload
        for i in range(0, len(frame), 3):  # three bytes at a time
            a.sendall(frame[i : i + 3])
            reader.on_readable()
        assert got == [payload]
    finally:
        a.close()
        b.close()
