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
    """One DevTools page target: evaluate JavaScript expressions."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def evaluate(self, expression: str) -> Any:
        mid = next(self.ids)
        await self.ws.send_json(
            {
                "id": mid,
                "method": "Runtime.evaluate",
                "params": {"expression": expression, "returnByValue": True},
            }
        )
        while True:
            msg = await self.ws.receive_json(timeout=10)
            if msg.get("id") == mid:
                return msg.get("result", {}).get("result", {}).get("value")

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
                    on_main = asyncio.run_coroutine_threadsafe(s.server.snapshot(), main)
                    snap = await asyncio.wrap_future(on_main)
                    await pub.evaluate("document.getElementById('stop').click()")
                    stopped = await pub.wait("deleteStatus", lambda v: v is not None, 30)
                return published, seen | {"snap": snap}, stopped

            published, seen, stopped = await peers.run(scenario(), 90)
        assert published["location"].startswith(base + "/session/")
        assert seen["framesDecoded"] >= FRAMES
        # The server saw the browser's publisher connect and counted its video frames.
        (publisher,) = [x for x in seen["snap"]["rooms"]["b1"]["sessions"] if x["role"] == "whip"]
        assert publisher["state"] == "connected"
        assert stopped["deleteStatus"] == 200  # the page sent its key with the DELETE
        sid = published["location"].rsplit("/", 1)[1]
        assert await s.server.wait_until(lambda: sid not in s.server.sessions, 10)
