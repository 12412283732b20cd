"""The command-line WHIP/WHEP client: ``python -m sansio_aio.webrtc.client --help``.

A script, not a namespace: import the client's functions from ``sansio_aio.webrtc``.
"""

from __future__ import annotations

import sys

__all__: list[str] = []

if __name__ == "__main__":
    from ._client import main

    sys.exit(main())
