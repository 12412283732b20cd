"""Configuration (flags and WHIP_* environment), stream keys and the keys file, room
names, interface names, rate limiting."""

from __future__ import annotations

from pathlib import Path

import pytest

from sansio_aio import ConfigError
from sansio_aio.webrtc import (
    IceServer,
    ServerConfig,
    parse_args,
    parse_ice_server,
    resolve_interfaces,
)
from sansio_aio.webrtc._config import is_room_name, parse_key, read_keys_file, with_keys_file
from sansio_aio.webrtc._ratelimit import TokenBuckets


def test_defaults_send_nothing_off_the_machine() -> None:
    cfg = parse_args([], env={})
    assert (cfg.host, cfg.port, cfg.workers) == ("127.0.0.1", 8080, 2)
    assert cfg.ice_servers == () and cfg.tokens == () and cfg.relay == "encoded"
    assert cfg.keys == () and cfg.auth_webhook is None and cfg.metrics_token is None
    # RFC 9725 §5: rate limiting on by default; and every HTTP bound is finite
    assert (cfg.rate_limit, cfg.rate_burst) == (10.0, 20)
    assert (cfg.header_timeout, cfg.body_timeout) == (10.0, 10.0)
    assert (cfg.max_connections, cfg.max_connections_per_ip) == (1000, 32)


def test_security_flags_and_environment() -> None:
    env = {"WHIP_KEYS": "a=k1,b=k2", "WHIP_METRICS_TOKEN": "m1", "WHIP_HEADER_TIMEOUT": "3"}
    cfg = parse_args(
        ["--auth-webhook", "http://127.0.0.1:9/auth", "--max-connections-per-ip", "4"], env=env
    )
    assert cfg.keys == (("a", "k1"), ("b", "k2")) and cfg.metrics_token == "m1"
    assert cfg.auth_webhook == "http://127.0.0.1:9/auth" and cfg.header_timeout == 3.0
    assert cfg.max_connections_per_ip == 4
    cfg = parse_args(["--key", "c=k3", "--token-is-room", "--rate-limit", "0"], env=env)
    assert cfg.keys == (("c", "k3"),) and cfg.token_is_room and cfg.rate_limit == 0


def test_room_names() -> None:
    for good in ("a", "live-1", "x" * 64, "a.b", "~_-"):
        assert is_room_name(good), good
    for bad in ("", ".", "..", "x" * 65, "a/b", "a b", "r\n", "é"):
        assert not is_room_name(bad), bad


def test_stream_keys_and_the_keys_file(tmp_path: Path) -> None:
    assert parse_key(" a = k1 ") == ("a", "k1")
    with pytest.raises(ConfigError) as info:
        parse_key("no-room-secret")
    assert "secret" not in str(info.value)  # a mistyped key is not echoed
    path = tmp_path / "keys"
    path.write_text("# comment\n\n a=k1\n# b=k9\nb = k2\n")
    assert read_keys_file(str(path)) == (("a", "k1"), ("b", "k2"))
    cfg = with_keys_file(ServerConfig(keys=(("c", "k3"),), keys_file=str(path)))
    assert cfg.keys == (("c", "k3"), ("a", "k1"), ("b", "k2")) and cfg.keys_file is None
    assert with_keys_file(cfg) is cfg
    path.write_text("a=k1\nb=k1\n")
    with pytest.raises(ConfigError, match="one room only"):
        with_keys_file(ServerConfig(keys_file=str(path)))
    with pytest.raises(ConfigError, match="cannot read"):
        read_keys_file(str(tmp_path / "missing"))


def test_flags_and_environment() -> None:
    env = {
        "WHIP_PORT": "9000",
        "WHIP_WORKERS": "3",
        "WHIP_ICE_SERVERS": "stun:127.0.0.1:3478,turn:u:p@127.0.0.1:3479",
        "WHIP_TOKENS": "a,b",
        "WHIP_MAX_SESSIONS": "7",
        "WHIP_RELAY": "decoded",
        "WHIP_PUBLISHER_GRACE": "0",
    }
    cfg = parse_args(["--port", "9100", "--ice-network", "10.0.0.0/8"], env=env)
    assert cfg.publisher_grace == 0.0 and cfg.room("r").publisher_grace == 0.0
    assert parse_args(["--publisher-grace", "2.5"], env=env).room("r").publisher_grace == 2.5
    assert ServerConfig().publisher_grace == 5.0
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
        {"tokens": ("",)},
        {"tokens": ("two words",)},
        {"metrics_token": ""},
        {"keys": (("..", "k"),)},
        {"keys": (("a", ""),)},
        {"keys": (("a", "k"), ("b", "k"))},
        {"keys": (("a", "t"),), "tokens": ("t",)},
        {"auth_webhook": "ftp://example/"},
        {"auth_webhook": "127.0.0.1:9/auth"},
        {"header_timeout": 0.0},
        {"body_timeout": -1.0},
        {"webhook_timeout": 0.0},
        {"max_connections": 0},
        {"max_connections_per_ip": 0},
        {"max_candidates": 0},
        {"publisher_grace": -1.0},
        {"publisher_grace": 1e9},
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


def test_public_ip_stays_offered_inside_ice_networks() -> None:
    """``--ice-network`` filters the answer's candidates; the ``--public-ip`` one stays."""
    cfg = ServerConfig(ice_networks=("10.0.0.0/8",), public_ip="203.0.113.7")
    assert cfg.room("r").ice_networks == ("10.0.0.0/8", "203.0.113.7")
    assert ServerConfig(public_ip="203.0.113.7").room("r").ice_networks == ()
