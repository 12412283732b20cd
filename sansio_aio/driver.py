"""The interface for writing I/O drivers.

A driver lives on one worker's event loop, turns the task outputs it declares into I/O
and feeds the results back as task inputs. ``sansio_aio.net`` holds the built-in ones.
"""

from __future__ import annotations

from ._driver import Driver as Driver
from ._driver import DriverContext as DriverContext
from ._driver import DriverFactory as DriverFactory

__all__ = ["Driver", "DriverContext", "DriverFactory"]
