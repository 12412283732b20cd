"""WHIP/WHEP server on aiortc, driven by sansio_aio (``make run``).

    python examples/whip_whep.py                    # http://127.0.0.1:8080/
    python examples/whip_whep.py --port 9000 --workers 4 --token secret
    python examples/whip_whep.py --workers 2 --mode process   # rooms on two cores
    WHIP_TOKENS=op-secret python examples/whip_whep.py --keys-file keys.txt  # ROOM=KEY lines
    WHIP_PORT=9000 WHIP_ICE_SERVERS=stun:stun.example.org:3478 python examples/whip_whep.py
    WHIP_CLUSTER=redis://10.0.0.9:6379/0 python examples/whip_whep.py --host 10.0.0.1 \
        --node-url http://10.0.0.1:8080 --cascade on     # one node of a cluster (docs/cluster.md)

Open the printed URL in a browser on the same machine: ``/publish`` sends the camera
(or a generated test pattern), ``/view`` watches a room, ``/dashboard`` shows the rooms,
each session's bitrates, loss, jitter and RTT, and the workers' load. A publisher that
restarts within ``--publisher-grace`` seconds (default 5) keeps its viewers. From a
command line::

    python -m sansio_aio.webrtc.client publish http://127.0.0.1:8080/whip/demo
    python -m sansio_aio.webrtc.client view http://127.0.0.1:8080/whep/demo --frames 100

Every flag has a ``WHIP_*`` environment variable (``--help`` lists them); secrets are
better given that way (``WHIP_TOKENS``, ``WHIP_KEYS``, ``WHIP_METRICS_TOKEN``) or in a
``--keys-file`` than as flags, which other users of the machine can read in the process
list. The server stops on SIGINT/SIGTERM, or after ``--seconds``, and prints a summary
line.
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


async def serve(argv: list[str]) -> int:
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


def main() -> int:
    return asyncio.run(serve(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
