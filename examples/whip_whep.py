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

import sys

# The server itself is the package's command line (``python -m sansio_aio.webrtc``,
# ``sansio-whip``): this script runs the same code from a checkout.
from sansio_aio.webrtc.__main__ import main, serve

__all__ = ["main", "serve"]

if __name__ == "__main__":
    sys.exit(main())
