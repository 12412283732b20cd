"""The cluster directory a WHIP/WHEP node keeps in Redis: live nodes, and who holds a room.

Theory of operation
-------------------
Several nodes act as one service by sharing a small directory in one Redis (standalone,
or a single primary behind Sentinel or a managed service; Redis Cluster is not supported:
a claim reads keys it cannot name in advance). Each node runs a :class:`Directory`; the
HTTP layer asks it, before opening a room locally, whether the room is free (it then
*claims* it) or held by another live node (it then redirects there, see ``_router.py``).

Key layout (``P`` is ``prefix``, ``"whip"`` by default; several clusters can share one
Redis with different prefixes):

* ``P:node:ID`` -- a hash, one per live node: ``url``, ``sessions``, ``viewers``,
  ``cpu``, ``capacity`` (from the node's ``load()``) and ``ttl`` (its ``node_ttl`` in
  ms). Written every heartbeat with expiry ``node_ttl``: a node that stops beating
  (killed, stalled, cut off) disappears when its entry expires. Its existence *is* the
  node's liveness.
* ``P:room:ROOM`` -- a string, the id of the node that holds the room, with expiry
  ``lease_ttl`` (its lease), renewed every heartbeat by its holder.
* ``P:nodes`` -- a set of node ids: the registry used to list nodes without scanning.
  Every beat adds the node's id; an id whose ``P:node:ID`` is gone is removed lazily
  by whichever node lists it (atomically: only if the hash still does not exist).

Rooms are listed with ``SCAN MATCH P:room:*`` (then ``MGET``), bounded per beat to
:data:`MAX_ROOMS_LISTED` keys (``stats()`` says ``rooms_truncated`` past it); the list is
informative only: claims never depend on it.

A room is claimable when its key is missing, or when its holder's node entry is gone
(the holder is dead, even if its lease has not expired yet). :meth:`Directory.claim` is
one Lua script, so it is atomic: of any number of concurrent claims of one room, on any
nodes, exactly one wins; the others learn the winner and its URL. A claim by a node
whose own entry is missing (Redis restarted, the node stalled) registers the node first,
so that a lease never points at a node the others would consider dead.

Only TTLs decide liveness: no node compares its clock with another's. A node's *age*
(seconds since its last beat) is ``ttl - PTTL`` as Redis reports it, advanced by the
local monotonic clock between two beats.

Timings (``heartbeat < node_ttl <= lease_ttl``): a node that stops beating vanishes
from Redis at most ``node_ttl`` after its last beat; from then on its rooms can be
claimed by others (claims check its entry, not the lease), and its room keys vanish at
most ``lease_ttl`` after its last beat. Other nodes' cached :meth:`~Directory.nodes`
drop it at the same moment (their cache ages entries locally), and in any case by their
next beat, so within ``node_ttl + heartbeat``. A node that comes back after that (it
was stalled, not dead) finds, at its next beat, its rooms taken by others: it forgets
them and calls ``on_lost(room)`` for each, so the caller can close what it served there.

Redis unreachable: every operation is bounded by ``op_timeout`` (redis-py's connect and
socket timeouts, its pool wait, and the whole call), redis-py's own retries are off, and
the failure is :exc:`ClusterUnavailable` (the caller answers 503). A refused connection
fails at once. A call that overruns is abandoned, not cancelled (redis-py can swallow a
cancellation that lands inside it), and ends by its own socket timeouts. ``up`` turns
False; one warning is logged, not one per beat, and one info line when Redis answers
again. Held rooms keep being served locally meanwhile. The first successful operation
after an outage (a beat, or a claim from the HTTP layer, which then wakes the heartbeat)
re-registers the node and re-claims every held room at once (``SET`` if missing: Redis
may have restarted empty; a room someone else claimed in between is lost, see above).
The heartbeat never dies: an unexpected exception is logged once per type and the beats
go on. A node cut off from a Redis that the others still reach is, to them, dead after
``node_ttl``: its rooms can be claimed elsewhere while it still serves them, until it
reconnects and gets ``on_lost`` (the price of staying available without Redis).

The Redis URL may carry a password (``redis://:PASS@HOST:PORT/DB``, ``rediss://`` for
TLS, ``unix:///path.sock``): it is given to redis-py only; logs, exceptions and
``stats()`` show the URL without credentials, and any error text is scrubbed of the
password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, final
from urllib.parse import unquote, urlsplit

from .._errors import ConfigError, SansioAioError

__all__ = ["MAX_ROOMS_LISTED", "ClusterUnavailable", "Directory", "NodeInfo", "Owner"]

log = logging.getLogger("sansio_aio.webrtc.cluster")

T = TypeVar("T")

#: Room keys read per beat for :meth:`Directory.rooms` (a view, not used by claims).
MAX_ROOMS_LISTED = 10_000
#: Nodes listed per beat (the registry is read whole, the first ones by id are kept).
MAX_NODES_LISTED = 1_000
#: Largest node TTL believed in an entry (seconds); past it the entry is corrupt.
_MAX_TTL = 86_400.0
#: Keys per Lua call when renewing or releasing many rooms (bounds a script's run time).
_CHUNK = 500
#: Connections to Redis at once (callers beyond it wait, within ``op_timeout``).
_MAX_CONNECTIONS = 32

_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ROOM_RE = re.compile(r"[A-Za-z0-9_.~-]{1,64}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# KEYS[1] room key, KEYS[2] our node key; ARGV[1] our id, ARGV[2] lease ms,
# ARGV[3] node key prefix ("P:node:").
# -> {0, owner, url}: held by another live node; {-1}: we are not registered;
#    {1}: ours, renewed; {2}: was free, now ours; {3}: its holder was dead, now ours.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  local url = redis.call('HGET', ARGV[3] .. owner, 'url')
  if url then return {0, owner, url} end
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if owner then return {3} end
return {2}
"""

# KEYS[1] room key; ARGV[1] node key prefix, ARGV[2] our id -> {} or {owner, url}
_LOOKUP = """
local owner = redis.call('GET', KEYS[1])
if not owner then return {} end
if owner == ARGV[2] then return {owner, ''} end
local url = redis.call('HGET', ARGV[1] .. owner, 'url')
if not url then return {} end
return {owner, url}
"""

# KEYS room keys; ARGV[1] our id, ARGV[2] lease ms -> per key: 1 renewed, 2 re-claimed
# (it was missing), 0 held by another node.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  elseif not owner then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
"""

# KEYS room keys; ARGV[1] our id -> how many were ours (and deleted)
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""

# KEYS[1] node key, KEYS[2] registry; ARGV[1] node id: forget the id if its entry is gone
_PRUNE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
"""


class ClusterUnavailable(SansioAioError):
    """Redis cannot be reached (or refused the operation): the caller answers 503.

    The message names Redis by host and port only, never its credentials.
    """


@final
@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A live node as seen in the directory (the load it reported at its last beat)."""

    id: str
    #: Base URL other nodes and clients reach it at.
    url: str
    sessions: int
    viewers: int
    cpu: float
    #: Sessions it accepts in all; ``0``: it declared none (treated as unlimited).
    capacity: int
    #: Seconds since its last beat.
    age: float


@final
@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a room: ``mine`` when it is this node."""

    node: str
    url: str
    mine: bool


def _no_load() -> Mapping[str, float]:
    return {}


def _redact(url: str) -> str:
    """``url`` without credentials (and without its query, which may carry them too)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"


def _where(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 6379}"


@final
class Directory:
    """This node's view of the cluster directory in Redis; see the module doc.

    Args:
        redis_url: ``redis://[[USER]:PASS@]HOST[:PORT][/DB]``, ``rediss://`` (TLS) or
            ``unix://PATH``; query options as redis-py takes them.
        node_id: this node's id, 1-64 characters of ``[A-Za-z0-9_.-]``.
        node_url: the base URL other nodes and clients reach this node at.
        prefix: prefix of every key (1-64 characters of ``[A-Za-z0-9_.:-]``).
        heartbeat: seconds between two beats.
        node_ttl: expiry of this node's entry (must exceed ``heartbeat``).
        lease_ttl: expiry of a held room's lease (at least ``node_ttl``).
        load: called every beat for ``sessions``, ``viewers``, ``cpu``, ``capacity``
            (missing ones are 0; a raising ``load`` keeps the last values).
        op_timeout: bound on each Redis operation (connect, read, write, whole call).
        on_lost: called with a room this node held and another node now holds.

    Raises:
        ConfigError: a malformed URL, node id or prefix, or inconsistent timings.
    """

    def __init__(
        self,
        redis_url: str,
        node_id: str,
        node_url: str,
        *,
        prefix: str = "whip",
        heartbeat: float = 1.0,
        node_ttl: float = 3.0,
        lease_ttl: float = 5.0,
        load: Callable[[], Mapping[str, float]] = _no_load,
        op_timeout: float = 0.5,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        if not _NODE_ID_RE.fullmatch(node_id):
            raise ConfigError(f"node id must be 1-64 characters of [A-Za-z0-9_.-], got {node_id!r}")
        if not _PREFIX_RE.fullmatch(prefix):
            raise ConfigError(f"prefix must be 1-64 characters of [A-Za-z0-9_.:-], got {prefix!r}")
        if not node_url:
            raise ConfigError("node_url must not be empty")
        if not (0 < heartbeat < node_ttl <= lease_ttl) or not math.isfinite(lease_ttl):
            raise ConfigError("cluster timings must satisfy 0 < heartbeat < node_ttl <= lease_ttl")
        if not 0 < op_timeout < math.inf:
            raise ConfigError("op_timeout must be > 0")
        self.node_id = node_id
        self.node_url = node_url
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.node_ttl = node_ttl
        self.lease_ttl = lease_ttl
        self.op_timeout = op_timeout
        #: The last Redis operation succeeded.
        self.up = False
        self._load = load
        self._on_lost = on_lost
        self._redis, self.redis_url, self._where, self._secrets = _client(redis_url, op_timeout)
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._node_key = f"{prefix}:node:{node_id}"
        self._node_prefix = f"{prefix}:node:"
        self._room_prefix = f"{prefix}:room:"
        self._registry = f"{prefix}:nodes"
        self._claim_script = self._redis.register_script(_CLAIM)
        self._lookup_script = self._redis.register_script(_LOOKUP)
        self._renew_script = self._redis.register_script(_RENEW)
        self._release_script = self._redis.register_script(_RELEASE)
        self._prune_script = self._redis.register_script(_PRUNE)
        self._held: set[str] = set()
        self._values: dict[str, float] = {"sessions": 0, "viewers": 0, "cpu": 0.0, "capacity": 0}
        #: (info, its ttl in s, when fetched: monotonic) per node, from the last beat
        self._nodes: list[tuple[NodeInfo, float, float]] = []
        self._rooms: dict[str, str] = {}
        self._rooms_truncated = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._started = False
        self._closed = False
        self._down_since: float | None = None  # monotonic, while a warning stands
        self._logged: set[str] = set()  # kinds of unexpected failure logged once
        self._abandoned: set[asyncio.Future[Any]] = set()  # calls that overran op_timeout
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "beats",
                "redis_errors",
                "claims",
                "claimed",
                "taken_over",
                "redirected",
                "lookups",
                "releases",
                "lost_leases",
                "reclaimed_leases",
                "unexpected_errors",
            ),
            0,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Register this node (one beat) and start the heartbeat.

        Redis unreachable: logged once, ``up`` stays False and the heartbeat keeps
        trying; this does not raise.
        """
        if self._started:
            return
        self._started = True
        with contextlib.suppress(ClusterUnavailable):
            await self._beat()
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"cluster-heartbeat-{self.node_id}"
        )

    async def close(self) -> None:
        """Stop the heartbeat, release every held room and delete this node's entry
        (best effort, bounded by a few ``op_timeout``); idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # bounded: even if a cancellation were lost, the loop sees _closed and ends
            await asyncio.wait({task}, timeout=self.op_timeout + 1.0)
            if task.done() and not task.cancelled():
                task.exception()
        held = sorted(self._held)
        self._held.clear()
        try:
            for chunk in _chunks([self._room_prefix + r for r in held]):
                await self._op(self._release_script(keys=chunk, args=[self.node_id]))
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self._node_key)
            pipe.srem(self._registry, self.node_id)
            await self._op(pipe.execute())
        except ClusterUnavailable:
            pass  # the leases and the entry expire by themselves
        if self._abandoned:  # calls that overran: let them end by their own timeouts
            await asyncio.wait(set(self._abandoned), timeout=2 * self.op_timeout)
            for job in self._abandoned:
                job.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._redis.aclose(), self.op_timeout)
        self.up = False

    async def __aenter__(self) -> Directory:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ rooms

    async def claim(self, room: str) -> Owner:
        """Take ``room`` if it is free or its holder is dead (or renew it if ours);
        else return its live holder. Atomic across nodes.

        Raises:
            ClusterUnavailable: Redis cannot be reached.
        """
        key = self._room_key(room)
        self.counters["claims"] += 1
        for _ in range(2):
            reply = await self._op(
                self._claim_script(
                    keys=[key, self._node_key],
                    args=[self.node_id, _ms(self.lease_ttl), self._node_prefix],
                )
            )
            code = int(reply[0])
            if code == -1:  # our entry is gone (Redis restarted, or we stalled)
                await self._register()
                continue
            if code == 0:
                self.counters["redirected"] += 1
                if room in self._held:  # we held it, another node took it
                    self._lose(room)
                return Owner(str(reply[1]), str(reply[2]), False)
            if code != 1:
                self.counters["claimed"] += 1
            if code == 3:
                self.counters["taken_over"] += 1
            self._held.add(room)
            return Owner(self.node_id, self.node_url, True)
        raise ClusterUnavailable(f"Redis at {self._where}: this node's entry cannot be kept")

    async def lookup(self, room: str) -> Owner | None:
        """The live node holding ``room`` now, or ``None`` (nobody alive holds it).

        Raises:
            ClusterUnavailable: Redis cannot be reached.
        """
        key = self._room_key(room)
        self.counters["lookups"] += 1
        reply = await self._op(
            self._lookup_script(keys=[key], args=[self._node_prefix, self.node_id])
        )
        if not reply:
            return None
        node = str(reply[0])
        if node == self.node_id:
            return Owner(node, self.node_url, True)
        return Owner(node, str(reply[1]), False)

    async def release(self, room: str) -> None:
        """Give ``room`` back (deleted only if this node still holds it). It is
        forgotten locally first, so even when Redis is down (then this raises
        :exc:`ClusterUnavailable` and the lease expires by itself) it is not renewed."""
        key = self._room_key(room)
        self._held.discard(room)
        self.counters["releases"] += 1
        await self._op(self._release_script(keys=[key], args=[self.node_id]))

    def held(self) -> frozenset[str]:
        """The rooms this node holds (claimed, not released, not lost)."""
        return frozenset(self._held)

    # ------------------------------------------------------------------ cached views

    def nodes(self) -> list[NodeInfo]:
        """Live nodes (this one included) as of the last beat, by id; no Redis call.

        Ages advance with the local clock, and a node whose entry has expired since
        the last beat is left out."""
        now = time.monotonic()
        out: list[NodeInfo] = []
        for info, ttl, fetched in self._nodes:
            age = info.age + (now - fetched)
            if age < ttl:
                out.append(
                    NodeInfo(
                        info.id,
                        info.url,
                        info.sessions,
                        info.viewers,
                        info.cpu,
                        info.capacity,
                        round(age, 3),
                    )
                )
        return out

    def rooms(self) -> dict[str, str]:
        """Room -> holder's node id as of the last beat (at most
        :data:`MAX_ROOMS_LISTED`); no Redis call."""
        return dict(self._rooms)

    def least_loaded(self, exclude: str | None = None) -> NodeInfo | None:
        """The live node (not ``exclude``) with room left and the lowest
        ``sessions / capacity`` (then CPU, sessions, id); ``None`` if none has room.
        A node that declares no capacity (0) counts as empty. No Redis call."""
        best: tuple[tuple[float, float, int, str], NodeInfo] | None = None
        for node in self.nodes():
            if node.id == exclude:
                continue
            if node.capacity > 0 and node.sessions >= node.capacity:
                continue
            ratio = node.sessions / node.capacity if node.capacity > 0 else 0.0
            rank = (ratio, node.cpu, node.sessions, node.id)
            if best is None or rank < best[0]:
                best = (rank, node)
        return None if best is None else best[1]

    def stats(self) -> dict[str, Any]:
        """JSON-ready: this node, Redis (without credentials), ``up``, the cached
        nodes and rooms, the rooms held, and counters."""
        return {
            "node": self.node_id,
            "url": self.node_url,
            "redis": self.redis_url,
            "up": self.up,
            "nodes": [asdict(n) for n in self.nodes()],
            "rooms": self.rooms(),
            "rooms_truncated": self._rooms_truncated,
            "held": sorted(self._held),
            "counters": dict(self.counters),
        }

    # ------------------------------------------------------------------ heartbeat

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.heartbeat
        while not self._closed:
            delay = next_at - loop.time()
            if delay > 0 and not self._wake.is_set():
                tick = loop.call_later(delay, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    tick.cancel()
            self._wake.clear()
            next_at = loop.time() + self.heartbeat
            if self._closed:
                return
            try:
                await self._beat()
            except ClusterUnavailable:
                pass  # counted and logged (once) by _op
            except Exception as exc:  # never let the heartbeat die
                self.counters["unexpected_errors"] += 1
                self._log_once(type(exc).__name__, "cluster: heartbeat failed", exc)

    async def _beat(self) -> None:
        self._read_load()
        await self._register()
        await self._renew()
        await self._refresh_nodes()
        await self._refresh_rooms()
        self.counters["beats"] += 1

    def _read_load(self) -> None:
        try:
            values = self._load()
            new = {k: float(values.get(k, 0)) for k in ("sessions", "viewers", "cpu", "capacity")}
        except Exception as exc:
            self.counters["unexpected_errors"] += 1
            self._log_once("load", "cluster: load() failed; keeping the last values", exc)
            return
        if all(math.isfinite(v) for v in new.values()):
            self._values = new

    async def _register(self) -> None:
        v = self._values
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            self._node_key,
            mapping={
                "url": self.node_url,
                "sessions": int(v["sessions"]),
                "viewers": int(v["viewers"]),
                "cpu": repr(float(v["cpu"])),
                "capacity": int(v["capacity"]),
                "ttl": _ms(self.node_ttl),
            },
        )
        pipe.pexpire(self._node_key, _ms(self.node_ttl))
        pipe.sadd(self._registry, self.node_id)
        await self._op(pipe.execute())

    async def _renew(self) -> None:
        rooms = sorted(self._held)
        for start in range(0, len(rooms), _CHUNK):
            chunk = rooms[start : start + _CHUNK]
            keys = [self._room_prefix + r for r in chunk]
            reply = await self._op(
                self._renew_script(keys=keys, args=[self.node_id, _ms(self.lease_ttl)])
            )
            stale: list[str] = []
            for room, code in zip(chunk, reply, strict=True):
                if room not in self._held:  # released while the script ran
                    if int(code) == 2:
                        stale.append(self._room_prefix + room)  # we just re-set it: undo
                    continue
                if int(code) == 2:
                    self.counters["reclaimed_leases"] += 1
                elif int(code) == 0:
                    self._lose(room)
            if stale:
                await self._op(self._release_script(keys=stale, args=[self.node_id]))

    async def _refresh_nodes(self) -> None:
        ids = sorted(str(i) for i in await self._op(self._redis.smembers(self._registry)))
        ids = ids[:MAX_NODES_LISTED]
        pipe = self._redis.pipeline(transaction=False)
        for node in ids:
            pipe.hgetall(self._node_prefix + node)
            pipe.pttl(self._node_prefix + node)
        replies = await self._op(pipe.execute()) if ids else []
        fetched = time.monotonic()
        nodes: list[tuple[NodeInfo, float, float]] = []
        gone: list[str] = []
        for i, node in enumerate(ids):
            fields, pttl = replies[2 * i], int(replies[2 * i + 1])
            if not fields or pttl < 0:
                if not fields:
                    gone.append(node)
                continue
            entry = _node_info(node, fields, pttl)
            if entry is not None:
                nodes.append((entry[0], entry[1], fetched))
        self._nodes = nodes
        for node in gone:
            await self._op(
                self._prune_script(keys=[self._node_prefix + node, self._registry], args=[node])
            )

    async def _refresh_rooms(self) -> None:
        keys: list[str] = []
        cursor = 0
        match = self._room_prefix + "*"
        for _ in range(MAX_ROOMS_LISTED // 100):  # SCAN calls per beat, bounded
            cursor, batch = await self._op(self._redis.scan(cursor, match=match, count=1000))
            keys.extend(str(k) for k in batch)
            if int(cursor) == 0 or len(keys) >= MAX_ROOMS_LISTED:
                break
        keys = sorted(set(keys))[:MAX_ROOMS_LISTED]
        rooms: dict[str, str] = {}
        n = len(self._room_prefix)
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            values = await self._op(self._redis.mget(chunk))
            for key, node in zip(chunk, values, strict=True):
                if node is not None and _ROOM_RE.fullmatch(key[n:]):
                    rooms[key[n:]] = str(node)
        self._rooms = rooms
        self._rooms_truncated = int(cursor) != 0

    # ------------------------------------------------------------------ helpers

    def _room_key(self, room: str) -> str:
        if not _ROOM_RE.fullmatch(room):
            raise ConfigError("room names are 1-64 characters of [A-Za-z0-9_.~-]")
        if self._closed:
            raise ClusterUnavailable("the cluster directory is closed")
        return self._room_prefix + room

    def _lose(self, room: str) -> None:
        self._held.discard(room)
        self.counters["lost_leases"] += 1
        log.warning(
            "cluster: room %s is now held by another node; node %s forgets it", room, self.node_id
        )
        if self._on_lost is not None:
            try:
                self._on_lost(room)
            except Exception as exc:
                self.counters["unexpected_errors"] += 1
                self._log_once("on_lost", "cluster: on_lost failed", exc)

    async def _op(self, call: Awaitable[T]) -> T:
        """Await one Redis call, bounded by ``op_timeout``; keep ``up`` and the logs in
        step. The call runs as its own task and is never cancelled from here: redis-py
        may swallow a cancellation that lands inside it (the task would then go on as
        if not cancelled), so a call that overruns is left to end by its own socket
        timeouts, and reaped."""
        job = asyncio.ensure_future(call)
        try:
            done, _ = await asyncio.wait({job}, timeout=self.op_timeout)
        except asyncio.CancelledError:
            self._abandon(job)  # our caller went away; the call ends by itself
            raise
        failure: BaseException | None
        if not done:
            self._abandon(job)
            failure = TimeoutError()
        else:
            failure = job.exception()
            if failure is not None and not isinstance(failure, self._errors):
                raise failure  # not Redis being away: a bug, the caller's to see
        if failure is not None:
            self.counters["redis_errors"] += 1
            why = self._why(failure)
            self.up = False
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "cluster: Redis at %s unreachable (%s); serving the rooms held, "
                    "refusing new ones (node %s)",
                    self._where,
                    why,
                    self.node_id,
                )
            raise ClusterUnavailable(f"Redis at {self._where}: {why}") from None
        result = job.result()
        if not self.up:
            self.up = True
            if self._down_since is not None:
                down = time.monotonic() - self._down_since
                self._down_since = None
                log.info(
                    "cluster: Redis at %s is back after %.1f s; re-registering, "
                    "re-claiming %d held rooms (node %s)",
                    self._where,
                    down,
                    len(self._held),
                    self.node_id,
                )
                self._wake.set()  # a full beat now, not at the next tick
        return result

    def _abandon(self, job: asyncio.Future[Any]) -> None:
        self._abandoned.add(job)
        job.add_done_callback(self._reap)

    def _reap(self, job: asyncio.Future[Any]) -> None:
        self._abandoned.discard(job)
        if not job.cancelled():
            job.exception()  # retrieved: no "exception was never retrieved" at exit

    def _why(self, exc: BaseException) -> str:
        text = str(exc) or f"no answer within {self.op_timeout:g} s"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return f"{type(exc).__name__}: {text}"[:300]

    def _log_once(self, kind: str, what: str, exc: BaseException) -> None:
        if kind in self._logged:
            return
        self._logged.add(kind)
        log.error("%s (%s; node %s; logged once)", what, self._why(exc), self.node_id)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield list(items[start : start + _CHUNK])


def _node_info(node: str, fields: Mapping[str, str], pttl: int) -> tuple[NodeInfo, float] | None:
    """A node's entry and its ttl in seconds (``None``: malformed, ignored)."""
    try:
        ttl = int(fields["ttl"]) / 1000
        cpu = float(fields.get("cpu", 0.0))
        if not (0 < ttl <= _MAX_TTL and math.isfinite(cpu) and cpu >= 0):
            return None  # corrupt or hostile: one bad entry must not break the refresh
        info = NodeInfo(
            id=node,
            url=fields["url"],
            sessions=int(fields.get("sessions", 0)),
            viewers=int(fields.get("viewers", 0)),
            cpu=cpu,
            capacity=int(fields.get("capacity", 0)),
            age=max(0.0, ttl - pttl / 1000),
        )
    except (KeyError, ValueError, OverflowError):
        return None
    return info, ttl


def _client(url: str, op_timeout: float) -> tuple[Any, str, str, tuple[str, ...]]:
    """redis-py's asyncio client for ``url``: (client, URL without credentials,
    ``HOST:PORT``, the secrets to scrub from messages)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ConfigError("bad Redis URL: use redis://[:PASSWORD@]HOST:PORT/DB") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("the Redis URL must start with redis://, rediss:// or unix://")
    safe = _redact(url)
    secrets = tuple(s for s in {parts.password or "", unquote(parts.password or "")} if len(s) >= 1)
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ConfigError("the cluster needs redis-py: pip install 'sansio-aio[cluster]'") from None
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=_MAX_CONNECTIONS,
            timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            socket_timeout=op_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
    except (ValueError, TypeError) as exc:
        text = str(exc)
        for secret in secrets:
            text = text.replace(secret, "***")
        raise ConfigError(f"bad Redis URL {safe}: {text}") from None
    # from_pool: the client owns the pool (its aclose() closes the connections)
    return aioredis.Redis.from_pool(pool), safe, _where(url), secrets
