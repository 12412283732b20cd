"""Statistics objects: frozen snapshots with current and peak values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import final

__all__ = ["RuntimeStats", "WorkerStats"]


@final
@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One worker's state, as of ``last_seen``.

    The worker refreshes it every ``stats_interval``; a worker whose thread is blocked
    stops refreshing, so ``age`` (seconds since ``last_seen``, computed by the
    controller when it hands the snapshot out) grows.
    """

    #: The worker's id.
    worker: int
    #: Tasks hosted (the host task not included).
    tasks: int
    #: CPU time of the worker thread / wall time over the last window, in [0, 1]: every
    #: piece of work on the worker's thread counts, libraries' coroutines on its loop too.
    utilisation: float
    #: Share of the window spent in the runtime's own callbacks (inbox, ticks, deadlines,
    #: driver callbacks wrapped with ``ctx.timed``), in [0, 1].
    runtime_busy: float
    #: How late the last periodic tick ran, in seconds.
    loop_lag: float
    #: Largest tick lateness seen in the last window, in seconds (every snapshot starts
    #: a new window, so the figure resets).
    loop_lag_max: float
    #: Messages waiting in the worker's inbox now (all lanes).
    inbox_depth: int
    #: Largest inbox batch seen by one wake-up since start.
    inbox_peak: int
    #: Inbox wake-ups since start (each carries a batch).
    wakeups: int
    #: Inputs fed to tasks since start.
    msgs_in: int
    #: ``ExtOut`` outputs sent to the application since start (replies not counted).
    msgs_out: int
    #: Bus messages and sends refused because a peer's inbox was full (non-safe sends).
    drops: int
    #: Inputs for tasks that no longer exist.
    orphans: int
    #: Tasks that ended by raising (their constructor included).
    failures: int
    #: Task outputs that no driver of the runtime handles (dropped; the first ten are
    #: logged with the driver to add).
    unrouted: int
    #: Periodic ticks run.
    ticks: int
    #: ``time.monotonic()`` of the snapshot.
    last_seen: float
    #: Seconds since ``last_seen`` when this object was handed out.
    age: float = 0.0
    #: Driver counters (name -> value), e.g. ``udp_tx_dropped``.
    drivers: Mapping[str, int] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Every worker's snapshot plus the controller's own counters."""

    #: The latest snapshot of each worker, by worker id (a worker that has not sent
    #: one yet is missing).
    workers: tuple[WorkerStats, ...]
    #: Tasks the controller placed per worker and not yet seen end (what spawn balances on).
    placed: tuple[int, ...]
    #: Application-bound events dropped because the event buffer was full.
    events_dropped: int
    #: Application events waiting to be read.
    events_pending: int
    #: Per worker, how many times its process was restarted (process mode).
    restarts: tuple[int, ...] = ()
    #: Commands between worker processes that the controller dropped: ``safe=False``
    #: bus sends whose receiving worker's inbox was full, and anything sent to a worker
    #: that is down (process mode; in thread mode the sending worker counts the former
    #: in ``WorkerStats.drops``).
    relay_drops: int = 0
