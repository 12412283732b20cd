"""A cluster node keeps a room's lease while the room waits for a new publisher.

One node (the ``serve`` fixture with ``cluster=``) and a real Redis: the publisher of a
room with a viewer DELETEs, and the room keeps its viewer for ``publisher_grace``; its
lease stays held all that time (a new publisher of the room, on any node, is sent
here), a new publisher within the grace takes the room over, and once a grace passes
with none the viewer ends and the lease is released. The sessions are real aiortc
offers whose peers never connect: the lease follows the room's sessions, not media.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from yarl import URL

from sansio_aio.testing import LoopThread
from tests.webrtc.redis_server import RedisServer, need_redis
from tests.webrtc.support import ServeFactory, make_offer, until

TOKEN = "grace-operator-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"}
GRACE = 2.0

pytestmark = pytest.mark.slow


async def test_the_lease_is_kept_through_the_publisher_grace(
    serve: ServeFactory, peers: LoopThread
) -> None:
    need_redis()
    with RedisServer() as redis:
        config = {
            "cluster": redis.url,
            "node_url": "http://127.0.0.1:1",
            "node_id": "here",
            "cluster_heartbeat": 0.2,
            "cluster_node_ttl": 1.0,
            "cluster_lease_ttl": 1.5,
            "tokens": (TOKEN,),
            "publisher_grace": GRACE,
        }
        async with serve(workers=1, **config) as s, aiohttp.ClientSession() as http:
            router = s.server.router
            assert router is not None
            held = router.directory.held

            async def post(role: str) -> str:
                offer = await make_offer(peers, role)
                async with http.post(f"{s.url}/{role}/g", data=offer, headers=HEADERS) as r:
                    assert r.status == 201, await r.text()
                    # Location is on node_url (unreachable here): the same path on s.url
                    return f"{s.url}/session/{URL(r.headers['Location']).name}"

            async def delete(location: str) -> int:
                async with http.delete(location, headers=HEADERS) as r:
                    return r.status

            publisher = await post("whip")
            viewer = await post("whep")
            viewer_id = viewer.rsplit("/", 1)[1]
            assert "g" in held()
            assert await delete(publisher) == 200
            # the viewer waits for a new publisher, and the room's lease stays here
            assert viewer_id in s.server.sessions and "g" in held()
            snap = await s.server.snapshot()
            assert snap["rooms"]["g"]["grace_left"] is not None
            second = await post("whip")  # within the grace: it takes the room over
            assert "g" in held()
            assert await delete(second) == 200
            left = time.monotonic()
            assert "g" in held() and viewer_id in s.server.sessions
            # no publisher this time: the grace passes, the viewer ends, the lease goes
            assert await until(lambda: "g" not in held(), GRACE + 5.0)
            waited = time.monotonic() - left
            assert waited >= GRACE - 0.3, f"released after {waited:.2f} s, before the grace"
            assert viewer_id not in s.server.sessions
            assert await router.directory.lookup("g") is None  # gone from Redis too
