"""Authorization: operator tokens, stream keys, the auth webhook, derived room names.

The rules first as a table against :class:`Authority` (pure), then each against the real
server over HTTP (127.0.0.1), with real aiortc offers made inside the private network
namespace, and a real local webhook server (aiohttp on 127.0.0.1) for the webhook.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sansio_aio import ConfigError
from sansio_aio.testing import LoopThread
from sansio_aio.webrtc import ServerConfig, open_server
from sansio_aio.webrtc._auth import Allow, AskWebhook, Authority, Deny, Webhook, session_label
from tests.webrtc.support import ServeFactory, make_offer, until, webhook_server

OP = "operator-token-0123456789"
MT = "metrics-token-0123456789"
KA = "stream-key-a-0123456789"
KB = "stream-key-b-0123456789"
SDP = {"Content-Type": "application/sdp"}
FRAG = "application/trickle-ice-sdpfrag"
SECRET = b"s" * 32


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def post(
    http: aiohttp.ClientSession, url: str, body: str, token: str | None = None
) -> tuple[int, Any, str]:
    async with http.post(url, data=body, headers={**SDP, **bearer(token)}) as resp:
        return resp.status, resp.headers.copy(), await resp.text()


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str | None = None) -> int:
    headers = bearer(token)
    if method == "PATCH":
        headers = {**headers, "Content-Type": FRAG, "If-Match": "*"}
    async with http.request(method, url, data="a=end-of-candidates\r\n", headers=headers) as resp:
        await resp.read()
        return resp.status


# ------------------------------------------------------------------ the rules, pure

AUTH = {
    "open": {},
    "tokens": {"tokens": (OP,)},
    "keys": {"keys": (("a", KA), ("b", KB))},
    "tokens+keys": {"tokens": (OP,), "keys": (("a", KA),)},
    "webhook": {"webhook": True, "keys": (("a", KA),)},
    "room": {"token_is_room": True},
    "room+tokens": {"token_is_room": True, "tokens": (OP,)},
    "room+keys": {"token_is_room": True, "keys": (("a", KA),)},
}


def outcome(auth: Authority, d: Allow | Deny | AskWebhook) -> tuple[Any, ...]:
    if isinstance(d, Deny):
        return ("deny", d.status)
    if isinstance(d, AskWebhook):
        return ("ask", d.room, d.key)
    room = d.room
    if room is not None and room.startswith("k-"):
        room = "derived"
    return ("allow", room, d.owner is not None, d.operator)


@pytest.mark.parametrize(
    ("config", "role", "token", "path", "want"),
    [
        # no rule: everything open, and no session is owned
        ("open", "whip", None, "r", ("allow", "r", False, False)),
        ("open", "whip", "anything", "r", ("allow", "r", False, False)),
        ("open", "whep", None, "r", ("allow", "r", False, False)),
        ("open", "whip", None, None, ("allow", None, False, False)),  # the caller: 400
        # operator tokens: everything needs one
        ("tokens", "whip", None, "r", ("deny", 401)),
        ("tokens", "whip", "wrong", "r", ("deny", 401)),
        ("tokens", "whip", OP, "r", ("allow", "r", True, True)),
        ("tokens", "whep", None, "r", ("deny", 401)),
        ("tokens", "whep", OP, "r", ("allow", "r", True, True)),
        # stream keys: publish to their room only; viewing stays open
        ("keys", "whip", KA, "a", ("allow", "a", True, False)),
        ("keys", "whip", KA, "b", ("deny", 403)),
        ("keys", "whip", KA, None, ("allow", "a", True, False)),
        ("keys", "whip", None, "a", ("deny", 401)),
        ("keys", "whip", "wrong", "a", ("deny", 401)),
        ("keys", "whep", None, "a", ("allow", "a", False, False)),
        ("keys", "whep", KA, "a", ("allow", "a", False, False)),  # a key is no viewing right
        ("tokens+keys", "whep", KA, "a", ("deny", 401)),
        ("tokens+keys", "whip", OP, "b", ("allow", "b", True, True)),
        # the webhook decides what no token or key settles
        ("webhook", "whip", None, "r", ("ask", "r", None)),
        ("webhook", "whip", "user", "r", ("ask", "r", "user")),
        ("webhook", "whep", "user", None, ("ask", None, "user")),
        ("webhook", "whip", KA, "a", ("allow", "a", True, False)),
        ("webhook", "whip", KA, "b", ("deny", 403)),
        # token_is_room: the bearer names a derived room, whatever the path says
        ("room", "whip", "live1", "x", ("allow", "derived", True, False)),
        ("room", "whip", "live1", None, ("allow", "derived", True, False)),
        ("room", "whip", None, "x", ("deny", 401)),
        ("room", "whep", "live1", None, ("allow", "derived", True, False)),
        ("room", "whep", None, "x", ("allow", "x", False, False)),
        ("room+tokens", "whip", OP, "x", ("allow", "derived", True, True)),
        ("room+tokens", "whip", "live1", None, ("deny", 401)),
        ("room+tokens", "whep", "live1", None, ("deny", 401)),
        ("room+keys", "whip", KA, None, ("allow", "a", True, False)),
        ("room+keys", "whip", KA, "x", ("deny", 403)),
    ],
)
def test_post_rules(
    config: str, role: Any, token: str | None, path: str | None, want: tuple[Any, ...]
) -> None:
    auth = Authority(secret=SECRET, **AUTH[config])  # type: ignore[arg-type]
    assert outcome(auth, auth.decide(role, token, path)) == want


def test_derived_rooms_are_reached_with_their_bearer_only() -> None:
    auth = Authority(token_is_room=True, secret=SECRET)
    room = auth.derived_room("live1")
    assert re.fullmatch(r"k-[0-9a-f]{16}", room) and "live1" not in room
    assert room == auth.derived_room("live1") != auth.derived_room("live2")
    other = Authority(token_is_room=True)  # another server: another secret
    assert other.derived_room("live1") != room
    hidden = Deny(403, "this room is reached with its token only")
    assert auth.decide("whep", None, room) == hidden
    assert auth.decide("whep", "live2", room) != hidden  # a bearer names its own room
    assert isinstance(auth.decide("whip", None, room), Deny)  # 401: publishing needs it
    keyed = Authority(token_is_room=True, keys=(("a", KA),), secret=SECRET)
    assert keyed.decide("whep", KA, keyed.derived_room("live1")) == hidden
    hooked = Authority(token_is_room=True, webhook=True, secret=SECRET)
    assert outcome(hooked, hooked.decide("whep", None, room)) == ("deny", 401)
    assert isinstance(hooked.decide("whep", "live1", None), AskWebhook)


def test_webhook_answers() -> None:
    auth = Authority(webhook=True, secret=SECRET)
    ask = auth.decide("whip", "user", "r")
    assert isinstance(ask, AskWebhook)
    assert auth.after_webhook(ask, True, None) == Allow("r", auth.digest("user"))
    assert auth.after_webhook(ask, True, "other") == Allow("other", auth.digest("user"))
    assert isinstance(auth.after_webhook(ask, False, None), Deny)
    anonymous = auth.decide("whep", None, "r")
    assert isinstance(anonymous, AskWebhook)
    assert auth.after_webhook(anonymous, True, None) == Allow("r", None)


def test_session_rules() -> None:
    auth = Authority(tokens=(OP,), keys=(("a", KA),), secret=SECRET)
    owner = auth.digest(KA)
    assert auth.session_access(KA, "live", owner) is None
    assert auth.session_access(OP, "live", owner) is None
    for token in (None, "wrong", KB):
        assert auth.session_access(token, "live", owner) == 401
        assert auth.session_access(token, "ended", owner) == 401
        assert auth.session_access(token, "unknown", None) == 401  # same answer: no oracle
    assert auth.session_access(KA, "unknown", None) == 401
    assert auth.session_access(KA, "ended", owner) == 404  # its owner may know it ended
    assert auth.session_access(OP, "unknown", None) == 404  # operators may know
    assert auth.session_access(None, "live", None) is None  # made without a credential
    assert auth.session_access(None, "ended", None) == 404
    assert Authority().session_access(None, "unknown", None) == 404  # no rule: as before


def test_stats_rules() -> None:
    assert Authority().stats_access(None) == "labels"
    auth = Authority(tokens=(OP,), metrics_token=MT)
    assert auth.stats_access(OP) == "operator"
    assert auth.stats_access(MT) == "labels"
    assert auth.stats_access(None) == auth.stats_access("wrong") == "denied"
    assert Authority(metrics_token=MT).stats_access(None) == "denied"
    assert Authority(keys=(("a", KA),)).stats_access(KA) == "labels"  # open stats


def test_every_secret_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens are compared with ``hmac.compare_digest`` against every configured secret,
    with no early exit on the first match (a counting wrapper, calling the real one)."""
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    auth = Authority(tokens=("t1", "t2", "t3"), metrics_token=MT, secret=SECRET)
    for token in ("t1", "t3", "nope", None):
        calls.clear()
        auth.stats_access(token)
        assert len(calls) == 4, token  # three tokens and the metrics token, every time
    keyed = Authority(tokens=("t1",), keys=(("a", "k1"), ("b", "k2")), secret=SECRET)
    for token in ("t1", "k1", "zz"):
        calls.clear()
        keyed.decide("whip", token, "a")
        assert len(calls) == 3, token


def test_session_labels() -> None:
    label = session_label("abc")
    assert re.fullmatch(r"[0-9a-f]{8}", label) and label == session_label("abc")


# ------------------------------------------------------------------ over HTTP


async def test_stats_and_metrics_need_a_token_when_one_is_set(
    serve: ServeFactory, peers: LoopThread
) -> None:
    """Before: /stats and /metrics were open and listed session ids."""
    offer = await make_offer(peers, "whip")
    async with (
        serve(tokens=(OP,), metrics_token=MT) as s,
        aiohttp.ClientSession() as http,
    ):
        status, h, _ = await post(http, f"{s.url}/whip/r1", offer, OP)
        assert status == 201
        sid = h["Location"].rsplit("/", 1)[1]
        for path in ("/stats", "/metrics"):
            for token in (None, "wrong", KA):
                async with http.get(s.url + path, headers=bearer(token)) as resp:
                    assert resp.status == 401, (path, token)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert sid not in await resp.text()
            for token in (MT, OP):
                async with http.get(s.url + path, headers=bearer(token)) as resp:
                    assert resp.status == 200
        async with http.get(s.url + "/stats", headers=bearer(MT)) as resp:
            text = await resp.text()
            assert sid not in text and session_label(sid) in text
        async with http.get(s.url + "/stats", headers=bearer(OP)) as resp:
            (info,) = (await resp.json())["rooms"]["r1"]["sessions"]
            assert info["session"] == sid  # the operator sees real ids
        assert s.server.counters["unauthorized"] >= 6


async def test_open_stats_show_labels_not_session_ids(
    serve: ServeFactory, peers: LoopThread
) -> None:
    async with serve() as s, aiohttp.ClientSession() as http:
        status, h, _ = await post(http, f"{s.url}/whip/r1", await make_offer(peers, "whip"))
        assert status == 201
        sid = h["Location"].rsplit("/", 1)[1]
        async with http.get(s.url + "/stats") as resp:
            text = await resp.text()
        assert sid not in text and session_label(sid) in text


async def test_sessions_need_the_credential_that_made_them(
    serve: ServeFactory, peers: LoopThread
) -> None:
    """Before: anyone with a session id could PATCH or DELETE it. Now: its credential or
    an operator token; an unknown id answers 401 like a foreign one (no oracle)."""
    offer = await make_offer(peers, "whip")
    keys = (("a", KA), ("b", KB))
    async with (
        serve(tokens=(OP,), keys=keys, rate_limit=0) as s,
        aiohttp.ClientSession() as http,
    ):
        status, h, _ = await post(http, f"{s.url}/whip/a", offer, KA)
        assert status == 201
        url = s.url + h["Location"]
        unknown = s.url + "/session/" + "x" * 32
        for method in ("PATCH", "DELETE"):
            for token in (None, "wrong", KB):
                assert await call(http, method, url, token) == 401, (method, token)
                assert await call(http, method, unknown, token) == 401, (method, token)
            assert await call(http, method, unknown, KA) == 401
            assert await call(http, method, unknown, OP) == 404
        assert await call(http, "PATCH", url, KA) == 204
        assert await call(http, "DELETE", url, KA) == 200
        assert await call(http, "DELETE", url, KA) == 404  # its owner learns it is gone
        assert await call(http, "DELETE", url) == 401  # nobody else does
        status, h, _ = await post(http, f"{s.url}/whip/a", offer, KA)
        assert status == 201
        assert await call(http, "DELETE", s.url + h["Location"], OP) == 200  # the operator


async def test_stream_keys_publish_to_their_room_only(
    serve: ServeFactory, peers: LoopThread
) -> None:
    whip = await make_offer(peers, "whip")
    whep = await make_offer(peers, "whep")
    async with (
        serve(keys=(("a", KA), ("b", KB))) as s,
        aiohttp.ClientSession() as http,
    ):
        status, h, _ = await post(http, f"{s.url}/whip/a", whip)
        assert status == 401 and h["WWW-Authenticate"] == 'Bearer realm="whip"'
        status, h, _ = await post(http, f"{s.url}/whip/a", whip, "wrong")
        assert status == 401 and 'error="invalid_token"' in h["WWW-Authenticate"]
        status, _, _ = await post(http, f"{s.url}/whip/b", whip, KA)
        assert status == 403
        status, _, text = await post(http, f"{s.url}/whip", whip, KA)  # no room: the key's
        assert status == 201, text
        assert set(s.server.rooms) == {"a"}
        # viewing is open with keys only, and a key changes nothing
        status, h, text = await post(http, f"{s.url}/whep/a", whep)
        assert status == 201, text
        viewer = s.url + h["Location"]
        status, _, text = await post(http, f"{s.url}/whep/a", whep, KA)
        assert status == 201, text
        assert await call(http, "DELETE", viewer) == 200  # made without a credential
    async with (
        serve(tokens=(OP,), keys=(("a", KA),)) as s,
        aiohttp.ClientSession() as http,
    ):
        status, _, _ = await post(http, f"{s.url}/whep/a", whep, KA)
        assert status == 401  # with operator tokens, viewing needs one; a key is not one
        status, _, _ = await post(http, f"{s.url}/whep/a", whep, OP)
        assert status == 409  # allowed: no publisher yet


async def test_keys_file_is_read_at_start(
    serve: ServeFactory, peers: LoopThread, tmp_path: Path
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# stream keys\n\n  a = {KA}\nb={KB}\n")
    async with serve(keys_file=str(path)) as s, aiohttp.ClientSession() as http:
        status, _, text = await post(http, f"{s.url}/whip/a", await make_offer(peers, "whip"), KA)
        assert status == 201, text
        assert s.server.config.keys[0] == ("a", KA)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot read the keys file"),
        (f"a={KA}\nno-equals-sign-{KB}\n", r"keys:2: not a ROOM=KEY line"),
        (f"../x={KA}\n", "ROOM=KEY"),
        (f"a={KA}\nb={KA}\n", "one room only"),
    ],
)
async def test_bad_keys_file_is_a_config_error(
    tmp_path: Path, content: str | None, match: str
) -> None:
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    config = ServerConfig(port=0, workers=1, keys_file=str(path))
    with pytest.raises(ConfigError, match=match) as info:
        async with open_server(config):
            pass  # pragma: no cover - never started
    assert KA not in str(info.value) and KB not in str(info.value)


async def test_token_is_room_never_shows_the_token(
    serve: ServeFactory, peers: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "secret-stream-name-42"
    whip = await make_offer(peers, "whip")
    async with serve(token_is_room=True) as s, aiohttp.ClientSession() as http:
        status, h, _ = await post(http, f"{s.url}/whip", whip, token)
        assert status == 201
        assert await call(http, "DELETE", s.url + h["Location"]) == 401  # needs the token
        outputs = [repr(s.server.config), repr(s.server.rooms), repr(await s.server.snapshot())]
        for path in ("/stats", "/metrics"):
            async with http.get(s.url + path) as resp:
                outputs.append(await resp.text())
        assert await call(http, "DELETE", s.url + h["Location"], token) == 200
    outputs += [r.getMessage() for r in caplog.records]
    assert not [text for text in outputs if token in text]


async def test_config_repr_hides_secrets() -> None:
    config = ServerConfig(
        tokens=(OP,), keys=(("a", KA),), metrics_token=MT, auth_webhook="http://u:p@h/"
    )
    assert not [s for s in (OP, KA, MT, "u:p") if s in repr(config)]


# ------------------------------------------------------------------ the webhook


async def test_webhook_allows_refuses_and_chooses_the_room(
    serve: ServeFactory, peers: LoopThread
) -> None:
    whip = await make_offer(peers, "whip")
    whep = await make_offer(peers, "whep")
    async with (
        webhook_server() as hook,
        serve(auth_webhook=hook.url, rate_limit=0) as s,
        aiohttp.ClientSession() as http,
    ):
        status, h, text = await post(http, f"{s.url}/whip/r1", whip, "user-1")
        assert status == 201, text
        assert hook.calls == [
            {"action": "whip", "room": "r1", "key": "user-1", "remote": "127.0.0.1"}
        ]
        publisher = s.url + h["Location"]
        assert await call(http, "DELETE", publisher) == 401  # needs the approved bearer
        hook.body = b'{"room": "chosen"}'
        status, _, text = await post(http, f"{s.url}/whip", whip)
        assert status == 201, text
        assert "chosen" in s.server.rooms
        assert hook.calls[-1] == {
            "action": "whip",
            "room": None,
            "key": None,
            "remote": "127.0.0.1",
        }
        hook.body = b""
        status, _, text = await post(http, f"{s.url}/whep/r1", whep, "viewer-1")
        assert status == 201, text
        assert hook.calls[-1]["action"] == "whep"
        for refusal in (401, 403, 404):
            hook.status = refusal
            status, _, _ = await post(http, f"{s.url}/whep/r1", whep, "viewer-2")
            assert status == 403
        hook.status = 200
        assert await call(http, "DELETE", publisher, "user-1") == 200
        hook.status, hook.body = 200, b'{"room": ".."}'
        status, _, _ = await post(http, f"{s.url}/whip/r2", whip)
        assert status == 502  # the webhook chose a name no room may have
        hook.body = b'{"room": "ok"}' + b" " * 5000
        status, h, _ = await post(http, f"{s.url}/whip/r2", whip)
        assert status == 503 and h["Retry-After"]  # an answer over 4 KB
        assert "ok" not in s.server.rooms


async def test_webhook_failures_are_503_and_logged_once_per_burst(
    serve: ServeFactory, peers: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    whip = await make_offer(peers, "whip")
    caplog.set_level(logging.WARNING, logger="sansio_aio.webrtc")
    async with (
        webhook_server() as hook,
        serve(auth_webhook=hook.url, webhook_timeout=0.3, retry_after=7, rate_limit=0) as s,
        aiohttp.ClientSession() as http,
    ):

        def failures() -> int:
            return sum("auth webhook failed" in r.getMessage() for r in caplog.records)

        hook.status = 500
        for _ in range(3):
            status, h, _ = await post(http, f"{s.url}/whip/r1", whip, "u")
            assert (status, h["Retry-After"]) == (503, "7")
        assert failures() == 1
        hook.status = 200
        status, _, _ = await post(http, f"{s.url}/whip/r1", whip, "u")
        assert status == 201
        assert any("answers again" in r.getMessage() for r in caplog.records)
        hook.gate = asyncio.Event()  # never set while asked: a timeout
        status, h, _ = await post(http, f"{s.url}/whip/r2", whip, "u")
        assert (status, h["Retry-After"]) == (503, "7")
        hook.gate.set()
        assert failures() == 2
        assert s.server.counters["webhook_errors"] == 4
        assert not [r for r in caplog.records if r.exc_info]


async def test_unreachable_webhook_is_503(serve: ServeFactory, peers: LoopThread) -> None:
    whip = await make_offer(peers, "whip")
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/auth"
        async with serve(auth_webhook=url) as s, aiohttp.ClientSession() as http:
            status, h, _ = await post(http, f"{s.url}/whip/r1", whip, "u")
            assert status == 503 and "Retry-After" in h
            assert s.server.rooms == {}


async def test_webhook_concurrency_is_bounded() -> None:
    counters: dict[str, int] = {}
    async with webhook_server() as hook:
        hook.gate = asyncio.Event()
        webhook = Webhook(hook.url, 10.0, concurrency=2, counters=counters)
        try:
            asks = [
                asyncio.ensure_future(webhook.ask("whip", f"r{i}", None, "127.0.0.1"))
                for i in range(6)
            ]
            assert await until(lambda: hook.in_flight == 2, 10)
            assert not any(a.done() for a in asks)
            hook.gate.set()
            answers = await asyncio.wait_for(asyncio.gather(*asks), 10)
        finally:
            await webhook.close()
        assert [a.status for a in answers] == [200] * 6
        assert hook.most_in_flight == 2 and len(hook.calls) == 6
        assert counters == {}
