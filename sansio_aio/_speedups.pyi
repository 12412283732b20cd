"""Types of the optional C module ``_speedups.c`` (see its theory of operation)."""

from collections.abc import Callable, Sequence
from typing import Any

MAX_BATCH: int
RECV_SIZE: int

def recvmmsg(
    fd: int, count: int, make: Callable[..., Any] | None = ..., slot: Any = ..., /
) -> list[Any]: ...
def sendmmsg(fd: int, family: int, items: Sequence[Any], start: int, /) -> int: ...
def readmany(
    fd: int, count: int, size: int, make: Callable[..., Any] | None = ..., slot: Any = ..., /
) -> list[Any]: ...
def maker(cls: type, fields: tuple[str, ...], /) -> Callable[..., Any]: ...
