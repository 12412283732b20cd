"""Run the test suite on every CPython >= 3.11 found on this machine (``make test-all``).

Interpreters are looked for in this order, one per minor version (the first found wins):

* the project venv's own Python (``.venv``; its tests run in ``.venv`` itself),
* ``python3.X`` on ``PATH`` (X from 11 to 19),
* pyenv's ``$(pyenv root)/versions/*/bin/python3``.

Anything older than 3.11 is ignored. Every other version gets a venv of its own,
``.venv-3.X``, made and bootstrapped like ``.venv`` (``pip install -e ".[EXTRAS]"``),
reinstalled only when ``pyproject.toml``, ``setup.py`` or ``_speedups.c`` is newer than
its stamp, so later runs reuse it.
The suite then runs the way ``make test`` runs it (under coverage, after the Chromium and
Redis checks), one version after the other, each with its own coverage data file (a
concurrent ``make test`` in the same tree cannot delete it). At the end: one table row
per version (passed, failed, skipped, seconds, coverage) and every failing test with its
error. The exit status is 1 when any version failed or could not be set up.

Usage: ``python scripts/test_all.py [--only 3.12,3.13] [--others] [--list] [-- PYTEST ARGS]``
(``--others``: every version but ``.venv``'s, which ``make test`` has just run; CI uses it).
Environment: ``EXTRAS`` (default ``dev,tun,webrtc,cluster``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAIN_VENV = ROOT / ".venv"
MIN_VERSION = (3, 11)
PROBE = "import sys; print(sys.implementation.name, *sys.version_info[:3])"


@dataclass(frozen=True)
class Interpreter:
    """A CPython found on the machine."""

    path: str
    version: tuple[int, int, int]
    origin: str

    @property
    def minor(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def full(self) -> str:
        return ".".join(map(str, self.version))


@dataclass
class Outcome:
    """One version's run."""

    interp: Interpreter
    venv: Path
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfailed: int = 0
    seconds: float = 0.0
    coverage: str = "-"
    exit_code: int = 0
    note: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.failed == 0 and self.errors == 0 and not self.note


def probe(path: str) -> tuple[int, int, int] | None:
    """The CPython version of ``path``, or None when it is not a working CPython."""
    try:
        out = subprocess.run(
            [path, "-c", PROBE], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 4 or out[0] != "cpython":
        return None
    return int(out[1]), int(out[2]), int(out[3])


def pyenv_root() -> Path | None:
    """``$(pyenv root)``, else ``$PYENV_ROOT``, else ``~/.pyenv`` when it exists."""
    exe = shutil.which("pyenv")
    if exe:
        try:
            out = subprocess.run(
                [exe, "root"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            if out:
                return Path(out)
        except (OSError, subprocess.SubprocessError):
            pass
    for candidate in (os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")):
        if candidate and Path(candidate, "versions").is_dir():
            return Path(candidate)
    return None


def candidates() -> list[tuple[str, str]]:
    """(path, origin) of every interpreter worth probing, in order of preference."""
    found: list[tuple[str, str]] = []
    venv_python = MAIN_VENV / "bin" / "python"
    if venv_python.exists():
        found.append((str(venv_python), "venv"))
    for minor in range(MIN_VERSION[1], 20):
        exe = shutil.which(f"python3.{minor}")
        if exe:
            found.append((exe, "PATH"))
    root = pyenv_root()
    if root is not None:
        found += [(str(exe), "pyenv") for exe in sorted((root / "versions").glob("*/bin/python3"))]
    return found


def discover() -> list[Interpreter]:
    """One interpreter per minor version >= 3.11, sorted by version."""
    by_minor: dict[tuple[int, int], Interpreter] = {}
    for path, origin in candidates():
        version = probe(path)
        if version is None or version[:2] < MIN_VERSION or version[:2] in by_minor:
            continue
        by_minor[version[:2]] = Interpreter(path, version, origin)
    return [by_minor[k] for k in sorted(by_minor)]


def venv_for(interp: Interpreter) -> Path:
    """The venv a version's tests run in."""
    return MAIN_VENV if interp.origin == "venv" else ROOT / f".venv-{interp.minor}"


def bootstrap(interp: Interpreter, venv: Path, extras: str) -> str:
    """Make ``venv`` and install the project into it (skipped when up to date).

    Returns an empty string, or why the venv could not be made.
    """
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    # what the install depends on: the metadata and the C speedups it compiles
    inputs = [ROOT / "pyproject.toml", ROOT / "setup.py", ROOT / "sansio_aio" / "_speedups.c"]
    newest = max(p.stat().st_mtime for p in inputs)
    fresh = stamp.exists() and stamp.stat().st_mtime >= newest
    if fresh and probe(str(python)) is not None:
        return ""
    if probe(str(python)) is None:
        print(f"== test-all: creating {venv.name} with {interp.path}", flush=True)
        made = subprocess.run([interp.path, "-m", "venv", "--clear", str(venv)], check=False)
        if made.returncode != 0:
            return f"python -m venv failed ({made.returncode})"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=False, capture_output=True)
    print(f"== test-all: installing .[{extras}] into {venv.name}", flush=True)
    done = subprocess.run([*pip, "-e", f".[{extras}]"], cwd=ROOT, check=False)
    if done.returncode != 0:
        return f"pip install -e .[{extras}] failed ({done.returncode})"
    stamp.touch()
    return ""


def failures_from(log: str) -> list[str]:
    """The short test summary's FAILED / ERROR lines (pytest's ``-ra``)."""
    lines = []
    in_summary = False
    for line in log.splitlines():
        if "short test summary info" in line:
            in_summary = True
            continue
        if in_summary and re.match(r"^(FAILED|ERROR) ", line):
            lines.append(line)
    return lines


def read_junit(path: Path, outcome: Outcome) -> None:
    """Fill the counts from pytest's JUnit XML report (xfail and xpass counted apart)."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return
    for case in tree.getroot().iter("testcase"):
        kinds = {child.tag: child for child in case}
        if "failure" in kinds:
            outcome.failed += 1
        elif "error" in kinds:
            outcome.errors += 1
        elif "skipped" in kinds:
            if kinds["skipped"].get("type") == "pytest.xfail":
                outcome.xfailed += 1
            else:
                outcome.skipped += 1
        else:
            outcome.passed += 1


def run_suite(interp: Interpreter, venv: Path, pytest_args: list[str]) -> Outcome:
    """Run the suite as ``make test`` does, in ``venv``."""
    outcome = Outcome(interp, venv)
    python = str(venv / "bin" / "python")
    env = dict(os.environ)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    with tempfile.TemporaryDirectory(prefix=f"test-all-{interp.minor}-") as tmp:
        # Own coverage data: `make test` in the same tree removes .coverage.* first.
        env["COVERAGE_FILE"] = str(Path(tmp) / ".coverage")
        junit = Path(tmp) / "junit.xml"
        cmd = [python, "-m", "coverage", "run", "-m", "pytest", f"--junitxml={junit}"]
        cmd += pytest_args
        print(f"== test-all: Python {interp.full} ({interp.origin}, {venv.name})", flush=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        captured: list[str] = []
        for line in proc.stdout:
            sys.stdout.write(line)
            captured.append(line)
        outcome.exit_code = proc.wait()
        outcome.seconds = time.monotonic() - t0
        read_junit(junit, outcome)
        outcome.failures = failures_from("".join(captured))
        if not junit.exists():
            outcome.note = f"pytest ended with {outcome.exit_code} before reporting"
        subprocess.run([python, "-m", "coverage", "combine", "-q"], cwd=ROOT, env=env, check=False)
        total = subprocess.run(
            [python, "-m", "coverage", "report", "--format=total"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if total.returncode == 0 and total.stdout.strip():
            outcome.coverage = total.stdout.strip() + " %"
    return outcome


def table(outcomes: list[Outcome]) -> str:
    """The summary table, Markdown-style so it can be pasted into a report."""
    head = ["Python", "from", "venv", "passed", "failed", "skipped", "xfailed", "seconds"]
    head += ["coverage", ""]
    rows = [head, ["---"] * len(head)]
    for o in outcomes:
        verdict = "ok" if o.ok else (o.note or f"FAILED (exit {o.exit_code})")
        rows.append(
            [
                o.interp.full,
                o.interp.origin,
                o.venv.name,
                str(o.passed),
                str(o.failed + o.errors),
                str(o.skipped),
                str(o.xfailed),
                f"{o.seconds:.0f}",
                o.coverage,
                verdict,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", default="", help="comma-separated minor versions, e.g. 3.12")
    parser.add_argument("--list", action="store_true", help="list the interpreters and stop")
    parser.add_argument(
        "--others",
        action="store_true",
        help="leave out .venv's own version (the one `make test` runs)",
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    extras = os.environ.get("EXTRAS", "dev,tun,webrtc,cluster")

    found = discover()
    if args.only:
        wanted = {v.strip() for v in args.only.split(",") if v.strip()}
        found = [i for i in found if i.minor in wanted]
    if args.others:
        found = [i for i in found if i.origin != "venv"]
        if not found:
            print("test-all: no CPython >= 3.11 other than .venv's; nothing more to run")
            return 0
    if not found:
        print("test-all: no CPython >= 3.11 found", file=sys.stderr)
        return 2
    print("== test-all: " + ", ".join(f"{i.full} ({i.origin}: {i.path})" for i in found))
    if args.list:
        return 0

    for script in ("ensure_chromium.sh", "ensure_redis.sh"):
        subprocess.run(["bash", str(ROOT / "scripts" / script)], check=False)

    outcomes: list[Outcome] = []
    for interp in found:
        venv = venv_for(interp)
        why = bootstrap(interp, venv, extras)
        if why:
            outcomes.append(Outcome(interp, venv, note=why, exit_code=1))
            continue
        outcomes.append(run_suite(interp, venv, args.pytest_args))

    print("\n== test-all: summary")
    print(table(outcomes))
    failing = [o for o in outcomes if o.failures or not o.ok]
    for o in failing:
        print(f"\n-- Python {o.interp.full}: {o.note or f'exit {o.exit_code}'}")
        for line in o.failures:
            print(f"   {line}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
