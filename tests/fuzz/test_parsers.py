"""Hypothesis properties of every parser and decoder the project owns.

Each parser meets arbitrary input (text, text decoded from arbitrary bytes, line soups
built from real grammar pieces) and must answer with a value or its own documented
error, never another exception, a hang or an allocation sized by the input's claims:

* SDP and trickle (``webrtc/_sdp.py``): ``check_offer``, ``parse_fragment``,
  ``parse_candidate`` raise only ``SdpError`` (400 or 422); the rewriting helpers never
  raise and are idempotent (``tests/webrtc/test_sdp.py`` has the grammar's own tests);
* ``If-Match`` lists (``if_match_tags``): a list of entity-tags or ``None``, round-trips;
* configuration (``parse_key``, ``parse_ice_server``, ``is_room_name``,
  ``ServerConfig``): only ``ConfigError``;
* the TUN example's packet logic (``echo_ipv4``, ``echo_frame``): never raises; replies
  keep the length, UDP reflection is an involution, an ICMP reply's checksum is valid;
* the IPC frame decoder (``_ipc.FrameReader``): any chunking of a frame stream gives the
  frames back; garbage gives frames, a logged error and end-of-file, never an exception;
  the buffer never grows past what was received; ``dumps_batch`` keeps what pickles;
* socket addresses (``net.check_address``): only ``ConfigError``;
* smaller decoders: the webhook answer (``_chosen_room``), a directory node entry
  (``_node_info``), the keyframe detector (``is_keyframe``).

Examples are bounded (``max_examples``) and derandomised: the file runs in seconds and
the same examples every time. The bugs found (and fixed) keep a test each at the end, with
the smallest input that showed it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import pickle
import socket
import struct
import threading
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sansio_aio import ConfigError
from sansio_aio._ipc import MAX_FRAME, FrameReader, dumps_batch
from sansio_aio.net import check_address
from sansio_aio.webrtc import SdpError
from sansio_aio.webrtc._auth import _chosen_room
from sansio_aio.webrtc._cluster import _node_info
from sansio_aio.webrtc._config import (
    ServerConfig,
    is_room_name,
    parse_args,
    parse_ice_server,
    parse_key,
)
from sansio_aio.webrtc._passthrough import is_keyframe
from sansio_aio.webrtc._room import if_match_tags
from sansio_aio.webrtc._sdp import (
    MAX_SDP_CHARS,
    add_rtcp_mux_only,
    address_filter,
    candidate_address,
    check_offer,
    filter_candidates,
    parse_candidate,
    parse_fragment,
    split_lines,
    strip_mdns_candidates,
)
from tests.sim.scenarios import load_example

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# ------------------------------------------------------------------ inputs


def _decoded(data: bytes) -> list[str]:
    """The ways a server turns a body into text: UTF-8 (replacing), Latin-1, and UTF-8
    with surrogate escapes (lone surrogates included)."""
    return [
        data.decode("utf-8", "replace"),
        data.decode("latin-1"),
        data.decode("utf-8", "surrogateescape"),
    ]


_FP = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
_PIECES = [
    "v=0",
    "o=- 1 1 IN IP4 0.0.0.0",
    "s=-",
    "t=0 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=video",
    "a=sendonly",
    "a=recvonly",
    "a=sendrecv",
    "a=inactive",
    "a=mid:0",
    "a=mid:",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:0123456789012345678901",
    _FP,
    "a=fingerprint:",
    "a=candidate:1 1 udp 2130706431 10.99.0.2 5000 typ host",
    "a=candidate:2 1 UDP 1 ::1 5001 typ srflx raddr 10.0.0.1 rport 9",
    "a=candidate:3 2 tcp 1 abc-1.local 9 typ host tcptype active",
    "a=candidate:4 1 udp 99999999999 10.0.0.1 70000 typ host",
    "a=candidate:",
    "a=end-of-candidates",
    "a=rtcp-mux",
    "a=rtcp-mux-only",
    "c=IN IP4 0.0.0.0",
    "",
    " ",
    "=",
    "x",
]
_line = st.one_of(st.sampled_from(_PIECES), st.text(max_size=60))
_sdp_soup = st.builds(
    lambda lines, sep: sep.join(lines),
    st.lists(_line, max_size=30),
    st.sampled_from(["\r\n", "\n", "\r", "\r\r\n", " \n"]),
)
_any_text = st.one_of(
    st.text(max_size=300), _sdp_soup, st.binary(max_size=300).map(lambda b: _decoded(b)[2])
)

# ------------------------------------------------------------------ SDP


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, SdpError | ConfigError | None]:
    """``(fn(...), None)``, or ``(None, error)`` for the parsers' own errors; anything
    else propagates (and fails the test)."""
    try:
        return fn(*args, **kwargs), None
    except (SdpError, ConfigError) as exc:
        return None, exc


@FUZZ
@given(text=_any_text, role=st.sampled_from(["whip", "whep", "", "other"]), cap=st.integers(0, 5))
def test_check_offer_raises_only_sdp_errors(text: str, role: str, cap: int) -> None:
    offer, err = _outcome(check_offer, text, role, max_candidates=cap)
    if err is not None:
        assert isinstance(err, SdpError) and err.status in (400, 422), err
        return
    kinds = [m.kind for m in offer.media]
    assert kinds and len(kinds) == len(set(kinds)) and set(kinds) <= {"audio", "video"}
    assert len(offer.candidates) <= cap
    assert offer.ufrag is not None and offer.pwd is not None


@FUZZ
@given(data=st.binary(max_size=400))
def test_check_offer_on_any_decoded_body(data: bytes) -> None:
    for text in _decoded(data):
        for role in ("whip", "whep"):
            _, err = _outcome(check_offer, text, role)
            assert err is None or (isinstance(err, SdpError) and err.status in (400, 422))


@FUZZ
@given(text=_any_text, cap=st.integers(0, 5))
def test_parse_fragment_raises_only_sdp_errors(text: str, cap: int) -> None:
    frag, err = _outcome(parse_fragment, text, max_candidates=cap)
    if err is not None:
        assert isinstance(err, SdpError) and err.status in (400, 422), err
        return
    assert len(frag.candidates) <= cap
    for _mid, line in frag.candidates:
        assert parse_candidate(line) == parse_candidate(line)  # normalised, parses again


_FIELD = st.one_of(
    st.sampled_from(["1", "0", "256", "udp", "TCP", "10.0.0.1", "::1", "x.local", "typ", "host"]),
    st.text(max_size=12),
)


@FUZZ
@given(
    prefix=st.sampled_from(["candidate:", "a=candidate:", "", "a="]),
    fields=st.lists(_FIELD, max_size=14),
    raw=st.text(max_size=120),
)
def test_parse_candidate_raises_only_sdp_errors(prefix: str, fields: list[str], raw: str) -> None:
    for line in (prefix + " ".join(fields), raw, prefix + raw):
        cand, err = _outcome(parse_candidate, line)
        if err is not None:
            assert isinstance(err, SdpError) and err.status == 400
            continue
        assert 1 <= cand.component <= 256 and 0 <= cand.port <= 65535
        assert cand.transport in ("udp", "tcp") and cand.type in ("host", "srflx", "prflx", "relay")


@FUZZ
@given(text=_any_text)
def test_sdp_rewriting_never_raises_and_is_idempotent(text: str) -> None:
    once = add_rtcp_mux_only(text)
    assert add_rtcp_mux_only(once) == once
    stripped = strip_mdns_candidates(text)
    assert strip_mdns_candidates(stripped) == stripped
    for line in split_lines(stripped):
        addr = candidate_address(line) if line.startswith("a=candidate:") else None
        assert addr is None or not addr.lower().endswith(".local")
    allowed = address_filter(["10.0.0.0/8", "::1"])
    assert allowed is not None
    kept = filter_candidates(text, allowed)
    assert filter_candidates(kept, allowed) == kept


def test_sdp_size_limits_are_checked_before_any_work() -> None:
    for text in ("v=0\r\n" + "x" * MAX_SDP_CHARS, "\n" * 100_000, "a=" + "y" * 10_000):
        for fn in (lambda t: check_offer(t, "whip"), parse_fragment):
            with pytest.raises(SdpError) as err:
                fn(text)
            assert err.value.status == 400


# ------------------------------------------------------------------ If-Match

_ETAGC = st.text(
    alphabet=st.characters(
        codec="latin-1", exclude_characters='"', min_codepoint=0x21, max_codepoint=0xFF
    ),
    max_size=10,
).filter(lambda s: "\x7f" not in s)
_ETAG = st.builds(lambda weak, c: ("W/" if weak else "") + f'"{c}"', st.booleans(), _ETAGC)


@FUZZ
@given(
    value=st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
)
def test_if_match_tags_never_raises(value: str) -> None:
    tags = if_match_tags(value)
    assert tags is None or all(t == "*" or t.endswith('"') for t in tags)
    if tags == ["*"]:
        assert value.strip(" \t") == "*"


@FUZZ
@given(
    tags=st.lists(_ETAG, max_size=6),
    seps=st.lists(st.sampled_from([",", ", ", " ,\t", ",,"]), min_size=6, max_size=6),
)
def test_if_match_lists_round_trip(tags: list[str], seps: list[str]) -> None:
    value = "".join(tag + sep for tag, sep in zip(tags, seps, strict=False))
    assert if_match_tags(value) == tags


# ------------------------------------------------------------------ configuration


@FUZZ
@given(text=st.text(max_size=60))
def test_parse_key_raises_only_config_errors(text: str) -> None:
    pair, err = _outcome(parse_key, text)
    if err is not None:
        assert str(err) == "bad stream key: use ROOM=KEY"  # the text is never echoed
        return
    room, key = pair
    assert room and key and room == room.strip() and key == key.strip()
    assert parse_key(f"{room}={key}") == (room, key)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=60),
        st.builds(
            "{}:{}".format,
            st.sampled_from(["stun", "turn", "turns", "stuns"]),
            st.text(max_size=40),
        ),
    )
)
def test_parse_ice_server_raises_only_config_errors(text: str) -> None:
    server, err = _outcome(parse_ice_server, text)
    if err is not None:
        return
    assert server.url.split(":", 1)[0] in ("stun", "stuns", "turn", "turns")
    assert server.link().startswith("<")


@FUZZ
@given(name=st.text(max_size=70))
def test_is_room_name_never_raises(name: str) -> None:
    if is_room_name(name):
        assert 1 <= len(name) <= 64 and name not in (".", "..") and name.isascii()
        assert "\n" not in name and "/" not in name


_TEXTS = st.text(max_size=20)


@FUZZ
@given(
    port=st.integers(-5, 70_000),
    workers=st.integers(-1, 8),
    prefix=_TEXTS,
    ice_networks=st.lists(
        st.one_of(_TEXTS, st.sampled_from(["10.0.0.0/8", "::1", "eth0", "lo"])), max_size=3
    ),
    tokens=st.lists(_TEXTS, max_size=2),
    keys=st.lists(st.tuples(_TEXTS, _TEXTS), max_size=2),
    public_ip=st.one_of(st.none(), _TEXTS, st.just("10.0.0.1")),
    auth_webhook=st.one_of(st.none(), _TEXTS, st.just("http://127.0.0.1:1/x")),
    cluster=st.one_of(st.none(), _TEXTS, st.just("redis://127.0.0.1:6379/0")),
    node_url=st.one_of(st.none(), _TEXTS, st.just("http://10.0.0.1:8080")),
    udp_port=st.integers(-2, 70_000),
    publisher_grace=st.floats(allow_nan=True, allow_infinity=True),
)
def test_server_config_raises_only_config_errors(**fields: Any) -> None:
    for name in ("ice_networks", "tokens", "keys"):
        fields[name] = tuple(fields[name])
    _outcome(ServerConfig, **fields)


# ------------------------------------------------------------------ the TUN example


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ipv4(proto: int, payload: bytes, *, ihl: int = 5, frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(payload),
        1,
        frag,
        64,
        proto,
        0,
        bytes([10, 77, 0, 1]),
        bytes([10, 77, 0, 9]),
    )
    return header + b"\x00" * (ihl * 4 - 20) + payload


def _icmp_echo(body: bytes, kind: int = 8) -> bytes:
    head = struct.pack("!BBHHH", kind, 0, 0, 7, 1)
    checksum = ~_sum16(head + body) & 0xFFFF
    return struct.pack("!BBHHH", kind, 0, checksum, 7, 1) + body


@FUZZ
@given(data=st.binary(max_size=120), tap=st.booleans())
def test_tun_echo_never_raises_on_any_packet(data: bytes, tap: bool) -> None:
    mod = load_example("tun_echo")
    reply = mod.echo_frame(data) if tap else mod.echo_ipv4(data)
    if reply is not None and not tap:
        assert len(reply) == len(data)


@FUZZ
@given(body=st.binary(max_size=64), ihl=st.integers(5, 15), sport=st.integers(0, 65535))
def test_tun_echo_reflects_udp_and_answers_icmp_with_a_valid_checksum(
    body: bytes, ihl: int, sport: int
) -> None:
    mod = load_example("tun_echo")
    udp = _ipv4(17, struct.pack("!HHHH", sport, 5000, 8 + len(body), 0) + body, ihl=ihl)
    once = mod.echo_ipv4(udp)
    assert once is not None and bytes(mod.echo_ipv4(bytes(once))) == udp  # an involution
    assert (
        once[12:16] == udp[16:20] and once[ihl * 4 : ihl * 4 + 2] == udp[ihl * 4 + 2 : ihl * 4 + 4]
    )
    request = _ipv4(1, _icmp_echo(body), ihl=ihl)
    reply = mod.echo_ipv4(request)
    assert reply is not None and reply[ihl * 4] == 0
    assert _sum16(bytes(reply[ihl * 4 :])) == 0xFFFF  # the ICMP checksum still verifies
    assert mod.echo_ipv4(bytes(reply)) is None  # a reply is not answered
    assert mod.echo_ipv4(_ipv4(17, udp[ihl * 4 :], ihl=ihl, frag=0x2000)) is None  # MF


# ------------------------------------------------------------------ the IPC frame decoder


class _Chunks:
    """A non-blocking socket whose ``recv`` hands out ``chunks``, then would block (or
    reads end-of-file)."""

    def __init__(self, chunks: list[bytes], eof: bool) -> None:
        self.chunks = deque(chunks)
        self.eof = eof
        self.received = 0

    def recv(self, n: int) -> bytes:
        if self.chunks:
            chunk = self.chunks.popleft()
            if len(chunk) > n:
                self.chunks.appendleft(chunk[n:])
                chunk = chunk[:n]
            self.received += len(chunk)
            return chunk
        if self.eof:
            return b""
        raise BlockingIOError


def _read(
    stream: bytes, cuts: list[int], eof: bool
) -> tuple[list[bytes], int, FrameReader, _Chunks]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points) if b > a]
    sock = _Chunks(chunks, eof)
    frames: list[bytes] = []
    eofs: list[int] = []
    reader = FrameReader(sock, frames.extend, lambda: eofs.append(1))  # type: ignore[arg-type]
    for _ in range(len(chunks) + 2):
        reader.on_readable()
        assert len(reader._buf) <= sock.received  # nothing sized by a claimed length
    return frames, len(eofs), reader, sock


@FUZZ
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
    eof=st.booleans(),
)
def test_frames_survive_any_chunking(payloads: list[bytes], cuts: list[int], eof: bool) -> None:
    stream = b"".join(struct.pack("!I", len(p)) + p for p in payloads)
    frames, eofs, _, _ = _read(stream, cuts, eof)
    assert frames == payloads
    assert eofs == (1 if eof else 0)


def _reference(stream: bytes) -> tuple[list[bytes], bool]:
    """Frames of ``stream`` read sequentially, and whether a length past MAX_FRAME came."""
    out: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 4:
        (n,) = struct.unpack_from("!I", stream, pos)
        if n > MAX_FRAME:
            return out, True
        if len(stream) - pos - 4 < n:
            break
        out.append(stream[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out, False


@FUZZ
@given(
    garbage=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
    eof=st.booleans(),
)
def test_garbage_gives_frames_or_a_clean_end_never_an_exception(
    garbage: bytes, cuts: list[int], eof: bool
) -> None:
    frames, eofs, reader, _ = _read(garbage, cuts, eof)
    expected, corrupt = _reference(garbage)
    assert frames == expected
    assert eofs == (1 if eof or corrupt else 0)
    reader.on_readable()  # once done, it stays done
    assert eofs <= 1


def test_a_corrupt_length_is_a_logged_end_not_a_huge_buffer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    claims_a_gigabyte = struct.pack("!I", MAX_FRAME) + b"x" * 10
    frames, eofs, reader, _ = _read(claims_a_gigabyte, [], eof=False)
    assert (frames, eofs, len(reader._buf)) == ([], 0, len(claims_a_gigabyte))  # waits
    with caplog.at_level(logging.ERROR, logger="sansio_aio"):
        frames, eofs, _, _ = _read(struct.pack("!I", MAX_FRAME + 1) + b"x", [], eof=False)
    assert frames == [] and eofs == 1
    assert "corrupt" in caplog.text


_PICKLABLE = st.one_of(st.integers(), st.text(max_size=5), st.binary(max_size=5), st.none())


@FUZZ
@given(
    items=st.lists(
        st.one_of(
            _PICKLABLE.map(lambda v: ("ok", v)),
            st.just(("bad", None)),
            st.lists(
                st.one_of(_PICKLABLE, st.just(None).map(lambda _: threading.Lock())), max_size=3
            ).map(lambda v: ("list", v)),
        ),
        max_size=8,
    )
)
def test_dumps_batch_keeps_every_item_that_pickles(items: list[tuple[str, Any]]) -> None:
    batch: list[Any] = []
    for kind, value in items:
        batch.append(threading.Lock() if kind == "bad" else value)
    payload, kept, dropped = dumps_batch(batch)
    lock = type(threading.Lock())
    bad = [x for x in batch if isinstance(x, lock)]
    bad += [y for x in batch if type(x) is list for y in x if isinstance(y, lock)]
    if not bad:
        assert pickle.loads(payload) == batch and not dropped
    else:  # item by item: a batch of outputs keeps its good outputs (and goes if none)
        good: list[Any] = []
        for item in batch:
            if type(item) is list:
                sub = [x for x in item if not isinstance(x, lock)]
                if sub:
                    good.append(sub)
            elif not isinstance(item, lock):
                good.append(item)
        assert pickle.loads(payload) == good
        assert [item for item, _ in dropped] == bad or sorted(
            map(id, (i for i, _ in dropped))
        ) == sorted(map(id, bad))
    assert kept == len(pickle.loads(payload))


# ------------------------------------------------------------------ addresses


_HOSTS = st.one_of(
    st.sampled_from(
        ["127.0.0.1", "::1", "", "0.0.0.0", "::", "localhost", "1.2.3.4.5", "fe80::1%lo"]
    ),
    st.text(max_size=20),
    st.integers(),
    st.none(),
)
_ANYTHING = st.one_of(
    st.integers(-10, 70_000), st.text(max_size=5), st.none(), st.booleans(), st.floats()
)


@FUZZ
@given(
    addr=st.one_of(
        st.tuples(_HOSTS, _ANYTHING),
        st.tuples(_HOSTS, _ANYTHING, _ANYTHING, _ANYTHING),
        st.lists(_ANYTHING, max_size=4),
        _ANYTHING,
    )
)
def test_check_address_raises_only_config_errors(addr: Any) -> None:
    result, err = _outcome(check_address, addr)
    if err is not None:
        return
    family, checked = result
    assert family in (socket.AF_INET, socket.AF_INET6)
    assert checked[1] == addr[1] and 0 <= checked[1] <= 65535


# ------------------------------------------------------------------ smaller decoders


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda c: (
                st.lists(c, max_size=3)
                | st.dictionaries(st.sampled_from(["room", "x"]), c, max_size=2)
            ),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_the_webhook_answer_parser_never_raises(body: bytes) -> None:
    room = _chosen_room(body)
    assert room is None or isinstance(room, str)


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(["ttl", "url", "sessions", "viewers", "cpu", "capacity", "x"]),
        st.one_of(st.text(max_size=12), st.integers(-(10**6), 10**6).map(str)),
        max_size=7,
    ),
    pttl=st.integers(-1, 10**7),
)
def test_a_directory_entry_is_read_or_ignored(fields: dict[str, str], pttl: int) -> None:
    entry = _node_info("n1", fields, pttl)
    if entry is not None:
        info, ttl = entry
        assert info.id == "n1" and info.age >= 0 and not math.isnan(ttl)


@FUZZ
@given(codec=st.sampled_from(["VP8", "H264", "opus", ""]), data=st.binary(max_size=64))
def test_is_keyframe_never_raises(codec: str, data: bytes) -> None:
    key = is_keyframe(codec, data)
    if codec == "VP8" and data:
        assert key == (not data[0] & 1)
    if codec == "H264" and b"\x00\x00\x01\x65" in data:
        assert key  # an IDR slice


# ------------------------------------------------------------------ bugs found (fixed)


def test_a_deeply_nested_webhook_answer_chooses_nothing() -> None:
    assert _chosen_room(b"[" * 2000 + b"]" * 2000) is None


def test_a_directory_entry_with_a_huge_ttl_is_ignored() -> None:
    assert _node_info("n1", {"ttl": "9" * 400, "url": "http://x"}, 0) is None


def test_a_malformed_environment_variable_is_a_usage_error() -> None:
    with pytest.raises((ConfigError, SystemExit)):
        parse_args([], {"WHIP_PORT": "abc"})


@pytest.mark.parametrize(
    "field", ["connect_timeout", "disconnected_timeout", "room_idle_timeout", "request_timeout"]
)
def test_timeouts_must_be_positive_numbers(field: str) -> None:
    for bad in (float("nan"), -1.0):
        with pytest.raises(ConfigError):
            ServerConfig(**{field: bad})  # type: ignore[arg-type]
