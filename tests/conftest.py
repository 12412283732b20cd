"""Shared test configuration."""

from __future__ import annotations

import os

import pytest

from sansio_aio import available_backends

# Helper modules with asserts get pytest's assertion messages, as test modules do.
pytest.register_assert_rewrite("tests.helpers", "tests.net.tun_helpers", "tests.webrtc.support")

BACKENDS = available_backends()


def pytest_report_header(config: pytest.Config) -> str:
    return f"sansio_aio backends: {', '.join(BACKENDS)}; CI={os.environ.get('CI', '')}"


@pytest.fixture(params=["uvloop", "epoll", "poll"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every worker backend (the conformance axis)."""
    name: str = request.param
    if name not in BACKENDS:
        pytest.skip(f"backend {name} is not available on this machine")
    return name
