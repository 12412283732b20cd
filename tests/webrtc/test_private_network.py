"""The private network the WebRTC tests run in: isolated, and what aioice sees inside."""

from __future__ import annotations

import socket

from sansio_aio.testing import PrivateNetwork


def test_private_network_is_isolated(netns: PrivateNetwork) -> None:
    def probe() -> tuple[str, bool]:
        import subprocess

        routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only a route lookup, nothing is sent
            reachable = True
        except OSError:
            reachable = False
        finally:
            s.close()
        return routes, reachable

    routes, reachable = netns.run_inside(probe)
    assert "10.99.0.0/24" in routes and "default" not in routes
    assert not reachable


async def test_loop_thread_runs_inside(netns: PrivateNetwork) -> None:
    import aioice.ice

    lt = netns.loop_thread()
    try:

        async def addresses() -> list[str]:
            return aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)

        assert await lt.run(addresses(), 5) == ["10.99.0.1"]
    finally:
        lt.stop()
