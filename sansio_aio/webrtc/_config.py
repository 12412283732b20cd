"""Configuration of the WHIP/WHEP server: one dataclass, filled from flags and environment.

:class:`ServerConfig` holds everything the HTTP layer and the rooms need; the part a
room task needs travels to it as a :class:`RoomConfig` (plain data: it crosses to a
worker thread, and later perhaps a process). :func:`parse_args` builds a config from
command-line flags, each of which can also be given as an environment variable
``WHIP_<FLAG>`` (flags win). No default sends anything off the machine: there are no
ICE servers unless configured (aiortc would otherwise use Google's STUN server).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar, final
from urllib.parse import unquote

from .._errors import ConfigError
from ._sdp import address_filter

__all__ = [
    "IceServer",
    "RoomConfig",
    "ServerConfig",
    "is_room_name",
    "parse_args",
    "parse_ice_server",
    "parse_key",
    "read_keys_file",
    "resolve_interfaces",
    "with_keys_file",
]

_ROOM_RE = re.compile(r"[A-Za-z0-9_.~-]{1,64}")


def is_room_name(name: str) -> bool:
    """A room name: 1-64 characters of ``[A-Za-z0-9_.~-]``, and not ``.`` or ``..``
    (which URL normalisation would turn into another path)."""
    # fullmatch: ``$`` would accept a trailing newline (``/whip/r%0A``)
    return bool(_ROOM_RE.fullmatch(name)) and name not in (".", "..")


def _is_secret(text: str) -> bool:
    return bool(text) and not any(c.isspace() for c in text)


@final
@dataclass(frozen=True, slots=True)
class IceServer:
    """One STUN/TURN server offered to peers (and to clients as a ``Link`` header)."""

    url: str
    username: str | None = None
    credential: str | None = None

    def link(self) -> str:
        """The RFC 9725 ``Link`` header value for this server."""
        value = f'<{self.url}>; rel="ice-server"'
        if self.username is not None:
            value += f'; username="{self.username}"; credential="{self.credential or ""}"'
            value += '; credential-type="password"'
        return value


def parse_ice_server(text: str) -> IceServer:
    """Parse ``stun:host:port`` or ``turn:user:password@host:port[?transport=udp]``."""
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ConfigError(
            f"bad ICE server {text!r}: use stun:HOST:PORT or turn:USER:PASS@HOST:PORT"
        )
    if "@" in rest:
        creds, _, hostpart = rest.rpartition("@")
        user, _, password = creds.partition(":")
        return IceServer(f"{scheme}:{hostpart}", unquote(user), unquote(password))
    return IceServer(text)


@final
@dataclass(frozen=True, slots=True)
class RoomConfig:
    """What one room task needs (sent with its spawn)."""

    name: str
    #: Sessions (publisher + viewers) a room holds; past it: 503 + Retry-After.
    max_sessions: int = 50
    #: A session that is not ``connected`` this long after its answer is freed (seconds).
    connect_timeout: float = 15.0
    #: A session ``disconnected`` this long is freed (ICE consent lost).
    disconnected_timeout: float = 10.0
    #: A room with no session for this long ends (its task and worker slot are freed).
    idle_timeout: float = 30.0
    #: Status of a WHEP request on a room without publisher: 409 (+Retry-After) or 404.
    no_publisher_status: int = 409
    #: ``Retry-After`` seconds for 409 and 503 answers.
    retry_after: int = 5
    #: Minimum seconds between two keyframe requests sent to the publisher.
    keyframe_interval: float = 1.0
    #: Offer only candidates inside these networks (CIDRs); empty: offer all.
    ice_networks: tuple[str, ...] = ()
    #: Keep remote ``<uuid>.local`` candidates (off: they would need multicast DNS).
    allow_mdns: bool = False
    #: Remote ICE candidates a session may have (offer and trickled PATCHes together);
    #: past it the offer is refused (422) and further trickled candidates too.
    max_candidates: int = 40
    #: Seconds the room keeps its viewers after its publisher left (deleted, failed,
    #: silent) for a new publisher to take over (an encoder restart); 0: the viewers
    #: end with the publisher.
    publisher_grace: float = 5.0


@final
@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The whole server: HTTP, runtime and room settings."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: URL prefix of every endpoint, e.g. ``"/api"`` (empty: endpoints at the root).
    prefix: str = ""
    workers: int = 2
    backend: str | None = None
    #: ``"thread"`` (workers share one core under the GIL) or ``"process"`` (a worker
    #: process per core: rooms on different workers use different cores).
    mode: str = "thread"
    #: ``"on-failure"``: a worker process that dies is replaced (process mode).
    restart: str = "never"
    ice_servers: tuple[IceServer, ...] = ()
    #: Offer only candidates inside these networks (CIDRs, addresses or interface
    #: names, resolved at start by :func:`resolve_interfaces`); empty: offer all.
    ice_networks: tuple[str, ...] = ()
    #: Accept remote ``<uuid>.local`` candidates (off: they would need multicast DNS).
    allow_mdns: bool = False
    #: Bearer tokens of the operator: they authorize everything (publish and view any
    #: room, PATCH/DELETE any session, stats, metrics); empty: no authentication.
    tokens: tuple[str, ...] = field(default=(), repr=False)
    #: Stream keys, ``(room, key)``: ``key`` may publish (WHIP) to ``room`` only; a key
    #: never authorizes viewing.
    keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: A file of ``ROOM=KEY`` lines (``#`` comments), read at start; adds to ``keys``.
    keys_file: str | None = None
    #: URL the server POSTs ``{"action", "room", "key", "remote"}`` to, to authorize a
    #: WHIP/WHEP request; a 2xx answer (optionally ``{"room": NAME}``) allows it.
    auth_webhook: str | None = field(default=None, repr=False)
    #: Seconds the server waits for the webhook's answer (then: 503).
    webhook_timeout: float = 2.0
    #: Token for ``/stats`` and ``/metrics`` only (the operator tokens also work).
    metrics_token: str | None = field(default=None, repr=False)
    #: Deprecated (use ``keys``): the bearer token names the room. The room's name is
    #: derived from the token (``k-`` and 16 hex digits of an HMAC with a per-server
    #: secret), so the token never shows in stats, metrics or logs; viewers that POST
    #: ``/whep`` with the same token reach the same room.
    token_is_room: bool = False
    #: UDP port of worker 0's sessions; worker ``i`` uses ``udp_port + i`` for all its
    #: sessions (demultiplexed by ICE ufrag, then remote address). 0: a port per session.
    udp_port: int = 0
    #: Address to advertise in ICE candidates instead of the local one (1:1 NAT, Docker).
    public_ip: str | None = None
    max_sessions: int = 200
    max_sessions_per_room: int = 50
    #: Largest accepted request body (SDP offers, trickle fragments), in bytes.
    max_body: int = 64 * 1024
    connect_timeout: float = 15.0
    disconnected_timeout: float = 10.0
    room_idle_timeout: float = 30.0
    #: Seconds a room keeps its viewers after its publisher left, waiting for a new
    #: publisher (an encoder restart, OBS reconnecting); 0: viewers end with it.
    publisher_grace: float = 5.0
    no_publisher_status: int = 409
    retry_after: int = 5
    #: How long the HTTP layer waits for a room's reply (seconds).
    request_timeout: float = 10.0
    #: POST/PATCH/DELETE per second per client address (0: no limit); past it: 429.
    rate_limit: float = 10.0
    #: Requests a client may send at once before the rate applies.
    rate_burst: int = 20
    #: Remote ICE candidates per session (offer + trickle); see :class:`RoomConfig`.
    max_candidates: int = 40
    #: Seconds a connection may take to send a request's headers (also the idle
    #: keep-alive limit between requests); past it the connection is closed.
    header_timeout: float = 10.0
    #: Seconds a request may take to send its body; past it: 408 and closed.
    body_timeout: float = 10.0
    #: Open HTTP connections in all; past it new ones are closed at once.
    max_connections: int = 1000
    #: Open HTTP connections from one client address.
    max_connections_per_ip: int = 32
    #: ``Access-Control-Allow-Origin`` value.
    cors_origin: str = "*"
    #: Serve the publish/view pages at ``{prefix}/``.
    pages: bool = True
    #: ``"encoded"``: forward the publisher's encoded video to viewers whose offer
    #: accepts its codec (no re-encode per viewer); ``"decoded"``: aiortc's relay of
    #: decoded frames, re-encoded per viewer.
    relay: str = "encoded"
    #: Redis URL of the cluster directory (``redis://[:PASSWORD@]HOST:PORT/DB`` or
    #: ``rediss://`` for TLS); ``None``: a single node, no Redis (docs/cluster.md).
    cluster: str | None = field(default=None, repr=False)
    #: This node's base URL as other nodes and clients reach it (``http://ADDR:PORT``);
    #: required with ``cluster``: redirects and session URLs (``Location``) use it.
    node_url: str | None = None
    #: This node's id in the directory (default: ``HOST-PORT`` of ``node_url``).
    node_id: str | None = None
    #: WHEP for a room hosted on another node: ``False``: 307 to it; ``True``: this
    #: node pulls the stream once over WHEP and serves its own viewers from that copy.
    cascade: bool = False
    #: Prefix of every key in Redis (several clusters can share one Redis).
    cluster_prefix: str = "whip"
    #: Seconds between two heartbeats of this node in the directory.
    cluster_heartbeat: float = 1.0
    #: A node that has not beaten for this long is gone (its rooms can be claimed).
    cluster_node_ttl: float = 3.0
    #: Lease of a room on its node, renewed every heartbeat.
    cluster_lease_ttl: float = 5.0
    #: An edge (cascade) with no viewer for this long stops pulling (seconds).
    edge_idle_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.mode not in ("thread", "process"):
            raise ConfigError(f"mode must be 'thread' or 'process', got {self.mode!r}")
        if self.restart not in ("never", "on-failure"):
            raise ConfigError(f"restart must be 'never' or 'on-failure', got {self.restart!r}")
        if self.prefix and (not self.prefix.startswith("/") or self.prefix.endswith("/")):
            raise ConfigError(f"prefix must look like '/api' (or be empty), got {self.prefix!r}")
        if self.cluster is not None:
            if not self.cluster.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError("cluster must be a redis://, rediss:// or unix:// URL")
            if not self.node_url or not self.node_url.startswith(("http://", "https://")):
                raise ConfigError(
                    "a cluster node needs --node-url http(s)://ADDR:PORT: the URL other "
                    "nodes and clients reach it at (redirects and session URLs use it)"
                )
        if self.node_url is not None and self.node_url.endswith("/"):
            raise ConfigError(f"node_url must not end with '/', got {self.node_url!r}")
        if not (0 < self.cluster_heartbeat < self.cluster_node_ttl <= self.cluster_lease_ttl):
            raise ConfigError("cluster timings must satisfy 0 < heartbeat < node_ttl <= lease_ttl")
        if self.edge_idle_timeout <= 0:
            raise ConfigError("edge_idle_timeout must be > 0")
        if self.relay not in ("encoded", "decoded"):
            raise ConfigError(f"relay must be 'encoded' or 'decoded', got {self.relay!r}")
        if not 0 <= self.publisher_grace <= 3600:
            raise ConfigError(f"publisher_grace must be 0..3600 s, got {self.publisher_grace!r}")
        if self.no_publisher_status not in (404, 409):
            raise ConfigError("no_publisher_status must be 404 or 409")
        for name in ("max_sessions", "max_sessions_per_room", "max_body"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        for entry in self.ice_networks:
            if _is_interface_name(entry):
                continue
            try:
                address_filter([entry])
            except ValueError as exc:
                raise ConfigError(f"bad ice network {entry!r}: {exc}") from None
        if self.rate_limit < 0 or self.rate_burst < 1:
            raise ConfigError("rate_limit must be >= 0 and rate_burst >= 1")
        if self.udp_port and not 0 < self.udp_port + self.workers - 1 < 65536:
            raise ConfigError(
                f"udp_port must leave room for one port per worker: "
                f"{self.udp_port}..{self.udp_port + self.workers - 1} is not inside 1..65535"
            )
        if self.udp_port < 0:
            raise ConfigError(f"udp_port must be >= 0, got {self.udp_port}")
        if self.public_ip is not None:
            try:
                ipaddress.ip_address(self.public_ip)
            except ValueError:
                why = f"public_ip must be an IP address, got {self.public_ip!r}"
                raise ConfigError(why) from None
        for name in ("max_candidates", "max_connections", "max_connections_per_ip"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        for name in (
            "header_timeout",
            "body_timeout",
            "webhook_timeout",
            "connect_timeout",
            "disconnected_timeout",
            "room_idle_timeout",
            "request_timeout",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        for token in self.tokens:
            if not _is_secret(token):
                raise ConfigError("tokens must be non-empty and contain no white space")
        if self.metrics_token is not None and not _is_secret(self.metrics_token):
            raise ConfigError("metrics_token must be non-empty and contain no white space")
        rooms_of: dict[str, str] = {}
        for room, key in self.keys:
            if not is_room_name(room) or not _is_secret(key):
                raise ConfigError(
                    "stream keys are ROOM=KEY: ROOM 1-64 characters of [A-Za-z0-9_.~-] "
                    "(not . or ..), KEY non-empty without white space"
                )
            if rooms_of.setdefault(key, room) != room:
                raise ConfigError("a stream key may publish to one room only")
            if key in self.tokens or key == self.metrics_token:
                raise ConfigError("a stream key must differ from every token")
        webhook = self.auth_webhook
        if webhook is not None and not re.match(r"^https?://[^/\s]+", webhook):
            raise ConfigError("auth_webhook must be an http:// or https:// URL")

    def room(self, name: str) -> RoomConfig:
        """The :class:`RoomConfig` of room ``name``."""
        networks = self.ice_networks
        if networks and self.public_ip is not None:  # the advertised address stays offered
            networks = (*networks, self.public_ip)
        return RoomConfig(
            name=name,
            max_sessions=self.max_sessions_per_room,
            connect_timeout=self.connect_timeout,
            disconnected_timeout=self.disconnected_timeout,
            idle_timeout=self.room_idle_timeout,
            no_publisher_status=self.no_publisher_status,
            retry_after=self.retry_after,
            ice_networks=networks,
            allow_mdns=self.allow_mdns,
            max_candidates=self.max_candidates,
            publisher_grace=self.publisher_grace,
        )


def _is_interface_name(entry: str) -> bool:
    return bool(_IFNAME.fullmatch(entry)) and not any(c in entry for c in "./:")


_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")


def resolve_interfaces(entries: Sequence[str]) -> tuple[str, ...]:
    """Replace interface names in ``entries`` by their addresses (``/32``, ``/128``).

    CIDRs and addresses pass through. Link-local IPv6 addresses are skipped (aioice
    does not offer them). Raises :class:`ConfigError` for an unknown interface.
    """
    if not any(_is_interface_name(e) for e in entries):
        return tuple(entries)
    import ifaddr  # an aioice dependency: present with the webrtc extra

    adapters = {a.nice_name: a for a in ifaddr.get_adapters()}
    out: list[str] = []
    for entry in entries:
        if not _is_interface_name(entry):
            out.append(entry)
            continue
        adapter = adapters.get(entry)
        if adapter is None:
            raise ConfigError(f"no network interface {entry!r}; have: {sorted(adapters)}")
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                out.append(f"{ip.ip}/32")
            elif ip.ip[2] == 0:
                out.append(f"{ip.ip[0]}/128")
    return tuple(out)


def parse_key(text: str) -> tuple[str, str]:
    """Parse one ``ROOM=KEY`` stream key."""
    room, sep, key = text.strip().partition("=")
    if not sep or not room.strip() or not key.strip():
        # never echo the text: it may be a key with a typo
        raise ConfigError("bad stream key: use ROOM=KEY")
    return room.strip(), key.strip()


def read_keys_file(path: str) -> tuple[tuple[str, str], ...]:
    """Read ``ROOM=KEY`` lines (blank lines and ``#`` comments skipped) from ``path``.

    Raises :class:`ConfigError` naming the file (and the line, never the key) when the
    file cannot be read or a line is malformed.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the keys file {path!r}: {exc}") from None
    keys: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(parse_key(line))
        except ConfigError:
            raise ConfigError(f"{path}:{number}: not a ROOM=KEY line") from None
    return tuple(keys)


def with_keys_file(config: ServerConfig) -> ServerConfig:
    """``config`` with the keys of its ``keys_file`` added to ``keys`` (and the file
    forgotten, so it is read once); validated again (a bad key is a ConfigError)."""
    if config.keys_file is None:
        return config
    return replace(config, keys=config.keys + read_keys_file(config.keys_file), keys_file=None)


N = TypeVar("N", int, float)


def _num(env: Mapping[str, str], name: str, default: N, kind: Callable[[str], N]) -> N:
    """The number in ``WHIP_<NAME>``, or ``default`` when unset; a :class:`ConfigError`
    naming the variable when it is not a number."""
    text = _env(env, name)
    if text is None or not text.strip():
        return default
    try:
        return kind(text.strip())
    except ValueError:
        var = "WHIP_" + name.upper().replace("-", "_")
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{var}={text!r} is not {what}") from None


def _env(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    return env.get("WHIP_" + name.upper().replace("-", "_"), default)


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def parse_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> ServerConfig:
    """Build a :class:`ServerConfig` from flags; every flag has a ``WHIP_*`` variable."""
    env = os.environ if env is None else env
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog="whip_whep",
        description="WHIP/WHEP server on aiortc, driven by sansio_aio. "
        "Every flag can be set by the environment variable WHIP_<FLAG> (e.g. WHIP_PORT).",
    )
    p.add_argument("--host", default=_env(env, "host", d.host))
    p.add_argument("--port", type=int, default=_num(env, "port", d.port, int))
    p.add_argument("--prefix", default=_env(env, "prefix", d.prefix))
    p.add_argument("--workers", type=int, default=_num(env, "workers", d.workers, int))
    p.add_argument("--backend", default=_env(env, "backend"), help="uvloop, epoll or poll")
    p.add_argument(
        "--mode",
        choices=["thread", "process"],
        default=_env(env, "mode", d.mode),
        help="workers as threads (one core) or processes (one per core)",
    )
    p.add_argument(
        "--restart",
        choices=["never", "on-failure"],
        default=_env(env, "restart", d.restart),
        help="process mode: replace a worker process that dies",
    )
    p.add_argument(
        "--ice-server",
        action="append",
        default=None,
        help="stun:HOST:PORT or turn:USER:PASS@HOST:PORT (repeatable; default: none)",
    )
    p.add_argument(
        "--ice-network",
        action="append",
        default=None,
        help="offer only candidates in this CIDR or on this interface "
        "(repeatable; default: every address)",
    )
    p.add_argument("--allow-mdns", action="store_true", default=_env(env, "allow_mdns") == "1")
    p.add_argument(
        "--token",
        action="append",
        default=None,
        help="operator bearer token: publish, view, PATCH/DELETE, stats (repeatable)",
    )
    p.add_argument(
        "--key",
        action="append",
        default=None,
        metavar="ROOM=KEY",
        help="stream key KEY may publish to ROOM (repeatable)",
    )
    p.add_argument(
        "--keys-file",
        default=_env(env, "keys_file"),
        help="file of ROOM=KEY stream keys, one a line (# comments), read at start",
    )
    p.add_argument(
        "--auth-webhook",
        default=_env(env, "auth_webhook"),
        help="URL that authorizes each WHIP/WHEP POST (see docs/whip_whep.md)",
    )
    p.add_argument(
        "--metrics-token",
        default=_env(env, "metrics_token"),
        help="bearer token for /stats and /metrics only",
    )
    p.add_argument(
        "--udp-port",
        type=int,
        default=_num(env, "udp_port", d.udp_port, int),
        help="all sessions of worker i share UDP port PORT+i (default 0: a port per session)",
    )
    p.add_argument(
        "--public-ip",
        default=_env(env, "public_ip"),
        help="address advertised in ICE candidates (1:1 NAT, Docker)",
    )
    p.add_argument(
        "--token-is-room",
        action="store_true",
        default=_env(env, "token_is_room") == "1",
        help="deprecated, use --key: the bearer token names the room (its name is derived "
        "from the token, which never shows in stats or logs)",
    )
    for flag, attr, what in (
        ("--max-sessions", "max_sessions", "sessions in all (then 503)"),
        ("--max-sessions-per-room", "max_sessions_per_room", "sessions per room (then 503)"),
        ("--max-body", "max_body", "largest request body, bytes (then 413)"),
        ("--retry-after", "retry_after", "seconds sent in Retry-After"),
        ("--no-publisher-status", "no_publisher_status", "409 or 404: WHEP without publisher"),
        ("--max-candidates", "max_candidates", "remote ICE candidates per session (then 422)"),
        ("--max-connections", "max_connections", "open HTTP connections (then refused)"),
        ("--max-connections-per-ip", "max_connections_per_ip", "open HTTP connections per IP"),
    ):
        default = getattr(d, attr)
        p.add_argument(
            flag,
            type=int,
            default=_num(env, attr, default, int),
            help=f"{what} (default {default})",
        )
    for flag, attr, what in (
        ("--connect-timeout", "connect_timeout", "a session must connect within"),
        ("--disconnected-timeout", "disconnected_timeout", "a disconnected session ends after"),
        ("--room-idle-timeout", "room_idle_timeout", "a room without sessions ends after"),
        (
            "--publisher-grace",
            "publisher_grace",
            "a room keeps its viewers for a new publisher (0: they end with it)",
        ),
        ("--request-timeout", "request_timeout", "HTTP waits for a room's reply (then 503)"),
        ("--header-timeout", "header_timeout", "a connection must send a request's headers"),
        ("--body-timeout", "body_timeout", "a request must send its body (then 408)"),
        ("--webhook-timeout", "webhook_timeout", "the auth webhook must answer (then 503)"),
    ):
        default = getattr(d, attr)
        p.add_argument(
            flag,
            type=float,
            default=_num(env, attr, default, float),
            help=f"{what} (seconds, default {default:g})",
        )
    p.add_argument(
        "--rate-limit",
        type=float,
        default=_num(env, "rate_limit", d.rate_limit, float),
        help=f"POST/PATCH/DELETE per second per client address (0: no limit; "
        f"default {d.rate_limit:g})",
    )
    p.add_argument(
        "--rate-burst",
        type=int,
        default=_num(env, "rate_burst", d.rate_burst, int),
        help=f"requests a client may send at once before --rate-limit applies "
        f"(default {d.rate_burst})",
    )
    p.add_argument("--cors-origin", default=_env(env, "cors_origin", d.cors_origin))
    p.add_argument("--no-pages", action="store_true", default=_env(env, "no_pages") == "1")
    p.add_argument(
        "--relay",
        choices=["encoded", "decoded"],
        default=_env(env, "relay", d.relay),
        help="forward encoded video (default) or re-encode per viewer",
    )
    p.add_argument(
        "--cluster",
        default=_env(env, "cluster"),
        metavar="REDIS_URL",
        help="join a cluster whose directory is this Redis (redis://HOST:6379/0; "
        "prefer WHIP_CLUSTER when it carries a password)",
    )
    p.add_argument(
        "--node-url", default=_env(env, "node_url"), help="http://ADDR:PORT of this node"
    )
    p.add_argument("--node-id", default=_env(env, "node_id"), help="this node's id in the cluster")
    p.add_argument(
        "--cascade",
        choices=["on", "off"],
        default=_env(env, "cascade", "off"),
        help="WHEP for a room on another node: pull it once and serve it here (on) "
        "or redirect the viewer there (off, default)",
    )
    p.add_argument("--cluster-prefix", default=_env(env, "cluster_prefix", d.cluster_prefix))
    for flag, attr in (
        ("--cluster-heartbeat", "cluster_heartbeat"),
        ("--cluster-node-ttl", "cluster_node_ttl"),
        ("--cluster-lease-ttl", "cluster_lease_ttl"),
        ("--edge-idle-timeout", "edge_idle_timeout"),
    ):
        p.add_argument(flag, type=float, default=_num(env, attr, getattr(d, attr), float))
    a = p.parse_args(argv)
    ice = a.ice_server if a.ice_server is not None else _split(_env(env, "ice_servers"))
    nets = a.ice_network if a.ice_network is not None else _split(_env(env, "ice_networks"))
    tokens = a.token if a.token is not None else _split(_env(env, "tokens"))
    keys = a.key if a.key is not None else _split(_env(env, "keys"))
    return ServerConfig(
        host=a.host,
        port=a.port,
        prefix=a.prefix.rstrip("/"),
        workers=a.workers,
        backend=a.backend or None,
        mode=a.mode,
        restart=a.restart,
        ice_servers=tuple(parse_ice_server(s) for s in ice),
        ice_networks=tuple(nets),
        allow_mdns=a.allow_mdns,
        tokens=tuple(tokens),
        keys=tuple(parse_key(k) for k in keys),
        keys_file=a.keys_file or None,
        auth_webhook=a.auth_webhook or None,
        webhook_timeout=a.webhook_timeout,
        metrics_token=a.metrics_token or None,
        token_is_room=a.token_is_room,
        udp_port=a.udp_port,
        public_ip=a.public_ip or None,
        max_candidates=a.max_candidates,
        header_timeout=a.header_timeout,
        body_timeout=a.body_timeout,
        max_connections=a.max_connections,
        max_connections_per_ip=a.max_connections_per_ip,
        max_sessions=a.max_sessions,
        max_sessions_per_room=a.max_sessions_per_room,
        max_body=a.max_body,
        connect_timeout=a.connect_timeout,
        disconnected_timeout=a.disconnected_timeout,
        room_idle_timeout=a.room_idle_timeout,
        publisher_grace=a.publisher_grace,
        no_publisher_status=a.no_publisher_status,
        retry_after=a.retry_after,
        request_timeout=a.request_timeout,
        rate_limit=a.rate_limit,
        rate_burst=a.rate_burst,
        cors_origin=a.cors_origin,
        pages=not a.no_pages,
        relay=a.relay,
        cluster=a.cluster or None,
        node_url=(a.node_url or "").rstrip("/") or None,
        node_id=a.node_id or None,
        cascade=a.cascade == "on",
        cluster_prefix=a.cluster_prefix,
        cluster_heartbeat=a.cluster_heartbeat,
        cluster_node_ttl=a.cluster_node_ttl,
        cluster_lease_ttl=a.cluster_lease_ttl,
        edge_idle_timeout=a.edge_idle_timeout,
    )
