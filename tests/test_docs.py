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
