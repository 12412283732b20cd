"""docs/api.md is generated from the docstrings and stays in step with the code.

It is the API reference page of the documentation site (mkdocs.yml; its build is checked
by tests/test_docs_site.py), so a name missing here is missing from the site.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from .test_exports import EXPORTS

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"


@pytest.fixture(scope="module")
def gen_api() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "scripts" / "gen_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_page_is_up_to_date(gen_api: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    """Fails when a public name or docstring changed: run `make docs` and commit."""
    assert gen_api.main(["--check"]) == 0, capsys.readouterr().err


def test_generator_covers_every_public_namespace(gen_api: ModuleType) -> None:
    assert set(gen_api.NAMESPACES) == set(EXPORTS)


def _sections() -> dict[str, str]:
    """docs/api.md split at its ``## `namespace` `` headings."""
    parts = re.split(r"^## `([\w.]+)`$", API.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("namespace", sorted(EXPORTS))
def test_every_public_name_has_a_heading(namespace: str) -> None:
    section = _sections().get(namespace)
    assert section is not None, f"docs/api.md has no section for {namespace}"
    headings = set(re.findall(r"^### `(\w+)`$", section, flags=re.M))
    names = set(importlib.import_module(namespace).__all__)
    assert names <= headings, f"missing from docs/api.md: {sorted(names - headings)}"
    assert headings <= names, f"stale in docs/api.md: {sorted(headings - names)}"
