"""Small tasks shared by the test modules (pure: no I/O, no asyncio).

A task used by one module only stays in that module. ``KINDS`` registers the core
runtime tests' tasks under their kind names.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sansio_aio import (
    Broadcast,
    BroadcastMessage,
    BusMessage,
    Ext,
    ExtOut,
    Publish,
    Reply,
    Request,
    Spawn,
    Spawned,
    Subscribe,
    Task,
    Unsubscribe,
)
from tests.drivers import Poke, Poked


class Echo(Task):
    """Echoes application messages; answers requests; obeys a few commands.

    * ``("spin", seconds)``: busy-loop (keeps the worker thread busy);
    * ``("raise", text)``: raise ``ValueError(text)``;
    * ``("emit", [a, b, ...])``: emit each item as ``ExtOut``;
    * requests ``("double", x)`` -> ``2 * x``; ``"raise"`` -> raise; ``"ignore"`` -> no reply.
    """

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            msg = event.msg
            if isinstance(msg, tuple) and msg and msg[0] == "spin":
                started = msg[2] if len(msg) > 2 else None
                if started is not None:
                    started.set()
                end = time.perf_counter() + msg[1]
                while time.perf_counter() < end:
                    pass
                self.emit(ExtOut(("spun", msg[1])))
            elif isinstance(msg, tuple) and msg and msg[0] == "raise":
                raise ValueError(msg[1])
            elif isinstance(msg, tuple) and msg and msg[0] == "emit":
                for item in msg[1]:
                    self.emit(ExtOut(item))
            else:
                self.emit(ExtOut(msg))
        elif type(event) is Request:
            msg = event.msg
            if msg == "raise":
                raise RuntimeError("asked to fail")
            if msg == "ignore":
                return
            if msg == "end":
                self.closing = True
                return
            if isinstance(msg, tuple) and msg[0] == "double":
                self.emit(Reply(event.id, 2 * msg[1]))
            else:
                self.emit(Reply(event.id, msg))


class Recorder(Task):
    """Logs every call the runtime makes, to check the drain rule."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.log: list[str] = []
        self.emit(ExtOut("hello from the constructor"))

    def on_tick(self, now: float) -> None:
        self.log.append("on_tick")

    def on_event(self, now: float, event: Any) -> None:
        self.log.append("on_event")
        if type(event) is Request:
            self.emit(Reply(event.id, list(self.log)))
            self.log.clear()
        else:
            self.emit(ExtOut(1))
            self.emit(ExtOut(2))

    def pop_output(self, now: float) -> Any | None:
        out = super().pop_output(now)
        self.log.append("None" if out is None else "pop")
        return out


class Ticker(Task):
    """Reports every tick's ``now``; optionally asks for a wake-up ``delay`` after start."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.delay: float | None = cfg
        self.wake_at: float | None = None
        self.started: float | None = None

    def on_tick(self, now: float) -> None:
        if self.wake_at is not None and now >= self.wake_at:
            self.emit(ExtOut(("woke", now, self.wake_at)))
            self.wake_at = None
        else:
            self.emit(ExtOut(("tick", now)))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext and event.msg == "arm" and self.delay is not None:
            self.wake_at = now + self.delay
            self.emit(ExtOut(("armed", self.wake_at)))

    def next_deadline(self) -> float | None:
        return self.wake_at


class Subscriber(Task):
    """Subscribes to ``cfg`` (twice, to check duplicates are ignored) and reports messages."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(Subscribe(cfg))
        self.emit(Subscribe(cfg))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BusMessage:
            self.emit(ExtOut((event.channel, event.source, event.msg)))
        elif type(event) is Ext and event.msg == "unsubscribe":
            self.emit(Unsubscribe(self.cfg))
            self.emit(ExtOut("unsubscribed"))
        elif type(event) is Ext and event.msg == "quit":
            self.closing = True  # ends without unsubscribing: the runtime cleans up


class Publisher(Task):
    """On ``("publish", channel, n, safe)`` publishes 0..n-1 on ``channel``."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            _, channel, n, safe = event.msg
            for i in range(n):
                self.emit(Publish(channel, i, safe))
            self.emit(ExtOut(("published", n)))


class Host(Task):
    """A worker host: reports its worker id, echoes worker messages, relays broadcasts."""

    def __init__(self, worker: int) -> None:
        super().__init__(worker)
        self.worker = worker
        self.emit(ExtOut(("host", worker, threading.get_ident())))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            if event.msg == "broadcast":
                self.emit(Broadcast(("hello from", self.worker)))
            else:
                self.emit(ExtOut(("worker-msg", self.worker, event.msg)))
        elif type(event) is BroadcastMessage:
            self.emit(ExtOut(("bcast", self.worker, event.source, event.msg)))
        elif type(event) is Request:
            self.emit(Reply(event.id, ("host", self.worker, event.msg)))


class Parent(Task):
    """Spawns ``cfg`` children through the controller and reports where they went."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        for i in range(cfg or 0):
            self.emit(Spawn("echo", None, tag=i))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Spawned:
            self.emit(ExtOut(("spawned", event.tag, event.ref, event.error)))
        elif type(event) is Ext:
            self.emit(Spawn(event.msg, None, tag="bad"))


class Graceful(Task):
    """Says goodbye on shutdown, then is empty."""

    def on_shutdown(self, now: float) -> None:
        super().on_shutdown(now)
        self.emit(ExtOut("bye"))


class Stuck(Task):
    """Never becomes empty (to test the shutdown timeout)."""

    def is_empty(self) -> bool:
        return False


class Finite(Task):
    """Emits ``cfg`` outputs from its constructor, then is empty: ends by itself."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        for i in range(cfg or 0):
            self.emit(ExtOut(i))
        self.closing = True


class BadDeadline(Task):
    """Its ``next_deadline`` returns nonsense once told to."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.bad: Any = None

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            self.bad = event.msg

    def next_deadline(self) -> Any:
        if self.bad == "raise":
            raise RuntimeError("no idea when")
        return self.bad


class TaggedSubscriber(Task):
    """Subscribes to ``cfg`` once; reports bus messages as ``("bus", msg)`` and
    application messages as ``("ext", msg)`` (to see their order)."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(Subscribe(cfg))

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is BusMessage:
            self.emit(ExtOut(("bus", event.msg)))
        elif type(event) is Ext:
            self.emit(ExtOut(("ext", event.msg)))


class PubThenEnd(Task):
    """On ("end", ch): publish on ch, then end. On ("raise", ch): publish, then raise."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            what, ch = event.msg
            self.emit(Publish(ch, what))
            if what == "raise":
                self._boom = True
            else:
                self.closing = True

    def pop_output(self, now: float) -> Any | None:
        out = super().pop_output(now)
        if out is None and getattr(self, "_boom", False):
            raise RuntimeError("boom after publishing")
        return out


class Poker(Task):
    """On "go": a control message, an output, then a synchronous driver delivery
    (``Poke``, answered with ``Poked`` by ``tests.drivers.SyncDriver``); echoes the rest."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Ext:
            msg = event.msg
            if msg == "go":
                self.emit(Reply(-1, None))  # a control message: the buffer is "mixed"
                self.emit(ExtOut("a"))
                self.emit(Poke("b"))
            else:
                self.emit(ExtOut(msg))
        elif type(event) is Poked:
            self.emit(ExtOut(event.what))


class Instant(Task):
    """Emits one output from its constructor and is empty at once."""

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        self.emit(ExtOut("born"))
        self.closing = True


class Silent(Task):
    """Never replies; a request ("end") ends it."""

    def on_event(self, now: float, event: Any) -> None:
        if type(event) is Request and event.msg == "end":
            self.closing = True


class OutputProbe(Task):
    """Emits the outputs the test sends (a list); reports every other input as ExtOut.

    ``"end"`` ends it; requests are answered with their own message."""

    def on_event(self, now: float, event: Any) -> None:
        if isinstance(event, Ext):
            if event.msg == "end":
                self.closing = True
                return
            for out in event.msg:
                self.emit(out)
        elif isinstance(event, Request):
            self.emit(Reply(event.id, event.msg))
        else:
            self.emit(ExtOut(event))


KINDS = {
    "echo": Echo,
    "recorder": Recorder,
    "ticker": Ticker,
    "sub": Subscriber,
    "pub": Publisher,
    "parent": Parent,
    "graceful": Graceful,
    "stuck": Stuck,
    "finite": Finite,
    "bad_deadline": BadDeadline,
}
"""The core runtime tests' registry of kinds."""
