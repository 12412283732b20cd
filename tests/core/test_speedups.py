"""The optional C speedups (``sansio_aio._speedups``) on real sockets, against what the
socket module itself does, and the switch to the pure-Python paths (``SANSIO_AIO_PURE``).

The drivers' own tests run on both paths (``datagram_path`` in tests/net/conftest.py).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import gc
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_aio import Ext, TaskOutput, TaskRef, _fast
from sansio_aio.net import TunPacket, UdpPacket

if _fast.speedups is None:
    reason = "sansio_aio._speedups is not built here (or SANSIO_AIO_PURE=1 is set)"
    if os.environ.get("CI") == "true" and not os.environ.get("SANSIO_AIO_PURE"):
        raise RuntimeError(f"the compiled datagram path must be tested in CI: {reason}")
    pytest.skip(reason, allow_module_level=True)

sp: Any = _fast.speedups


def _pair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((host, 0))
        s.setblocking(False)
    return a, b


@pytest.fixture
def v4() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = _pair(socket.AF_INET, "127.0.0.1")
    yield a, b
    a.close()
    b.close()


def test_recvmmsg_reads_what_recvfrom_would(v4: tuple[socket.socket, socket.socket]) -> None:
    a, b = v4
    assert sp.recvmmsg(a.fileno(), 64) == []  # nothing queued: EAGAIN is an empty list
    sent = [b"", b"x", os.urandom(1500), os.urandom(65507)]
    for data in sent:
        b.sendto(data, a.getsockname())
    got = sp.recvmmsg(a.fileno(), 2) + sp.recvmmsg(a.fileno(), 64)
    assert [d for _, d in got] == sent  # whole, in order, across calls
    assert {addr for addr, _ in got} == {b.getsockname()}
    assert got[0][0] is got[1][0]  # one tuple for a run of datagrams from one address
    assert sp.recvmmsg(a.fileno(), 64) == []


def test_ipv6_addresses_match_the_socket_module() -> None:
    try:
        a, b = _pair(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with a, b:
        b.sendto(b"six", a.getsockname())
        ((addr, data),) = sp.recvmmsg(a.fileno(), 8)
        assert data == b"six" and addr == b.getsockname() and len(addr) == 4
        assert sp.sendmmsg(a.fileno(), socket.AF_INET6, [(b.getsockname(), b"back")], 0) == 1
        assert b.recvfrom(100) == (b"back", a.getsockname())


def test_bad_calls_raise_like_the_socket_module(v4: tuple[socket.socket, socket.socket]) -> None:
    a, _ = v4
    for count in (0, 65):
        with pytest.raises(ValueError, match="count must be"):
            sp.recvmmsg(a.fileno(), count)
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    with pytest.raises(OSError) as info:
        sp.recvmmsg(r, 4)
    assert info.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        sp.sendmmsg(a.fileno(), socket.AF_INET, 12, 0)


def test_sendmmsg_stops_at_what_it_cannot_send(v4: tuple[socket.socket, socket.socket]) -> None:
    a, b = v4
    dst = b.getsockname()
    items: list[Any] = [(dst, b"1"), (dst, b"2"), (dst, bytearray(b"3")), (dst, b"4")]
    assert sp.sendmmsg(a.fileno(), socket.AF_INET, items, 0) == 2  # bytearray: the caller's
    assert sp.sendmmsg(a.fileno(), socket.AF_INET, items, 3) == 4
    for stop in (
        "junk",
        (dst,),
        (("localhost", dst[1]), b"a name: never looked up here"),
        (("127.0.0.1", 70000), b"bad port"),
        (("::1", dst[1]), b"wrong family"),
        (("127.0.0.1", dst[1], 0, 0), b"a v6 tuple on a v4 socket"),
        (["127.0.0.1", dst[1]], b"a list"),
    ):
        assert sp.sendmmsg(a.fileno(), socket.AF_INET, [(dst, b"5"), stop], 0) == 1
    long = [(dst, b"%d" % i) for i in range(200)]  # several sendmmsg calls
    assert sp.sendmmsg(a.fileno(), socket.AF_INET, long, 0) == 200
    got = [d for _, d in sp.recvmmsg(b.fileno(), 64)]
    while len(got) < 2 + 1 + 7 + 200:
        more = sp.recvmmsg(b.fileno(), 64)
        assert more, f"only {len(got)} datagrams arrived"
        got += [d for _, d in more]
    assert got == [b"1", b"2", b"4"] + [b"5"] * 7 + [b"%d" % i for i in range(200)]


def test_readmany_reads_until_eagain() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        assert sp.readmany(r, 8, 2048) == []
        os.write(w, b"abc")
        assert sp.readmany(r, 8, 2) == [b"ab", b"c"]  # each read at most `size`
        with pytest.raises(ValueError, match="size"):
            sp.readmany(r, 8, 0)
    finally:
        os.close(r)
        os.close(w)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=64))
def test_random_batches_round_trip_byte_for_byte(batch: list[bytes]) -> None:
    a, b = _pair(socket.AF_INET, "127.0.0.1")
    with a, b:
        dst = a.getsockname()
        assert sp.sendmmsg(b.fileno(), socket.AF_INET, [(dst, d) for d in batch], 0) == len(batch)
        got: list[bytes] = []
        while len(got) < len(batch):
            chunk = sp.recvmmsg(a.fileno(), 64)
            assert chunk, "a datagram went missing on loopback"
            got += [d for _, d in chunk]
        assert got == batch


@pytest.mark.parametrize("pure", ["1", ""])
def test_sansio_aio_pure_selects_the_pure_paths(pure: str) -> None:
    code = (
        "from sansio_aio import _fast; from sansio_aio.net import UdpDriver, TunDriver; "
        "print(_fast.compiled(), UdpDriver().stats()['udp_compiled'], "
        "TunDriver().stats()['tun_compiled'])"
    )
    env = {**os.environ, "SANSIO_AIO_PURE": pure}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == (["False", "0", "0"] if pure else ["True", "1", "1"])


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (UdpPacket, (3, ("127.0.0.1", 5), b"x")),
        (TunPacket, (1, b"\x45" * 20)),
        (Ext, ("hello",)),
        (TaskOutput, (TaskRef(0, "k", 1, 2), {"any": "msg"})),
    ],
)
def test_makers_build_the_same_objects_as_the_classes(cls: type, args: tuple[Any, ...]) -> None:
    make: Any = _fast.constructor(cls)
    assert make is not cls, f"{cls.__name__} should get a maker"
    made, plain = make(*args), cls(*args)
    assert type(made) is cls and made == plain and repr(made) == repr(plain)
    assert pickle.loads(pickle.dumps(made)) == plain
    assert copy.deepcopy(made) == plain
    del made
    gc.collect()
    assert make(*args) == cls(*args)
    # any other call goes to the class itself, with its own errors and defaults
    with pytest.raises(TypeError):
        make(*args, "one too many")
    assert make(**dict(zip([f.name for f in dataclasses.fields(cls)], args, strict=True))) == plain


def test_classes_a_maker_cannot_build_correctly_keep_their_constructor() -> None:
    @dataclasses.dataclass(slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    @dataclasses.dataclass
    class NoSlots:
        a: int

    assert _fast.constructor(Checked) is Checked
    assert _fast.constructor(NoSlots) is NoSlots
    with pytest.raises(TypeError, match="not a writable slot"):
        sp.maker(Checked, ("nope",))


def test_the_core_tests_pass_on_the_pure_path_too() -> None:
    """The drain rule, messaging and life-cycle tests, run again with SANSIO_AIO_PURE=1
    (the makers off, the pure drivers); the driver tests run both paths themselves."""
    root = Path(__file__).resolve().parents[2]
    files = ["tests/core/test_drain_rule.py", "tests/core/test_messaging.py"]
    files += ["tests/core/test_lifecycle.py"]
    env = {**os.environ, "SANSIO_AIO_PURE": "1"}
    env.pop("COVERAGE_PROCESS_START", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *files],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_two_threads_reading_at_once_each_get_their_own_datagrams() -> None:
    """Bug: recvmmsg built each datagram's bytes from the module's shared buffer after
    calling ``make`` for the one before; a ``make`` that lets another thread in (any
    Python code can, a GC pass can) let that thread's recvmmsg overwrite the buffer, so
    datagrams came out with another socket's bytes. Now all are copied out first."""
    import threading
    import time

    n = 40
    pairs = [_pair(socket.AF_INET, "127.0.0.1") for _ in range(2)]
    try:
        for tag, (a, b) in zip(b"AB", pairs, strict=True):
            for i in range(n):
                b.sendto(bytes([tag]) * 100 + b"%d" % i, a.getsockname())
        got: dict[int, list[bytes]] = {}
        errors: list[BaseException] = []

        def make(slot: int, addr: Any, data: bytes) -> bytes:
            time.sleep(0)  # lets the other thread in between two datagrams
            return data

        def read(tag: int, sock: socket.socket) -> None:
            try:
                out: list[bytes] = []
                while len(out) < n:
                    out += sp.recvmmsg(sock.fileno(), 64, make, tag)
                got[tag] = out
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=read, args=(tag, a))
            for tag, (a, _) in zip(b"AB", pairs, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        for tag in b"AB":
            assert got[tag] == [bytes([tag]) * 100 + b"%d" % i for i in range(n)]
    finally:
        for a, b in pairs:
            a.close()
            b.close()
