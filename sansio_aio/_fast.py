"""Which datagram paths are compiled: the optional C speedups, or the pure-Python loops.

Theory of operation
-------------------
``sansio_aio._speedups`` (``_speedups.c``) batches the system calls of the UDP and TUN
drivers: ``recvmmsg``/``sendmmsg`` for UDP sockets, a read loop for TUN devices. It is
built by ``pip install`` when a C compiler is there; without it, or with the environment
variable ``SANSIO_AIO_PURE=1`` set when sansio_aio is imported, the drivers run their
pure-Python loops, which behave the same (the test suite runs both). :data:`speedups` is
the module or None; :func:`compiled` says which path is in use (also in the worker stats
as ``udp_compiled``/``tun_compiled``).

:func:`constructor` gives the runtime a cheaper way to build the events it makes per
packet or message (``UdpPacket``, ``TunPacket``, ``Ext``, ``TaskOutput``): the C module's
``maker`` fills the slots of the new object directly instead of running the generated
``__init__`` (which does nothing else); the objects are the same class, equal, and
behave the same. Pure mode gets the class itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["compiled", "constructor", "speedups"]

T = TypeVar("T")


def _load() -> ModuleType | None:
    if os.environ.get("SANSIO_AIO_PURE", "") not in ("", "0"):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


#: The compiled module, or None (not built, or ``SANSIO_AIO_PURE=1``).
speedups: ModuleType | None = _load()


def compiled() -> bool:
    """True when the drivers use the compiled datagram paths."""
    return speedups is not None


_makers: dict[type, Callable[..., Any]] = {}


def constructor(cls: type[T]) -> Callable[..., T]:
    """A positional constructor of ``cls`` (a slotted dataclass of sansio_aio's own):
    the C ``maker`` when compiled and ``cls`` qualifies, else ``cls`` itself."""
    if speedups is None:
        return cls
    made = _makers.get(cls)
    if made is None:
        made = cls
        params = getattr(cls, "__dataclass_params__", None)
        if params is not None and params.init and "__slots__" in cls.__dict__:
            fields = dataclasses.fields(cls)  # type: ignore[arg-type]
            # the generated __init__ only assigns: no __post_init__, no InitVar or
            # ClassVar pseudo-fields, every field an __init__ argument
            plain = all(f.init and f._field_type is dataclasses._FIELD for f in fields)  # type: ignore[attr-defined]
            if plain and not hasattr(cls, "__post_init__"):
                made = speedups.maker(cls, tuple(f.name for f in fields))
        _makers[cls] = made
    return made
