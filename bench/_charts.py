"""One chart per benchmark record: ``bench/results/<name>.png`` beside its JSON.

Generic over the records :func:`bench.common.write_result` writes:

* the first panel compares ``value`` with ``baseline_value`` (two bars) and shows the
  ``ratio`` and the metric;
* a second (and third) panel appears when the record holds a series: lists of per-step
  rows sharing a numeric column (whep_fanout's ``steps``, whep_scale's, cluster_fanout's
  ``one_node`` / ``two_nodes_cascade``, bus_relay's ``rounds``), plotted one line per
  series against the first increasing numeric column (``viewers``) or the row number;
  failing that, lists of numbers (``ratio_per_round``, ``rounds_pps``), one line each.

``python -m bench --charts`` redraws them all from the JSON, and the copies the docs
show, ``docs/charts/<name>.png`` (committed; ``bench/results/*.png`` are not).

A bench that draws its own ``<name>.png`` (udp_echo) keeps it: a chart is only
(over)written when the file is missing or was itself made here (PNG text ``Source``).
matplotlib (the ``dev`` extra) is imported lazily; without it nothing is drawn.
"""

from __future__ import annotations

import itertools
import json
import math
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SOURCE = "bench/_charts.py"
# What to plot first, by family (a second panel takes a column of another family).
FAMILIES = (
    ("min_fps", "mean_fps", "fps"),
    ("server_cpu", "node_cpu", "cpu"),
    ("msgs_per_s", "pps", "per_s"),
    ("rss", "_kb", "mb"),
    ("_us", "_ms"),
)
# Columns that can be a series' x axis (else the row number is).
X_NAMES = ("viewers", "step", "round", "clients", "workers", "flows", "in_flight", "window")
SKIP_KEYS = frozenset({"params", "machine", "targets", "log_tail"})

Series = dict[str, list[tuple[float, float]]]


def _num(v: object) -> float | None:
    """``v`` as a finite float (a list of numbers: their sum), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
        return float(sum(v))
    return None


def _rows(v: object) -> list[Mapping[str, Any]] | None:
    """``v`` when it is a list of at least two dicts, else None."""
    if isinstance(v, list) and len(v) >= 2 and all(isinstance(r, Mapping) for r in v):
        return v
    return None


def _numbers(v: object) -> list[float] | None:
    """``v`` when it is a list of at least two plain numbers, else None."""
    if isinstance(v, list) and len(v) >= 2:
        out = [n for x in v if not isinstance(x, list) and (n := _num(x)) is not None]
        if len(out) == len(v):
            return out
    return None


def _walk(record: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every dict in ``record`` (itself first), breadth first, with its dotted path."""
    queue: list[tuple[str, Mapping[str, Any]]] = [(path, record)]
    while queue:
        where, node = queue.pop(0)
        yield where, node
        for k, v in node.items():
            if k in SKIP_KEYS:
                continue
            if isinstance(v, Mapping):
                queue.append((f"{where}.{k}" if where else k, v))


def _columns(groups: Mapping[str, list[Mapping[str, Any]]]) -> list[str]:
    """Numeric columns present in every group (in first-seen order)."""
    common: list[str] | None = None
    for rows in groups.values():
        cols = [k for k in rows[0] if any(_num(r.get(k)) is not None for r in rows)]
        common = cols if common is None else [c for c in common if c in cols]
    return common or []


def _x_column(groups: Mapping[str, list[Mapping[str, Any]]], cols: list[str]) -> str | None:
    """The first x-like column (``viewers``...) that never decreases within any group."""
    for c in cols:
        if not any(c.startswith(n) or c.endswith(n) for n in X_NAMES):
            continue
        ok = True
        for rows in groups.values():
            xs = [_num(r.get(c)) for r in rows]
            if any(x is None for x in xs) or any(
                b < a for a, b in itertools.pairwise(xs) if a is not None and b is not None
            ):
                ok = False
                break
        if ok:
            return c
    return None


def _family(col: str) -> tuple[int, int]:
    """(family, rank in it) of a column; unknown columns sort last."""
    for f, names in enumerate(FAMILIES):
        for i, n in enumerate(names):
            if n in col:
                return (f, i)
    return (len(FAMILIES), 0)


def _pick(cols: list[str], panels: int) -> list[str]:
    """Up to ``panels`` columns, the best first, each of another family when possible."""
    ranked = sorted(cols, key=_family)
    out: list[str] = []
    for c in ranked:
        if len(out) < panels and all(_family(c)[0] != _family(o)[0] for o in out):
            out.append(c)
    for c in ranked:
        if len(out) < panels and c not in out:
            out.append(c)
    return out


def find_series(record: Mapping[str, Any], panels: int = 2) -> list[tuple[str, str, Series]]:
    """Up to ``panels`` plots of the record's first series: (title, y label, series)."""
    for where, node in _walk(record):
        groups = {k: g for k, v in node.items() if k not in SKIP_KEYS and (g := _rows(v))}
        # Rows that are not all the same shape (cluster_fanout's idle/edge_only are dicts).
        if not groups:
            continue
        cols = _columns(groups)
        x = _x_column(groups, cols)
        ys = _pick([c for c in cols if c != x], panels)
        if not ys:
            continue
        out = []
        for y in ys:
            series: Series = {}
            for name, rows in groups.items():
                pts = []
                for i, r in enumerate(rows):
                    xv = _num(r.get(x)) if x else float(i + 1)
                    yv = _num(r.get(y))
                    if xv is not None and yv is not None:
                        pts.append((xv, yv))
                if pts:
                    series[name] = pts
            if series:
                title = f"{where + ': ' if where else ''}{y} per {x or 'row'}"
                out.append((title, f"{x or 'row'}|{y}", series))
        if out:
            return out
    for where, node in _walk(record):
        lists = {k: n for k, v in node.items() if k not in SKIP_KEYS and (n := _numbers(v))}
        if lists:
            series = {k: [(float(i + 1), y) for i, y in enumerate(v)] for k, v in lists.items()}
            return [(f"{where + ': ' if where else ''}per round", "round|value", series)]
    return []


def _mine(path: Path) -> bool:
    """Whether ``path`` is missing or a chart this module drew."""
    if not path.exists():
        return True
    try:
        from PIL import Image

        with Image.open(path) as img:
            return bool(img.info.get("Source") == SOURCE)
    except Exception:
        return False


def _fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f} k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def render(record: Mapping[str, Any], out_dir: Path, *, force: bool = False) -> Path | None:
    """Draw ``out_dir/<bench>.png`` from ``record``; its path, or None when not drawn.

    Not drawn: matplotlib missing, a record without ``bench``/``value``, or a chart of
    the bench's own already there (unless ``force``).
    """
    name = str(record.get("bench", ""))
    value, base = _num(record.get("value")), _num(record.get("baseline_value"))
    if not name or value is None:
        return None
    path = out_dir / f"{name}.png"
    if not force and not _mine(path):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None

    series = find_series(record)
    ncols = 1 + len(series)
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 + 4.6 * len(series), 3.8), squeeze=False)
    ax = axes[0][0]
    labels = ["sansio_aio", textwrap.shorten(str(record.get("baseline", "baseline")), 40)]
    values = [value, base if base is not None else 0.0]
    bars = ax.bar([0, 1], values, color=["#2b6cb0", "#a0aec0"], width=0.6)
    ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8)
    ax.set_xticks([0, 1], ["\n".join(textwrap.wrap(s, 18)) for s in labels], fontsize=7)
    ax.set_ylim(0, max(values) * 1.18 if max(values) > 0 else 1)
    ax.set_ylabel("\n".join(textwrap.wrap(str(record.get("metric", "value")), 40)), fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ratio = _num(record.get("ratio"))
    ax.set_title(
        f"{name}: ratio {ratio:.2f}\N{MULTIPLICATION SIGN}" if ratio is not None else name,
        fontsize=9,
    )

    for i, (title, labels_xy, data) in enumerate(series, start=1):
        sub = axes[0][i]
        xlabel, ylabel = labels_xy.split("|", 1)
        for label, pts in data.items():
            sub.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
        sub.set_xlabel(xlabel, fontsize=8)
        sub.set_ylabel(ylabel, fontsize=8)
        sub.set_title(textwrap.shorten(title, 60), fontsize=8)
        sub.tick_params(labelsize=7)
        sub.grid(alpha=0.3)
        sub.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(data) > 1 or i == 1:
            sub.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    # No software version in the file: the same record gives the same bytes (committed).
    fig.savefig(path, dpi=80, metadata={"Software": None, "Source": SOURCE})
    plt.close(fig)
    return path


def render_all(
    results: Path, names: list[str] | None = None, out: Path | None = None
) -> list[Path]:
    """Draw the chart of every (or each named) ``results/<name>.json`` into ``out``.

    ``out`` defaults to ``results``; returns the paths drawn.
    """
    out = results if out is None else out
    drawn = []
    for js in sorted(results.glob("*.json")):
        if names and js.stem not in names:
            continue
        try:
            record = json.loads(js.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and (path := render(record, out)) is not None:
            drawn.append(path)
    return drawn
