"""Run benchmarks: ``python -m bench`` runs all, ``python -m bench NAME...`` runs some.

A benchmark is a module ``bench/<name>.py`` (not starting with ``_`` and not
``common``) with a ``run() -> dict`` function that writes its JSON result.

While they run, progress shows per benchmark (its elapsed time, and its rounds or steps
when it reports them through :func:`bench.common.progress`): live bars when the output
is a terminal and rich is installed (the ``dev`` extra), else one line per report.
After each benchmark its chart is drawn beside its JSON, ``bench/results/<name>.png``
(see ``bench/_charts.py``).

Options: ``--charts`` redraws the charts from the JSON already in ``bench/results/``
without running anything, there and in ``docs/charts/`` (the gallery of
``docs/benchmarks.md``, committed); ``--quick`` passes ``quick=True`` to the benchmarks that take
it; ``--no-charts`` skips drawing; ``--plain`` forces line output.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from bench import _charts
from bench.common import RESULTS, set_progress_hook

HERE = Path(__file__).resolve().parent
#: The charts docs/benchmarks.md shows (committed), redrawn by ``--charts``.
DOCS_CHARTS = HERE.parent / "docs" / "charts"


def names() -> list[str]:
    """Every benchmark module name."""
    return sorted(
        p.stem
        for p in HERE.glob("*.py")
        if not p.stem.startswith("_") and p.stem not in ("common",)
    )


class Reporter(Protocol):
    """Shows which benchmark runs, how far it got and for how long."""

    def start(self, name: str) -> None: ...
    def update(self, done: int, total: int | None, label: str) -> None: ...
    def finish(self, ok: bool) -> None: ...
    def print(self, text: str) -> None: ...
    def close(self) -> None: ...


class PlainReporter:
    """One line per report: ``[2/16] udp_echo: round 3/5: runtime-uvloop (12.3 s)``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.index = 0
        self.name = ""
        self.t0 = self.last = time.perf_counter()

    def _line(self, text: str) -> None:
        took = time.perf_counter() - self.t0
        print(f"[{self.index}/{self.count}] {self.name}: {text} ({took:.1f} s)", flush=True)

    def start(self, name: str) -> None:
        self.index += 1
        self.name = name
        self.t0 = self.last = time.perf_counter()
        self._line("started")

    def update(self, done: int, total: int | None, label: str) -> None:
        # At most one line a second (and the last one): rounds can be short.
        now = time.perf_counter()
        if now - self.last < 1.0 and done != total:
            return
        self.last = now
        of = f"{done}/{total}" if total else str(done)
        self._line(f"{of} {label}".rstrip())

    def finish(self, ok: bool) -> None:
        self._line("done" if ok else "FAILED")

    def print(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


class RichReporter:
    """Live bars: all benchmarks, and the running one (rounds, label, elapsed time)."""

    def __init__(self, count: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[label]}"),
            refresh_per_second=4,
        )
        self.overall = self.progress.add_task("all benchmarks", total=count, label="")
        self.task: Any = None
        self.progress.start()

    def start(self, name: str) -> None:
        self.progress.update(self.overall, label=name)
        self.task = self.progress.add_task(name, total=None, label="running")

    def update(self, done: int, total: int | None, label: str) -> None:
        self.progress.update(self.task, completed=done, total=total, label=label)

    def finish(self, ok: bool) -> None:
        task = self.progress.tasks[self.task]
        total = task.total if task.total is not None else 1
        self.progress.update(
            self.task, completed=total, total=total, label="done" if ok else "[red]FAILED"
        )
        self.progress.stop_task(self.task)
        self.progress.advance(self.overall)

    def print(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        self.progress.update(self.overall, label="")
        self.progress.stop()


def reporter(count: int, plain: bool) -> Reporter:
    """Rich bars on a terminal when rich is installed, else plain lines."""
    if not plain and sys.stdout.isatty():
        try:
            return RichReporter(count)
        except ImportError:
            pass
    return PlainReporter(count)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return str(path)


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Import ``bench.<name>`` and call its ``run`` (with ``quick=True`` when asked and taken)."""
    module = importlib.import_module(f"bench.{name}")
    kwargs: dict[str, Any] = {}
    if quick and "quick" in inspect.signature(module.run).parameters:
        kwargs["quick"] = True
    record: dict[str, Any] = module.run(**kwargs)
    return record


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run benchmarks.")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {names()})")
    parser.add_argument("--charts", action="store_true", help="only redraw charts from JSON")
    parser.add_argument("--quick", action="store_true", help="quick=True where accepted")
    parser.add_argument("--no-charts", action="store_true", help="do not draw charts")
    parser.add_argument("--plain", action="store_true", help="line output, no live bars")
    args = parser.parse_args(argv)

    if args.charts:
        known = {p.stem for p in RESULTS.glob("*.json")}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            print(f"no results for {unknown} in {RESULTS}", file=sys.stderr)
            return 2
        drawn = _charts.render_all(RESULTS, args.names or None)
        drawn += _charts.render_all(RESULTS, args.names or None, DOCS_CHARTS)
        for path in drawn:
            print(_shown(path))
        print(f"{len(drawn)} chart(s) drawn", file=sys.stderr)
        return 0

    wanted = args.names or names()
    unknown = [n for n in wanted if n not in names()]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {names()}", file=sys.stderr)
        return 2
    failed: list[str] = []
    show = reporter(len(wanted), args.plain)
    try:
        for name in wanted:
            show.start(name)
            previous = set_progress_hook(show.update)
            t0 = time.perf_counter()
            try:
                record = run_one(name, args.quick)
            except Exception:
                show.finish(False)
                show.print(f"== {name} FAILED\n{traceback.format_exc()}")
                failed.append(name)
                continue
            finally:
                set_progress_hook(previous)
            took = time.perf_counter() - t0
            show.finish(True)
            show.print(f"== {name} ({took:.1f} s)")
            show.print(json.dumps(record, indent=2))
            if not args.no_charts:
                chart = _charts.render(record, RESULTS)
                if chart is not None:
                    show.print(f"chart: {_shown(chart)}")
    finally:
        show.close()
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
