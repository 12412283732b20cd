"""DeadlineHeap and LocalSubscriptions: the pure pieces the worker core is built from."""

from __future__ import annotations

from sansio_aio.lowlevel import BusHub, DeadlineHeap, LocalSubscriptions


class Owner:
    def __init__(self, name: str) -> None:
        self.name = name
        self.alive = True
        self.deadline: float | None = None

    def __repr__(self) -> str:
        return self.name


def test_set_asks_to_arm_only_for_an_earlier_deadline() -> None:
    heap: DeadlineHeap[Owner] = DeadlineHeap()
    a, b = Owner("a"), Owner("b")
    assert heap.set(a, 10.0, live=2) == 10.0
    assert heap.set(b, 12.0, live=2) is None  # later than what is armed
    assert heap.set(b, 5.0, live=2) == 5.0
    assert heap.set(b, 5.0, live=2) is None  # unchanged
    assert heap.earliest() == 5.0


def test_pop_due_takes_live_due_owners_once_and_clears_their_deadline() -> None:
    heap: DeadlineHeap[Owner] = DeadlineHeap()
    a, b, c = Owner("a"), Owner("b"), Owner("c")
    heap.set(a, 1.0, live=3)
    heap.set(b, 2.0, live=3)
    heap.set(c, 9.0, live=3)
    b.alive = False  # ended: its entry is stale
    assert heap.pop_due(5.0) == [a]
    assert a.deadline is None
    assert heap.rearm() == 9.0
    assert heap.pop_due(5.0) == []


def test_a_moved_deadline_leaves_a_stale_entry_that_never_fires() -> None:
    heap: DeadlineHeap[Owner] = DeadlineHeap()
    a = Owner("a")
    heap.set(a, 1.0, live=1)
    heap.set(a, 3.0, live=1)
    assert heap.pop_due(2.0) == []  # the entry for 1.0 is stale
    assert heap.pop_due(3.0) == [a]


def test_sliding_deadlines_are_compacted() -> None:
    heap: DeadlineHeap[Owner] = DeadlineHeap()
    owners = [Owner(str(i)) for i in range(4)]
    for step in range(10_000):
        owner = owners[step % 4]
        heap.set(owner, 100.0 + step, live=4)
    assert len(heap) <= 64 + 2 * 4 + 1
    assert heap.earliest() == 100.0 + 10_000 - 4


def test_local_subscriptions_register_the_worker_once_per_channel() -> None:
    hub = BusHub()
    subs: LocalSubscriptions[str] = LocalSubscriptions(hub, worker=3)
    subs.subscribe("a", "news")
    subs.subscribe("b", "news")
    subs.subscribe("a", "news")  # a duplicate is ignored
    assert subs.subscribers("news") == ["a", "b"]
    assert hub.workers("news") == (3,)
    subs.unsubscribe("a", "news")
    assert hub.workers("news") == (3,)
    subs.drop("b")  # the last subscriber ends: the worker leaves the channel
    assert subs.subscribers("news") == []
    assert hub.workers("news") == ()
    subs.unsubscribe("b", "news")  # no-op
    subs.drop("nobody")  # no-op


def test_subscribers_is_a_copy_safe_to_iterate_while_feeding() -> None:
    subs: LocalSubscriptions[str] = LocalSubscriptions(BusHub(), worker=0)
    subs.subscribe("a", "c")
    for sub in subs.subscribers("c"):
        subs.drop(sub)
    assert subs.subscribers("c") == []
