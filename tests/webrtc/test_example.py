"""``examples/whip_whep.py`` (what ``make run`` starts): it serves, stops on SIGTERM, sums up;
``--help`` lists the security flags, and secrets given by environment and keys file work.

No WebRTC session is opened here (the protocol and media tests do that), so the server
runs on the host's 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

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
            async with http.get(url + "/dashboard") as resp:
                assert resp.status == 200 and "dashRefresh" in await resp.text()
                assert "connect-src 'self'" in resp.headers["Content-Security-Policy"]
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


def test_example_help_lists_the_security_flags() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "whip_whep.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    for flag in (
        "--token",
        "--key",
        "--keys-file",
        "--auth-webhook",
        "--webhook-timeout",
        "--metrics-token",
        "--header-timeout",
        "--body-timeout",
        "--max-connections",
        "--max-connections-per-ip",
        "--max-candidates",
        "--rate-limit",
    ):
        assert re.search(rf"^  {flag}\b", proc.stdout, re.M), flag
    assert re.search(r"^  --token-is-room +deprecated", proc.stdout, re.M)


async def test_example_with_tokens_and_a_keys_file(tmp_path: Path) -> None:
    """Secrets from the environment and a keys file reach the server: stats need the
    operator token, and a stream key of another room is refused."""
    keys = tmp_path / "keys.txt"
    keys.write_text("# room=key\ndemo=demo-key-123\n")
    env = {**os.environ, "WHIP_WORKERS": "1", "WHIP_TOKENS": "op-token-123"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "whip_whep.py"),
        "--port",
        "0",
        "--seconds",
        "60",
        "--keys-file",
        str(keys),
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
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/stats") as resp:
                assert resp.status == 401
            op = {"Authorization": "Bearer op-token-123"}
            async with http.get(url + "/stats", headers=op) as resp:
                assert resp.status == 200
            sdp = {"Content-Type": "application/sdp", "Authorization": "Bearer demo-key-123"}
            async with http.post(url + "/whip/other", data="v=0", headers=sdp) as resp:
                assert resp.status == 403
            async with http.post(url + "/whip/demo", data="v=0", headers=sdp) as resp:
                assert resp.status == 400  # authorized: then the offer is checked
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    text = out.decode() + err.decode()
    assert "op-token-123" not in text and "demo-key-123" not in text
