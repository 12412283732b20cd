"""Start and stop the whole WHIP/WHEP server: runtime, aiortc driver, HTTP site.

:func:`open_server` is the one entry point (``examples/whip_whep.py`` and the tests use
it): it builds a :class:`~sansio_aio.Runtime` with the ``"room"`` task kind and one
:class:`~sansio_aio.webrtc._driver.WebRtcDriver` per worker, puts a
:class:`~sansio_aio.webrtc._server.WhipServer` on the application's loop, serves it with
aiohttp's ``AppRunner`` (``handle_signals=False``: it may run off the main thread), and
tears everything down in reverse order.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web

from .._runtime import Runtime
from ._config import ServerConfig, resolve_interfaces
from ._driver import WebRtcDriver
from ._room import Room
from ._server import WhipServer

__all__ = ["open_server"]


@contextlib.asynccontextmanager
async def open_server(
    config: ServerConfig,
    *,
    socks: Sequence[socket.socket] = (),
    backend: Any = None,
) -> AsyncIterator[WhipServer]:
    """Start the runtime, the rooms' driver and the HTTP site; stop them on exit.

    Args:
        config: the server's configuration; it listens on ``config.host:config.port``
            (port 0: an ephemeral port, see ``server.urls``).
        socks: more listening sockets to serve the same app on (tests pass one made
            inside a private network namespace).
        backend: overrides ``config.backend`` (a backend name or a loop factory).
    """
    config = replace(config, ice_networks=resolve_interfaces(config.ice_networks))
    # a partial of the class, not a closure: it crosses to worker processes
    driver = functools.partial(
        WebRtcDriver,
        config.ice_servers,
        relay=config.relay,
        udp_port=config.udp_port,
        public_ip=config.public_ip,
        silence_timeout=config.disconnected_timeout,
    )
    rt = Runtime(
        {"room": Room},
        workers=config.workers,
        backend=backend if backend is not None else config.backend,
        drivers=[driver],
        name="whip",
        mode=config.mode,
        restart=config.restart,
    )
    async with rt:
        server = WhipServer(rt, config)
        server.start()
        runner = web.AppRunner(server.app(), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            sites: list[web.BaseSite] = [web.TCPSite(runner, config.host, config.port)]
            sites += [web.SockSite(runner, sock) for sock in socks]
            for site in sites:
                await site.start()
            server.urls = _site_urls(runner, config)
            server.url = server.urls[0]
            yield server
        finally:
            await runner.cleanup()
            await server.close()


def _site_urls(runner: web.AppRunner, config: ServerConfig) -> list[str]:
    urls = []
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            urls.append(f"http://{host}:{addr[1]}{config.prefix}")
    return urls or [f"http://{config.host}:{config.port}{config.prefix}"]
