"""Configuration (flags and WHIP_* environment), interface names, rate limiting."""

from __future__ import annotations

import pytest

from sansio_aio import ConfigError
from sansio_aio.webrtc import (
    IceServer,
    ServerConfig,
    parse_args,
    parse_ice_server,
    resolve_interfaces,
)
from sansio_aio.webrtc._ratelimit import TokenBuckets


def test_defaults_send_nothing_off_the_machine() -> None:
    cfg = parse_args([], env={})
    assert (cfg.host, cfg.port, cfg.workers) == ("127.0.0.1", 8080, 2)
    assert cfg.ice_servers == () and cfg.tokens == () and cfg.relay == "encoded"


def test_flags_and_environment() -> None:
    env = {
        "WHIP_PORT": "9000",
        "WHIP_WORKERS": "3",
        "WHIP_ICE_SERVERS": "stun:127.0.0.1:3478,turn:u:p@127.0.0.1:3479",
        "WHIP_TOKENS": "a,b",
        "WHIP_MAX_SESSIONS": "7",
        "WHIP_RELAY": "decoded",
    }
    cfg = parse_args(["--port", "9100", "--ice-network", "10.0.0.0/8"], env=env)
    assert cfg.port == 9100  # a flag wins over its variable
    assert cfg.workers == 3 and cfg.max_sessions == 7 and cfg.relay == "decoded"
    assert cfg.tokens == ("a", "b")
    assert cfg.ice_servers == (
        IceServer("stun:127.0.0.1:3478"),
        IceServer("turn:127.0.0.1:3479", "u", "p"),
    )
    assert cfg.ice_networks == ("10.0.0.0/8",)
    assert cfg.room("r").max_sessions == cfg.max_sessions_per_room


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 70000},
        {"workers": 0},
        {"prefix": "api"},
        {"prefix": "/api/"},
        {"no_publisher_status": 410},
        {"max_body": 0},
        {"ice_networks": ("10.0.0.0/33",)},
        {"relay": "magic"},
        {"rate_limit": -1.0},
    ],
)
def test_bad_values_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_ice_server() -> None:
    with pytest.raises(ConfigError, match="stun:HOST:PORT"):
        parse_ice_server("http://example")


def test_interface_names_resolve_to_their_addresses() -> None:
    assert resolve_interfaces(["10.0.0.0/8"]) == ("10.0.0.0/8",)
    lo = resolve_interfaces(["lo", "192.0.2.0/24"])
    assert "127.0.0.1/32" in lo and lo[-1] == "192.0.2.0/24"
    with pytest.raises(ConfigError, match="no network interface"):
        resolve_interfaces(["nosuchif0"])


def test_token_buckets() -> None:
    b = TokenBuckets(rate=2.0, burst=3, max_clients=2)
    assert [b.take("a", 0.0) for _ in range(3)] == [None, None, None]
    assert b.take("a", 0.0) == 1  # empty: one token in 0.5 s -> "retry after 1 s"
    assert b.take("a", 0.5) is None  # refilled
    assert b.take("b", 0.5) is None and b.take("c", 0.5) is None
    assert len(b) <= 2  # bounded
