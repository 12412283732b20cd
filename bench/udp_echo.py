"""UDP echo: the runtime's echo server against hand-written echoes, same generator.

    python -m bench udp_echo            # full run, about a minute
    BENCH_QUICK=1 python -m bench udp_echo   # a few seconds, to check it works

Servers (``bench/_udp_servers.py``), each in its own process pinned to CPU 1, with the
load generator (``bench/loadgen.c``, GSO sends, recvmmsg) pinned to CPU 0:

* ``runtime-uvloop`` and ``runtime-epoll``: sansio_aio with one worker and one echo task
  fed datagram by datagram (``UdpPacket`` -> ``UdpSend``);
* ``runtime-uvloop-batch``, ``runtime-epoll-batch``: the same echo task on a
  ``UdpBind(batch=True)`` socket, fed once per readiness (``UdpPackets`` ->
  ``UdpSendBatch``);
* ``uvloop-protocol``, ``asyncio-protocol``: hand-written ``DatagramProtocol`` echoes;
* ``uvloop-reader``: hand-written uvloop ``add_reader`` + drain (the driver's path alone);
* ``epoll-drain``: a hand-written ``select.epoll`` drain loop;
* ``runtime-uvloop-pure``, ``runtime-uvloop-batch-pure``: the same runtime servers with
  ``SANSIO_AIO_PURE=1``: the pure-Python datagram path (one ``recvfrom``/``sendto`` per
  datagram), i.e. the code before the C speedups, in the same rounds;
* ``c-echo``: recvmmsg/sendmmsg in C: shows the generator drives far more than any
  Python server, so the generator is not what the other figures measure.

Payloads of 100 and 1500 bytes; 256 datagrams in flight (throughput, pps) and 1 in
flight (latency, RTT p50/p99). Rounds rotate the server order and the record keeps
medians. Besides pps, each measurement reads the server process's CPU time, so the
record also has CPU microseconds per echoed datagram: the per-packet cost, which stays
meaningful when other work shares the machine. The targets of the issue are computed
and stored with the figures; nothing here asserts them. A bar chart goes to
``bench/results/udp_echo.png``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from bench import _udp_loadgen as lg
from bench.common import RESULTS, median, write_result
from sansio_aio._fast import compiled

SERVERS = [
    "runtime-uvloop",
    "runtime-uvloop-pure",
    "uvloop-protocol",
    "uvloop-reader",
    "epoll-drain",
    "runtime-epoll",
    "runtime-uvloop-batch",
    "runtime-uvloop-batch-pure",
    "runtime-epoll-batch",
    "asyncio-protocol",
    "c-echo",
]
SIZES = (100, 1500)
WINDOWS = (256, 1)


def _server_argv(name: str) -> list[str] | None:
    if name == "c-echo":
        binary = lg.build()
        return [str(binary), "echo", "127.0.0.1", "0"] if binary else None
    if name.endswith("-pure"):  # the same server on the pure-Python datagram path
        if not compiled():
            return None
        return ["env", "SANSIO_AIO_PURE=1", *(_server_argv(name.removesuffix("-pure")) or [])]
    return [sys.executable, "-m", "bench._udp_servers", name]


def _measure(port: int, pid: int, size: int, window: int, seconds: float) -> dict[str, float]:
    cpu0 = lg.cpu_seconds(pid)
    rec = lg.udp(port, size, window, seconds)
    cpu = lg.cpu_seconds(pid) - cpu0
    received = max(1, int(rec["received"]))
    return {
        "pps": float(rec["pps"]),
        "p50_us": float(rec["p50_us"]),
        "p99_us": float(rec["p99_us"]),
        "lost": float(rec["lost"]),
        "generator_cpu_share": float(rec.get("generator_cpu_share", 1.0)),
        # CPU of the whole run (warm-up included) over the datagrams of the measured part
        "cpu_us_per_pkt": cpu / received * 1e6 * seconds / (seconds + 0.2),
    }


def run() -> dict[str, Any]:
    """Run the comparison, write ``bench/results/udp_echo.json`` (+ a PNG), return it."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    seconds = 0.3 if quick else 1.0
    lat_seconds = 0.3 if quick else 0.5
    rounds = 1 if quick else 3
    servers = [s for s in SERVERS if _server_argv(s) is not None]
    samples: dict[str, dict[str, list[dict[str, float]]]] = {s: {} for s in servers}
    for r in range(rounds):
        order = servers[r % len(servers) :] + servers[: r % len(servers)]
        for name in order:
            argv = _server_argv(name)
            assert argv is not None
            with lg.start_server(argv) as (port, pid):
                for size in SIZES:
                    for window in WINDOWS:
                        secs = seconds if window > 1 else lat_seconds
                        m = _measure(port, pid, size, window, secs)
                        samples[name].setdefault(f"{size}B_w{window}", []).append(m)
                        print(
                            f"  {name:17s} {size:5d} B w{window:<3d} {m['pps']:9.0f} pps "
                            f"p50 {m['p50_us']:6.0f} us  {m['cpu_us_per_pkt']:5.2f} cpu-us/pkt "
                            f"(generator {m['generator_cpu_share']:.0%} of its core)",
                            file=sys.stderr,
                            flush=True,
                        )
    table = {
        name: {
            combo: {k: median([m[k] for m in ms]) for k in ms[0]} for combo, ms in combos.items()
        }
        for name, combos in samples.items()
    }
    targets = _targets(table)
    plot = _plot(table)
    rt, base = table["runtime-uvloop"]["1500B_w256"], table["uvloop-protocol"]["1500B_w256"]
    return write_result(
        "udp_echo",
        metric="pps_1500B_window256",
        value=round(rt["pps"]),
        baseline="uvloop DatagramProtocol echo",
        baseline_value=round(base["pps"]),
        params={
            "sizes": list(SIZES),
            "windows": list(WINDOWS),
            "seconds": seconds,
            "latency_seconds": lat_seconds,
            "rounds": rounds,
            "generator": "c" if lg.build() else "python",
            "pinned": bool(lg.pinning()[0]),
            "quick": quick,
        },
        results=table,
        targets=targets,
        generator_headroom=_headroom(table),
        plot=plot,
    )


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def _targets(t: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The issue's targets, each with the measured ratio (pps and CPU-cost based)."""
    out: dict[str, Any] = {}

    def add(name: str, want: float, got: float, by_cpu: float | None = None) -> None:
        out[name] = {"want": want, "ratio": got, "met": got >= want}
        if by_cpu is not None:
            out[name]["ratio_by_cpu_cost"] = by_cpu

    for size in SIZES:
        c = f"{size}B_w256"
        rt, proto = t["runtime-uvloop"][c], t["uvloop-protocol"][c]
        add(
            f"runtime_uvloop_vs_uvloop_protocol_{size}B",
            0.9,
            _ratio(rt["pps"], proto["pps"]),
            _ratio(proto["cpu_us_per_pkt"], rt["cpu_us_per_pkt"]),
        )
        batch = t["runtime-uvloop-batch"][c]
        add(
            f"runtime_uvloop_batch_vs_uvloop_protocol_{size}B",
            1.1,
            _ratio(batch["pps"], proto["pps"]),
            _ratio(proto["cpu_us_per_pkt"], batch["cpu_us_per_pkt"]),
        )
        if "c-echo" in t:
            add(
                f"runtime_uvloop_batch_vs_c_recvmmsg_echo_{size}B",
                0.6,
                _ratio(batch["pps"], t["c-echo"][c]["pps"]),
                _ratio(t["c-echo"][c]["cpu_us_per_pkt"], batch["cpu_us_per_pkt"]),
            )
        for name in ("runtime-uvloop-pure", "runtime-uvloop-batch-pure"):
            if name in t:  # before the speedups, same rounds: reported, not a target
                key = name.replace("-", "_")
                out[f"{key}_vs_uvloop_protocol_{size}B"] = {
                    "ratio": _ratio(t[name][c]["pps"], proto["pps"]),
                    "ratio_by_cpu_cost": _ratio(
                        proto["cpu_us_per_pkt"], t[name][c]["cpu_us_per_pkt"]
                    ),
                }
        add(
            f"runtime_uvloop_vs_asyncio_protocol_{size}B",
            5.0,
            _ratio(rt["pps"], t["asyncio-protocol"][c]["pps"]),
            _ratio(t["asyncio-protocol"][c]["cpu_us_per_pkt"], rt["cpu_us_per_pkt"]),
        )
        ep, drain = t["runtime-epoll"][c], t["epoll-drain"][c]
        add(
            f"runtime_epoll_vs_epoll_drain_{size}B",
            0.85,
            _ratio(ep["pps"], drain["pps"]),
            _ratio(drain["cpu_us_per_pkt"], ep["cpu_us_per_pkt"]),
        )
        for mode in ("epoll",):
            base = "epoll-drain"
            b, ref = t[f"runtime-{mode}-batch"][c], t[base][c]
            add(
                f"runtime_{mode}_batch_vs_{base.replace('-', '_')}_{size}B",
                0.85,
                _ratio(b["pps"], ref["pps"]),
                _ratio(ref["cpu_us_per_pkt"], b["cpu_us_per_pkt"]),
            )
        add(
            f"runtime_uvloop_batch_vs_asyncio_protocol_{size}B",
            5.0,
            _ratio(t["runtime-uvloop-batch"][c]["pps"], t["asyncio-protocol"][c]["pps"]),
        )
        lat = f"{size}B_w1"
        # p50 RTT within 1.2x of the protocol's: ratio = protocol p50 / runtime p50 >= 1/1.2
        add(
            f"runtime_uvloop_p50_rtt_within_1.2x_protocol_{size}B",
            round(1 / 1.2, 3),
            _ratio(t["uvloop-protocol"][lat]["p50_us"], t["runtime-uvloop"][lat]["p50_us"]),
        )
    return out


def _headroom(t: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """How much faster the generator drives the C echo than the best Python server, and
    the most of its own core the generator used in any throughput run."""
    if "c-echo" not in t:
        return {"note": "no C compiler: the Python generator may be the bottleneck"}
    out: dict[str, Any] = {}
    for size in SIZES:
        c = f"{size}B_w256"
        best = max((n for n in t if n != "c-echo"), key=lambda n: t[n][c]["pps"])
        out[f"{size}B"] = {
            "c_echo_pps": round(t["c-echo"][c]["pps"]),
            "fastest_python": best,
            "fastest_python_pps": round(t[best][c]["pps"]),
            "ratio": _ratio(t["c-echo"][c]["pps"], t[best][c]["pps"]),
            "generator_cpu_share_max": max(t[n][c]["generator_cpu_share"] for n in t),
        }
    return out


def _plot(t: dict[str, dict[str, dict[str, float]]]) -> str | None:
    """A grouped bar chart of pps at window 256; returns its path, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(t)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.38
    for i, size in enumerate(SIZES):
        values = [t[n][f"{size}B_w256"]["pps"] / 1000 for n in names]
        xs = [x + (i - 0.5) * width for x in range(len(names))]
        bars = ax.bar(xs, values, width, label=f"{size} B")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("echoes per second (thousands)")
    ax.set_title("UDP echo, 256 in flight, one core (same C load generator)")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "udp_echo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(RESULTS.parent.parent))
