"""Just enough SDP for a WHIP/WHEP server: check offers, fix answers, read trickle fragments.

Pure text processing (no aiortc, no asyncio), so the room task can use it and the tests
can feed it garbage. aiortc does the real parsing when the driver applies an offer; these
checks exist to give the client a precise 400 or 422 *before* any peer connection is
built, and to make the answer what RFC 9725 asks for (``a=rtcp-mux-only``, only the
candidates the operator wants offered, no mDNS names).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import final

from ._errors import SdpError

__all__ = [
    "Fragment",
    "MediaLine",
    "Offer",
    "add_rtcp_mux_only",
    "address_filter",
    "candidate_address",
    "check_offer",
    "filter_candidates",
    "parse_fragment",
    "split_lines",
    "strip_mdns_candidates",
]

_MEDIA_KINDS = ("audio", "video")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


@final
@dataclass(slots=True)
class MediaLine:
    """One m-section of an offer."""

    kind: str
    direction: str
    mid: str | None


@final
@dataclass(slots=True)
class Offer:
    """What the server needs to know about a checked offer."""

    media: list[MediaLine]
    ufrag: str | None
    pwd: str | None


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


def check_offer(text: str, role: str) -> Offer:
    """Check that ``text`` is an offer the ``role`` endpoint can answer.

    Raises :class:`SdpError` with 400 when it is not SDP at all, 422 when it is SDP the
    server does not support (no audio/video, nothing to publish on WHIP, nothing to
    receive on WHEP).
    """
    lines = split_lines(text)
    if not lines or lines[0] != "v=0":
        raise SdpError(400, "not an SDP offer: the body must start with 'v=0'")
    for line in lines:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(400, f"malformed SDP line {line[:60]!r}")
    media: list[MediaLine] = []
    session_dir = "sendrecv"
    ufrag = pwd = None
    current: MediaLine | None = None
    for line in lines:
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4:
                raise SdpError(400, f"malformed media line {line[:60]!r}")
            current = MediaLine(parts[0], session_dir, None)
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
    if not media:
        raise SdpError(400, "the offer has no media section (m= line)")
    if ufrag is None or pwd is None:
        raise SdpError(400, "the offer has no ICE credentials (a=ice-ufrag / a=ice-pwd)")
    av = [m for m in media if m.kind in _MEDIA_KINDS]
    if not av:
        kinds = sorted({m.kind for m in media})
        raise SdpError(422, f"no audio or video in the offer (media: {', '.join(kinds)})")
    if role == "whip" and not any(m.direction in ("sendonly", "sendrecv") for m in av):
        raise SdpError(422, "a WHIP offer must send audio or video (sendonly or sendrecv)")
    if role == "whep" and not any(m.direction in ("recvonly", "sendrecv") for m in av):
        raise SdpError(422, "a WHEP offer must receive audio or video (recvonly or sendrecv)")
    return Offer(media, ufrag, pwd)


def parse_fragment(text: str) -> Fragment:
    """Read a trickle-ice-sdpfrag body; raises :class:`SdpError` (400) when malformed."""
    frag = Fragment(None, None)
    mid: str | None = None
    for line in split_lines(text):
        if len(line) < 2 or line[1] != "=":
            raise SdpError(400, f"malformed SDP fragment line {line[:60]!r}")
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
                if len(value.split()) < 8:
                    raise SdpError(400, f"malformed candidate {line[:80]!r}")
                frag.candidates.append((mid, "candidate:" + value))
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
