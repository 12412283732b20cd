"""Who may do what on the WHIP/WHEP server: tokens, stream keys, the auth webhook.

Theory of operation
-------------------
:class:`Authority` decides; it does no I/O and reads no clock, so every rule is a
plain function of the configuration, the request's bearer token and the room its path
names. The HTTP layer asks it at each step and turns the answer into a response:

* ``decide(role, bearer, path_room)`` for a WHIP or WHEP ``POST``: :class:`Allow`
  (with the room to use and the digest of the credential that authorized it),
  :class:`Deny` (401 or 403), or :class:`AskWebhook` (the server then asks
  :class:`Webhook` and calls ``after_webhook``).
* ``session_access(bearer, exists, owner)`` for ``PATCH``/``DELETE`` of a session.
* ``stats_access(bearer)`` for ``/stats`` and ``/metrics``.

Secrets are never compared as strings: the bearer is reduced to
``HMAC-SHA256(server secret, bearer)`` once, and that digest is compared with
``hmac.compare_digest`` against the digest of every configured secret, with no early
exit, so the time taken does not depend on which secret (if any) matched or on their
lengths. The server secret is random per server (:mod:`secrets`); the same keyed hash
(with another label) names the rooms of ``token_is_room`` (``k-`` + 16 hex digits), so no
token or key ever appears in a room name, stats, metrics or a log line. A session keeps
the digest of the bearer that created it, never the bearer.

:class:`Webhook` is the one I/O part: it POSTs ``{"action", "room", "key", "remote"}``
to the operator's URL with aiohttp's client, at most ``concurrency`` at once, and reads
at most 4 KB of the answer; a run of failures is logged once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, final

from ._config import is_room_name

__all__ = [
    "Allow",
    "AskWebhook",
    "Authority",
    "Deny",
    "Webhook",
    "WebhookAnswer",
    "session_label",
]

log = logging.getLogger("sansio_aio.webrtc")

Role = Literal["whip", "whep"]

#: Bytes of a webhook's answer read at most (the rest is ignored: an error).
WEBHOOK_MAX_ANSWER = 4096

_DERIVED = re.compile(r"k-[0-9a-f]{16}")


@final
@dataclass(frozen=True, slots=True)
class Allow:
    """The request may go on, to ``room`` (``None``: the request names no room)."""

    room: str | None
    #: Digest of the credential that authorized it (the session remembers it), or
    #: ``None`` when none was needed (the session URL is then the capability).
    owner: bytes | None
    #: The bearer is an operator token.
    operator: bool = False


@final
@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse with ``status`` (401: no valid credential, 403: not for this room)."""

    status: int
    reason: str


@final
@dataclass(frozen=True, slots=True)
class AskWebhook:
    """Only the webhook can tell: ask it about ``room`` (may be ``None``) and ``key``."""

    action: Role
    room: str | None
    key: str | None


Decision = Allow | Deny | AskWebhook

StatsAccess = Literal["operator", "labels", "denied"]
SessionState = Literal["live", "ended", "unknown"]


def session_label(session: str) -> str:
    """A non-reversible label of a session id, shown instead of the id to callers that
    are not operators: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(session.encode()).hexdigest()[:8]


@final
class Authority:
    """The authorization rules of one server (see the module doc and docs/whip_whep.md)."""

    def __init__(
        self,
        *,
        tokens: Sequence[str] = (),
        keys: Sequence[tuple[str, str]] = (),
        metrics_token: str | None = None,
        token_is_room: bool = False,
        webhook: bool = False,
        secret: bytes | None = None,
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._tokens = [self.digest(t) for t in tokens]
        self._metrics = [self.digest(metrics_token)] if metrics_token else []
        self._keys = [(room, self.digest(key)) for room, key in keys]
        self.token_is_room = token_is_room
        self.webhook = webhook
        #: Publishing needs a credential (an operator token, a stream key, the webhook's
        #: approval, or under ``token_is_room`` the room's bearer).
        self.publish_guarded = bool(tokens or keys or webhook or token_is_room)
        #: Viewing needs a credential: an operator token or the webhook's approval.
        self.view_guarded = bool(tokens or webhook)
        #: ``/stats`` and ``/metrics`` need an operator or metrics token.
        self.stats_guarded = bool(tokens or metrics_token)
        #: Any rule at all: an unknown session is then answered like a foreign one (401).
        self.any_guard = self.publish_guarded or self.view_guarded

    # ------------------------------------------------------------------ primitives

    def digest(self, bearer: str | None) -> bytes:
        """``HMAC-SHA256(server secret, bearer)`` (of ``""`` for no bearer)."""
        return hmac.new(self._secret, b"cred:" + (bearer or "").encode(), hashlib.sha256).digest()

    def derived_room(self, bearer: str) -> str:
        """The room ``bearer`` names under ``token_is_room``: ``k-`` + 16 hex digits."""
        mac = hmac.new(self._secret, b"room:" + bearer.encode(), hashlib.sha256)
        return "k-" + mac.hexdigest()[:16]

    @staticmethod
    def _any(candidates: Sequence[bytes], given: bytes) -> bool:
        found = False
        for known in candidates:  # no early exit: every secret is compared
            found |= hmac.compare_digest(known, given)
        return found

    def _key_room(self, given: bytes) -> str | None:
        room = None
        for name, known in self._keys:  # no early exit
            if hmac.compare_digest(known, given):
                room = name
        return room

    # ------------------------------------------------------------------ decisions

    def decide(self, role: Role, bearer: str | None, path_room: str | None) -> Decision:
        """May a ``role`` POST carrying ``bearer`` go on, and to which room?

        ``path_room`` is the room the URL names (``None`` for ``POST /whip``). The room
        of an :class:`Allow` still has to be checked as a name by the caller (``None``
        or invalid: 400): authorization comes first, so an unauthenticated caller
        learns nothing about names.
        """
        given = self.digest(bearer)
        operator = self._any(self._tokens, given)
        key_room = self._key_room(given)
        owner = given if bearer else None
        # Under token_is_room a bearer that is not a stream key names its room, and the
        # path is ignored (as before the room names were derived), operator tokens too.
        names_room = self.token_is_room and bearer is not None and key_room is None
        room = self.derived_room(bearer) if names_room and bearer else path_room
        if operator:
            return Allow(room, owner, operator=True)
        # A derived room is reached through its bearer only: a path naming one is refused
        # (its name shows in stats, and must not work as a credential).
        hidden = (
            self.token_is_room
            and not names_room
            and path_room is not None
            and bool(_DERIVED.fullmatch(path_room))
        )
        if role == "whip":
            if not self.publish_guarded:
                return Allow(room, None)  # no rule: the session URL is the capability
            if key_room is not None:
                if path_room is not None and path_room != key_room:
                    return Deny(403, "this stream key is for another room")
                return Allow(key_room, owner)
            if names_room and not self.view_guarded:  # token_is_room, no tokens, no webhook
                return Allow(room, owner)
            if self.webhook and not hidden:
                return AskWebhook(role, room, bearer)
            return Deny(401, "a valid bearer token or stream key is required")
        if self.webhook and not hidden:
            return AskWebhook(role, room, bearer)
        if self.view_guarded:
            return Deny(401, "a valid bearer token is required to view")
        if hidden:
            return Deny(403, "this room is reached with its token only")
        if names_room:
            return Allow(room, owner)
        return Allow(room, None)  # open viewing: a stream key is not a viewing credential

    def after_webhook(
        self, ask: AskWebhook, approved: bool, chosen_room: str | None
    ) -> Allow | Deny:
        """The decision once the webhook approved (2xx, optionally choosing the room)
        or rejected (4xx) ``ask``."""
        if not approved:
            return Deny(403, "the authorization service refused this request")
        room = chosen_room if chosen_room is not None else ask.room
        return Allow(room, self.digest(ask.key) if ask.key else None)

    def session_access(
        self, bearer: str | None, session: SessionState, owner: bytes | None
    ) -> int | None:
        """May ``bearer`` PATCH or DELETE a session? ``None`` (go on), 401 or 404.

        ``session`` is ``"live"``, ``"ended"`` (recently; its ``owner`` still known) or
        ``"unknown"``. A session created with a credential needs that credential or an
        operator token; one created without (no rule applied to it) keeps its URL as the
        capability. When any rule is configured, an unknown session answers 401 to
        everyone but an operator, exactly like a session owned by someone else, so a
        caller without the credential cannot tell whether a session id exists (no
        404-vs-401 oracle); the owner of an ended session gets 404. Without any rule, an
        unknown session is 404, as before.
        """
        given = self.digest(bearer)
        operator = self._any(self._tokens, given)
        owned = hmac.compare_digest(owner if owner is not None else b"\0" * 32, given)
        allowed = session != "unknown" and (owner is None or owned or operator)
        if allowed:
            return None if session == "live" else 404
        if operator or not self.any_guard:
            return 404
        return 401

    def stats_access(self, bearer: str | None) -> StatsAccess:
        """Who reads ``/stats`` and ``/metrics``: an operator (real session ids), anyone
        else allowed (session ids replaced by :func:`session_label`), or nobody (401)."""
        given = self.digest(bearer)
        operator = self._any(self._tokens, given)
        metrics = self._any(self._metrics, given)
        if operator:
            return "operator"
        if metrics or not self.stats_guarded:
            return "labels"
        return "denied"


# ------------------------------------------------------------------ the webhook


@final
@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What the webhook said: ``status`` 200 (approved, ``room`` chosen or ``None``),
    403 (rejected), 502 (it chose an invalid room) or 503 (unavailable)."""

    status: int
    room: str | None = None
    reason: str = ""


class Webhook:
    """The operator's authorization URL, asked with aiohttp's client.

    At most ``concurrency`` requests are in flight; a request waits for a slot within
    the same ``timeout`` as the answer (then: 503). The client session is made on first
    use (on the running loop) and closed by :meth:`close`.
    """

    def __init__(
        self, url: str, timeout: float, *, concurrency: int = 16, counters: dict[str, int]
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.counters = counters
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._http: Any = None  # aiohttp.ClientSession (aiohttp loads with the server)
        self._failing = False

    async def ask(
        self, action: Role, room: str | None, key: str | None, remote: str | None
    ) -> WebhookAnswer:
        """POST the question; never raises for the webhook's faults (503 instead)."""
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency),
                trust_env=False,  # no proxy from the environment: the URL is the operator's
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        payload = {"action": action, "room": room, "key": key, "remote": remote}
        try:
            # one deadline for the wait for a slot, the answer and its body
            async with asyncio.timeout(self.timeout):
                async with (
                    self._slots,
                    self._http.post(self.url, json=payload, allow_redirects=False) as resp,
                ):
                    status = resp.status
                    if 400 <= status < 500:
                        return self._answered(WebhookAnswer(403))
                    if not 200 <= status < 300:
                        return self._failed(f"it answered {status}")
                    body = await _read_capped(resp.content, WEBHOOK_MAX_ANSWER)
        except TimeoutError:
            return self._failed(f"no answer within {self.timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return self._failed(f"{type(exc).__name__}: {exc}")
        if body is None:
            return self._failed(f"its answer is longer than {WEBHOOK_MAX_ANSWER} bytes")
        chosen = _chosen_room(body)
        if chosen is not None and not is_room_name(chosen):
            self._failed("it chose an invalid room name")
            return WebhookAnswer(502, None, "the authorization service chose an invalid room")
        return self._answered(WebhookAnswer(200, chosen))

    def _answered(self, answer: WebhookAnswer) -> WebhookAnswer:
        if self._failing:
            self._failing = False
            log.warning("auth webhook answers again")
        return answer

    def _failed(self, why: str) -> WebhookAnswer:
        self.counters["webhook_errors"] = self.counters.get("webhook_errors", 0) + 1
        if not self._failing:  # once per run of failures, not per request
            self._failing = True
            log.warning("auth webhook failed (%s): answering 503 until it answers again", why)
        return WebhookAnswer(503, None, "the authorization service is unavailable")

    async def close(self) -> None:
        """Close the client session."""
        http, self._http = self._http, None
        if http is not None:
            await http.close()


async def _read_capped(content: Any, limit: int) -> bytes | None:
    """Read a body up to ``limit`` bytes; ``None`` when it is longer."""
    data = b""
    for _ in range(limit + 2):  # bounded: each round reads at least one byte or ends
        chunk: bytes = await content.read(limit + 1 - len(data))
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            return None
    return None  # pragma: no cover - unreachable


def _chosen_room(body: bytes) -> str | None:
    """``room`` of a ``{"room": NAME}`` answer; anything else chooses nothing.

    A non-string ``room`` is returned as ``""`` (an invalid name: the caller refuses it).
    """
    try:
        data = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting fits in 4 KB
        return None
    if not isinstance(data, dict) or "room" not in data or data["room"] is None:
        return None
    room = data["room"]
    return room if isinstance(room, str) else ""
