"""``examples/whip_whep.py`` (what ``make run`` starts): it serves, stops on SIGTERM, sums up.

No WebRTC session is opened here (the protocol and media tests do that), so the server
runs on the host's 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import aiohttp
import pytest

from tests.helpers import ROOT


@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_example_serves_pages_and_stops_cleanly(mode: str) -> None:
    env = {**os.environ, "WHIP_WORKERS": "1", "WHIP_MODE": mode}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "whip_whep.py"),
        "--port",
        "0",
        "--seconds",
        "60",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)/", first)
        assert match, first
        url = match.group(1)
        kind = "processes" if mode == "process" else "threads"
        assert f"workers=1 {kind}" in first
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/") as resp:
                assert resp.status == 200 and "WHIP" in await resp.text()
            async with http.get(url + "/stats") as resp:
                assert (await resp.json())["sessions"] == 0
            async with http.post(
                url + "/whip/x", data="nope", headers={"Content-Type": "text/plain"}
            ) as resp:
                assert resp.status == 415
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert re.search(r"^summary: served .* sessions created=0 refused=0", out.decode(), re.M)
