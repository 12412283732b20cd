"""fuzz_sdp: coverage-guided fuzzing of the SDP and trickle surface with atheris.

The target (:func:`target`) takes libFuzzer's bytes, picks a surface with the first byte
and feeds it the rest as text (UTF-8 with surrogate escapes, so any byte string is a
possible body):

* ``check_offer`` (WHIP and WHEP, a small and the default candidate cap), then the
  answer helpers on the same text (``add_rtcp_mux_only`` and ``strip_mdns_candidates``
  must be idempotent);
* ``parse_fragment``, then ``parse_candidate`` on each candidate it returned (they must
  parse again);
* ``parse_candidate`` on the text as one line; ``if_match_tags`` on it;
* a fresh :class:`~sansio_aio.webrtc.Room` with an answered publisher, fed the text as a
  WHEP offer (``OpenSession``) and as a trickle ``PATCH``: exactly one reply each, with
  a 2xx/4xx status, and nothing else but the peer command of an accepted request.

Any exception other than ``SdpError`` (and any broken property, raised as
``AssertionError``) is a crash: libFuzzer stops and writes the input. The SDP and room
modules are instrumented (``atheris.instrument_imports``) so libFuzzer sees their
branches; the seed corpus is a real Chromium offer, generated offers and fragments, and
a dictionary of SDP tokens.

It runs as a child process (``python -m bench.fuzz_sdp fuzz ...``) for a bounded time
(``-max_total_time``) and the result is read from libFuzzer's final statistics:
executions, coverage (``cov``: edges), features (``ft``), corpus size, crashes. The
baseline is the same target run uninstrumented on random bytes for the same time in this
process (executions only: what the coverage guidance costs per execution). Not part of
the tests: ``python -m bench fuzz_sdp`` (5 minutes), ``run(quick=True)`` (15 s). Needs
``atheris`` (``pip install -e '.[fuzz]'``); without it the result says so and why.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 300
QUICK_SECONDS = 15

_DICT = [
    "v=0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "a=candidate:",
    " 1 udp 2130706431 ",
    " typ host",
    " typ srflx raddr ",
    " rport ",
    ".local",
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=fingerprint:sha-256 ",
    "a=mid:",
    "a=sendonly",
    "a=recvonly",
    "a=end-of-candidates",
    "a=rtcp-mux",
    "\r\n",
    "W/",
    '"',
]

_room_state: dict[str, Any] = {}


def _room() -> Any:
    """A fresh room with an answered, connected publisher."""
    from sansio_aio import Request
    from sansio_aio.webrtc._config import RoomConfig
    from sansio_aio.webrtc._events import OpenSession, PeerAnswered, PeerState
    from sansio_aio.webrtc._room import Room

    room = Room(RoomConfig(name="r", max_candidates=8))
    room.on_event(0.0, Request(1, OpenSession("p", "whip", _room_state["offer"], '"p"')))
    room.on_event(0.0, PeerAnswered("p", _room_state["answer"]))
    room.on_event(0.0, PeerState("p", "connected"))
    while room.pop_output(0.0) is not None:
        pass
    return room


def _drain(room: Any) -> list[Any]:
    out = []
    while (item := room.pop_output(1.0)) is not None:
        out.append(item)
    return out


def target(data: bytes) -> None:
    """One execution (see the module docs); raises on a crash or a broken property."""
    from sansio_aio import Reply, Request
    from sansio_aio.webrtc._errors import SdpError
    from sansio_aio.webrtc._events import OpenSession, PatchSession, PeerOpen, PeerTrickle
    from sansio_aio.webrtc._room import if_match_tags
    from sansio_aio.webrtc._sdp import (
        add_rtcp_mux_only,
        check_offer,
        parse_candidate,
        parse_fragment,
        strip_mdns_candidates,
    )

    if not data:
        return
    mode = data[0] % 5
    text = data[1:].decode("utf-8", "surrogateescape")
    try:
        if mode == 0:
            for role in ("whip", "whep"):
                for cap in (2, 40):
                    try:
                        check_offer(text, role, max_candidates=cap)
                    except SdpError as exc:
                        if exc.status not in (400, 422):
                            raise AssertionError(f"status {exc.status}") from exc
            once = add_rtcp_mux_only(text)
            if add_rtcp_mux_only(once) != once:
                raise AssertionError("add_rtcp_mux_only is not idempotent")
            stripped = strip_mdns_candidates(text)
            if strip_mdns_candidates(stripped) != stripped:
                raise AssertionError("strip_mdns_candidates is not idempotent")
        elif mode == 1:
            frag = parse_fragment(text, max_candidates=8)
            for _mid, line in frag.candidates:
                parse_candidate(line)
        elif mode == 2:
            parse_candidate(text)
        elif mode == 3:
            tags = if_match_tags(text)
            if tags is not None and not all(t == "*" or t.endswith('"') for t in tags):
                raise AssertionError(f"odd tags {tags!r}")
        else:
            room = _room()
            room.on_event(1.0, Request(2, OpenSession("v", "whep", text, '"v"')))
            out = _drain(room)
            if not (len(out) == 1 and type(out[0]) in (Reply, PeerOpen)):
                raise AssertionError(f"an offer got {out!r}")
            room.on_event(1.0, Request(3, PatchSession("p", text, "*")))
            out = _drain(room)
            replies = [o for o in out if type(o) is Reply]
            others = [o for o in out if type(o) is not Reply]
            if len(replies) != 1 or not all(type(o) is PeerTrickle for o in others):
                raise AssertionError(f"a PATCH got {out!r}")
            if replies[0].msg.status not in (204, 400, 422):
                raise AssertionError(f"a PATCH got {replies[0]!r}")
    except SdpError:
        pass


def _seeds(corpus: Path) -> None:
    """Write the seed corpus: real and generated offers, fragments, candidates, ETags."""
    sys.path.insert(0, str(ROOT))
    from tests.webrtc.test_sdp import CHROMIUM_OFFER, build

    samples = [
        b"\x00" + CHROMIUM_OFFER.encode(),
        b"\x00" + build(("audio", "video"), candidates=3).encode(),
        b"\x04" + build(direction="recvonly", candidates=2).encode(),
        b"\x01a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=video 9 RTP/AVP 0\r\n"
        b"a=mid:0\r\na=candidate:3 1 udp 1 10.99.0.2 7000 typ host\r\na=end-of-candidates\r\n",
        b"\x02candidate:1 1 udp 2130706431 10.0.0.1 5000 typ srflx raddr 1.2.3.4 rport 9",
        b'\x03"a", W/"b",, "c"',
    ]
    for i, sample in enumerate(samples):
        (corpus / f"seed{i}").write_bytes(sample)


def _child(argv: list[str]) -> None:
    """``python -m bench.fuzz_sdp fuzz [libFuzzer flags] CORPUS``: fuzz until a limit."""
    atheris: Any = importlib.import_module("atheris")  # optional, untyped: the fuzz extra

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["sansio_aio.webrtc"]):
        import sansio_aio.webrtc._room
        import sansio_aio.webrtc._sdp  # noqa: F401
    from tests.webrtc.support import ANSWER
    from tests.webrtc.test_sdp import offer

    _room_state["offer"] = offer()
    _room_state["answer"] = ANSWER
    atheris.Setup([sys.argv[0], *argv], target)
    atheris.Fuzz()


_STAT = re.compile(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+) corp: (\d+)")


def _baseline(seconds: float) -> dict[str, Any]:
    """The target on random bytes, uninstrumented, in this process."""
    sys.path.insert(0, str(ROOT))
    from tests.webrtc.support import ANSWER
    from tests.webrtc.test_sdp import offer

    _room_state["offer"] = offer()
    _room_state["answer"] = ANSWER
    rng = random.Random(0)
    runs = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            target(rng.randbytes(rng.randint(1, 300)))
        runs += 100
    return {"executions": runs, "exec_per_s": round(runs / seconds, 1)}


def run(quick: bool = False) -> dict[str, Any]:
    """Fuzz for a bounded time in a child process; write ``bench/results/fuzz_sdp.json``."""
    from bench.common import write_result

    seconds = QUICK_SECONDS if quick else SECONDS
    params = {"seconds": seconds, "quick": quick}
    if importlib.util.find_spec("atheris") is None:
        return write_result(
            "fuzz_sdp",
            metric="executions/s (atheris, coverage-guided)",
            value=0.0,
            baseline="executions/s on random bytes, uninstrumented",
            baseline_value=0.0,
            params=params,
            error="atheris is not installed: pip install -e '.[fuzz]'",
        )
    with tempfile.TemporaryDirectory(prefix="fuzz_sdp.") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        _seeds(corpus)
        dict_path = Path(tmp) / "sdp.dict"
        dict_path.write_text("".join(f'"{_escape(t)}"\n' for t in _DICT))
        cmd = [
            sys.executable,
            "-m",
            "bench.fuzz_sdp",
            "fuzz",
            f"-max_total_time={seconds}",
            "-print_final_stats=1",
            "-max_len=4096",
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-dict={dict_path}",
            f"-artifact_prefix={tmp}/",
            str(corpus),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 300
        )
        took = time.perf_counter() - t0
        log = proc.stderr
        crashes = sorted(p.name for p in Path(tmp).glob("crash-*"))
        crashes += sorted(p.name for p in Path(tmp).glob("timeout-*"))
        crashes += sorted(p.name for p in Path(tmp).glob("oom-*"))
        crash_inputs = {name: (Path(tmp) / name).read_bytes()[:300].hex() for name in crashes}
        corpus_size = len(list(corpus.iterdir()))
    stats = _STAT.findall(log)
    execs, cov, ft, corp = (int(x) for x in stats[-1]) if stats else (0, 0, 0, 0)
    m = re.search(r"stat::number_of_executed_units: (\d+)", log)
    if m:
        execs = int(m.group(1))
    uncaught = "Uncaught Python exception" in log
    base = _baseline(min(seconds, 10.0))
    return write_result(
        "fuzz_sdp",
        metric="executions/s (atheris, coverage-guided, instrumented)",
        value=round(execs / took, 1) if took else 0.0,
        baseline="executions/s of the same target on random bytes, uninstrumented",
        baseline_value=base["exec_per_s"],
        params=params,
        executions=execs,
        coverage_edges=cov,
        features=ft,
        corpus=corp,
        corpus_files=corpus_size,
        crashes=len(crashes) + (1 if uncaught and not crashes else 0),
        crash_inputs_hex=crash_inputs,
        exit_code=proc.returncode,
        wall_s=round(took, 1),
        random_baseline=base,
        log_tail=log.strip().splitlines()[-12:],
    )


def _escape(token: str) -> str:
    return (
        token.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\r", "\\x0D")
        .replace("\n", "\\x0A")
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fuzz":
        _child(sys.argv[2:])
    else:
        import json

        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
