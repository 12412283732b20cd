"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks:``; ``make docs``).

The site is ``docs/*.md`` plus two pages made from files at the top of the repository,
which stay the single source of their text:

* ``index.md`` (the home page) is ``README.md``, its ``docs/X.md`` links made relative
  to the site (``X.md``) and ``CHANGELOG.md`` pointing at ``changelog.md``;
* ``changelog.md`` is ``CHANGELOG.md``, rewritten the same way.

In every page, a link to a file of the repository outside ``docs/`` (``../bench/x.py``,
which the site does not contain) becomes that path as code. A link to a file that does
not exist is left alone, so ``mkdocs build --strict`` still fails on it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

#: site page -> the repository file it is made from
GENERATED = {"index.md": "README.md", "changelog.md": "CHANGELOG.md"}

_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")


def _top_level(markdown: str) -> str:
    """Links of a file at the repository's top, made relative to ``docs/``."""

    def fix(match: re.Match[str]) -> str:
        text, target = match.groups()
        path, sep, anchor = target.partition("#")
        if path.startswith("docs/"):
            path = path.removeprefix("docs/")
        elif path in GENERATED.values():
            path = next(page for page, src in GENERATED.items() if src == path)
        elif path and not re.match(r"[a-z]+:", path) and (ROOT / path).exists():
            return f"`{path}`"
        return f"[{text}]({path}{sep}{anchor})"

    return _LINK.sub(fix, markdown)


def _outside_docs(markdown: str, page_dir: Path) -> str:
    """``[text](../path)`` to an existing repository file outside docs/ -> `` `path` ``."""

    def fix(match: re.Match[str]) -> str:
        target = match.group(2).partition("#")[0]
        if not target.startswith("../"):
            return match.group(0)
        resolved = Path(os.path.normpath(page_dir / target))  # symlinks kept
        if target.removeprefix("../") in GENERATED.values():
            page = next(p for p, src in GENERATED.items() if src == target.removeprefix("../"))
            return f"[{match.group(1)}]({page})"
        docs = ROOT / "docs"
        if (
            resolved.exists()
            and resolved.is_relative_to(ROOT)
            and not resolved.is_relative_to(docs)
        ):
            return f"`{resolved.relative_to(ROOT).as_posix()}`"
        return match.group(0)

    return _LINK.sub(fix, markdown)


def on_files(files: Files, config: Any) -> Files:
    """Add the pages made from README.md and CHANGELOG.md."""
    for page, source in GENERATED.items():
        text = _top_level((ROOT / source).read_text(encoding="utf-8"))
        files.append(File.generated(config, page, content=text))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Rewrite links to repository files that are not part of the site."""
    if page.file.src_uri in GENERATED:
        return markdown
    page_dir = (ROOT / "docs" / page.file.src_uri).parent
    return _outside_docs(markdown, page_dir)
