"""Addresses on the simulated network, shared by the simulated UDP and TCP drivers.

Theory of operation
-------------------
The simulated drivers accept exactly the addresses the real drivers accept: they
validate with the real :func:`sansio_aio.net._udp.check_address` (IP literals only, never
a name to resolve), then key their tables by a canonical host text (``ipaddress``'s
compressed form, so ``"::1"`` and ``"0:0::1"`` are one host) and the IP version.
Wildcard hosts (``""``/``"0.0.0.0"``, ``"::"``) receive what no specific bind takes;
a socket bound to a wildcard sends from the loopback address for a loopback
destination (the kernel's choice) and from ``127.0.0.1``/``::1`` otherwise. Sockets
report addresses as the ``socket`` module does: ``(host, port)`` for IPv4,
``(host, port, 0, 0)`` for IPv6. This module imports no asyncio.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ...net._addr import check_address
from ...net._events import Address

__all__ = ["ANY", "checked", "is_loopback", "norm", "sockaddr", "source_host"]

#: The wildcard host of each IP version.
ANY = {4: "0.0.0.0", 6: "::"}
_LOOPBACK = {4: "127.0.0.1", 6: "::1"}
_CHECKED: dict[Any, tuple[tuple[Any, ...], str, int]] = {}


def norm(host: str) -> tuple[str, int]:
    """Canonical host text and IP version of a validated host (``""`` is IPv4 any)."""
    if host == "":
        return ANY[4], 4
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    return ip.compressed, ip.version


def checked(addr: Any) -> tuple[tuple[Any, ...], str, int]:
    """``check_address`` then :func:`norm`: ``(address, host, version)``, memoised.

    Addresses repeat on the per-packet path; the cache is bounded. Raises
    ``ValueError``/``TypeError`` exactly as ``check_address`` does.
    """
    try:
        hit = _CHECKED.get(addr)
    except TypeError:  # unhashable: not an address tuple anyway
        hit = None
    if hit is not None:
        return hit
    _, valid = check_address(addr)
    host, version = norm(valid[0])
    result = (valid, host, version)
    if len(_CHECKED) >= 4096:
        _CHECKED.clear()
    _CHECKED[addr] = result
    return result


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (canonical text)."""
    return host.startswith("127.") or host == "::1"


def source_host(bound: str, dest: str, version: int) -> str:
    """The source host of a datagram from a socket bound to ``bound`` towards ``dest``."""
    if bound != ANY[version]:
        return bound
    return dest if is_loopback(dest) else _LOOPBACK[version]


def sockaddr(host: str, port: int, version: int) -> Address:
    """The address as the ``socket`` module reports it."""
    return (host, port) if version == 4 else (host, port, 0, 0)
