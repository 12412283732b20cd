"""Start and stop the whole WHIP/WHEP server: runtime, aiortc driver, HTTP site.

:func:`open_server` is the one entry point (``examples/whip_whep.py`` and the tests use
it): it reads the stream keys file (before anything starts: a bad file is a
:class:`~sansio_aio.ConfigError`), builds a :class:`~sansio_aio.Runtime` with the
``"room"`` task kind and one :class:`~sansio_aio.webrtc._driver.WebRtcDriver` per
worker, puts a :class:`~sansio_aio.webrtc._server.WhipServer` on the application's
loop, and serves it with aiohttp's ``AppRunner`` (``handle_signals=False``: it may run
off the main thread) behind a :class:`~sansio_aio.webrtc._httpguard.ConnectionGuard`:
the listening sockets are made here with ``loop.create_server`` (not aiohttp's sites), so
every connection passes the guard's caps and timer. Teardown runs in reverse order:
stop listening, aiohttp's graceful shutdown, abort what is left, stop the server.

With ``config.cluster`` it also starts this node's
:class:`~sansio_aio.webrtc._cluster.Directory` (Redis) and a
:class:`~sansio_aio.webrtc._router.ClusterRouter` (with an
:class:`~sansio_aio.webrtc._edge.EdgeManager` for ``cascade``) before the server
listens, and at exit ends the edges and leaves the directory (releasing its rooms).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web

from .._runtime import Runtime
from ._config import ServerConfig, resolve_interfaces, with_keys_file
from ._driver import WebRtcDriver
from ._httpguard import ConnectionGuard, close_servers, handler_args, listen, server_urls
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
    config = with_keys_file(config)
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

        def aiohttp_protocol() -> asyncio.Protocol:
            handler = runner.server  # set by runner.setup(), before any connection
            assert handler is not None
            return handler()

        guard = ConnectionGuard(
            aiohttp_protocol,
            max_connections=config.max_connections,
            max_per_ip=config.max_connections_per_ip,
            header_timeout=config.header_timeout,
            counters=server.counters,
        )
        server.guard = guard
        directory = await _join_cluster(server) if config.cluster is not None else None
        app = server.app(middlewares=[guard.middleware])
        runner = web.AppRunner(app, handle_signals=False, **handler_args(config.header_timeout))
        await runner.setup()
        servers: list[asyncio.Server] = []
        try:
            servers = await listen(guard, config.host, config.port, socks)
            server.urls = server_urls(servers, config.prefix) or [
                f"http://{config.host}:{config.port}{config.prefix}"
            ]
            server.url = server.urls[0]
            yield server
        finally:
            for listening in servers:
                listening.close()  # accept nothing more
            await runner.cleanup()  # aiohttp's graceful shutdown of its connections
            guard.abort_all()  # and whatever is left (a client not reading)
            await close_servers(servers)
            if server.router is not None:
                await server.router.close()
            if directory is not None:
                await directory.close()
            await server.close()


async def _join_cluster(server: WhipServer) -> Any:
    """Start this node's directory and router (``config.cluster`` is set)."""
    from ._cluster import Directory  # redis-py: only a cluster node needs it
    from ._edge import EdgeManager
    from ._router import ClusterRouter

    cfg = server.config
    assert cfg.cluster is not None and cfg.node_url is not None
    edges = None
    if cfg.cascade:
        edges = EdgeManager(
            server,
            token=cfg.tokens[0] if cfg.tokens else None,
            idle_timeout=cfg.edge_idle_timeout,
            silence_timeout=cfg.disconnected_timeout,
            # an origin is dead once its node entry expired; Redis down: no verdict
            alive=lambda node: not directory.up or any(n.id == node for n in directory.nodes()),
        )
    holder: list[ClusterRouter] = []
    directory = Directory(
        cfg.cluster,
        cfg.node_id or node_id_of(cfg.node_url),
        cfg.node_url,
        prefix=cfg.cluster_prefix,
        heartbeat=cfg.cluster_heartbeat,
        node_ttl=cfg.cluster_node_ttl,
        lease_ttl=cfg.cluster_lease_ttl,
        load=lambda: holder[0].load() if holder else {},
        on_lost=lambda room: holder[0].lost(room) if holder else None,
    )
    router = ClusterRouter(server, directory, cascade=cfg.cascade, edges=edges)
    holder.append(router)
    server.router = router
    await directory.start()
    return directory


def node_id_of(url: str) -> str:
    """A node id from its URL: ``http://10.0.0.5:8080`` -> ``10.0.0.5-8080``."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in rest).strip("-")[:64]
