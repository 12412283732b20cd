"""Shared test configuration."""

from __future__ import annotations

import os
from typing import Any

import pytest

from sansio_aio import available_backends

# Helper modules with asserts get pytest's assertion messages, as test modules do.
pytest.register_assert_rewrite("tests.helpers", "tests.net.tun_helpers", "tests.webrtc.support")

BACKENDS = available_backends()


def pytest_report_header(config: pytest.Config) -> str:
    return f"sansio_aio backends: {', '.join(BACKENDS)}; CI={os.environ.get('CI', '')}"


@pytest.fixture(params=["uvloop", "epoll", "poll", "process"])
def variant(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every way to run workers: threads on each backend, and processes (uvloop, or the
    default backend). Tests use it as ``Runtime(kinds, **variant)``."""
    name: str = request.param
    if name == "process":
        return {"mode": "process"}
    if name not in BACKENDS:
        pytest.skip(f"backend {name} is not available on this machine")
    return {"backend": name}


@pytest.fixture(params=["uvloop", "epoll", "poll"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every worker backend (the conformance axis)."""
    name: str = request.param
    if name not in BACKENDS:
        pytest.skip(f"backend {name} is not available on this machine")
    return name
