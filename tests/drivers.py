"""Small drivers shared by the review tests (start/close bookkeeping, a failing start)."""

from __future__ import annotations

from typing import Any, ClassVar

from sansio_aio import Driver, DriverContext, TaskRef


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
