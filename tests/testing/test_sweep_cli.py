"""``python -m sansio_aio.testing.sweep``: sweeps, failure reports, replays that reproduce."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from sansio_aio.testing import run_seed
from sansio_aio.testing import sweep as sweep_function
from tests.helpers import ROOT

COUNTING = "tests.testing.sim_example:counting"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sansio_aio.testing.sweep", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def field(out: str, pattern: str) -> str:
    match = re.search(pattern, out, re.M)
    assert match, out
    return match.group(1)


def test_a_failing_sweep_prints_a_replay_that_reproduces(tmp_path: Path) -> None:
    run = cli(COUNTING, "--seeds", "200", "--first", "1000", "--trace-dir", str(tmp_path))
    assert run.returncode == 1, run.stderr
    out = run.stdout
    assert out.startswith(f"sweep {COUNTING}: seeds 1000..1199 (200), 1 job(s), buggify on")
    seed = int(field(out, r"^FAILED seed (\d+): AssertionError: total"))
    config = field(out, r"^  config    ([0-9a-f]{8}) ")
    digest = field(out, r"^  trace     \d+ lines, digest ([0-9a-f]{16})")
    assert f"FAILED (first: seed {seed})" in out
    for part in ("status at the end of the run:", "rt0 w0 ", "rt0 ctl ", "net ", "buggify "):
        assert part in out
    assert "trace written to " in out and list(tmp_path.glob(f"*seed{seed}.trace"))
    replay = field(out, r"^replay: (.+)$")
    assert out.rstrip().endswith(replay)  # the last line
    assert (
        replay == f"python -m sansio_aio.testing.sweep {COUNTING} --seed {seed} --config {config}"
    )
    again = subprocess.run(
        [sys.executable, *shlex.split(replay)[1:]], capture_output=True, text=True, cwd=ROOT
    )
    assert again.returncode == 1 and "WARNING" not in again.stdout
    assert field(again.stdout, r"^FAILED seed (\d+)") == str(seed)
    assert field(again.stdout, r"digest ([0-9a-f]{16})") == digest  # the very same run


def test_a_replay_with_another_configuration_says_so() -> None:
    run = cli("tests.testing.sim_example:passing", "--seed", "3", "--config", "00000000")
    assert run.returncode == 0
    assert run.stdout.startswith("WARNING: configuration ")
    assert "differs from the expected 00000000" in run.stdout
    assert "ok seed 3" in run.stdout and "status at the end of the run:" in run.stdout


def test_a_passing_sweep_in_two_processes_from_a_clock_seed() -> None:
    run = cli("tests/testing/sim_example.py:passing", "--seeds", "20", "--jobs", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    first = int(field(run.stdout, r"seeds (\d+)\.\.\d+ \(20\), 2 job\(s\)"))
    assert first > 0  # taken from the clock
    assert re.search(
        r"^20 seeds run: all ok in .* 2 job\(s\)\); .* sim/real \d+x$", run.stdout, re.M
    )


def test_check_determinism_and_usage_errors() -> None:
    run = cli("tests.testing.sim_example:nondeterministic", "--seeds", "3", "--check-determinism")
    assert run.returncode == 1 and "checking determinism" in run.stdout
    assert "nondeterminism: the same seed gave two different traces" in run.stdout
    assert cli(COUNTING, "--seeds", "0").returncode == 2
    assert cli(COUNTING, "--bogus").returncode == 2


def test_importing_the_module_keeps_sweep_a_function() -> None:
    import importlib

    module = importlib.import_module("sansio_aio.testing.sweep")
    import sansio_aio.testing as testing

    assert module.__all__ == []
    report = testing.sweep("tests.testing.sim_example:passing", range(2))  # callable module
    assert report.ok and sweep_function("tests.testing.sim_example:passing", range(1)).ok


def test_the_documented_failure_report_is_still_true() -> None:
    """docs/testing.md shows a captured failure: its seed still fails with that error."""
    from tests.testing.tutorial import DOC

    text = DOC.read_text(encoding="utf-8")
    seed, error = re.findall(r"^FAILED seed (\d+): (.+)$", text, re.M)[0]
    spec = re.findall(r"^replay: python -m sansio_aio.testing.sweep (\S+) --seed", text, re.M)[0]
    result = run_seed(spec, int(seed))
    # (the digest is not compared: a new trace line anywhere would change it)
    assert result.headline() == f"FAILED seed {seed}: {error}", "recapture docs/testing.md"
