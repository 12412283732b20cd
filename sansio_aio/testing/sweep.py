"""The command line of seed sweeps: ``python -m sansio_aio.testing.sweep MODULE:scenario``.

Theory of operation
-------------------
A thin shell over :func:`sansio_aio.testing.sweep` and :func:`~sansio_aio.testing.run_seed`
(``_sweep.py``): it parses the options, names the seeds (``--first`` and ``--seeds``; the
first seed defaults to one taken from the clock, printed in the header, as madsim does),
prints a progress line every ``--progress`` seconds (seeds/s, simulated/real time) and,
at the first failure, the report of the failing seed (the error, the configuration hash,
VOPR-style status lines per worker, the trace's tail or the written trace, the
traceback) ending with the one-line replay command. ``--seed N`` replays one seed and
prints its report whether it passes or not; with ``--config HASH`` (the replay command
passes it) a different configuration is reported, since the seed alone would then not
reproduce the run. The exit status is 0 if every seed passed, 1 otherwise (2: usage).

The scenario is named ``module:function`` (the current directory is on the path) or
``path/to/file.py:function``; with ``--jobs N`` the worker processes import it by that
name. Importing this module (rather than running it) gives a callable module that is
:func:`sansio_aio.testing.sweep`, so ``from sansio_aio.testing import sweep`` means the
function whether or not the submodule was imported.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from typing import Any

from ._sweep import SeedResult, SweepReport, run_seed
from ._sweep import sweep as _sweep

__all__: list[str] = []


def _clock_seed() -> int:
    """A first seed from the clock (microseconds, modulo 2**31)."""
    return time.time_ns() // 1000 % (1 << 31)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sansio_aio.testing.sweep",
        description="Run a simulation scenario under many seeds; stop at the first failure.",
    )
    p.add_argument("scenario", help="MODULE:FUNCTION or path/to/file.py:FUNCTION")
    p.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    p.add_argument("--first", type=int, default=None, help="the first seed (default: clock)")
    p.add_argument("--seed", type=int, default=None, help="replay this one seed, full report")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--check-determinism",
        action="store_true",
        help="run each seed twice and fail if the traces differ",
    )
    p.add_argument("--trace-dir", default=None, help="write the trace of a failing seed here")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    p.add_argument("--no-buggify", action="store_true", help="turn the fault points off")
    p.add_argument(
        "--config", default=None, help="the configuration hash to expect (replays pass it)"
    )
    p.add_argument("--tail", type=int, default=20, help="trace lines in a report (default 20)")
    p.add_argument(
        "--progress", type=float, default=1.0, help="seconds between progress lines (0: none)"
    )
    return p


def _config_warning(result: SeedResult, expected: str | None) -> str | None:
    if expected is None or not result.config_hash or expected == result.config_hash:
        return None
    return (
        f"WARNING: configuration {result.config_hash} differs from the expected {expected}: "
        "the scenario, its runtimes or the versions changed, so this seed may not replay "
        "the run it comes from"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit status."""
    args = _parser().parse_args(argv)
    buggify = not args.no_buggify
    out = sys.stdout
    if args.seed is not None:
        result = run_seed(
            args.scenario,
            args.seed,
            check_determinism=args.check_determinism,
            buggify=buggify,
            trace_dir=args.trace_dir,
            tail=args.tail,
        )
        warning = _config_warning(result, args.config)
        if warning:
            print(warning, file=out)
        print(result.report(), file=out)
        return 0 if result.ok else 1
    if args.seeds < 1 or args.jobs < 1:
        print("--seeds and --jobs must be >= 1", file=sys.stderr)
        return 2
    first = _clock_seed() if args.first is None else args.first
    last = first + args.seeds - 1
    print(
        f"sweep {args.scenario}: seeds {first}..{last} ({args.seeds}), {args.jobs} job(s), "
        f"buggify {'on' if buggify else 'off'}"
        + (", checking determinism" if args.check_determinism else ""),
        file=out,
        flush=True,
    )
    shown: list[float] = []  # when the last line was printed (the first: the first seed)

    def progress(result: SeedResult, report: SweepReport) -> None:
        now = time.perf_counter()
        if not shown:
            shown.append(now)
        if args.progress <= 0 or now - shown[0] < args.progress:
            return
        shown[0] = now
        print(
            f"[{report.seeds_run:>7}/{args.seeds}]  {len(report.failures)} failure(s)  "
            f"{report.seeds_per_second:8.1f} seeds/s  sim/real {report.ratio:6.0f}x  "
            f"{report.real_time:6.1f} s",
            file=out,
            flush=True,
        )

    report = _sweep(
        args.scenario,
        range(first, last + 1),
        jobs=args.jobs,
        stop_on_failure=not args.keep_going,
        check_determinism=args.check_determinism,
        progress=progress,
        buggify=buggify,
        trace_dir=args.trace_dir,
        tail=args.tail,
    )
    print(report.summary(), file=out)
    if report.failure is not None:
        others = [r.seed for r in report.failures if r is not report.failure]
        if others:
            print(f"other failing seeds: {' '.join(map(str, others))}", file=out)
        print("", file=out)
        print(report.failure.report(), file=out)
    out.flush()
    return 0 if report.ok else 1


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`sansio_aio.testing.sweep` (see the docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> SweepReport:
        return _sweep(*args, **kwargs)

    #: The function it stands for (documentation tools follow ``__wrapped__``).
    __wrapped__ = staticmethod(_sweep)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
