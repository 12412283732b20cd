"""The network examples run as real programs: each ends by itself, exits 0, summarises."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from sansio_aio import available_backends
from tests.helpers import EXAMPLES

TIMEOUT = 90


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def summary(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("summary:")]
    assert len(lines) == 1, out
    return lines[0]


def test_udp_echo_server_quick_ends_by_itself() -> None:
    line = summary(run("udp_echo_server.py", "--quick"))
    assert "echoed 0 of 0 datagrams" in line


@pytest.mark.parametrize("backend", ["uvloop", "epoll"])
def test_udp_echo_client_standalone(backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"backend {backend} is not available on this machine")
    line = summary(run("udp_echo_client.py", "--quick", "--backend", backend))
    assert re.search(r"2000/2000 datagrams of 100 B echoed", line), line
    assert re.search(r"\d+ pps, RTT p50 \d+ us p99 \d+ us", line), line


def test_udp_echo_client_defaults() -> None:
    line = summary(run("udp_echo_client.py"))
    assert "20000/20000" in line


@pytest.mark.parametrize(
    "mode",
    [[], ["--batch"], ["--workers", "2", "--mode", "process"]],
    ids=["per-datagram", "batch", "worker-processes"],
)
def test_udp_server_and_client_as_separate_processes(mode: list[str]) -> None:
    server = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "udp_echo_server.py"),
            *("--port", "0", "--duration", "60", *mode),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)", first)
        assert match, first
        port = match.group(1)
        args = ("--port", port, "--count", "5000", "--window", "16", "--size", "1200")
        line = summary(run("udp_echo_client.py", *args))
        assert "5000/5000 datagrams of 1200 B" in line, line
        server.send_signal(signal.SIGINT)  # Ctrl-C: a clean end with a summary
        out, err = server.communicate(timeout=TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, err
    assert "echoed 5000 of 5000 datagrams" in summary(out)


def test_udp_demo_quick() -> None:
    out = run("udp_demo.py", "--quick")
    assert "10000/10000 datagrams" in summary(out)


def test_tcp_echo_quick() -> None:
    line = summary(run("tcp_echo.py", "--quick"))
    assert "10/10 clients complete, 500 messages" in line, line


def test_tcp_echo_defaults() -> None:
    line = summary(run("tcp_echo.py", "--backend", "epoll"))
    assert "20/20 clients complete, 4000 messages" in line, line
