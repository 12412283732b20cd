"""The SDP checks alone: offer bounds, the candidate grammar, trickle fragments.

Pure text in, :class:`~sansio_aio.webrtc.Offer` / :class:`~sansio_aio.webrtc._sdp.Fragment`
or :class:`~sansio_aio.webrtc.SdpError` out: no room, no aiortc (except one test that
checks the limits against a live aiortc offer). The limits are checked against real
offers (Chromium's, recorded below, and aiortc's), which must stay far below them.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_aio.webrtc import SdpError, _sdp, check_offer
from sansio_aio.webrtc._sdp import (
    DEFAULT_MAX_CANDIDATES,
    MAX_FRAGMENT_LINES,
    MAX_LINE_CHARS,
    MAX_SDP_CHARS,
    MAX_SDP_LINES,
    Candidate,
    parse_candidate,
    parse_fragment,
    split_lines,
)
from tests.webrtc import support

#: A DTLS fingerprint line (RFC 8122); ``support.offer()`` may lack one.
FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)


def offer(direction: str = "sendonly", kinds: tuple[str, ...] = ("video",)) -> str:
    """``support.offer()`` with a session-level ``a=fingerprint`` (added if it lacks one)."""
    text = support.offer(direction, kinds)
    if "a=fingerprint:" not in text:
        text = text.replace("t=0 0\r\n", f"t=0 0\r\n{FINGERPRINT}\r\n", 1)
    return text


def build(
    kinds: tuple[str, ...] = ("video",),
    *,
    direction: str = "sendonly",
    candidates: int = 1,
    fingerprint: str = "session",
) -> str:
    """An offer with one m-section per kind and ``candidates`` distinct candidates (in the
    first m-section); ``fingerprint`` is ``"session"``, ``"media"`` (in every
    m-section), ``"first"`` (in the first m-section only) or ``"none"``."""
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0"]
    if fingerprint == "session":
        lines.append(FINGERPRINT)
    for i, kind in enumerate(kinds):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{i}",
            f"a={direction}",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:0123456789012345678901",
        ]
        if fingerprint == "media" or (fingerprint == "first" and i == 0):
            lines.append(FINGERPRINT)
        if i == 0:
            lines += [
                f"a=candidate:{n} 1 udp 2130706431 10.99.0.2 {5000 + n} typ host"
                for n in range(candidates)
            ]
    return "\r\n".join(lines) + "\r\n"


def refusal(text: str, role: str = "whip", **kw: int) -> SdpError:
    with pytest.raises(SdpError) as err:
        check_offer(text, role, **kw)
    return err.value


#: A real Chromium 156 offer (fake camera and microphone, ``sendonly``, gathering
#: complete, ``iceServers: []``, mDNS off) on a host with one IPv4 and one IPv6 address:
#: 167 lines, 8 candidates; the line breaks are CRLF once loaded.
CHROMIUM_OFFER = """\
v=0
o=- 3972238393273437130 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS
m=audio 52947 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 192.0.2.2
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:3156601237 1 udp 2122194687 192.0.2.2 52947 typ host generation 0 network-id 1
a=candidate:3143075109 1 udp 2122265343 fd00::2 34620 typ host generation 0 network-id 2
a=candidate:3270118157 1 tcp 1518214911 192.0.2.2 9 typ host tcptype active generation 0 network-id 1
a=candidate:3315099581 1 tcp 1518285567 fd00::2 9 typ host tcptype active generation 0 network-id 2
a=ice-ufrag:pw75
a=ice-pwd:vItrGc9wqeeQrTs9hNtU2dUb
a=ice-options:trickle
a=fingerprint:sha-256 A4:69:62:27:1B:D3:F2:77:79:4C:E5:D0:C4:E4:C0:3B:8F:8E:60:86:B1:8E:BA:71:27:D6:28:53:77:31:0F:4A
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:- 6840d4e2-8e5d-43f6-81bf-d486464712ee
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:1651405749 cname:YhvXAW5LvxDMBYV8
a=ssrc:1651405749 msid:- 6840d4e2-8e5d-43f6-81bf-d486464712ee
m=video 37115 UDP/TLS/RTP/SAVPF 96 97 103 104 107 108 109 114 115 116 117 118 39 40 45 46 98 99 100 101 119 120 121
c=IN IP4 192.0.2.2
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:3156601237 1 udp 2122194687 192.0.2.2 37115 typ host generation 0 network-id 1
a=candidate:3143075109 1 udp 2122265343 fd00::2 60452 typ host generation 0 network-id 2
a=candidate:3270118157 1 tcp 1518214911 192.0.2.2 9 typ host tcptype active generation 0 network-id 1
a=candidate:3315099581 1 tcp 1518285567 fd00::2 9 typ host tcptype active generation 0 network-id 2
a=ice-ufrag:pw75
a=ice-pwd:vItrGc9wqeeQrTs9hNtU2dUb
a=ice-options:trickle
a=fingerprint:sha-256 A4:69:62:27:1B:D3:F2:77:79:4C:E5:D0:C4:E4:C0:3B:8F:8E:60:86:B1:8E:BA:71:27:D6:28:53:77:31:0F:4A
a=setup:actpass
a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:13 urn:3gpp:video-orientation
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay
a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type
a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing
a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:- 0831a27e-b1a8-4aca-93e0-05862dce321a
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:103 H264/90000
a=rtcp-fb:103 goog-remb
a=rtcp-fb:103 transport-cc
a=rtcp-fb:103 ccm fir
a=rtcp-fb:103 nack
a=rtcp-fb:103 nack pli
a=fmtp:103 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:104 rtx/90000
a=fmtp:104 apt=103
a=rtpmap:107 H264/90000
a=rtcp-fb:107 goog-remb
a=rtcp-fb:107 transport-cc
a=rtcp-fb:107 ccm fir
a=rtcp-fb:107 nack
a=rtcp-fb:107 nack pli
a=fmtp:107 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f
a=rtpmap:108 rtx/90000
a=fmtp:108 apt=107
a=rtpmap:109 H264/90000
a=rtcp-fb:109 goog-remb
a=rtcp-fb:109 transport-cc
a=rtcp-fb:109 ccm fir
a=rtcp-fb:109 nack
a=rtcp-fb:109 nack pli
a=fmtp:109 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=rtpmap:114 rtx/90000
a=fmtp:114 apt=109
a=rtpmap:115 H264/90000
a=rtcp-fb:115 goog-remb
a=rtcp-fb:115 transport-cc
a=rtcp-fb:115 ccm fir
a=rtcp-fb:115 nack
a=rtcp-fb:115 nack pli
a=fmtp:115 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f
a=rtpmap:116 rtx/90000
a=fmtp:116 apt=115
a=rtpmap:117 H264/90000
a=rtcp-fb:117 goog-remb
a=rtcp-fb:117 transport-cc
a=rtcp-fb:117 ccm fir
a=rtcp-fb:117 nack
a=rtcp-fb:117 nack pli
a=fmtp:117 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f
a=rtpmap:118 rtx/90000
a=fmtp:118 apt=117
a=rtpmap:39 H264/90000
a=rtcp-fb:39 goog-remb
a=rtcp-fb:39 transport-cc
a=rtcp-fb:39 ccm fir
a=rtcp-fb:39 nack
a=rtcp-fb:39 nack pli
a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f
a=rtpmap:40 rtx/90000
a=fmtp:40 apt=39
a=rtpmap:45 AV1/90000
a=rtcp-fb:45 goog-remb
a=rtcp-fb:45 transport-cc
a=rtcp-fb:45 ccm fir
a=rtcp-fb:45 nack
a=rtcp-fb:45 nack pli
a=fmtp:45 level-idx=5;profile=0;tier=0
a=rtpmap:46 rtx/90000
a=fmtp:46 apt=45
a=rtpmap:98 VP9/90000
a=rtcp-fb:98 goog-remb
a=rtcp-fb:98 transport-cc
a=rtcp-fb:98 ccm fir
a=rtcp-fb:98 nack
a=rtcp-fb:98 nack pli
a=fmtp:98 profile-id=0
a=rtpmap:99 rtx/90000
a=fmtp:99 apt=98
a=rtpmap:100 VP9/90000
a=rtcp-fb:100 goog-remb
a=rtcp-fb:100 transport-cc
a=rtcp-fb:100 ccm fir
a=rtcp-fb:100 nack
a=rtcp-fb:100 nack pli
a=fmtp:100 profile-id=2
a=rtpmap:101 rtx/90000
a=fmtp:101 apt=100
a=rtpmap:119 red/90000
a=rtpmap:120 rtx/90000
a=fmtp:120 apt=119
a=rtpmap:121 ulpfec/90000
a=ssrc-group:FID 343193328 1148634848
a=ssrc:343193328 cname:YhvXAW5LvxDMBYV8
a=ssrc:343193328 msid:- 0831a27e-b1a8-4aca-93e0-05862dce321a
a=ssrc:1148634848 cname:YhvXAW5LvxDMBYV8
a=ssrc:1148634848 msid:- 0831a27e-b1a8-4aca-93e0-05862dce321a
""".replace("\n", "\r\n")  # noqa: E501


# ------------------------------------------------------------------ real offers


def test_a_real_chromium_offer_passes_far_below_the_limits() -> None:
    checked = check_offer(CHROMIUM_OFFER, "whip")
    assert [(m.kind, m.direction) for m in checked.media] == [
        ("audio", "sendonly"),
        ("video", "sendonly"),
    ]
    assert len(checked.candidates) == 8 <= DEFAULT_MAX_CANDIDATES
    lines = split_lines(CHROMIUM_OFFER)
    assert len(lines) == 167 and len(lines) * 2 < MAX_SDP_LINES
    assert len(CHROMIUM_OFFER) * 8 < MAX_SDP_CHARS
    assert max(map(len, lines)) * 16 < MAX_LINE_CHARS
    # The same offer as a viewer would send it is a valid WHEP offer.
    assert check_offer(CHROMIUM_OFFER.replace("a=sendonly", "a=recvonly"), "whep")


async def test_a_real_aiortc_offer_passes_far_below_the_limits() -> None:
    pytest.importorskip("aiortc")
    from aiortc import RTCConfiguration, RTCPeerConnection

    from sansio_aio.webrtc import PatternTrack

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(PatternTrack(), direction="sendonly")
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        text: str = pc.localDescription.sdp
    finally:
        await pc.close()
    # aiortc repeats each host candidate in every m-section (2 lines per address): the
    # cap is not what this test is about, so a host with many addresses must not fail it.
    checked = check_offer(text, "whip", max_candidates=MAX_SDP_LINES)
    assert sorted(m.kind for m in checked.media) == ["audio", "video"]
    lines = split_lines(text)
    assert len(lines) * 4 < MAX_SDP_LINES  # about 70 lines
    assert len(text) * 8 < MAX_SDP_CHARS  # about 3 KB
    assert max(map(len, lines)) * 16 < MAX_LINE_CHARS  # a=fingerprint:sha-512, ~210


# ------------------------------------------------------------------ m-sections


@pytest.mark.parametrize(
    "kinds", [("video", "video"), ("audio", "audio"), ("audio", "video", "video")]
)
def test_one_audio_and_one_video_at_most(kinds: tuple[str, ...]) -> None:
    err = refusal(build(kinds))
    assert err.status == 422 and "RFC 9725 §4.3.3" in err.reason


def test_many_m_sections_are_refused_at_the_second() -> None:
    err = refusal(build(("video",) * 60))
    assert err.status == 422 and "more than one video" in err.reason
    # 100 (500) m-sections, the probes that started 100 threads (cost 70 MB): refused
    # by size before the m-lines are even read.
    assert refusal(build(("video",) * 100)).status == 400
    assert refusal(build(("audio", "video") * 250)).status == 400


@pytest.mark.parametrize(
    "kinds", [("application",), ("video", "application"), ("text",), ("audio", "message")]
)
def test_other_media_kinds_are_refused(kinds: tuple[str, ...]) -> None:
    err = refusal(build(kinds))
    assert err.status == 422 and "audio and video only" in err.reason


def test_audio_and_video_together_pass() -> None:
    assert [m.kind for m in check_offer(build(("audio", "video")), "whip").media] == [
        "audio",
        "video",
    ]


# ------------------------------------------------------------------ candidates


def test_offer_candidates_are_capped() -> None:
    assert check_offer(build(candidates=0), "whip").candidates == []
    checked = check_offer(build(candidates=DEFAULT_MAX_CANDIDATES), "whip")
    assert len(checked.candidates) == DEFAULT_MAX_CANDIDATES
    err = refusal(build(candidates=DEFAULT_MAX_CANDIDATES + 1))
    assert err.status == 422 and f"more than {DEFAULT_MAX_CANDIDATES}" in err.reason
    assert len(check_offer(build(candidates=3), "whip", max_candidates=3).candidates) == 3
    assert refusal(build(candidates=4), max_candidates=3).status == 422
    err = refusal(build(candidates=150))  # the probe that caused 575 STUN checks
    assert err.status == 422


def test_mdns_candidates_count_too() -> None:
    text = build(candidates=2).replace("10.99.0.2 5001", "0a1b2c3d-0000.local 5001")
    assert [c.address for c in check_offer(text, "whip").candidates] == [
        "10.99.0.2",
        "0a1b2c3d-0000.local",
    ]
    assert refusal(text, max_candidates=1).status == 422


def test_a_malformed_offer_candidate_is_a_400_naming_it() -> None:
    text = build(candidates=1).replace("10.99.0.2 5000", "evil.example.com 5000")
    err = refusal(text)
    assert err.status == 400 and "evil.example.com" in err.reason


# ------------------------------------------------------------------ fingerprint


def test_the_fingerprint_is_required() -> None:
    err = refusal(build(fingerprint="none"))
    assert err.status == 400 and "RFC 8122" in err.reason
    assert check_offer(build(("audio", "video"), fingerprint="media"), "whip")
    err = refusal(build(("audio", "video"), fingerprint="first"))  # not in every m-section
    assert err.status == 400 and "fingerprint" in err.reason
    assert refusal(build().replace(FINGERPRINT, "a=fingerprint:sha-256")).status == 400
    no_fp = "\r\n".join(ln for ln in offer().split("\r\n") if not ln.startswith("a=fingerprint"))
    assert refusal(no_fp).status == 400


# ------------------------------------------------------------------ sizes


def _no_line_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(text: str) -> list[str]:
        raise AssertionError("per-line work on a body that is too large")

    monkeypatch.setattr(_sdp, "split_lines", boom)


def test_absurd_sizes_are_refused_before_any_per_line_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    too_long = offer() + "a=x-pad:" + "x" * MAX_SDP_CHARS + "\r\n"
    too_many = offer() + "a=x\r\n" * MAX_SDP_LINES
    frag_lines = "a=end-of-candidates\r\n" * (MAX_FRAGMENT_LINES + 1)
    _no_line_work(monkeypatch)
    for text in (too_long, too_many):
        err = refusal(text)
        assert err.status == 400 and ("too large" in err.reason or "lines" in err.reason)
    for frag in (too_long, frag_lines):
        with pytest.raises(SdpError) as ferr:
            parse_fragment(frag)
        assert ferr.value.status == 400


def test_an_overlong_line_is_refused() -> None:
    text = offer().replace("s=-", "s=" + "x" * MAX_LINE_CHARS)
    err = refusal(text)
    assert err.status == 400 and str(MAX_LINE_CHARS) in err.reason
    ok = offer().replace("s=-", "s=" + "x" * (MAX_LINE_CHARS - 2))
    assert check_offer(ok, "whip")


# ------------------------------------------------------------------ the candidate grammar


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "a=candidate:3156601237 1 udp 2122194687 192.0.2.2 52947 typ host generation 0 "
            "network-id 1",
            Candidate("3156601237", 1, "udp", 2122194687, "192.0.2.2", 52947, "host"),
        ),
        (
            "candidate:3270118157 1 tcp 1518214911 192.0.2.2 9 typ host tcptype active",
            Candidate("3270118157", 1, "tcp", 1518214911, "192.0.2.2", 9, "host"),
        ),
        (
            "candidate:0 1 UDP 2122252543 fd00::2 53393 typ host",
            Candidate("0", 1, "udp", 2122252543, "fd00::2", 53393, "host"),
        ),
        (
            "candidate:842163049 1 udp 1677729535 203.0.113.7 60769 typ srflx raddr 0.0.0.0 "
            "rport 0 generation 0 ufrag sXRy network-cost 999",
            Candidate("842163049", 1, "udp", 1677729535, "203.0.113.7", 60769, "srflx"),
        ),
        (
            "candidate:f957a2332b1715da3b0ef8ba684454eb 2 udp 16777215 198.51.100.1 3478 "
            "typ relay raddr 203.0.113.7 rport 60769",
            Candidate(
                "f957a2332b1715da3b0ef8ba684454eb",
                2,
                "udp",
                16777215,
                "198.51.100.1",
                3478,
                "relay",
            ),
        ),
        (
            "candidate:a+/B 256 udp 1 6b1a3c2e-1d0b-4d8e-9f3e-0a1b2c3d4e5f.local 0 typ prflx",
            Candidate(
                "a+/B", 256, "udp", 1, "6b1a3c2e-1d0b-4d8e-9f3e-0a1b2c3d4e5f.local", 0, "prflx"
            ),
        ),
    ],
)
def test_real_candidate_lines_parse(line: str, expected: Candidate) -> None:
    assert parse_candidate(line) == expected


_GOOD = "candidate:1 1 udp 2130706431 10.99.0.2 5000 typ host"


@pytest.mark.parametrize(
    "line",
    [
        "candidate:1 1 udp 2130706431 10.99.0.2 5000 typ",  # too few fields
        "candidate: 1 udp 2130706431 10.99.0.2 5000 typ host",  # no foundation
        "candidate:a-b 1 udp 2130706431 10.99.0.2 5000 typ host",  # '-' not an ice-char
        "candidate:" + "1" * 33 + " 1 udp 2130706431 10.99.0.2 5000 typ host",
        "candidate:1 0 udp 2130706431 10.99.0.2 5000 typ host",  # component 0
        "candidate:1 257 udp 2130706431 10.99.0.2 5000 typ host",
        "candidate:1 x udp 2130706431 10.99.0.2 5000 typ host",
        "candidate:1 1 sctp 2130706431 10.99.0.2 5000 typ host",
        "candidate:1 1 udp -1 10.99.0.2 5000 typ host",
        "candidate:1 1 udp 4294967296 10.99.0.2 5000 typ host",
        "candidate:1 1 udp 1e9 10.99.0.2 5000 typ host",
        "candidate:1 1 udp 1 10.99.0.256 5000 typ host",
        "candidate:1 1 udp 1 attacker.example 5000 typ host",  # a DNS name: no lookups
        "candidate:1 1 udp 1 .local 5000 typ host",
        "candidate:1 1 udp 1 a_b.local 5000 typ host",
        "candidate:1 1 udp 1 10.99.0.2 65536 typ host",
        "candidate:1 1 udp 1 10.99.0.2 -5 typ host",
        "candidate:1 1 udp 1 10.99.0.2 5000 type host",
        "candidate:1 1 udp 1 10.99.0.2 5000 typ hostile",
        "candidate:1 1 udp 1 10.99.0.2 5000 typ srflx raddr",  # a lone extension name
        "candidate:1 1 udp 1 10.99.0.2 5000 typ srflx raddr example.com rport 1",
        "candidate:1 1 udp 1 10.99.0.2 5000 typ srflx raddr 10.0.0.1 rport 70000",
        "candidate:1 1 udp 1 10.99.0.2 5000 typ host generation \x7f",
        "a=candidat:1 1 udp 1 10.99.0.2 5000 typ host",
    ],
)
def test_malformed_candidates_are_400_naming_the_line(line: str) -> None:
    with pytest.raises(SdpError) as err:
        parse_candidate(line)
    assert err.value.status == 400 and line[:40] in err.value.reason


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_text_is_a_candidate_or_a_400(text: str) -> None:
    statuses = []
    for line in (text, "candidate:" + text, _GOOD + text):
        try:
            parse_candidate(line)
        except SdpError as exc:
            statuses.append(exc.status)
    assert set(statuses) <= {400}


@settings(max_examples=100, deadline=None)
@given(
    foundation=st.from_regex(r"[A-Za-z0-9+/]{1,32}", fullmatch=True),
    component=st.integers(1, 256),
    transport=st.sampled_from(["udp", "UDP", "tcp", "TCP"]),
    priority=st.integers(0, 2**32 - 1),
    address=st.one_of(st.ip_addresses().map(str), st.uuids().map(lambda u: f"{u}.local")),
    port=st.integers(0, 65535),
    ctype=st.sampled_from(["host", "srflx", "prflx", "relay"]),
    rport=st.none() | st.integers(0, 65535),
)
def test_well_formed_candidates_parse_to_their_fields(
    foundation: str,
    component: int,
    transport: str,
    priority: int,
    address: str,
    port: int,
    ctype: str,
    rport: int | None,
) -> None:
    line = f"a=candidate:{foundation} {component} {transport} {priority} {address} {port} "
    line += f"typ {ctype}"
    if rport is not None:
        line += f" raddr 0.0.0.0 rport {rport} generation 0"
    got = parse_candidate(line)
    want = Candidate(foundation, component, transport.lower(), priority, address, port, ctype)
    assert got == want


# ------------------------------------------------------------------ fragments


def test_fragments_keep_mids_and_normalise_candidates() -> None:
    frag = parse_fragment(
        "a=ice-ufrag:abcd\r\na=ice-pwd:p\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
        "a=candidate:1  1 udp 1 10.99.0.2 7000 typ host\r\nm=video 9 RTP/AVP 0\r\n"
        "a=candidate:2 1 udp 1 10.99.0.2 7002 typ host\r\na=end-of-candidates\r\n"
    )
    assert frag.candidates == [
        ("0", "candidate:1 1 udp 1 10.99.0.2 7000 typ host"),
        (None, "candidate:2 1 udp 1 10.99.0.2 7002 typ host"),
    ]
    assert (frag.ufrag, frag.pwd, frag.end) == ("abcd", "p", True)


def test_fragment_candidates_are_capped() -> None:
    def frag(n: int) -> str:
        return "".join(
            f"a=candidate:{i} 1 udp 1 10.99.0.2 {7000 + i} typ host\r\n" for i in range(n)
        )

    assert len(parse_fragment(frag(DEFAULT_MAX_CANDIDATES)).candidates) == DEFAULT_MAX_CANDIDATES
    with pytest.raises(SdpError) as err:
        parse_fragment(frag(DEFAULT_MAX_CANDIDATES + 1))
    assert err.value.status == 422
    with pytest.raises(SdpError) as err:
        parse_fragment(frag(3), max_candidates=2)
    assert err.value.status == 422


def test_a_malformed_fragment_candidate_is_a_400_naming_it() -> None:
    bad = "a=candidate:1 1 udp 1 10.99.0.2 99999 typ host"
    with pytest.raises(SdpError) as err:
        parse_fragment(f"a=ice-ufrag:abcd\r\n{bad}\r\n")
    assert err.value.status == 400 and bad in err.value.reason
    with pytest.raises(SdpError) as err:
        parse_fragment("a=candidate:broken\r\n")
    assert err.value.status == 400
