"""The exceptions of ``sansio_aio.testing``.

A harness raises :class:`ProtocolViolation` (an ``AssertionError``, so pytest shows it as a
failed check) when a task breaks the task protocol, :class:`TaskCrashed` when a task
method raised under :class:`~sansio_aio.testing.TaskHarness`, and
:class:`SimulationStalled` when a test waits for something the simulation can never
produce (nothing left to run, or the simulated-time budget is spent).
"""

from __future__ import annotations

from .._errors import SansioAioError

__all__ = ["HarnessError", "ProtocolViolation", "SimulationStalled", "TaskCrashed"]


class HarnessError(SansioAioError):
    """Base class of the errors raised by the test harness."""


class ProtocolViolation(HarnessError, AssertionError):
    """A task broke the task protocol.

    Examples: ``pop_output`` returned an output after it had returned ``None`` (an output
    stranded until the next input), ``pop_output`` never returned ``None``, a deadline in
    the past, a task asking to be woken again at the instant it was just woken.

    Attributes:
        task: a description of the task (its reference or class name).
        now: the simulated time of the violation.
    """

    def __init__(self, message: str, *, task: str = "", now: float | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.now = now


class TaskCrashed(ProtocolViolation):
    """A task method raised under :class:`~sansio_aio.testing.TaskHarness`.

    The original exception is the ``__cause__``; ``call`` names the method and input.
    """

    def __init__(self, message: str, *, task: str = "", now: float | None = None, call: str = ""):
        super().__init__(message, task=task, now=now)
        self.call = call


class SimulationStalled(HarnessError, AssertionError):
    """A wait cannot finish: nothing is scheduled, or the simulated-time budget ran out."""
