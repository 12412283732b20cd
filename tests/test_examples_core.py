"""The core examples run, end by themselves, exit 0 and print their summary line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.parametrize(
    ("script", "args", "summary"),
    [
        ("benchmark_ext.py", ["--quick"], "msgs/s, mean wait"),
        ("benchmark_ext.py", ["--quick", "--backend", "epoll", "--workers", "2"], "msgs/s"),
        ("multi_types.py", [], "aggregator: 300 readings"),
        ("demo.py", ["--duration", "1.5"], "stopped cleanly"),
    ],
)
def test_example_runs(script: str, args: list[str], summary: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert summary in proc.stdout, proc.stdout


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the demo is up once it printed its banner
    assert "Ctrl-C to stop" in first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out
