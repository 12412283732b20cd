"""Runs the tutorial of docs/testing.md: every ```python block, in order, as one module.

The tutorial's ``test_*`` functions become tests of this module, so the documentation
cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def load_tutorial() -> types.ModuleType:
    """Execute the doc's python blocks into a module (line numbers match the doc)."""
    text = DOC.read_text(encoding="utf-8")
    source = ""
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start(1))
        source += "\n" * (line - source.count("\n")) + match.group(1)
    module = types.ModuleType("sansio_aio_tutorial")
    module.__file__ = str(DOC)
    sys.modules[module.__name__] = module
    exec(compile(source, str(DOC), "exec"), module.__dict__)
    return module


tutorial = load_tutorial()
globals().update({k: v for k, v in vars(tutorial).items() if k.startswith("test_")})


def test_the_tutorial_has_its_tests() -> None:
    names = [k for k in vars(tutorial) if k.startswith("test_")]
    assert len(names) >= 6, names
