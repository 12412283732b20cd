"""A real browser: headless Chromium publishes with a fake camera, another page views.

Both pages are the server's own (``/publish`` and ``/view``), using the WHIP and WHEP
endpoints, with authentication on: the publisher uses a stream key and the viewer an
operator token, each given to its page in the URL fragment (``#token=...``, never sent
to the server); the publisher's Stop button DELETEs its session with its key.
Chromium, the server's workers and the HTTP socket all live in the test's
private network namespace, so Chromium can reach nothing else (and offers its veth
address, not an mDNS name). The test drives Chromium through its DevTools protocol and
asserts that the viewer page decodes frames (``getStats`` ``framesDecoded``), never fps.

Needs Debian's ``chromium`` (``scripts/ensure_chromium.sh`` installs it when it can);
without it the test skips with the reason, and fails when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from sansio_aio.testing import LoopThread, PrivateNetwork
from tests.webrtc.support import ServeFactory

FRAMES = 30
OPERATOR = "browser-operator-token"
KEY = "browser-stream-key"
#: What the pages show for a number not known (yet).
NONE = "\u2013"
#: The numbers a publish or view page shows, as text.
SHOWN = (
    "Object.fromEntries(['bitrate', 'lost', 'jitter', 'rtt', 'size']"
    ".map((id) => [id, document.getElementById(id).textContent]))"
)


def chromium_path() -> str:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    reason = "chromium is not installed (scripts/ensure_chromium.sh installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium(net: PrivateNetwork, exe: str) -> Any:
    """Start headless Chromium inside ``net``; yield its DevTools port; kill its group."""
    profile = tempfile.mkdtemp(prefix="whip-chromium-")
    args = [
        exe,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    proc = net.popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc, Path(profile) / "DevToolsActivePort"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """One DevTools page target: evaluate JavaScript expressions, call methods."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One DevTools method on the page; its ``result``."""
        mid = next(self.ids)
        await self.ws.send_json({"id": mid, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=10)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    async def evaluate(self, expression: str, *, wait: bool = False) -> Any:
        """The value of ``expression`` (``wait``: of the promise it returns)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": wait}
        result = await self.call("Runtime.evaluate", params)
        return result.get("result", {}).get("value")

    async def state(self) -> dict[str, Any]:
        text = await self.evaluate("JSON.stringify(window.whipState || null)")
        return json.loads(text) if text else {}

    async def wait(self, key: str, predicate: Any, timeout: float) -> dict[str, Any]:
        """Re-read ``whipState`` every 200 ms until ``predicate(state[key])`` (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = await self.state()
            if state and predicate(state.get(key)):
                return state
            if state and state.get("error"):
                raise AssertionError(f"page error: {state['error']}")
            if loop.time() >= deadline:
                raise AssertionError(f"timed out waiting for {key}: {state}")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def open_page(http: aiohttp.ClientSession, port: int, url: str) -> AsyncIterator[Page]:
    async with http.put(f"http://127.0.0.1:{port}/json/new?{quote(url, safe='')}") as resp:
        target = await resp.json(content_type=None)
    async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
        yield Page(ws)


async def devtools_port(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited with {proc.returncode}")
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])  # noqa: ASYNC240 - a tiny local file
        await asyncio.sleep(0.1)
    raise AssertionError("chromium did not open its DevTools port")


@pytest.mark.slow
async def test_browser_publishes_and_another_page_views(
    serve: ServeFactory, netns: PrivateNetwork, peers: LoopThread
) -> None:
    exe = chromium_path()
    async with serve(workers=2, tokens=(OPERATOR,), keys=(("b1", KEY),)) as s:
        with chromium(netns, exe) as (proc, port_file):
            base = s.inner
            main = asyncio.get_running_loop()  # the server's

            async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
                port = await devtools_port(port_file, proc, 30)
                pub_url = f"{base}/publish?room=b1&autostart=1#token={KEY}"
                async with aiohttp.ClientSession() as http, open_page(http, port, pub_url) as pub:
                    published = await pub.wait("state", lambda v: v == "connected", 30)
                    view_url = f"{base}/view?room=b1&autostart=1#token={OPERATOR}"
                    async with open_page(http, port, view_url) as view:
                        seen = await view.wait("framesDecoded", lambda v: (v or 0) >= FRAMES, 30)
                        # the page's own numbers, from its RTCPeerConnection.getStats()
                        seen |= await view.wait("bitrate", lambda v: (v or 0) > 0, 30)
                        seen["shown"] = await view.evaluate(SHOWN)
                    # the publisher's loss and jitter come from the server's receiver reports
                    sent = await pub.wait("packetsLost", lambda v: v is not None, 30)
                    sent = await pub.wait("bitrate", lambda v: (v or 0) > 0, 30)
                    seen["published"] = sent | {"shown": await pub.evaluate(SHOWN)}
                    on_main = asyncio.run_coroutine_threadsafe(s.server.snapshot(), main)
                    snap = await asyncio.wrap_future(on_main)
                    await pub.evaluate("document.getElementById('stop').click()")
                    stopped = await pub.wait("deleteStatus", lambda v: v is not None, 30)
                return published, seen | {"snap": snap}, stopped

            published, seen, stopped = await peers.run(scenario(), 90)
        assert published["location"].startswith(base + "/session/")
        assert seen["framesDecoded"] >= FRAMES
        for page in (seen, seen["published"]):  # both pages show their live numbers
            shown = page["shown"]
            assert float(shown["bitrate"]) > 0, shown
            assert shown["lost"] != NONE and int(shown["lost"]) >= 0, shown
            assert shown["jitter"] != NONE and float(shown["jitter"]) >= 0, shown
            assert page["jitter"] is not None and page["packetsLost"] is not None, page
        # The server saw the browser's publisher connect and counted its video frames.
        (publisher,) = [x for x in seen["snap"]["rooms"]["b1"]["sessions"] if x["role"] == "whip"]
        assert publisher["state"] == "connected"
        assert stopped["deleteStatus"] == 200  # the page sent its key with the DELETE
        sid = published["location"].rsplit("/", 1)[1]
        assert await s.server.wait_until(lambda: sid not in s.server.sessions, 10)


# ------------------------------------------------------------------ the dashboard

#: Refresh the dashboard now, then read every number it shows (as text).
READ_DASHBOARD = """dashRefresh().then(() => {
  const fields = (row) => Object.fromEntries([...row.querySelectorAll("td[data-field]")]
    .map((td) => [td.dataset.field, td.textContent]));
  return {
    sessions: [...document.querySelectorAll("tr[data-session]")].map((row) => ({
      room: row.dataset.room, session: row.dataset.session, role: row.dataset.role,
      fields: fields(row)})),
    workers: [...document.querySelectorAll("tr[data-worker]")].map((row) => ({
      worker: Number(row.dataset.worker), fields: fields(row)})),
    refreshes: dashState.refreshes, error: dashState.error,
  };
})"""

#: How the dashboard shows each number of a session: the ``/stats`` field, the factor
#: to its unit, and the tolerance of its rounding.
SESSION_FIELDS = {
    "frames": 1.0,
    "age": 1.0,
    "bitrate_in": 1e-3,  # kbit/s
    "bitrate_out": 1e-3,
    "packets_lost": 1.0,
    "jitter": 1e3,  # ms
    "rtt": 1e3,
}
WORKER_FIELDS = {"tasks": ("tasks", 1.0), "utilisation": ("utilisation", 100.0)}


def shown_between(text: str, values: list[Any], scale: float, slack: float) -> bool:
    """``text`` (as the page shows it) lies between the values of two ``/stats`` read
    before and after it (one refresh of drift), allowing for its rounding."""
    known = [v * scale for v in values if v is not None]
    if text == NONE:
        return not known or None in values
    if not known:
        return False
    return bool(min(known) - slack <= float(text) <= max(known) + slack)


def dashboard_mismatches(shown: dict[str, Any], before: Any, after: Any) -> list[str]:
    """Every number the dashboard shows that is not what ``/stats`` said."""
    problems: list[str] = []

    def sessions(snap: Any) -> dict[tuple[str, str], dict[str, Any]]:
        return {
            (room, x["session"]): x
            for room, info in snap["rooms"].items()
            for x in info["sessions"]
        }

    old, new = sessions(before), sessions(after)
    rows = {(r["room"], r["session"]): r for r in shown["sessions"]}
    if set(rows) != set(old) and set(rows) != set(new):
        problems.append(f"sessions shown {sorted(rows)}, /stats has {sorted(new)}")
    for key, row in rows.items():
        pair = [x for x in (old.get(key), new.get(key)) if x is not None]
        if not pair or row["role"] != pair[0]["role"]:
            problems.append(f"{key}: {row['role']} not in /stats")
            continue
        for field, scale in SESSION_FIELDS.items():
            slack = 0.51 if field in ("age", "frames", "packets_lost") else 0.051
            values = [x[field] for x in pair]
            if not shown_between(row["fields"][field], values, scale, slack):
                problems.append(f"{key} {field}: shown {row['fields'][field]}, /stats {values}")
    workers = {w["worker"]: w for w in shown["workers"]}
    if any(set(workers) != {w["worker"] for w in snap["workers"]} for snap in (before, after)):
        problems.append(f"workers shown {sorted(workers)}")
    for wid, row in workers.items():
        values = [w for snap in (before, after) for w in snap["workers"] if w["worker"] == wid]
        for field, (stat, scale) in WORKER_FIELDS.items():
            got = [w[stat] for w in values]
            slack = 0.51 if field == "tasks" else 0.051
            if not shown_between(row["fields"][field], got, scale, slack):
                problems.append(f"worker {wid} {field}: shown {row['fields'][field]}, {got}")
    return problems


def check_png(path: Path, width: int, height: int) -> int:
    """``path`` is a well-formed PNG of ``width`` x ``height`` with a picture in it (not
    one flat colour); the number of grey levels of a thumbnail of it."""
    import struct
    import zlib

    import av

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, list[bytes]()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (width, height)
    thumb = frame.reformat(format="gray", width=64, height=48)
    return len(set(bytes(thumb.planes[0])))


async def wait_js(page: Page, expression: str, predicate: Any, timeout: float) -> Any:
    """Re-evaluate ``expression`` every 200 ms until ``predicate(value)`` (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await page.evaluate(expression)
        if predicate(value):
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {expression}: {value!r}")
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_dashboard_shows_what_stats_says(
    serve: ServeFactory, netns: PrivateNetwork, peers: LoopThread, tmp_path: Path
) -> None:
    """The operator's page: its numbers are ``/stats``'s (read in the DOM between two
    reads of ``/stats``), it renders (a PNG screenshot), and without the token it loads
    but shows no data."""
    from sansio_aio import webrtc as client

    exe = chromium_path()
    width, height = 1100, 800
    async with serve(workers=2, tokens=(OPERATOR,)) as s:
        with chromium(netns, exe) as (proc, port_file):
            base = s.inner
            auth = {"Authorization": f"Bearer {OPERATOR}"}

            async def scenario() -> dict[str, Any]:
                out: dict[str, Any] = {}
                pub = await client.publish(
                    f"{base}/whip/dash", [client.PatternTrack()], token=OPERATOR
                )
                viewer = await client.view(f"{base}/whep/dash", token=OPERATOR)
                await viewer.wait_frames(FRAMES, 20)
                async with aiohttp.ClientSession(headers=auth) as http:

                    async def stats() -> Any:
                        async with http.get(f"{base}/stats") as resp:
                            assert resp.status == 200
                            return await resp.json()

                    def numbers_known(snap: Any) -> bool:
                        sessions = snap["rooms"].get("dash", {}).get("sessions", [])
                        fields = ("bitrate_in", "bitrate_out", "packets_lost", "jitter")
                        return len(sessions) == 2 and all(
                            all(x[f] is not None for f in fields)
                            and (x["role"] == "whip" or x["rtt"] is not None)
                            for x in sessions
                        )

                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 20
                    while not numbers_known(snap := await stats()):
                        assert loop.time() < deadline, f"numbers still unknown: {snap['rooms']}"
                        await asyncio.sleep(0.2)
                    out["snap"] = snap
                    port = await devtools_port(port_file, proc, 30)
                    url = f"{base}/dashboard?interval=250#token={OPERATOR}"
                    async with aiohttp.ClientSession() as dev, open_page(dev, port, url) as page:
                        metrics = {"width": width, "height": height}
                        metrics |= {"deviceScaleFactor": 1, "mobile": False}
                        await page.call("Emulation.setDeviceMetricsOverride", metrics)
                        # a few refreshes: the charts have a line to draw
                        await wait_js(page, "dashState.refreshes", lambda v: (v or 0) >= 8, 20)
                        for _ in range(3):  # a sandwich straddling two reports: once more
                            before = await stats()
                            shown = await page.evaluate(READ_DASHBOARD, wait=True)
                            after = await stats()
                            out["mismatches"] = dashboard_mismatches(shown, before, after)
                            if not out["mismatches"]:
                                break
                        out["shown"] = shown
                        shot = await page.call("Page.captureScreenshot", {"format": "png"})
                        out["png"] = base64.b64decode(shot["data"])
                    async with (
                        aiohttp.ClientSession() as dev,
                        open_page(dev, port, f"{base}/dashboard") as bare,
                    ):
                        out["bare_error"] = await wait_js(
                            bare, "dashState.error", lambda v: v is not None, 20
                        )
                        out["bare_text"] = await bare.evaluate("document.body.innerText")
                for session in (viewer, pub):
                    await session.delete()
                    await session.close()
                return out

            out = await peers.run(scenario(), 90)
        assert out["mismatches"] == [], out["mismatches"]
        shown = out["shown"]
        assert shown["error"] is None and shown["refreshes"] >= 1
        roles = sorted(r["role"] for r in shown["sessions"])
        assert roles == ["whep", "whip"]
        for row in shown["sessions"]:  # the numbers are there, not dashes
            key = "bitrate_in" if row["role"] == "whip" else "bitrate_out"
            assert float(row["fields"][key]) > 0, row
            assert row["fields"]["jitter"] != NONE and row["fields"]["packets_lost"] != NONE
            if row["role"] == "whep":
                assert row["fields"]["rtt"] != NONE, row
        assert {w["worker"] for w in shown["workers"]} == {0, 1}
        png = tmp_path / "dashboard.png"
        png.write_bytes(out["png"])
        assert check_png(png, width, height) >= 8  # text, tables, charts: not a blank page
        # without the token: the page, but no data and no session id
        assert "token" in out["bare_error"]
        sids = [x["session"] for x in out["snap"]["rooms"]["dash"]["sessions"]]
        assert not any(sid in out["bare_text"] for sid in sids)
        assert "dash" not in out["bare_text"].split()


@pytest.mark.slow
async def test_a_browser_viewer_survives_a_publisher_restart(
    serve: ServeFactory, netns: PrivateNetwork, peers: LoopThread
) -> None:
    """Chromium views a room (``/view``); the publisher is replaced by one with another
    picture size within the grace: the page's session and peer connection stay, and it
    decodes the new publisher's frames."""
    from sansio_aio import webrtc as client

    exe = chromium_path()
    async with serve(workers=1, tokens=(OPERATOR,), publisher_grace=10.0) as s:
        with chromium(netns, exe) as (proc, port_file):
            base = s.inner

            async def scenario() -> tuple[dict[str, Any], dict[str, Any], int]:
                pub1 = await client.publish(
                    f"{base}/whip/sw", [client.PatternTrack(320, 240)], token=OPERATOR
                )
                port = await devtools_port(port_file, proc, 30)
                url = f"{base}/view?room=sw&autostart=1#token={OPERATOR}"
                async with aiohttp.ClientSession() as http, open_page(http, port, url) as view:
                    first = await view.wait("framesDecoded", lambda v: (v or 0) >= FRAMES, 30)
                    first = await view.wait("frameWidth", lambda v: v == 320, 10)
                    await pub1.delete()
                    await pub1.close()
                    before = (await view.state())["framesDecoded"]
                    pub2 = await client.publish(
                        f"{base}/whip/sw", [client.PatternTrack(160, 120)], token=OPERATOR
                    )
                    after = await view.wait(
                        "framesDecoded", lambda v: (v or 0) >= before + FRAMES, 30
                    )
                    after = await view.wait("frameWidth", lambda v: v == 160, 10)
                    await view.evaluate("document.getElementById('stop').click()")
                    stopped = await view.wait("deleteStatus", lambda v: v is not None, 30)
                await pub2.delete()
                await pub2.close()
                return first, after | {"before": before}, stopped["deleteStatus"]

            first, after, deleted = await peers.run(scenario(), 90)
        assert after["location"] == first["location"]  # the same session all along
        assert after["framesDecoded"] >= after["before"] + FRAMES
        assert after["state"] == "connected"
        assert deleted == 200
