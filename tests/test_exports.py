"""The public API: every exported name exists, is documented, and the core vocabulary
modules stay free of asyncio (tasks must be importable without an event loop)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

PUBLIC = ["sansio_aio", "sansio_aio.net", "sansio_aio.testing"]


@pytest.mark.parametrize("module", PUBLIC)
def test_exports_exist_and_are_documented(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__doc__
    names = getattr(mod, "__all__", [])
    assert names, f"{module} has no __all__"
    assert len(names) == len(set(names))
    undocumented = []
    for name in names:
        obj = getattr(mod, name)  # AttributeError if missing
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not obj.__doc__:
            undocumented.append(name)
    assert not undocumented, f"{module}: no docstring on {undocumented}"


def test_task_side_modules_import_no_asyncio() -> None:
    """Tasks, their vocabularies and the pure task host load without an event loop."""
    code = (
        "import sys\n"
        "import sansio_aio.task, sansio_aio.events, sansio_aio.bus, sansio_aio.handoff\n"
        "import sansio_aio.net.events, sansio_aio.net.tun_events\n"
        "import sansio_aio.core, sansio_aio.ledger, sansio_aio.wire, sansio_aio.stats\n"
        "print('asyncio' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
