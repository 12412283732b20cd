"""Fixtures of the network driver tests."""

from __future__ import annotations

import errno
import functools
import os

import pytest

from sansio_aio.net import tun_unavailable_reason
from sansio_aio.testing import netns_unavailable_reason, run_in_netns


@functools.cache
def tun_reason() -> str | None:
    """Why TUN tests cannot run here (the precise reason), or None. Probed once."""
    reason = tun_unavailable_reason() or netns_unavailable_reason()
    if reason is not None:
        return reason

    def open_one() -> str | None:
        import pytun

        try:
            pytun.TunTapDevice("probe0", pytun.IFF_TUN | pytun.IFF_NO_PI).close()
        except OSError as exc:
            if exc.errno == errno.EPERM:
                return "TUNSETIFF failed (EPERM: needs CAP_NET_ADMIN)"
            if exc.errno == errno.EACCES:
                return "cannot open /dev/net/tun (EACCES)"
            return f"cannot create a TUN device: {exc}"
        return None

    return run_in_netns(open_one)


@pytest.fixture
def need_tun() -> None:
    """Skip (or, with CI=true, fail) when TUN devices in a private netns are impossible."""
    reason = tun_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"TUN tests must run in CI but cannot: {reason}")
        pytest.skip(reason)


@pytest.fixture(params=["compiled", "pure"])
def datagram_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a driver test on both datagram paths: the C speedups and the pure-Python loops.

    ``pure`` switches the drivers' module reference off (thread workers) and sets
    ``SANSIO_AIO_PURE=1`` (worker processes import sansio_aio afresh). ``compiled`` skips
    with the reason when the extension is not built; CI (``CI=true``) must have it.
    """
    from sansio_aio import _fast
    from sansio_aio.net import _tun, _udp

    if request.param == "pure":
        monkeypatch.setattr(_udp, "speedups", None)
        monkeypatch.setattr(_tun, "speedups", None)
        monkeypatch.setenv("SANSIO_AIO_PURE", "1")
    elif _fast.speedups is None:
        reason = "sansio_aio._speedups is not built here (or SANSIO_AIO_PURE=1 is set)"
        if os.environ.get("CI") == "true" and not os.environ.get("SANSIO_AIO_PURE"):
            pytest.fail(f"the compiled datagram path must run in CI: {reason}")
        pytest.skip(reason)
    return str(request.param)
