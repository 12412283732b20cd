"""The pure building blocks: task groups (slots and generations), the task base class,
lanes and the bus hub."""

from __future__ import annotations

import threading

from sansio_aio import Task, TaskProtocol
from sansio_aio.lowlevel import BusHub, Lane, TaskGroup


def test_task_group_reuses_the_lowest_free_slot() -> None:
    group: TaskGroup[str] = TaskGroup("k")
    assert [group.add(x) for x in "abc"] == [(0, 0), (1, 0), (2, 0)]
    assert group.remove(1) == "b"
    assert group.remove(1) is None  # already free: reported, not fatal
    assert group.get(1) is None
    assert group.add("d") == (1, 1)  # slot 1 again, next generation
    assert group.get(1, 0) is None  # the old reference no longer matches
    assert group.get(1, 1) == "d"
    assert group.get(99) is None
    assert [i for i, _, _ in group.items()] == [0, 1, 2]


def test_task_group_became_empty_fires_once_per_transition() -> None:
    group: TaskGroup[str] = TaskGroup("k")
    assert not group.pop_became_empty()  # never had tasks: no edge
    group.add("a")
    group.add("b")
    group.remove(0)
    assert not group.pop_became_empty()
    group.remove(1)
    assert group.is_empty()
    assert group.pop_became_empty()
    assert not group.pop_became_empty()  # once per edge
    group.add("c")
    group.remove(0)
    assert group.pop_became_empty()


def test_task_base_class_follows_the_protocol() -> None:
    task = Task()
    assert isinstance(task, TaskProtocol)
    task.emit("x")
    assert not task.is_empty()
    task.on_shutdown(0.0)
    assert not task.is_empty()  # an output is still queued
    assert task.pop_output(0.0) == "x"
    assert task.pop_output(0.0) is None
    assert task.is_empty()


def test_lane_wakes_once_per_empty_to_nonempty_transition() -> None:
    wakes: list[int] = []
    lane = Lane(capacity=3, wake=lambda: wakes.append(1))
    assert lane.push("a")
    assert lane.push("b")
    assert lane.push("c")
    assert not lane.push("d")  # full: refused
    lane.push_force("e")  # the safe push goes past the bound
    assert len(wakes) == 1
    assert [lane.q.popleft() for _ in range(len(lane))] == ["a", "b", "c", "e"]
    assert lane.push("f")
    assert len(wakes) == 2


def test_lane_room_callbacks_fire_when_room_comes_back() -> None:
    lane = Lane(capacity=1, wake=lambda: None)
    assert not lane.on_room(lambda: None)  # room now: nothing registered
    lane.push("x")
    fired = threading.Event()
    assert lane.on_room(fired.set)
    lane.q.popleft()
    lane.notify_room()
    assert fired.is_set()


def test_lane_under_two_threads_loses_nothing() -> None:
    """One producer thread, one consumer thread, a wake per transition: all arrive."""
    wake = threading.Event()
    lane = Lane(capacity=1 << 30, wake=wake.set)
    n = 100_000
    got: list[int] = []

    def consume() -> None:
        while len(got) < n:
            assert wake.wait(5.0), "a wake-up was lost"
            wake.clear()
            while lane.q:
                got.append(lane.q.popleft())

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(n):
        lane.push(i)
    consumer.join(10.0)
    assert got == list(range(n))


def test_bus_hub_registers_first_and_removes_last() -> None:
    hub = BusHub()
    hub.register("c", 1)
    hub.register("c", 0)
    hub.register("c", 1)  # duplicate ignored
    assert hub.workers("c") == (0, 1)
    hub.unregister("c", 1)
    assert hub.workers("c") == (0,)
    hub.unregister("c", 0)
    assert hub.workers("c") == ()
    assert hub.channels() == 0
