"""The python code blocks of docs/guide.md and README.md run as they are written.

Each document's ```python blocks run in order in one namespace (a later block uses the
classes of an earlier one, as a reader would), one test per block, with the block's
line numbers in tracebacks. A block defining ``test_*`` functions has them called too
(``async`` ones with ``asyncio.run``). A few blocks are fragments on purpose (lines out of
a task's method, a script importing the reader's own module): they must compile, and
are named in ``FRAGMENTS`` with the reason. docs/testing.md's tutorial has its own runner
(tests/testing/test_tutorial.py).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.helpers import ROOT

DOCS = ("docs/guide.md", "README.md")
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

#: (document, text of one line of the block) -> why the block is only compiled
FRAGMENTS = {
    ("docs/guide.md", 'self.emit(Subscribe("prices"))'): "lines of a task's method",
    ("docs/guide.md", "from myapp.tasks import Echo"): "imports the reader's own module",
}

#: (document, text of one line of the block) -> what its run prints (each a substring of a line)
EXPECTED = {
    ("README.md", "asyncio.run(main())"): ["greeter#0@w0 hello, world"],
    ("docs/guide.md", 'rt.send_nowait(ref, "the quick brown fox")'): ["msg=4", "4"],
    ("docs/guide.md", 'rt.send_nowait(1, "hi")'): [
        "w1: 'hi' from the application",
        "'reload' from worker 0",
        "'reload' from worker 0",
    ],
    ("docs/guide.md", 'print("placed", stats.placed'): ["placed (1, 0) pending 0 dropped 0"],
}


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the block's first line of code
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    def matches(self, key: tuple[str, str]) -> bool:
        return key[0] == self.doc and any(key[1] in ln for ln in self.code.splitlines())


def blocks_of(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text(encoding="utf-8")
    return [
        Block(doc, text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)
    ]


BLOCKS = [block for doc in DOCS for block in blocks_of(doc)]


@dataclass
class Document:
    """The namespace a document's blocks run in, and which of them ran."""

    namespace: dict[str, Any] = field(default_factory=dict)
    done: dict[int, BaseException | None] = field(default_factory=dict)


@pytest.fixture(scope="module")
def documents() -> dict[str, Document]:
    return {doc: Document(namespace={"__name__": "guide_sample"}) for doc in DOCS}


def _fragment_reason(block: Block) -> str | None:
    return next((why for key, why in FRAGMENTS.items() if block.matches(key)), None)


def _compile(block: Block) -> Any:
    # padding: line numbers in tracebacks are the document's
    source = "\n" * (block.line - 1) + block.code
    return compile(source, str(ROOT / block.doc), "exec")


def _run(block: Block, document: Document) -> None:
    """Run ``block`` (and, first, the blocks above it) in the document's namespace."""
    for earlier in BLOCKS:
        if earlier.doc != block.doc or earlier.line >= block.line:
            continue
        if earlier.line not in document.done:
            _run(earlier, document)
        failed = document.done[earlier.line]
        if failed is not None:
            pytest.fail(f"the block at {earlier.id} failed first: {failed!r}")
    code = _compile(block)
    if _fragment_reason(block) is not None:
        document.done[block.line] = None
        return
    before = set(document.namespace)
    try:
        exec(code, document.namespace)
        for name, fn in list(document.namespace.items()):
            if name.startswith("test_") and name not in before and callable(fn):
                result = fn()
                if inspect.iscoroutine(result):
                    asyncio.run(result)
    except BaseException as exc:
        document.done[block.line] = exc
        raise
    document.done[block.line] = None


def test_every_document_has_samples() -> None:
    for doc in DOCS:
        assert blocks_of(doc), f"{doc} has no python block"
    for key in (*FRAGMENTS, *EXPECTED):  # each names a block that still exists
        assert any(b.matches(key) for b in BLOCKS), f"no block of {key[0]} has {key[1]!r}"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_sample_runs(
    block: Block, documents: dict[str, Document], capsys: pytest.CaptureFixture[str]
) -> None:
    reason = _fragment_reason(block)
    _run(block, documents[block.doc])
    out = capsys.readouterr().out.splitlines()
    for key, expected in EXPECTED.items():
        if block.matches(key):
            rest = list(out)
            for want in expected:  # in order, each on its own line
                hit = next((i for i, line in enumerate(rest) if want in line), None)
                assert hit is not None, f"{want!r} not printed by {block.id}: {out}"
                rest = rest[hit + 1 :]
    if reason is not None:
        pytest.skip(f"compiled only: {reason}")
