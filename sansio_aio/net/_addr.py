"""Address checks and small helpers shared by the I/O drivers (no asyncio, no sockets).

The real drivers (``_udp``, ``_tcp``, ``_tun``) and the simulated ones in
``sansio_aio.testing`` use the same rules, from here: an address is a tuple of IP
literals (never a name to resolve), a slot lookup never fails on a task's bad output,
and a socket error becomes a short message.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

from .._errors import ConfigError
from ._events import Address

__all__ = ["check_address", "check_buffer_limits", "describe", "lookup_slot"]


def check_address(addr: Any) -> tuple[socket.AddressFamily, Address]:
    """Validate a socket address of IP literals; return ``(family, addr)``.

    Accepts ``(host, port)`` and, for IPv6, ``(host, port, flowinfo, scope_id)``;
    ``""`` means every IPv4 address. Raises :class:`~sansio_aio.ConfigError` (a
    ``ValueError``) with a clear message for anything else, host names included (the
    drivers never resolve names).
    """
    if not isinstance(addr, tuple) or len(addr) not in (2, 4):
        raise ConfigError(f"address must be a (host, port) tuple, got {addr!r}")
    host, port = addr[0], addr[1]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an int in 0..65535, got {port!r}")
    if not isinstance(host, str):
        raise ConfigError(f"host must be a str IP address, got {host!r}")
    if host == "":
        if len(addr) != 2:
            raise ConfigError(f"'' (any IPv4 address) takes (host, port), got {addr!r}")
        return socket.AF_INET, ("", port)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"host {host!r} is not an IP address (the drivers never resolve names)"
        ) from None
    if ip.version == 4:
        if len(addr) != 2:
            raise ConfigError(f"an IPv4 address takes (host, port), got {addr!r}")
        return socket.AF_INET, (host, port)
    return socket.AF_INET6, addr


def check_buffer_limits(high: int, low: int, max_buffer: int) -> None:
    """The TCP drivers' write-buffer bounds: ``0 <= low <= high <= max_buffer`` (bytes)."""
    if not 0 <= low <= high <= max_buffer:
        raise ConfigError(
            f"need 0 <= low <= high <= max_buffer, got low={low} high={high} "
            f"max_buffer={max_buffer}"
        )


def describe(exc: BaseException) -> str:
    """A short message for an exception from a socket call."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})" if exc.errno else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def lookup_slot(table: Mapping[int, Any], slot: Any) -> Any:
    """``table.get(slot)``, ``None`` for an unhashable slot (a task's bad output)."""
    try:
        return table.get(slot)
    except TypeError:
        return None
