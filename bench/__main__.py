"""Run benchmarks: ``python -m bench`` runs all, ``python -m bench NAME`` runs one.

A benchmark is a module ``bench/<name>.py`` (not starting with ``_`` and not
``common``) with a ``run() -> dict`` function that writes its JSON result.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """Every benchmark module name."""
    return sorted(
        p.stem
        for p in HERE.glob("*.py")
        if not p.stem.startswith("_") and p.stem not in ("common",)
    )


def main(argv: list[str]) -> int:
    wanted = argv or names()
    unknown = [n for n in wanted if n not in names()]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {names()}", file=sys.stderr)
        return 2
    for name in wanted:
        t0 = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        record = module.run()
        took = time.perf_counter() - t0
        print(f"== {name} ({took:.1f} s)")
        print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
