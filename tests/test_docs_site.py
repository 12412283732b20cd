"""The documentation site (mkdocs.yml, ``make docs``) builds with warnings as errors.

``mkdocs build --strict`` fails on a broken link or anchor between the pages, on a page
missing from the navigation and on a navigation entry without a page. Needs the ``docs``
extra (installed by ``make``); skipped without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytest.importorskip("mkdocs", reason="mkdocs is not installed (the `docs` extra)")
pytest.importorskip("material", reason="mkdocs-material is not installed (the `docs` extra)")

TIMEOUT = 120


def build(config_dir: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=config_dir,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = build(ROOT, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _nav_pages() -> list[str]:
    return re.findall(r":\s+([\w/]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)


def test_every_guide_is_in_the_navigation() -> None:
    nav = set(_nav_pages())
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert on_disk <= nav, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - nav)}"
    assert {"index.md", "changelog.md", "api.md"} <= nav


def test_the_site_has_every_page(site: Path) -> None:
    for page in _nav_pages():
        stem = page.removesuffix(".md")
        html = site / "index.html" if stem == "index" else site / stem / "index.html"
        assert html.exists(), f"{page} was not built"


def test_the_home_page_is_the_readme(site: Path) -> None:
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "Twenty lines" in home
    assert 'href="guide/"' in home  # README's docs/guide.md link, made relative to the site
    assert 'href="changelog/"' in home
    assert 'href="docs/' not in home


def test_the_api_reference_has_every_namespace(site: Path) -> None:
    from tests.test_exports import EXPORTS

    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for namespace in EXPORTS:
        anchor = namespace.replace(".", "")
        assert f'id="{anchor}"' in api, f"no section for {namespace} in the API page"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """--strict is on: a link to a missing anchor or page is an error, not a warning."""
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    for linked in ("bench", "sansio_aio"):  # links to these become code, if they exist
        (tmp_path / linked).symlink_to(ROOT / linked)
    with (tmp_path / "docs" / "net.md").open("a") as f:
        f.write("\nSee [there](guide.md#no-such-section) and [that](no-such-page.md).\n")
    proc = build(tmp_path, tmp_path / "site")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "no-such-section" in out
    assert "no-such-page.md" in out
    assert "Aborted with 2 warnings" in out, out  # and nothing else
