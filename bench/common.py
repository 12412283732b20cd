"""Shared helpers for benchmarks: interleaved rounds, medians, JSON results.

Every benchmark module in ``bench/`` defines ``run() -> dict`` returning the result
record; :func:`write_result` stores it as ``bench/results/<bench>.json``. A record has at
least ``bench, metric, value, baseline, baseline_value, ratio, params``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            out[name].append(variants[name]())
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
