"""Shared helpers for benchmarks: interleaved rounds, medians, JSON results.

Every benchmark module in ``bench/`` defines ``run() -> dict`` returning the result
record; :func:`write_result` stores it as ``bench/results/<bench>.json``. A record has at
least ``bench, metric, value, baseline, baseline_value, ratio, params``.

Progress: a benchmark may call :func:`progress` (or loop over :func:`tracked`) as its
rounds or steps go by; ``python -m bench`` shows it (a bar per benchmark with rich, else a
line per call). :func:`interleaved` reports each run of a variant by itself. Without a
hook installed (a benchmark run on its own) the calls do nothing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: ``hook(done, total, label)``: ``done`` units of ``total`` (None: unknown) are finished.
ProgressHook = Callable[[int, int | None, str], None]
_progress_hook: ProgressHook | None = None


def set_progress_hook(hook: ProgressHook | None) -> ProgressHook | None:
    """Install ``hook`` for :func:`progress` (None removes it); returns the previous one."""
    global _progress_hook
    previous, _progress_hook = _progress_hook, hook
    return previous


def progress(done: int, total: int | None = None, label: str = "") -> None:
    """Report that ``done`` of ``total`` rounds (or steps) of the running benchmark are over.

    ``label`` says what runs now (e.g. ``"round 2/5: runtime-uvloop"``). A hook that
    raises is removed rather than allowed to break the measurement.
    """
    hook = _progress_hook
    if hook is None:
        return
    try:
        hook(done, total, label)
    except Exception:
        set_progress_hook(None)


def tracked(items: Iterable[Any], total: int | None = None, label: str = "") -> Iterator[Any]:
    """Yield ``items``, reporting :func:`progress` after each one."""
    if total is None and isinstance(items, Sequence):
        total = len(items)
    progress(0, total, label)
    for i, item in enumerate(items, start=1):
        yield item
        progress(i, total, f"{label} {i}/{total}" if label and total else label)


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (0.0 for an empty sequence)."""
    return statistics.median(values) if values else 0.0


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values`` by nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def interleaved(
    variants: dict[str, Callable[[], dict[str, float]]], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Run each variant once per round, rotating the order (A B C, B C A, ...)."""
    names = list(variants)
    out: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    total = rounds * len(names)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for i, name in enumerate(order):
            progress(r * len(names) + i, total, f"round {r + 1}/{rounds}: {name}")
            out[name].append(variants[name]())
    progress(total, total, f"{rounds} rounds")
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(
    bench: str,
    *,
    metric: str,
    value: float,
    baseline: str,
    baseline_value: float,
    params: dict[str, Any],
    higher_is_better: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Build the result record, write ``bench/results/<bench>.json`` and return it."""
    if higher_is_better:
        ratio = value / baseline_value if baseline_value else 0.0
    else:
        ratio = baseline_value / value if value else 0.0
    record: dict[str, Any] = {
        "bench": bench,
        "metric": metric,
        "value": value,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": round(ratio, 3),
        "params": params,
        "machine": machine(),
        **extra,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{bench}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return record
