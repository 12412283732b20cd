"""The package as users get it: a wheel, installed into a fresh venv outside the checkout.

Builds the wheel into a temporary directory, installs it with the ``webrtc`` extra (and
pytest) into a new venv there, and, with the working directory outside the repository,
runs the README's first example (read from README.md, so a broken README breaks this
test), a test file that uses the pytest plugin's fixtures, ``python -m sansio_aio.webrtc
--help`` and ``sansio-whip --help``. Skipped (with pip's words) when the venv cannot be
built, e.g. without the package index; a failure when ``CI=true``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import sansio_aio
from tests.helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TIMEOUT = 300


def _run(
    args: list[str | Path], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in (env or os.environ).items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


def _cannot(what: str, proc: subprocess.CompletedProcess[str]) -> None:
    """Skip (fail on CI) when the environment, not the package, is at fault."""
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    message = f"cannot {what} (exit {proc.returncode}):\n{tail}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def readme_example() -> str:
    """The README's first python block (the "Twenty lines" example)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match is not None, "README.md has no python example"
    return match.group(1)


PLUGIN_TEST = textwrap.dedent(
    """
    from sansio_aio import Ext, ExtOut, Task


    class Echo(Task):
        def on_event(self, now, event):
            if isinstance(event, Ext):
                self.emit(ExtOut(event.msg))


    def test_harness_fixture(task_harness):
        h = task_harness(Echo)
        assert h.feed(Ext("hi")) == [ExtOut("hi")]


    def test_fake_clock_fixture(fake_clock):
        start = fake_clock.now()
        fake_clock.advance(1.5)
        assert fake_clock.now() == start + 1.5
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (outside the checkout) with the built wheel and its webrtc extra."""
    tmp = tmp_path_factory.mktemp("package")
    assert not tmp.resolve().is_relative_to(ROOT.resolve())
    dist = tmp / "dist"
    proc = _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, ROOT], cwd=tmp)
    if proc.returncode != 0:
        _cannot("build the wheel", proc)
    (wheel,) = dist.glob("sansio_aio-*.whl")
    # a platform wheel: it carries the compiled datagram paths (sansio_aio._speedups)
    assert wheel.name.startswith(f"sansio_aio-{sansio_aio.__version__}-cp3"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("sansio_aio/_speedups.") and n.endswith(".so") for n in names)
    for needed in (
        "sansio_aio/py.typed",
        "sansio_aio/_speedups.pyi",
        "sansio_aio/webrtc/__main__.py",
        "sansio_aio/webrtc/static/index.html",
        "sansio_aio/webrtc/static/whip.js",
    ):
        assert needed in names, f"{needed} is not in {wheel.name}"

    venv = tmp / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    if proc.returncode != 0:
        _cannot("create a venv", proc)
    python = venv / "bin" / "python"
    # this interpreter's pip installs into the new venv (no ensurepip: faster), with the
    # pip cache and the configured indexes / find-links
    proc = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--disable-pip-version-check",
            "-q",
            f"{wheel}[webrtc]",
            "pytest",
        ],
        cwd=tmp,
    )
    if proc.returncode != 0:
        _cannot("install the wheel with its webrtc extra", proc)
    return venv


def test_the_installed_package_is_the_wheel(installed: Path) -> None:
    code = (
        "import importlib.metadata as m, sansio_aio; "
        "print(sansio_aio.__file__); print(sansio_aio.__version__, m.version('sansio-aio'))"
    )
    proc = _run([installed / "bin" / "python", "-c", code], cwd=installed)
    assert proc.returncode == 0, proc.stderr
    where, versions = proc.stdout.splitlines()
    assert Path(where).is_relative_to(installed), where
    assert versions == f"{sansio_aio.__version__} {sansio_aio.__version__}"


@pytest.mark.parametrize("pure", ["", "1"])
def test_the_wheel_carries_the_compiled_paths_and_honours_pure(installed: Path, pure: str) -> None:
    code = "from sansio_aio import _fast; print(_fast.compiled())"
    env = {**os.environ, "SANSIO_AIO_PURE": pure}
    proc = _run([installed / "bin" / "python", "-c", code], cwd=installed, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("False" if pure else "True")


def test_readme_example_runs_from_the_wheel(installed: Path) -> None:
    proc = _run([installed / "bin" / "python", "-c", readme_example()], cwd=installed)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "greeter#0@w0 hello, world"


def test_the_pytest_plugin_is_registered(installed: Path) -> None:
    python = installed / "bin" / "python"
    proc = _run([python, "-m", "pytest", "--help"], cwd=installed)
    assert proc.returncode == 0, proc.stderr
    assert "--sansio-seed" in proc.stdout
    (installed / "test_plugin_fixtures.py").write_text(PLUGIN_TEST)
    proc = _run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin_fixtures.py"],
        cwd=installed,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


@pytest.mark.parametrize(
    "command",
    [["bin/python", "-m", "sansio_aio.webrtc", "--help"], ["bin/sansio-whip", "--help"]],
    ids=["python-m", "console-script"],
)
def test_the_server_command_line(installed: Path, command: list[str]) -> None:
    proc = _run([installed / command[0], *command[1:]], cwd=installed)
    assert proc.returncode == 0, proc.stderr
    assert "--port" in proc.stdout
    assert "--workers" in proc.stdout
