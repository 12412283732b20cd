"""Hostile clients of the WHIP/WHEP server: HTTP and UDP attacks, each bounded.

Shared by ``tests/webrtc/test_hostile.py`` (small counts: seconds, in ``make test``) and
``bench/whip_abuse.py`` (large counts, with memory, fds and threads measured). Every
attack sends only to the URL or address it is given (loopback, or a private network
namespace the caller made), is bounded in count and in time, and returns what came back
(status codes counted per attack) so the caller asserts the server's behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

SDP = {"Content-Type": "application/sdp"}
FRAG = "application/trickle-ice-sdpfrag"
STUN_COOKIE = 0x2112A442


@dataclass
class Scale:
    """How hard each attack pushes (every count is also the loop bound)."""

    #: Requests per HTTP attack.
    requests: int = 10
    #: Connections that trickle their request one byte at a time.
    slow_clients: int = 4
    #: Seconds between two bytes of a slow client.
    slow_gap: float = 0.5
    #: Longest a slow client keeps trying (seconds).
    slow_for: float = 8.0
    #: Connections opened at once and held (connection caps).
    held_connections: int = 48
    #: Datagrams per kind of bad datagram.
    datagrams: int = 20
    #: Small datagrams sent as fast as possible (the flood).
    flood: int = 2000


@dataclass
class Report:
    """What each attack got back: ``{attack: Counter(status or outcome)}``."""

    results: dict[str, Counter[Any]] = field(default_factory=dict)

    def add(self, attack: str, outcome: Any) -> None:
        """Count one outcome of ``attack``."""
        self.results.setdefault(attack, Counter())[outcome] += 1

    def statuses(self, attack: str) -> set[Any]:
        """The distinct outcomes of ``attack``."""
        return set(self.results.get(attack, Counter()))


# ------------------------------------------------------------------ bad offers


def bad_offers(good: str) -> dict[str, tuple[str, str]]:
    """Malformed or abusive variants of a real offer ``good``: name -> (content type, body)."""
    text = good.replace("\r\n", "\n")
    head, _, rest = text.partition("\nm=")
    sections = ["m=" + s for s in ("\n" + "m=" + rest).split("\nm=")[1:]] if rest else []
    video = next((s for s in sections if s.startswith("m=video")), sections[0] if sections else "")
    cands = "".join(
        f"a=candidate:{i} 1 udp 2130706431 10.99.{i // 250}.{i % 250 + 2} {5000 + i} typ host\n"
        for i in range(150)
    )

    def sdp(*parts: str) -> str:
        return "\n".join(p.rstrip("\n") for p in parts).replace("\n", "\r\n") + "\r\n"

    return {
        "garbage": ("application/sdp", "hello, server\r\n" * 10),
        "empty_media": ("application/sdp", sdp(head)),
        "three_videos": ("application/sdp", sdp(head, *sections, video, video)),
        "hundred_mlines": ("application/sdp", sdp(head, *([video] * 100))),
        "no_fingerprint": (
            "application/sdp",
            sdp(*(line for line in text.split("\n") if not line.startswith("a=fingerprint"))),
        ),
        "150_candidates": (
            "application/sdp",
            sdp(head, *sections[:1]) + cands.replace("\n", "\r\n"),
        ),
        "wrong_type": ("text/plain", good),
        "oversize": ("application/sdp", good + "a=x-pad:" + "x" * 70_000 + "\r\n"),
        "binary": ("application/sdp", os.urandom(2000).decode("latin-1")),
    }


# ------------------------------------------------------------------ HTTP


async def http_attacks(
    base: str,
    good_offer: str,
    *,
    victim: str | None = None,
    victim_etag: str | None = None,
    token: str | None = None,
    scale: Scale | None = None,
    report: Report | None = None,
) -> Report:
    """Unauthenticated reads, session hijacks, bad offers and rooms, WHEP to nowhere,
    malformed trickle, and a burst of POSTs. ``victim`` is a live session's URL; ``token``
    (if the server wants one) is sent with the bad offers, rooms and trickles, so they
    reach the checks behind authentication."""
    scale = scale or Scale()
    report = report or Report()
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def status(method: str, url: str, body: str = "", **headers: str) -> int:
            raw = URL(url, encoded=True)  # sent as written: "/whip/.." stays "/whip/.."
            try:
                async with http.request(method, raw, data=body, headers=headers) as resp:
                    await resp.read()
                    return resp.status
            except (aiohttp.ClientError, TimeoutError):
                return -1  # closed on us: counted as such

        for path in ("/stats", "/metrics"):
            report.add("read_unauthenticated", await status("GET", base + path))
            text = await _text(http, base + path)
            if victim is not None and victim.rsplit("/", 1)[1] in text:
                report.add("read_unauthenticated", "LEAKED_SESSION_ID")
        if victim is not None:
            frag = "a=ice-ufrag:zz\r\na=ice-pwd:zzzzzzzzzzzzzzzzzzzzzz\r\n"
            etag = victim_etag or "*"
            for stranger in ({}, {"Authorization": "Bearer wrong"}):
                report.add("hijack", await status("DELETE", victim, **stranger))
                headers = {"Content-Type": FRAG, "If-Match": etag, **stranger}
                report.add("hijack", await status("PATCH", victim, frag, **headers))
        for name, (ctype, body) in bad_offers(good_offer).items():
            for i in range(max(1, scale.requests // 5)):
                url = f"{base}/whip/bad-{name}-{i}"
                got = await status("POST", url, body, **{"Content-Type": ctype}, **auth)
                report.add("bad_offer", got)
        for room in ("..", ".", "x" * 65, "a%2Fb", "%00"):
            got = await status("POST", f"{base}/whip/{room}", good_offer, **SDP, **auth)
            report.add("bad_room", got)
        for i in range(scale.requests):
            got = await status("POST", f"{base}/whep/none-{i}", good_offer, **SDP, **auth)
            report.add("whep_nowhere", got)
        bad_frag = "a=candidate:1 1 udp notanumber 10.99.0.9 x typ host\r\n"
        for _ in range(max(1, scale.requests // 5)):
            if victim is not None:
                headers = {"Content-Type": FRAG, "If-Match": "*", **auth}
                got = await status("PATCH", victim, bad_frag, **headers)
                report.add("bad_trickle", got)
        burst = [
            status("POST", f"{base}/whip/burst-{i}", "v=0\r\n", **SDP, **auth)
            for i in range(scale.requests * 4)
        ]
        for got in await asyncio.gather(*burst):
            report.add("burst", got)
    return report


async def _text(http: aiohttp.ClientSession, url: str) -> str:
    try:
        async with http.get(url) as resp:
            return (await resp.content.read(1 << 20)).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError):
        return ""


async def slow_clients(host: str, port: int, scale: Scale | None = None) -> list[float | None]:
    """``scale.slow_clients`` connections send a request one byte per ``slow_gap`` seconds;
    returns, per connection, the seconds until the server closed it (None: still open
    after ``slow_for`` seconds)."""
    scale = scale or Scale()
    request = b"POST /whip/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"

    async def one() -> float | None:
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            return 0.0
        try:
            for i in range(len(request)):
                if time.monotonic() - t0 > scale.slow_for:
                    return None
                writer.write(request[i : i + 1])
                try:
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(1024), scale.slow_gap)
                except TimeoutError:
                    continue  # no answer yet: the next byte
                except OSError:
                    return time.monotonic() - t0
                if not data:  # closed (or answered and closed)
                    return time.monotonic() - t0
            return None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    return list(await asyncio.gather(*(one() for _ in range(scale.slow_clients))))


async def held_connections(host: str, port: int, scale: Scale | None = None) -> tuple[int, int]:
    """Open ``scale.held_connections`` idle connections at once; returns (still open after
    a second, closed by the server within that second)."""
    scale = scale or Scale()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(scale.held_connections):
            try:
                conns.append(await asyncio.wait_for(asyncio.open_connection(host, port), 5))
            except (OSError, TimeoutError):
                break

        async def closed(reader: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(reader.read(1024), 1.0) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        shut = await asyncio.gather(*(closed(r) for r, _ in conns))
        return shut.count(False), shut.count(True)
    finally:
        for _, w in conns:
            w.close()
        for _, w in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 2)


async def malformed_http(host: str, port: int, scale: Scale | None = None) -> Counter[int]:
    """Send broken request heads; returns the status codes (or -1: closed silently)."""
    scale = scale or Scale()
    heads = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /whip/a HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /whip/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n",
    ]
    out: Counter[int] = Counter()
    for i in range(max(len(heads), scale.requests)):
        head = heads[i % len(heads)]
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            out[-2] += 1
            continue
        try:
            writer.write(head)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 5)
            m = re.match(rb"HTTP/1\.[01] (\d{3})", line)
            out[int(m.group(1)) if m else -1] += 1
        except (OSError, TimeoutError):
            out[-1] += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)
    return out


# ------------------------------------------------------------------ UDP


def stun_header(kind: int, body: bytes, txid: bytes | None = None) -> bytes:
    """A STUN header for ``body`` (no integrity)."""
    return struct.pack("!HHI", kind, len(body), STUN_COOKIE) + (txid or os.urandom(12)) + body


def bad_datagrams(server_ufrag: str | None = None) -> dict[str, bytes]:
    """Datagrams that broke sessions before the guard: name -> payload."""
    user = f"{server_ufrag or 'abcd'}:evil".encode()
    username = struct.pack("!HH", 0x0006, len(user)) + user + b"\x00" * (-len(user) % 4)
    return {
        "empty": b"",
        "long_rtp": b"\x80" + os.urandom(1599),
        "long_dtls": b"\x17" + os.urandom(1599),
        "rtp_garbage": b"\x80\x60" + os.urandom(200),
        "dtls_garbage": b"\x16\xfe\xfd" + os.urandom(100),
        "zero_byte": b"\x00",
        # right cookie, attribute longer than the message
        "stun_truncated_attr": stun_header(0x0001, struct.pack("!HH", 0x0006, 64) + b"ab"),
        # USERNAME that is not UTF-8
        "stun_bad_utf8": stun_header(0x0001, struct.pack("!HH", 0x0006, 4) + b"\xff\xfe\xfd\xfc"),
        # a binding request naming the session's ufrag but without integrity
        "stun_no_integrity": stun_header(0x0001, username),
        # a success response to a transaction nobody started
        "stun_stray_response": stun_header(0x0101, b""),
    }


def udp_attacks(
    target: tuple[str, int],
    source: str,
    *,
    server_ufrag: str | None = None,
    scale: Scale | None = None,
    seconds: float = 10.0,
) -> dict[str, int]:
    """Send every bad datagram ``scale.datagrams`` times and a flood of ``scale.flood``
    small ones to ``target`` from a fresh socket on ``source``; returns datagrams sent per
    kind. Blocking (run it in a thread, inside the right namespace)."""
    scale = scale or Scale()
    sent: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setblocking(False)
        kinds = bad_datagrams(server_ufrag)
        for _ in range(scale.datagrams):
            for name, payload in kinds.items():
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    sock.sendto(payload, target)
                    sent[name] += 1
        payload = b"\x80\x60" + b"\x00" * 98
        for i in range(scale.flood):
            if time.monotonic() > deadline:
                break
            try:
                sock.sendto(payload, target)
                sent["flood"] += 1
            except (BlockingIOError, InterruptedError):
                if i % 64 == 0:
                    time.sleep(0.001)  # the kernel's buffer is full: let the server read
    return dict(sent)


def answer_port(answer: str, host: str) -> int | None:
    """The port of the answer's first host candidate on ``host``."""
    for line in answer.replace("\r\n", "\n").split("\n"):
        if line.startswith("a=candidate:"):
            parts = line[len("a=candidate:") :].split()
            if len(parts) >= 8 and parts[4] == host:
                return int(parts[5])
    return None


def answer_ufrag(answer: str) -> str | None:
    """The answer's ``a=ice-ufrag``."""
    m = re.search(r"^a=ice-ufrag:(\S+)", answer, re.MULTILINE)
    return m.group(1) if m else None
