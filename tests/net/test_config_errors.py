"""Bad driver configuration is a ConfigError (still a ValueError) that names the fix, in
the real and the simulated drivers alike; so is the default backend's choice."""

from __future__ import annotations

import functools
from typing import Any, cast

import pytest

from sansio_aio import ConfigError, SansioAioError
from sansio_aio import _backends as backends
from sansio_aio.net import TcpDriver, TunDriver, UdpDriver, check_address
from sansio_aio.testing import SimNetwork


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (functools.partial(UdpDriver, batch=0), "batch must be an int >= 1"),
        (functools.partial(UdpDriver, batch=cast(Any, "64")), "batch must be an int >= 1"),
        (functools.partial(TunDriver, batch=0), "batch must be an int >= 1"),
        (functools.partial(TcpDriver, high=10, low=20), "need 0 <= low <= high <= max_buffer"),
        (functools.partial(TcpDriver, close_timeout=0), "close_timeout must be > 0"),
    ],
)
def test_driver_constructors_raise_config_error(factory: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        factory()
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError still do


def test_the_webrtc_driver_refuses_an_unknown_relay_mode() -> None:
    from sansio_aio.webrtc import WebRtcDriver

    with pytest.raises(ConfigError, match="relay must be 'encoded' or 'decoded'"):
        WebRtcDriver(relay="copy")


def test_the_simulated_tcp_driver_takes_the_real_drivers_knobs() -> None:
    net = SimNetwork(seed=1)
    driver: Any = net.tcp_driver()
    assert (driver.high, driver.low, driver.max_buffer) == (256 * 1024, 64 * 1024, 4 << 20)
    sim_tcp = type(driver)
    with pytest.raises(ConfigError, match="need 0 <= low <= high <= max_buffer"):
        sim_tcp(net, high=10, low=20)
    custom = sim_tcp(net, high=1000, low=10, max_buffer=5000)
    assert (custom.high, custom.low, custom.max_buffer) == (1000, 10, 5000)


@pytest.mark.parametrize(
    ("addr", "match"),
    [
        ("127.0.0.1", "must be a \\(host, port\\) tuple"),
        (("localhost", 80), "is not an IP address"),
        (("127.0.0.1", 70000), "port must be an int in 0..65535"),
        ((1, 80), "host must be a str"),
    ],
)
def test_check_address_raises_config_error(addr: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        check_address(addr)
    assert isinstance(caught.value, SansioAioError) and isinstance(caught.value, ValueError)


def test_default_backend_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: with neither uvloop nor epoll (macOS without uvloop), Runtime() raised."""
    monkeypatch.setattr(backends, "available_backends", lambda: ["poll", "select", "asyncio"])
    assert backends.resolve_backend(None)[0] == "asyncio"
    monkeypatch.setattr(backends, "available_backends", lambda: ["epoll", "asyncio"])
    assert backends.resolve_backend(None)[0] == "epoll"
