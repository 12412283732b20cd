"""The tutorial of docs/testing.md as a module: every ```python block, in order.

Loaded once (``tutorial``): ``test_tutorial.py`` runs its ``test_*`` functions and
``test_properties.py`` reuses its tasks.
"""

from __future__ import annotations

import re
import sys
import types

from tests.helpers import ROOT

DOC = ROOT / "docs" / "testing.md"
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
