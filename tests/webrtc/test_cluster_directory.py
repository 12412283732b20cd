"""The cluster directory against a real ``redis-server`` on 127.0.0.1.

Two or three :class:`Directory` objects share one Redis, with short timings (beat 0.1 s,
node entry 0.6 s, lease 1 s), as nodes of a cluster would. A node that dies without
closing is simulated by stopping its heartbeat (what a SIGKILL or a stall does to the
directory: no more writes); Redis going away by killing or stopping the server, and
restarting it empty on the same port. Waits poll a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis", reason="the cluster extra (redis-py) is not installed")

import redis.asyncio as aioredis

from sansio_aio import ConfigError
from sansio_aio.webrtc._cluster import (
    ClusterUnavailable,
    Directory,
    NodeInfo,
    Owner,
)
from tests.webrtc.redis_server import RedisServer, need_redis

HEARTBEAT, NODE_TTL, LEASE_TTL = 0.1, 0.6, 1.0
FAST: dict[str, Any] = {"heartbeat": HEARTBEAT, "node_ttl": NODE_TTL, "lease_ttl": LEASE_TTL}
#: Slack on every upper bound: the test's loop may be slowed by a busy CPU.
SLACK = 0.6
LOGGER = "sansio_aio.webrtc.cluster"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` on 127.0.0.1 (skipped when not installed; CI=true fails)."""
    need_redis()
    with RedisServer("127.0.0.1") as server:
        yield server


@contextlib.asynccontextmanager
async def nodes(url: str, *ids: str, **kwargs: Any) -> AsyncIterator[list[Directory]]:
    """Started directories ``ids`` (node URL ``http://ID``), closed at the end."""
    dirs = [Directory(url, i, f"http://{i}", **{**FAST, **kwargs}) for i in ids]
    try:
        for d in dirs:
            await d.start()
        yield dirs
    finally:
        for d in dirs:
            await d.close()


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[Any]:
    """A plain redis-py client, to look at the keys."""
    client = aioredis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait (polling every 10 ms) until ``predicate()``; the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        assert loop.time() - start < timeout, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.01)
    return loop.time() - start


async def freeze(d: Directory) -> None:
    """Stop ``d``'s heartbeat without closing: to the others, a SIGKILLed node."""
    task = d._task
    assert task is not None
    task.cancel()
    await asyncio.wait({task}, timeout=5.0)
    assert task.done()


def thaw(d: Directory) -> None:
    """Restart ``d``'s heartbeat: the stalled node comes back."""
    d._start_heartbeat()


def ids(d: Directory) -> list[str]:
    return [n.id for n in d.nodes()]


def warnings_of(caplog: pytest.LogCaptureFixture, node: str, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and f"node {node}" in r.getMessage()
    ]


# --------------------------------------------------------------------------- nodes


async def test_nodes_register_with_their_load(redis_server: RedisServer) -> None:
    load = {"sessions": 3.0, "viewers": 2.0, "cpu": 0.25, "capacity": 10.0}
    async with nodes(redis_server.url, "b") as (b,):
        a = Directory(redis_server.url, "a", "http://10.0.0.1:8080", load=lambda: load, **FAST)
        other = Directory(redis_server.url, "x", "http://x", prefix="other", **FAST)
        try:
            await a.start()
            await other.start()
            assert a.up
            assert ids(a) == ["a", "b"]  # start() did a whole beat: b is listed already
            await until(lambda: ids(b) == ["a", "b"], 2.0, "b sees a")
            info = next(n for n in b.nodes() if n.id == "a")
            assert (info.url, info.sessions, info.viewers, info.cpu, info.capacity) == (
                "http://10.0.0.1:8080",
                3,
                2,
                0.25,
                10,
            )
            assert 0 <= info.age < NODE_TTL
            assert ids(other) == ["x"]  # another prefix: another cluster
            load["sessions"] = 7.0
            await until(
                lambda: any(n.id == "a" and n.sessions == 7 for n in b.nodes()),
                HEARTBEAT * 2 + SLACK,
                "the new load is seen",
            )
            async with raw(redis_server.url) as r:
                assert await r.smembers("whip:nodes") == {"a", "b"}
                entry = await r.hgetall("whip:node:a")
                assert entry["url"] == "http://10.0.0.1:8080"
                assert entry["ttl"] == "600"
                assert 0 < await r.pttl("whip:node:a") <= 600
        finally:
            await a.close()
            await other.close()
        # a closed: its entry and registry id are gone at once, b's view by its next beat
        async with raw(redis_server.url) as r:
            assert await r.exists("whip:node:a") == 0
            assert await r.smembers("whip:nodes") == {"b"}
        await until(lambda: ids(b) == ["b"], HEARTBEAT * 2 + SLACK, "a leaves b's view")


async def test_least_loaded_by_sessions_per_capacity(redis_server: RedisServer) -> None:
    loads: dict[str, dict[str, float]] = {
        "a": {"sessions": 5, "capacity": 10},
        "b": {"sessions": 2, "capacity": 10},
        "c": {"sessions": 10, "capacity": 10},  # full
    }
    dirs = [
        Directory(
            redis_server.url, i, f"http://{i}", load=functools.partial(loads.__getitem__, i), **FAST
        )
        for i in "abc"
    ]
    try:
        for d in dirs:
            await d.start()
        a = dirs[0]
        await until(lambda: len(a.nodes()) == 3, 2.0, "a sees three nodes")
        assert [n.id for n in a.nodes()] == ["a", "b", "c"]
        best = a.least_loaded()
        assert best is not None and best.id == "b"
        best = a.least_loaded(exclude="b")
        assert best is not None and best.id == "a"
        assert a.least_loaded(exclude="a") is not None
        loads["b"]["sessions"] = 9  # b fills up: a is now the least loaded
        await until(
            lambda: (n := a.least_loaded()) is not None and n.id == "a",
            HEARTBEAT * 3 + SLACK,
            "a is the least loaded",
        )
        loads["a"]["sessions"] = 10
        loads["b"]["sessions"] = 10
        await until(lambda: a.least_loaded() is None, HEARTBEAT * 3 + SLACK, "all full")
    finally:
        for d in dirs:
            await d.close()


# --------------------------------------------------------------------------- rooms


async def test_claim_is_exclusive_under_concurrency(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, "a", "b", "c") as dirs:
        results = await asyncio.gather(*(dirs[i % 3].claim("stage") for i in range(20)))
        winners = {o.node for o in results}
        assert len(winners) == 1
        winner = winners.pop()
        for i, owner in enumerate(results):
            claimer = dirs[i % 3]
            assert owner.mine == (claimer.node_id == winner)
            assert owner.url == f"http://{winner}"
        assert [d.node_id for d in dirs if "stage" in d.held()] == [winner]

        rooms = [f"room-{n}" for n in range(30)]
        claims = [(d, room) for room in rooms for d in dirs]
        owners = await asyncio.gather(*(d.claim(room) for d, room in claims))
        for room in rooms:
            holders = [d.node_id for d in dirs if room in d.held()]
            assert len(holders) == 1, (room, holders)
            got = {o.node for (_, r), o in zip(claims, owners, strict=True) if r == room}
            assert got == set(holders)
        await until(lambda: len(dirs[0].rooms()) == 31, HEARTBEAT * 2 + SLACK, "the rooms view")
        assert dirs[0].rooms()["stage"] == winner


async def test_lookup_release_and_claim_again(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, "a", "b") as (a, b):
        assert await a.lookup("r1") is None
        assert await a.claim("r1") == Owner("a", "http://a", True)
        assert await a.claim("r1") == Owner("a", "http://a", True)  # renewed
        assert await b.claim("r1") == Owner("a", "http://a", False)
        assert await b.lookup("r1") == Owner("a", "http://a", False)
        assert await a.lookup("r1") == Owner("a", "http://a", True)
        assert a.held() == {"r1"} and b.held() == frozenset()

        await b.release("r1")  # not b's: nothing happens
        assert await b.lookup("r1") == Owner("a", "http://a", False)
        await a.release("r1")
        assert a.held() == frozenset()
        assert await b.lookup("r1") is None
        assert await b.claim("r1") == Owner("b", "http://b", True)
        assert await a.claim("r1") == Owner("b", "http://b", False)
        # a room name as the token-derived ones look
        assert (await a.claim("k-0123456789abcdef")).mine
        assert a.stats()["counters"]["claimed"] == 2


async def test_a_dead_node_leaves_and_its_rooms_are_claimable(
    redis_server: RedisServer,
) -> None:
    lost: list[str] = []
    async with nodes(redis_server.url, "b", "c") as (b, c):
        a = Directory(redis_server.url, "a", "http://a", on_lost=lost.append, **FAST)
        try:
            await a.start()
            assert (await a.claim("taken")).mine
            assert (await a.claim("kept")).mine
            await until(lambda: "a" in ids(b), 2.0, "b sees a")
            assert not (await b.claim("taken")).mine

            await freeze(a)  # from now on a writes nothing: killed, to the others
            frozen = time.monotonic()
            async with raw(redis_server.url) as r:
                left = await r.pttl("whip:node:a") / 1000  # its entry's time to live
            gone = await until(lambda: "a" not in ids(b), NODE_TTL + HEARTBEAT + SLACK, "a leaves")
            # not before its entry expired (b ages its cached view with its own clock)
            assert gone >= left - 0.05
            owner = await b.claim("taken")
            claimable = time.monotonic() - frozen
            assert owner.mine, "a's node entry is gone: its room is free"
            assert claimable <= NODE_TTL + SLACK
            assert await c.lookup("kept") is None  # held by a dead node: nobody alive
            async with raw(redis_server.url) as r:
                await until_async(
                    lambda: r.exists("whip:room:kept"), LEASE_TTL + SLACK, "the lease expires"
                )
                vanished = time.monotonic() - frozen
                assert vanished <= LEASE_TTL + SLACK
                # the registry forgets a (lazily, by the nodes that list it)
                await until_async(
                    lambda: r.sismember("whip:nodes", "a"), HEARTBEAT * 2 + SLACK, "pruned"
                )
            best = c.least_loaded(exclude="c")
            assert best is not None and best.id == "b"

            thaw(a)  # it was stalled, not dead: it learns what it lost
            await until(lambda: lost == ["taken"], HEARTBEAT * 2 + SLACK, "on_lost")
            assert a.held() == {"kept"}  # nobody took it: re-claimed
            assert await b.lookup("kept") == Owner("a", "http://a", False)
            assert await c.lookup("taken") == Owner("b", "http://b", False)
            counters = a.stats()["counters"]
            assert counters["lost_leases"] == 1 and counters["reclaimed_leases"] == 1
            await until(lambda: "a" in ids(c), HEARTBEAT * 2 + SLACK, "a is back")
        finally:
            await a.close()


async def until_async(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Wait until ``await check()`` is falsy (polling every 10 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await check():
        assert loop.time() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.01)


async def test_close_releases_everything(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, "b") as (b,):
        a = Directory(redis_server.url, "a", "http://a", **FAST)
        await a.start()
        for room in ("x", "y", "z"):
            assert (await a.claim(room)).mine
        await a.close()
        await a.close()  # idempotent
        assert not a.up and a.held() == frozenset()
        for room in ("x", "y", "z"):  # at once: no waiting for leases or node entries
            assert await b.claim(room) == Owner("b", "http://b", True)
        with pytest.raises(ClusterUnavailable, match="closed"):
            await a.claim("x")
        async with raw(redis_server.url) as r:
            assert await r.exists("whip:node:a") == 0


# --------------------------------------------------------------------------- Redis down


async def test_redis_killed_then_back_empty(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with nodes(redis_server.url, "a", "b") as (a, b):
        for room in ("x", "y"):
            assert (await a.claim(room)).mine
        assert a.up and b.up
        await until(lambda: ids(a) == ["a", "b"], 2.0, "a sees b")
        redis_server.kill()
        assert [n.id for n in a.nodes()] == ["a", "b"]  # the last view, while it is fresh
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable, match=r"127\.0\.0\.1"):
            await a.claim("new")
        assert time.monotonic() - started < 2.0
        with pytest.raises(ClusterUnavailable):
            await b.lookup("x")
        assert not a.up and not b.up
        await until(lambda: a.counters["redis_errors"] >= 6, 5.0, "a few failed beats")
        assert len(warnings_of(caplog, "a", logging.WARNING)) == 1  # not one per beat
        assert len(warnings_of(caplog, "b", logging.WARNING)) == 1
        assert a.held() == {"x", "y"}  # still served locally

        redis_server.start()  # same port, nothing in it (no persistence)
        back = await until(lambda: a.up and b.up, HEARTBEAT + SLACK, "up again")
        async with raw(redis_server.url) as r:
            # at once: the beat that noticed re-registered and re-claimed everything
            await until_async(
                lambda: _missing(r, ["whip:room:x", "whip:room:y", "whip:node:a"]),
                HEARTBEAT + SLACK,
                "re-claimed",
            )
            assert await r.mget(["whip:room:x", "whip:room:y"]) == ["a", "a"]
            assert await r.smembers("whip:nodes") == {"a", "b"}
        assert back < HEARTBEAT + SLACK
        assert await b.claim("x") == Owner("a", "http://a", False)
        assert len(warnings_of(caplog, "a", logging.INFO)) == 1
        assert a.counters["reclaimed_leases"] == 2 and a.counters["lost_leases"] == 0


async def _missing(r: Any, keys: list[str]) -> bool:
    return bool(await r.exists(*keys) != len(keys))


async def test_redis_stopped_and_restarted(redis_server: RedisServer) -> None:
    async with nodes(redis_server.url, "a", "b") as (a, b):
        assert (await a.claim("x")).mine
        redis_server.stop()  # SIGTERM: a clean shutdown
        await until(lambda: not a.up and not b.up, HEARTBEAT * 2 + SLACK, "down noticed")
        with pytest.raises(ClusterUnavailable):
            await b.claim("x")
        await until(lambda: b.nodes() == [], NODE_TTL + SLACK, "the cached view ages out")
        redis_server.start()
        await until(lambda: a.up and b.up, HEARTBEAT + SLACK, "up again")
        await until(lambda: ids(b) == ["a", "b"], HEARTBEAT * 2 + SLACK, "both listed")
        assert await b.claim("x") == Owner("a", "http://a", False)


async def test_start_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    redis_server.stop()
    a = Directory(redis_server.url, "a", "http://a", **FAST)
    try:
        started = time.monotonic()
        await a.start()  # does not raise
        assert time.monotonic() - started < 1.0
        assert not a.up and a.nodes() == []
        with pytest.raises(ClusterUnavailable):
            await a.claim("x")
        await until(lambda: a.counters["redis_errors"] >= 4, 5.0, "failed beats")
        assert len(warnings_of(caplog, "a", logging.WARNING)) == 1
        redis_server.start()
        await until(lambda: a.up and ids(a) == ["a"], HEARTBEAT * 2 + SLACK, "joined")
        assert (await a.claim("x")).mine
    finally:
        await a.close()


async def test_unreachable_address_fails_within_op_timeout() -> None:
    """Nothing listens (a port just closed): refused at once; and a claim is bounded
    by ``op_timeout`` even when connecting hangs (the outer bound)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts into the backlog, never answers: connecting "hangs" in TLS
        port = s.getsockname()[1]
        a = Directory(f"rediss://127.0.0.1:{port}/0", "a", "http://a", op_timeout=0.3, **FAST)
        try:
            started = time.monotonic()
            await a.start()
            assert time.monotonic() - started < 0.3 + SLACK
            started = time.monotonic()
            with pytest.raises(ClusterUnavailable):
                await a.claim("x")
            assert time.monotonic() - started < 0.3 + SLACK
        finally:
            await a.close()


# --------------------------------------------------------------------------- credentials


async def test_credentials_never_show(caplog: pytest.LogCaptureFixture) -> None:
    need_redis()
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Pa55"
    with RedisServer("127.0.0.1", extra=["--requirepass", secret]) as server:
        url = server.url.replace("redis://", f"redis://:{secret}@")
        wrong = server.url.replace("redis://", "redis://:wrong-Pa55@")
        async with nodes(url, "a") as (a,):
            assert (await a.claim("x")).mine
            assert a.redis_url == server.url
            bad = Directory(wrong, "bad", "http://bad", **FAST)
            try:
                await bad.start()  # wrong password: unreachable, said once
                assert not bad.up
                with pytest.raises(ClusterUnavailable) as refused:
                    await bad.claim("x")
                assert "wrong-Pa55" not in str(refused.value)
                text = repr(bad.stats()) + repr(a.stats())
            finally:
                await bad.close()
            server.kill()
            with pytest.raises(ClusterUnavailable) as down:
                await a.claim("x")
            assert secret not in str(down.value)
            await until(lambda: a.counters["redis_errors"] >= 3, 5.0, "failed beats")
        with pytest.raises(ConfigError) as bad_url:
            Directory(f"redis://:{secret}@127.0.0.1:notaport/0", "a", "http://a")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "unreachable" in logged
    for shown in (logged, text, str(bad_url.value)):
        assert secret not in shown and "wrong-Pa55" not in shown


async def test_tls_with_password(tmp_path: Path) -> None:
    need_redis()
    cert, key, ca = _self_signed(tmp_path)
    with RedisServer("127.0.0.1", tls=(cert, key, ca), extra=["--requirepass", "pw-1"]) as server:
        url = server.url.replace("rediss://", "rediss://:pw-1@") + f"?ssl_ca_certs={ca}"
        async with nodes(url, "a", "b") as (a, b):
            assert a.up and (await a.claim("x")).mine
            assert await b.lookup("x") == Owner("a", "http://a", False)
            assert a.stats()["redis"] == server.url
        plain = server.url.replace("rediss://", "redis://:pw-1@")  # TLS port, plain client
        async with nodes(plain, "c") as (c,):
            assert not c.up


def _self_signed(where: Path) -> tuple[str, str, str]:
    """A certificate for 127.0.0.1, signed by itself (it is its own CA)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = where / "cert.pem", where / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file), str(cert_file)


# --------------------------------------------------------------------------- robustness


async def test_the_heartbeat_survives_faults(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    failing = {"load": True}

    def load() -> Mapping[str, float]:
        if failing["load"]:
            raise RuntimeError("load broke")
        return {"sessions": 4}

    def on_lost(room: str) -> None:
        raise RuntimeError(f"on_lost broke on {room}")

    async with nodes(redis_server.url, "b") as (b,):
        a = Directory(redis_server.url, "a", "http://a", load=load, on_lost=on_lost, **FAST)
        try:
            await a.start()
            assert a.up  # a raising load(): the last values (zeros) are written
            original = a._refresh_rooms
            calls = {"n": 0}

            async def broken() -> None:  # fault injection: a bug in one step of a beat
                calls["n"] += 1
                if calls["n"] <= 3:
                    raise KeyError("injected")
                await original()

            a._refresh_rooms = broken  # type: ignore[method-assign]
            beats = a.counters["beats"]
            await until(lambda: a.counters["beats"] >= beats + 2, 5.0, "beats go on")
            failing["load"] = False
            await until(
                lambda: any(n.id == "a" and n.sessions == 4 for n in b.nodes()), 2.0, "load"
            )
            assert (await a.claim("r")).mine
            async with raw(redis_server.url) as r:  # fault injection: b took r behind a's back
                await r.set("whip:room:r", "b", px=5000)
            await until(lambda: a.held() == frozenset(), HEARTBEAT * 2 + SLACK, "r is lost")
            await until(lambda: a.counters["beats"] >= beats + 4, 5.0, "beats go on")
        finally:
            await a.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3, errors  # each kind once: load, the beat's KeyError, on_lost
    assert a.counters["unexpected_errors"] >= 5


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("redis://127.0.0.1/0", "bad id", "http://a"), {}),
        (("redis://127.0.0.1/0", "", "http://a"), {}),
        (("redis://127.0.0.1/0", "a", ""), {}),
        (("redis://127.0.0.1/0", "a", "http://a"), {"prefix": "w*"}),
        (("redis://127.0.0.1/0", "a", "http://a"), {"heartbeat": 3.0}),
        (("redis://127.0.0.1/0", "a", "http://a"), {"node_ttl": 6.0}),
        (("redis://127.0.0.1/0", "a", "http://a"), {"op_timeout": 0}),
        (("http://127.0.0.1/0", "a", "http://a"), {}),
        (("redis://127.0.0.1:99999/0", "a", "http://a"), {}),
        (("redis://127.0.0.1/0?socket_timeout=abc", "a", "http://a"), {}),
    ],
)
def test_bad_configuration(args: tuple[str, str, str], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Directory(*args, **kwargs)


async def test_bad_room_names_are_refused() -> None:
    d = Directory("redis://127.0.0.1:1/0", "a", "http://a")
    try:
        for room in ("", "a" * 65, "a b", "x:y", "*"):
            with pytest.raises(ConfigError):
                await d.claim(room)
    finally:
        await d.close()


def test_node_info_is_plain_data() -> None:
    info = NodeInfo("a", "http://a", 1, 0, 0.5, 10, 0.1)
    assert info == NodeInfo("a", "http://a", 1, 0, 0.5, 10, 0.1)
    with pytest.raises(AttributeError):
        info.sessions = 2  # type: ignore[misc]
