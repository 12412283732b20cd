"""Just enough SDP for a WHIP/WHEP server: check offers, fix answers, read trickle fragments.

Pure text processing (no aiortc, no asyncio), so the room task can use it and the tests
can feed it garbage. aiortc does the real parsing when the driver applies an offer; these
checks exist to give the client a precise 400 or 422 *before* any peer connection is
built (and to bound what reaches aiortc: one audio and one video m-section, a few
candidates, sane sizes), and to make the answer what RFC 9725 asks for
(``a=rtcp-mux-only``, only the candidates the operator wants offered, no mDNS names).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import final

from ._errors import SdpError

__all__ = [
    "DEFAULT_MAX_CANDIDATES",
    "MAX_FRAGMENT_LINES",
    "MAX_LINE_CHARS",
    "MAX_SDP_CHARS",
    "MAX_SDP_LINES",
    "Candidate",
    "Fragment",
    "MediaLine",
    "Offer",
    "add_rtcp_mux_only",
    "address_filter",
    "candidate_address",
    "check_offer",
    "filter_candidates",
    "parse_candidate",
    "parse_fragment",
    "split_lines",
    "strip_mdns_candidates",
]

_MEDIA_KINDS = ("audio", "video")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# The size limits sit far above real offers (measured, audio + video, two host
# addresses): aiortc 1.16 writes 71 lines, 3.2 KB, longest line 214 characters
# (``a=fingerprint:sha-512``); Chromium 156 writes 167 lines, 5.9 KB, longest 118.
# They are checked before any per-line work.

#: Largest SDP body (offer or trickle fragment) read at all, in characters.
MAX_SDP_CHARS = 64 * 1024
#: Most lines in an offer.
MAX_SDP_LINES = 500
#: Longest SDP line.
MAX_LINE_CHARS = 4096
#: Most lines in a trickle fragment (credentials, one ``m=``/``a=mid`` pair per
#: m-section, candidates and ``a=end-of-candidates``).
MAX_FRAGMENT_LINES = 200
#: Default cap on remote ICE candidates (``RoomConfig.max_candidates``).
DEFAULT_MAX_CANDIDATES = 40

_CAND_TYPES = ("host", "srflx", "prflx", "relay")
_TRANSPORTS = ("udp", "tcp")
_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}")
_DIGITS = re.compile(r"[0-9]{1,10}")
_MDNS_NAME = re.compile(r"(?:[A-Za-z0-9-]{1,63}\.)+local", re.IGNORECASE)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_EXT_VALUE = re.compile(r"[\x21-\x7e]{1,256}")


@final
@dataclass(slots=True)
class MediaLine:
    """One m-section of an offer."""

    kind: str
    direction: str
    mid: str | None


@final
@dataclass(slots=True)
class Candidate:
    """The fields of one ICE candidate line (RFC 8839 §5.1), as checked by
    :func:`parse_candidate`."""

    foundation: str
    component: int
    #: ``"udp"`` or ``"tcp"`` (lower case).
    transport: str
    priority: int
    #: An IP literal or an mDNS name (``<name>.local``).
    address: str
    port: int
    #: ``host``, ``srflx``, ``prflx`` or ``relay``.
    type: str

    @property
    def key(self) -> tuple[int, str, str, int]:
        """What makes two candidates the same remote transport address for ICE checks."""
        return (self.component, self.transport, self.address.lower(), self.port)


@final
@dataclass(slots=True)
class Offer:
    """What the server needs to know about a checked offer."""

    media: list[MediaLine]
    ufrag: str | None
    pwd: str | None
    #: The offer's candidates, in order (every ``a=candidate`` line, mDNS ones too).
    candidates: list[Candidate] = field(default_factory=list)


@final
@dataclass(slots=True)
class Fragment:
    """A ``application/trickle-ice-sdpfrag`` body (RFC 8840), as read by :func:`parse_fragment`."""

    ufrag: str | None
    pwd: str | None
    #: ``(mid or None, "candidate:...")`` in order.
    candidates: list[tuple[str | None, str]] = field(default_factory=list)
    end: bool = False


def split_lines(text: str) -> list[str]:
    """The non-empty lines of an SDP body (CRLF or LF)."""
    return [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]


def _bounded_lines(text: str, what: str, max_lines: int) -> list[str]:
    """Split ``text`` after the size checks that need no per-line work (400 past them)."""
    if len(text) > MAX_SDP_CHARS:
        raise SdpError(400, f"{what} too large: {len(text)} characters (limit {MAX_SDP_CHARS})")
    if text.count("\n") > max_lines:
        raise SdpError(400, f"{what} has more than {max_lines} lines")
    lines = split_lines(text)
    for line in lines:
        if len(line) > MAX_LINE_CHARS:
            raise SdpError(
                400, f"{what} line longer than {MAX_LINE_CHARS} characters: {line[:60]!r}..."
            )
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(400, f"malformed SDP line {line[:60]!r}")
    return lines


def check_offer(text: str, role: str, *, max_candidates: int = DEFAULT_MAX_CANDIDATES) -> Offer:
    """Check that ``text`` is an offer the ``role`` endpoint can answer.

    Pure and cheap: the HTTP layer calls it before it spawns a room, and the room again
    before it asks the driver for a peer connection. Raises :class:`SdpError`:

    * **400** when it is not a usable SDP offer: more than :data:`MAX_SDP_CHARS`
      characters or :data:`MAX_SDP_LINES` lines or a line longer than
      :data:`MAX_LINE_CHARS` (checked before any per-line work), a malformed line, no
      m-section, no ICE credentials, no ``a=fingerprint`` (neither at session level nor
      in every m-section: RFC 8122 §5, RFC 8842 §5.1), or a malformed candidate line
      (see :func:`parse_candidate`);
    * **422** when it is SDP the server does not support: an m-section other than audio
      or video (the server carries audio and video only), a second audio or a second
      video m-section (RFC 9725 §4.3.3: at most one of each), more than
      ``max_candidates`` ``a=candidate`` lines, nothing to publish on WHIP or nothing to
      receive on WHEP.
    """
    lines = _bounded_lines(text, "the offer", MAX_SDP_LINES)
    if not lines or lines[0] != "v=0":
        raise SdpError(400, "not an SDP offer: the body must start with 'v=0'")
    media: list[MediaLine] = []
    candidates: list[Candidate] = []
    session_dir = "sendrecv"
    ufrag = pwd = None
    current: MediaLine | None = None
    session_fingerprint = False
    fingerprinted: set[int] = set()  # indexes of the m-sections with a fingerprint
    for line in lines:
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4:
                raise SdpError(400, f"malformed media line {line[:60]!r}")
            kind = parts[0]
            if kind not in _MEDIA_KINDS:
                raise SdpError(
                    422,
                    f"unsupported m-section {kind[:20]!r}: this server carries audio and "
                    "video only",
                )
            if any(m.kind == kind for m in media):
                raise SdpError(
                    422,
                    f"more than one {kind} m-section: a WHIP/WHEP offer has at most one "
                    "audio and one video track (RFC 9725 §4.3.3)",
                )
            current = MediaLine(kind, session_dir, None)
            media.append(current)
        elif line.startswith("a="):
            attr = line[2:]
            name, _, value = attr.partition(":")
            if name in _DIRECTIONS:
                if current is None:
                    session_dir = name
                else:
                    current.direction = name
            elif name == "mid" and current is not None:
                current.mid = value
            elif name == "ice-ufrag" and ufrag is None:
                ufrag = value
            elif name == "ice-pwd" and pwd is None:
                pwd = value
            elif name == "fingerprint":
                if len(value.split()) != 2:
                    raise SdpError(400, f"malformed fingerprint {line[:80]!r}")
                if current is None:
                    session_fingerprint = True
                else:
                    fingerprinted.add(len(media) - 1)
            elif name == "candidate":
                if len(candidates) >= max_candidates:
                    raise SdpError(
                        422,
                        f"the offer has more than {max_candidates} ICE candidates "
                        "(the server's limit per session)",
                    )
                candidates.append(parse_candidate(line))
    if not media:
        raise SdpError(400, "the offer has no media section (m= line)")
    if ufrag is None or pwd is None:
        raise SdpError(400, "the offer has no ICE credentials (a=ice-ufrag / a=ice-pwd)")
    if not session_fingerprint and len(fingerprinted) < len(media):
        raise SdpError(
            400,
            "the offer has no DTLS fingerprint (a=fingerprint at session level or in every "
            "m-section: RFC 8122, RFC 8842)",
        )
    if role == "whip" and not any(m.direction in ("sendonly", "sendrecv") for m in media):
        raise SdpError(422, "a WHIP offer must send audio or video (sendonly or sendrecv)")
    if role == "whep" and not any(m.direction in ("recvonly", "sendrecv") for m in media):
        raise SdpError(422, "a WHEP offer must receive audio or video (recvonly or sendrecv)")
    return Offer(media, ufrag, pwd, candidates)


def parse_candidate(line: str) -> Candidate:
    """Check one candidate line (``a=candidate:...`` or ``candidate:...``) field by field.

    The grammar is RFC 8839 §5.1, narrowed to what a WHIP/WHEP server can use::

        candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ TYPE
                  [raddr ADDRESS] [rport PORT] *(NAME VALUE)

    FOUNDATION is 1-32 of ``A-Z a-z 0-9 + /``; COMPONENT an integer 1-256; TRANSPORT
    ``udp`` or ``tcp`` (any case); PRIORITY an integer 0-4294967295; ADDRESS an IP
    literal or an mDNS name ``<name>.local`` (no other host names: resolving them would
    send DNS queries where the client points); PORT 0-65535; TYPE ``host``, ``srflx``,
    ``prflx`` or ``relay``; the extensions are name/value pairs (``generation 0``,
    ``tcptype active``, ...). Raises :class:`SdpError` (400) naming the line.
    """
    body = line[2:] if line.startswith("a=") else line
    shown = line[:100]
    if not body.startswith("candidate:"):
        raise SdpError(400, f"not a candidate line {shown!r}")
    parts = body[len("candidate:") :].split()
    if len(parts) < 8:
        raise SdpError(400, f"malformed candidate {shown!r}: too few fields")
    foundation, component, transport, priority, address, port, typ, ctype = parts[:8]
    if not _FOUNDATION.fullmatch(foundation):
        raise SdpError(400, f"malformed candidate {shown!r}: bad foundation")
    comp = _int_field(component, 1, 256)
    if comp is None:
        raise SdpError(400, f"malformed candidate {shown!r}: component must be 1-256")
    if transport.lower() not in _TRANSPORTS:
        raise SdpError(400, f"malformed candidate {shown!r}: transport must be udp or tcp")
    prio = _int_field(priority, 0, 2**32 - 1)
    if prio is None:
        raise SdpError(400, f"malformed candidate {shown!r}: bad priority")
    if not _is_address(address):
        raise SdpError(400, f"malformed candidate {shown!r}: address must be an IP or <name>.local")
    port_no = _int_field(port, 0, 65535)
    if port_no is None:
        raise SdpError(400, f"malformed candidate {shown!r}: port must be 0-65535")
    if typ != "typ" or ctype not in _CAND_TYPES:
        raise SdpError(400, f"malformed candidate {shown!r}: expected 'typ host|srflx|prflx|relay'")
    ext = parts[8:]
    if len(ext) % 2:
        raise SdpError(400, f"malformed candidate {shown!r}: extensions are name/value pairs")
    for name, value in zip(ext[::2], ext[1::2], strict=True):
        if name == "raddr":
            ok = _is_address(value)
        elif name == "rport":
            ok = _int_field(value, 0, 65535) is not None
        else:
            ok = bool(_TOKEN.fullmatch(name) and _EXT_VALUE.fullmatch(value))
        if not ok:
            raise SdpError(400, f"malformed candidate {shown!r}: bad {name[:20]!r}")
    return Candidate(foundation, comp, transport.lower(), prio, address, port_no, ctype)


def _int_field(text: str, low: int, high: int) -> int | None:
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _is_address(text: str) -> bool:
    if len(text) > 255:
        return False
    if text.lower().endswith(".local"):
        return bool(_MDNS_NAME.fullmatch(text))
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_fragment(text: str, *, max_candidates: int = DEFAULT_MAX_CANDIDATES) -> Fragment:
    """Read a trickle-ice-sdpfrag body (RFC 8840).

    Raises :class:`SdpError`: 400 when it is malformed (more than :data:`MAX_SDP_CHARS`
    characters or :data:`MAX_FRAGMENT_LINES` lines, a line longer than
    :data:`MAX_LINE_CHARS`, a line that is not ``x=...``, a candidate that
    :func:`parse_candidate` refuses), 422 when it carries more than ``max_candidates``
    candidates (no session could take them all).
    """
    lines = _bounded_lines(text, "the fragment", MAX_FRAGMENT_LINES)
    frag = Fragment(None, None)
    mid: str | None = None
    for line in lines:
        if line.startswith("m="):
            mid = None
        elif line.startswith("a="):
            name, _, value = line[2:].partition(":")
            if name == "ice-ufrag":
                frag.ufrag = value
            elif name == "ice-pwd":
                frag.pwd = value
            elif name == "mid":
                mid = value
            elif name == "candidate":
                if len(frag.candidates) >= max_candidates:
                    raise SdpError(
                        422,
                        f"the fragment has more than {max_candidates} ICE candidates "
                        "(the server's limit per session)",
                    )
                parse_candidate(line)
                frag.candidates.append((mid, "candidate:" + " ".join(value.split())))
            elif name == "end-of-candidates":
                frag.end = True
    return frag


def candidate_address(candidate: str) -> str | None:
    """The connection address of a ``candidate:`` line (or ``a=candidate:``), or None."""
    body = candidate[2:] if candidate.startswith("a=") else candidate
    parts = body.split()
    return parts[4] if len(parts) >= 8 else None


def strip_mdns_candidates(text: str) -> str:
    """Drop candidates whose address is an mDNS name (``<uuid>.local``) from an SDP."""
    return _rewrite(text, lambda line: not _is_mdns_candidate(line))


def _is_mdns_candidate(line: str) -> bool:
    if not line.startswith("a=candidate:"):
        return False
    addr = candidate_address(line)
    return addr is not None and addr.lower().endswith(".local")


def filter_candidates(text: str, allowed: Callable[[str], bool]) -> str:
    """Keep only the candidates of ``text`` whose address passes ``allowed``."""

    def keep(line: str) -> bool:
        if not line.startswith("a=candidate:"):
            return True
        addr = candidate_address(line)
        return addr is not None and allowed(addr)

    return _rewrite(text, keep)


def address_filter(networks: Iterable[str]) -> Callable[[str], bool] | None:
    """A predicate accepting addresses inside any of ``networks`` (CIDRs or addresses).

    Returns ``None`` (offer everything) for an empty list; raises ``ValueError`` for a
    bad network.
    """
    nets = [ipaddress.ip_network(n.strip(), strict=False) for n in networks if n.strip()]
    if not nets:
        return None

    def allowed(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in nets)

    return allowed


def add_rtcp_mux_only(text: str) -> str:
    """Add ``a=rtcp-mux-only`` to every m-section that lacks it (RFC 8858; RFC 9725 §4.3)."""
    lines = split_lines(text)
    out: list[str] = []
    section: list[str] = []

    def flush() -> None:
        if section and section[0].startswith("m=") and "a=rtcp-mux-only" not in section:
            try:
                at = section.index("a=rtcp-mux") + 1
            except ValueError:
                at = len(section)
            section.insert(at, "a=rtcp-mux-only")
        out.extend(section)
        section.clear()

    for line in lines:
        if line.startswith("m="):
            flush()
        section.append(line)
    flush()
    return "\r\n".join(out) + "\r\n"


def _rewrite(text: str, keep: Callable[[str], bool]) -> str:
    return "\r\n".join(line for line in split_lines(text) if keep(line)) + "\r\n"
