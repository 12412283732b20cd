"""Small drivers shared by the tests: start/close bookkeeping, a failing start,
and a driver that answers synchronously from ``handle``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from sansio_aio import TaskRef
from sansio_aio.driver import Driver, DriverContext


class Recorded(Driver):
    """Records start/close per instance, class-wide."""

    output_types: ClassVar[tuple[type, ...]] = ()
    log: ClassVar[list[str]] = []

    def start(self, ctx: DriverContext) -> None:
        self.log.append(f"start {ctx.worker_id}")

    def handle(self, task: TaskRef, output: Any) -> None:
        pass

    def release(self, task: TaskRef) -> None:
        pass

    def close(self) -> None:
        self.log.append("close")


class FailsOnWorker1(Driver):
    output_types: ClassVar[tuple[type, ...]] = ()

    def start(self, ctx: DriverContext) -> None:
        if ctx.worker_id == 1:
            raise OSError("no such device")

    def handle(self, task: TaskRef, output: Any) -> None:
        pass

    def release(self, task: TaskRef) -> None:
        pass


@dataclass(frozen=True)
class Poke:
    what: Any


@dataclass(frozen=True)
class Poked:
    what: Any


class SyncDriver(Driver):
    """Delivers ``Poked`` synchronously from ``handle`` (as UdpBind does with UdpBound)."""

    output_types: ClassVar[tuple[type, ...]] = (Poke,)

    def start(self, ctx: DriverContext) -> None:
        self.ctx = ctx

    def handle(self, task: TaskRef, output: Any) -> None:
        self.ctx.deliver(task, Poked(output.what))

    def release(self, task: TaskRef) -> None:
        pass
