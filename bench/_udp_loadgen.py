"""The load generator of bench/udp_echo.py and bench/tcp_echo.py, and its plumbing.

:func:`build` compiles ``bench/loadgen.c`` with the machine's ``cc`` into
``bench/build/`` (gitignored) when the source is newer than the binary. :func:`udp` and
:func:`tcp` run one measurement and return the generator's JSON record; they use the C
program when it was built and the pure-Python fallback of this module otherwise (much
slower: results then say ``"generator": "python"`` and the ratios mean less).
:func:`start_server` runs one server process pinned to a CPU and reads its port;
:func:`cpu_seconds` reads a process's CPU time so a run can report CPU per packet, a
figure that stays meaningful on a machine shared with other work; each generator record
also carries ``generator_cpu_share``, the share of its own core the generator used (well
below 1 means it was waiting for the server: the server is the bottleneck).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen.c"
BINARY = HERE / "build" / "loadgen"
ROOT = HERE.parent

_built: Path | bool | None = False


def build() -> Path | None:
    """Compile the C load generator if needed; its path, or None without a compiler."""
    global _built
    if _built is not False:
        return _built  # type: ignore[return-value]
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    result: Path | None = None
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        result = BINARY
    elif cc is not None:
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [cc, "-O2", "-o", str(BINARY), str(SOURCE)], capture_output=True, text=True
        )
        if proc.returncode == 0:
            result = BINARY
        else:
            print(f"bench: cc failed, using the Python generator:\n{proc.stderr}", file=sys.stderr)
    _built = result
    return result


def pinning() -> tuple[list[str], list[str]]:
    """``taskset`` prefixes for (server, generator): different CPUs when there are two."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", "1"], ["taskset", "-c", "0"]
    return [], []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of process ``pid`` (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except OSError:
        return 0.0
    return total / tick


@contextlib.contextmanager
def start_server(argv: list[str], timeout: float = 20.0) -> Iterator[tuple[int, int]]:
    """Run a server process that prints its port first; yield ``(port, pid)``; kill it."""
    proc = subprocess.Popen(
        [*pinning()[0], *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
            raise RuntimeError(f"server {argv} did not start: {line!r} {err}")
        yield int(line), proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def udp(
    port: int,
    size: int,
    window: int,
    seconds: float,
    warmup: float = 0.2,
    *,
    flows: int = 1,
    pin: bool = True,
) -> dict[str, Any]:
    """One UDP echo measurement against 127.0.0.1:``port``.

    ``flows`` > 1 spreads the window over that many sockets (source ports), so a
    SO_REUSEPORT group of server sockets gets several 4-tuples to hash (C generator only;
    the Python fallback sends one flow). ``pin``: run the generator on CPU 0 (see
    :func:`pinning`); unpinned, the scheduler places it.
    """
    binary = build()
    if binary is None:
        rec = py_udp(("127.0.0.1", port), size, window, seconds, warmup)
    else:
        args = ["udp", "127.0.0.1", str(port), str(size), str(window), str(seconds), str(warmup)]
        if flows > 1:
            args.append(str(flows))
        cpu0 = _children_cpu()
        prefix = pinning()[1] if pin else []
        out = subprocess.run(
            [*prefix, str(binary), *args], capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            raise RuntimeError(f"loadgen failed: {out.stderr}")
        rec = json.loads(out.stdout)
        rec["generator_cpu_share"] = round((_children_cpu() - cpu0) / (seconds + warmup), 3)
    rec["generator"] = "c" if binary else "python"
    return dict(rec)


def tcp(
    port: int, conns: int, chunk: int, window: int, seconds: float, warmup: float = 0.2
) -> dict[str, Any]:
    """One TCP echo throughput measurement against 127.0.0.1:``port``."""
    binary = build()
    if binary is None:
        rec = py_tcp(("127.0.0.1", port), conns, chunk, window, seconds, warmup)
    else:
        args = ["tcp", "127.0.0.1", str(port), str(conns), str(chunk), str(window)]
        cpu0 = _children_cpu()
        out = subprocess.run(
            [*pinning()[1], str(binary), *args, str(seconds), str(warmup)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"loadgen failed: {out.stderr}")
        rec = json.loads(out.stdout)
        rec["generator_cpu_share"] = round((_children_cpu() - cpu0) / (seconds + warmup), 3)
    rec["generator"] = "c" if binary else "python"
    return dict(rec)


def _children_cpu() -> float:
    """CPU seconds of every finished child process so far (the generator runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------ Python fallbacks

_HDR = struct.Struct("=QQ")


def py_udp(
    dest: tuple[str, int], size: int, window: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """The C generator's UDP mode in Python (sendto/recv, no batching)."""
    size = max(size, _HDR.size)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(dest)
    sock.setblocking(False)
    pad = bytes(size - _HDR.size)
    outstanding: dict[int, int] = {}
    seq = received = lost = 0
    rtts: list[float] = []
    t0 = time.monotonic()
    t_measure, t_end = t0 + warmup, t0 + warmup + seconds
    last_rx = t0
    measuring = False
    while True:
        t = time.monotonic()
        if not measuring and t >= t_measure:
            measuring, received, rtts = True, 0, []
        if t >= t_end:
            break
        while len(outstanding) < window:
            now_ns = time.monotonic_ns()
            try:
                sock.send(_HDR.pack(seq, now_ns) + pad)
            except BlockingIOError:
                break
            outstanding[seq] = now_ns
            seq += 1
        got = False
        while True:
            try:
                data = sock.recv(size + 64)
            except (BlockingIOError, ConnectionRefusedError):
                break
            s, sent_ns = _HDR.unpack_from(data)
            if outstanding.pop(s, None) is not None:
                got = True
                if measuring:
                    received += 1
                    rtts.append((time.monotonic_ns() - sent_ns) / 1000)
        if got:
            last_rx = time.monotonic()
        else:
            select.select([sock], [], [], 0.001)
            if outstanding and time.monotonic() - last_rx > 0.2:
                lost += len(outstanding)
                outstanding.clear()
                last_rx = time.monotonic()
    sock.close()
    rtts.sort()
    return {
        "mode": "udp",
        "size": size,
        "window": window,
        "seconds": seconds,
        "pps": received / seconds,
        "received": received,
        "lost": lost,
        "p50_us": rtts[len(rtts) // 2] if rtts else 0.0,
        "p99_us": rtts[int(len(rtts) * 0.99)] if rtts else 0.0,
    }


def py_tcp(
    dest: tuple[str, int], conns: int, chunk: int, window: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """The C generator's TCP mode in Python (selectors, non-blocking sockets)."""
    import selectors

    sel = selectors.DefaultSelector()
    data = bytes(chunk)
    state: dict[socket.socket, int] = {}
    for _ in range(conns):
        s = socket.create_connection(dest)
        s.setblocking(False)
        state[s] = 0
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    t0 = time.monotonic()
    t_measure, t_end = t0 + warmup, t0 + warmup + seconds
    got = 0
    measuring = False
    while (t := time.monotonic()) < t_end:
        if not measuring and t >= t_measure:
            measuring, got = True, 0
        for key, _ in sel.select(0.005):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                while True:
                    n = len(s.recv(1 << 18))
                    if n == 0:
                        break
                    state[s] = max(0, state[s] - n)
                    if measuring:
                        got += n
            except BlockingIOError:
                pass
            try:
                while state[s] + chunk <= window:
                    state[s] += s.send(data)
            except BlockingIOError:
                pass
    for s in state:
        s.close()
    return {
        "mode": "tcp",
        "conns": conns,
        "chunk": chunk,
        "window": window,
        "seconds": seconds,
        "bytes_per_s": got / seconds,
    }
