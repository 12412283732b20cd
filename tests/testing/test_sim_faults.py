"""Faults drawn from the seed: hold/release, clogs, swizzle-clogging, partitions, crashes."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from sansio_aio import Task
from sansio_aio.testing import FakeClock, Faults, HarnessError, Sim, SimNetwork, SimRuntime

A, B, C = ("10.0.0.1", 1000), ("10.0.0.2", 2000), ("10.0.0.3", 3000)


def make_net(seed: int = 0, **link: Any) -> SimNetwork:
    net = SimNetwork(seed=seed, clock=FakeClock(autojump=True))
    net.set_default(**link)
    return net


def send(net: SimNetwork, src: Any, dst: Any, tag: Any, got: list[Any], **kw: Any) -> None:
    net.transmit(src, dst, 10, lambda: got.append((net.clock.now(), tag)), **kw)


def run_out(net: SimNetwork) -> None:
    while net.clock.step():
        pass


# ---------------------------------------------------------------------- hold and release


def test_a_hold_keeps_packets_until_released_in_arrival_order() -> None:
    net = make_net(latency=0.01, jitter=0.05)
    hold = net.hold([B])
    got: list[Any] = []
    etas = []
    for i in range(20):  # sent 10 ms apart; jitter reorders some of them
        net.clock.advance_to(i * 0.01)
        send(net, A, B, i, got)
        etas.append(net.trace.lines()[-1])
    net.clock.advance_to(1.0)
    assert got == [] and len(hold.held) == 20 and net.stats.held == 20
    would_have = [tag for _, tag in sorted((_eta(line), i) for i, line in enumerate(etas))]
    assert hold.release() == 20
    run_out(net)
    assert [tag for _, tag in got] == would_have  # the order they would have arrived in
    assert {t for t, _ in got} == {1.0}  # all at the release instant
    assert net.stats.lost == 0 and not hold.active and net.holds() == []
    assert hold.release() == 0  # idempotent


def _eta(line: str) -> float:
    return float(line.rsplit("eta=", 1)[1])


def test_a_hold_only_covers_its_link_and_direction() -> None:
    net = make_net(latency=0.01)
    hold = net.hold([A], [B], both_ways=False)
    got: list[Any] = []
    send(net, A, B, "a>b", got)
    send(net, B, A, "b>a", got)
    send(net, A, C, "a>c", got)
    run_out(net)
    assert [tag for _, tag in got] == ["b>a", "a>c"]
    assert hold.covers(A, B) and not hold.covers(B, A) and not hold.covers(A, C)
    assert "Hold" in repr(hold) and "held=1" in repr(hold)
    net.release()
    run_out(net)
    assert [tag for _, tag in got][-1] == "a>b"


def test_until_releases_by_itself() -> None:
    net = make_net(latency=0.01)
    net.hold([B], until=2.5)
    got: list[Any] = []
    send(net, A, B, 1, got)
    run_out(net)
    assert got == [(2.5, 1)]


def test_a_shuffled_release_keeps_each_stream_in_order() -> None:
    net = make_net(seed=3, latency=0.01)
    hold = net.hold([B], shuffle=True)
    got: list[Any] = []
    for i in range(30):
        send(net, A, B, ("dgram", i), got)
        send(net, A, B, ("s1", i), got, stream="s1")
        send(net, C, B, ("s2", i), got, stream="s2")
    run_out(net)
    assert len(hold.held) == 90
    hold.release()
    run_out(net)
    tags = [tag for _, tag in got]
    assert len(tags) == 90
    dgrams = [i for kind, i in tags if kind == "dgram"]
    assert sorted(dgrams) == list(range(30)) and dgrams != list(range(30))  # shuffled
    for stream in ("s1", "s2"):
        assert [i for kind, i in tags if kind == stream] == list(range(30))  # in order
    assert tags[:30] != [t for t in tags if t[0] == "dgram"][:30]  # streams interleaved


def test_released_packets_meet_partitions_and_other_holds() -> None:
    net = make_net(latency=0.01)
    first, second = net.hold([A]), net.hold([B])
    got: list[Any] = []
    send(net, A, B, "dgram", got)
    send(net, A, B, "seg", got, stream="s")
    run_out(net)
    assert len(first.held) == 2 and not second.held  # the oldest hold keeps them
    first.release()
    run_out(net)
    assert got == [] and len(second.held) == 2  # still clogged at the other end
    net.partition([A])
    second.release()
    net.clock.advance(0.5)
    assert got == [] and net.stats.partitioned == 1  # the datagram is cut; TCP waits
    net.heal()
    run_out(net)
    assert [tag for _, tag in got] == ["seg"]


def test_a_hold_needs_a_side() -> None:
    with pytest.raises(HarnessError):
        make_net().hold([])


# ---------------------------------------------------------------------- clogs and swizzles


def test_clog_holds_a_host_for_a_while() -> None:
    net = make_net(latency=0.01)
    faults = Faults(net)
    plan = faults.clog("10.0.0.2", at=1.0, duration=2.0)
    assert plan.pending == 2 and "FaultPlan clog" in repr(plan)
    got: list[Any] = []
    for t in (0.5, 1.5, 2.5, 3.5):
        net.clock.call_at(t, send, net, A, B, t, got)
    run_out(net)
    assert got == [(0.51, 0.5), (3.0, 1.5), (3.0, 2.5), (3.51, 3.5)]
    assert [(e.at, e.action, e.target) for e in plan.events] == [
        (1.0, "clog", "10.0.0.2"),
        (3.0, "unclog", "10.0.0.2"),
    ]
    assert any(" fault clog 10.0.0.2" in line for line in net.trace.lines())
    assert faults.summary() == "clog 1, unclog 1" and plan.pending == 0


def test_clog_without_duration_lasts_until_cancelled() -> None:
    net = make_net(latency=0.01)
    plan = Faults(net).clog("10.0.0.2")
    got: list[Any] = []
    send(net, A, B, 1, got)
    net.clock.advance(5.0)
    assert got == [] and plan.pending == 0
    plan.cancel()  # lifts the clog: the packet arrives
    run_out(net)
    assert got == [(5.0, 1)] and plan.count("unclog") == 1
    plan.cancel()  # idempotent


def swizzle_run(seed: int) -> tuple[list[Any], list[Any], Any]:
    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    net = make_net(seed=seed, latency=0.01)
    plan = Faults(net).swizzle_clog(hosts, at=0.5, gap=0.5)
    got: list[Any] = []
    sent = []
    for k in range(60):  # every 0.05 s, a packet between two of the hosts, and a stream
        src, dst = (hosts[k % 4], 10), (hosts[(k + 1 + k // 4) % 4], 20)
        if src[0] == dst[0]:
            continue
        net.clock.call_at(k * 0.05, send, net, src, dst, (src[0], dst[0], k), got)
        seg = ("s", src[0], dst[0], k)
        net.clock.call_at(k * 0.05, partial(send, stream=(src, dst)), net, src, dst, seg, got)
        sent.append(k)
    run_out(net)
    assert net.stats.held > 0 and net.stats.lost == 0
    return got, sent, plan


def test_swizzle_clog_clogs_one_by_one_then_unclogs_in_random_order() -> None:
    orders = set()
    for seed in range(8):
        got, sent, plan = swizzle_run(seed)
        actions = [e.action for e in plan.events]
        n = len(actions) // 2
        assert n >= 1 and actions == ["clog"] * n + ["unclog"] * n  # all clogs first
        clogged = [e.target for e in plan.events[:n]]
        unclogged = [e.target for e in plan.events[n:]]
        assert sorted(clogged) == sorted(unclogged) and len(set(clogged)) == n
        times = [e.at for e in plan.events]
        assert times == sorted(times) and times[0] == 0.5
        assert times[-1] <= 0.5 + 2 * n * 0.5  # the documented bound
        orders.add((tuple(clogged) == tuple(unclogged), n))
        # everything arrives, each link in the order it was sent
        assert len(got) == 2 * len(sent)
        links: dict[Any, list[int]] = {}
        for _, tag in got:
            links.setdefault(tag[:-1], []).append(tag[-1])
        assert all(ks == sorted(ks) for ks in links.values())
    assert (False, 2) in orders or (False, 3) in orders or (False, 4) in orders
    assert swizzle_run(5)[2].events == swizzle_run(5)[2].events  # same seed, same swizzle


def test_swizzle_needs_hosts() -> None:
    with pytest.raises(HarnessError):
        Faults(make_net()).swizzle_clog([])


def test_partition_plan_cuts_and_heals() -> None:
    net = make_net(latency=0.01)
    plan = Faults(net).partition(["10.0.0.1"], at=1.0, duration=1.0)
    got: list[Any] = []
    for t in (0.5, 1.5, 2.5):
        net.clock.call_at(t, send, net, A, B, t, got)
    run_out(net)
    assert [tag for _, tag in got] == [0.5, 2.5]
    assert [e.action for e in plan.events] == ["partition", "heal"]
    with pytest.raises(HarnessError):
        Faults(net).clog("x", at=0.0)  # in the past


# ---------------------------------------------------------------------- worker crashes


class Idle(Task):
    """Stays alive (a task per worker gives the crashes something to kill)."""


def crash_run(seed: int, **kwargs: Any) -> tuple[list[Any], list[int], SimRuntime]:
    sim = Sim(seed)
    rt = sim.runtime({"idle": Idle}, workers=3, restart="on-failure").start_now()
    for _ in range(3):
        rt.spawn_now("idle")
    plan = sim.faults.crash_workers(rt, **kwargs)
    down = []
    for _ in range(200):  # sample how many workers are down, every 50 ms
        rt.advance(0.05)
        down.append(3 - len(rt.workers_up()))
    rt.close()
    return [(e.at, e.target) for e in plan.events], down, rt


def test_crashes_follow_the_seed_and_the_cap() -> None:
    kills, down, rt = crash_run(4, rate=3.0, max_down=1)
    assert len(kills) > 10 and max(down) == 1  # ~3/s for 10 s, never two down at once
    assert crash_run(4, rate=3.0, max_down=1)[0] == kills  # same seed, same crashes
    assert crash_run(5, rate=3.0, max_down=1)[0] != kills
    assert sum(rt._restarts) == len(kills)  # each came back (restart="on-failure")
    assert any("fault kill w" in line for line in rt.trace.lines())


def test_crash_bounds() -> None:
    kills, _, _ = crash_run(4, rate=5.0, max_kills=3, workers=[1, 2])
    assert len(kills) == 3 and {w for _, w in kills} <= {"w1", "w2"}
    late, _, _ = crash_run(4, rate=5.0, at=5.0, until=6.0)
    assert late and all(5.0 <= t <= 6.0 for t, _ in late)
    _, down, _ = crash_run(4, rate=20.0)  # default cap: all but one worker
    assert max(down) <= 2
    sim = Sim(1)
    rt = sim.runtime({"idle": Idle}).start_now()
    with pytest.raises(HarnessError):
        sim.faults.crash_workers(rt, rate=0.0)
    with pytest.raises(HarnessError):
        sim.faults.crash_workers(rt, rate=1.0, workers=[3])
    with pytest.raises(HarnessError):
        sim.faults.crash_workers(SimRuntime({"idle": Idle}), rate=1.0)  # another clock
    rt.close()


async def test_crashes_stop_with_the_runtime() -> None:
    sim = Sim(2)
    async with sim.runtime({"idle": Idle}, workers=2, restart="on-failure") as rt:
        plan = sim.faults.crash_workers(rt, rate=1.0)
        rt.advance(5.0)
    kills = len(plan.events)
    sim.clock.advance(100.0)  # the runtime is closed: the plan does nothing more
    assert len(plan.events) == kills
