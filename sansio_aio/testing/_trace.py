"""Deterministic traces: every input, output and packet fate of a simulation, as text.

Theory of operation
-------------------
A :class:`Trace` is a list of lines ``<time> <who> <what> <detail>``, formatted when the
record is made (so a task that later mutates an object cannot change the past). Two
runs of the same scenario with the same seed produce the same lines, byte for byte;
:meth:`Trace.digest` hashes them, :meth:`Trace.first_difference` says where two traces
part, :meth:`Trace.write` stores them for a bug report, :meth:`Trace.tail` gives the
last lines for one. With a ``limit`` only the newest lines are kept, but the lines
dropped are hashed on their way out, so the digest still covers the whole run (long
seed sweeps keep their memory flat and their determinism check exact).

:func:`describe` renders values without anything that varies between processes: no
memory addresses (objects without a custom ``__repr__`` show their class name), long
byte strings as their length and a SHA-1 prefix, dataclasses field by field.
This module imports no asyncio.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, final

__all__ = ["Trace", "describe"]

_SHORT_BYTES = 48


def describe(value: Any, _depth: int = 0) -> str:
    """A deterministic, compact text form of ``value`` for traces."""
    typ = type(value)
    if typ in _PLAIN:
        return repr(value)
    fields = _FIELDS.get(typ)
    if fields is not None and _depth <= 6:  # a dataclass seen before: the hot path
        parts = [f"{name}={describe(getattr(value, name), _depth + 1)}" for name in fields]
        return f"{typ.__name__}({', '.join(parts)})"
    if _depth > 6:
        return "..."
    if typ in (bytes, bytearray, memoryview):
        data = bytes(value)
        if len(data) <= _SHORT_BYTES:
            return repr(data)
        return f"<{len(data)} B sha1:{hashlib.sha1(data).hexdigest()[:12]}>"
    if typ is tuple:
        inner = ", ".join([describe(v, _depth + 1) for v in value])
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if typ is list:
        return "[" + ", ".join([describe(v, _depth + 1) for v in value]) + "]"
    if typ is dict:
        items = [f"{describe(k, _depth + 1)}: {describe(v, _depth + 1)}" for k, v in value.items()]
        return "{" + ", ".join(items) + "}"
    if typ in (set, frozenset):
        return "{" + ", ".join(sorted([describe(v, _depth + 1) for v in value])) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _FIELDS[typ] = tuple(f.name for f in dataclasses.fields(value))
        return describe(value, _depth)
    if all("__repr__" not in vars(k) for k in typ.__mro__[:-1]):
        return f"<{typ.__name__}>"  # the default repr carries an address
    return repr(value)


_PLAIN = frozenset({type(None), bool, int, float, str})


def _feed(h: Any, lines: list[str]) -> None:
    for line in lines:
        h.update(line.encode("utf-8", "backslashreplace"))
        h.update(b"\n")


_FIELDS: dict[type, tuple[str, ...]] = {}


@final
class Trace:
    """An append-only, deterministic log of a simulation.

    Args:
        seed: the seed of the run (written in the header of :meth:`text`).
        enabled: if false, :meth:`record` does nothing (for benchmarks).
        limit: keep at most this many lines (older lines are counted, not kept);
            ``None`` keeps everything.
    """

    __slots__ = ("_hash", "_lines", "dropped", "enabled", "limit", "seed")

    def __init__(self, seed: int | None = None, *, enabled: bool = True, limit: int | None = None):
        self.seed = seed
        self.enabled = enabled
        self.limit = limit
        self._lines: list[str] = []
        #: Lines discarded because of ``limit``.
        self.dropped = 0
        self._hash = hashlib.sha256()  # of the dropped lines

    def record(self, now: float, who: str, what: str, detail: Any = None) -> None:
        """Append one line: ``now`` (simulated time), who acted, what happened, and a detail."""
        if not self.enabled:
            return
        text = f"{now:.9f} {who} {what}"
        if detail is not None:
            text += " " + (detail if type(detail) is str else describe(detail))
        lines = self._lines
        lines.append(text)
        if self.limit is not None and len(lines) > self.limit:
            # drop in batches (a tenth of the limit at a time): amortised O(1) per line
            cut = len(lines) - self.limit + self.limit // 10
            _feed(self._hash, lines[:cut])
            del lines[:cut]
            self.dropped += cut

    def lines(self) -> list[str]:
        """Every kept line, oldest first (a copy)."""
        return list(self._lines)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._lines))

    def __len__(self) -> int:
        return len(self._lines)

    def text(self) -> str:
        """The whole trace with a header line naming the seed."""
        header = f"# sansio_aio trace seed={self.seed} lines={len(self._lines)}"
        if self.dropped:
            header += f" dropped={self.dropped}"
        return header + "\n" + "\n".join(self._lines) + ("\n" if self._lines else "")

    def tail(self, n: int = 20) -> list[str]:
        """The last ``n`` lines kept."""
        return self._lines[-n:] if n > 0 else []

    def digest(self) -> str:
        """SHA-256 of every line recorded, dropped ones included (the seed and header
        excluded): equal runs, equal digests."""
        h = self._hash.copy()
        _feed(h, self._lines)
        return h.hexdigest()

    def first_difference(self, other: Trace) -> str | None:
        """Where this trace and ``other`` part, as a readable message; ``None`` if equal."""
        a, b = self._lines, other._lines
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return f"line {i + 1}:\n  - {x}\n  + {y}"
        if len(a) != len(b):
            n = min(len(a), len(b))
            extra = a[n] if len(a) > n else b[n]
            return f"lengths differ ({len(a)} vs {len(b)}); first extra line {n + 1}: {extra}"
        return None

    def write(self, path: str | Path) -> Path:
        """Write :meth:`text` to ``path`` (parents created); return the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.text(), encoding="utf-8")
        return p

    def clear(self) -> None:
        """Forget every line."""
        self._lines.clear()
        self.dropped = 0
        self._hash = hashlib.sha256()

    def __repr__(self) -> str:
        return f"<Trace seed={self.seed} lines={len(self._lines)}>"
