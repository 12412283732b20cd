"""The WHIP/WHEP server: ``python -m sansio_aio.webrtc`` (or the ``sansio-whip`` script).

    python -m sansio_aio.webrtc                      # http://127.0.0.1:8080/
    python -m sansio_aio.webrtc --port 9000 --workers 4 --token secret
    sansio-whip --workers 2 --mode process           # rooms on two cores
    sansio-whip --help                               # every flag and its WHIP_* variable

Starts :func:`open_server` with the configuration of :func:`parse_args` (flags and
``WHIP_*`` environment variables), prints the page URLs, serves until SIGINT/SIGTERM (or
``--seconds``) and prints a summary line. ``examples/whip_whep.py`` (``make run``) runs
this same code. Needs the ``webrtc`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
import time

from sansio_aio.webrtc import open_server, parse_args

__all__ = ["main", "serve"]


async def serve(argv: list[str]) -> int:
    """Run the server with the command-line arguments ``argv``; returns the exit status."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--seconds", type=float, default=0.0)
    pre.add_argument("--log-level", default="WARNING")
    known, rest = pre.parse_known_args(argv)
    logging.basicConfig(level=known.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    config = parse_args(rest)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    async with open_server(config) as server:
        url = server.url
        kind = "processes" if config.mode == "process" else "threads"
        print(
            f"WHIP/WHEP server on {url}/  (workers={config.workers} {kind}, "
            f"backend={server.rt.backend_name})",
            flush=True,
        )
        print(f"  publish: {url}/publish   view: {url}/view   stats: {url}/stats", flush=True)
        print(f"  dashboard: {url}/dashboard   (a token goes in #token=...)", flush=True)
        print(
            f"  WHIP endpoint: POST {url}/whip/ROOM   WHEP endpoint: POST {url}/whep/ROOM",
            flush=True,
        )
        if not server.auth.publish_guarded and not _loopback(config.host):
            print(
                "  warning: anyone who reaches this address may publish "
                "(use --key, --keys-file, --token or --auth-webhook)",
                flush=True,
            )
        if known.seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), known.seconds)
        else:
            await stop.wait()
        counters = dict(server.counters)
    took = time.monotonic() - started
    print(
        f"summary: served {took:.1f} s, sessions created={counters['created']} "
        f"refused={counters['refused']} deleted={counters['deleted']} ended={counters['ended']}",
        flush=True,
    )
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    """The command line: ``serve(sys.argv[1:])`` on a new event loop."""
    return asyncio.run(serve(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
