"""The README's example runs as shown (docs stay true to the code)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import ROOT


def test_readme_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(code.splitlines()) <= 20
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "greeter#0@w0 hello, world"


def test_the_architecture_module_map_names_every_module() -> None:
    """docs/architecture.md's module map lists every module that exists (and no other)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| module | its one job |") :]
    table = table[: table.index("\n\n")]
    named = set(re.findall(r"`([\w/.]+)`", table))
    package = ROOT / "sansio_aio"
    missing = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.endswith("__init__.py") and rel != "__init__.py":
            continue  # a sub-package's namespace: listed under "Public namespaces"
        stem = path.stem
        # rows name a module by its path, or (testing/_sim/, webrtc/) by its stem
        if rel not in named and f"{stem}.py" not in named and stem not in named:
            missing.append(rel)
    assert not missing, f"modules missing from the module map: {missing}"
    for name in named:
        if name.endswith(".py") and "/" in name:
            assert (package / name).exists(), f"the module map names {name}, which is gone"
