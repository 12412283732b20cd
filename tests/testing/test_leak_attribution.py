"""The runtime fixture's leak check says whose leak it is: the runtime's own (opened
while it started, or a worker thread that did not stop) or one opened while the test
body ran."""

from __future__ import annotations

import re
import socket
import threading

import pytest

from sansio_aio.testing import ResourceSnapshot, find_leaks
from tests.helpers import PYTESTER_INI

pytest_plugins = ["pytester"]


TESTS = """
import socket
import pytest
from sansio_aio import Task
from sansio_aio.driver import Driver

KEEP = []

class Idle(Task):
    pass

class LeakyDriver(Driver):
    '''Opens a socket when its worker starts and never closes it.'''
    output_types = ()
    def start(self, ctx):
        KEEP.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    def handle(self, task, output):
        pass
    def release(self, task):
        pass

@pytest.mark.sansio_runtime(kinds={"idle": Idle})
async def test_body_leaks(runtime):
    KEEP.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

@pytest.mark.sansio_runtime(kinds={"idle": Idle}, drivers=[LeakyDriver])
async def test_runtime_leaks(runtime):
    await runtime.spawn("idle")
"""


def test_the_leak_report_names_the_body_or_the_runtime(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(test_leaks=TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "ignore::ResourceWarning"
    )
    result.assert_outcomes(passed=2, errors=2)
    out = result.stdout.str()
    body = out[out.index("ERROR at teardown of test_body_leaks") :]
    body = body[: body.index("ERROR at teardown of test_runtime_leaks")]
    assert re.search(r"socket:\[\d+\] still open: opened while the test body ran", body)
    assert "leaked by the runtime" not in body
    runtime = out[out.index("ERROR at teardown of test_runtime_leaks") :]
    assert re.search(
        r"socket:\[\d+\] still open: leaked by the runtime \(opened while it started\)",
        runtime,
    )


def test_a_thread_named_like_the_runtimes_workers_is_the_runtimes() -> None:
    before = ResourceSnapshot.take()
    stop = threading.Event()
    threads = [
        threading.Thread(target=stop.wait, name="sansio-worker-0", daemon=True),
        threading.Thread(target=stop.wait, name="helper", daemon=True),
    ]
    for t in threads:
        t.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        found = find_leaks(before, started=before, runtime_threads="sansio-worker-")
        text = "\n".join(found)
        assert "'sansio-worker-0'" in text and "leaked by the runtime (a worker" in text
        assert "'helper'" in text and "started while the test body ran" in text
        assert "opened while the test body ran" in text  # the socket
        plain = find_leaks(before)  # without the hints: just what is open
        assert all(":" not in line.split("still")[-1] for line in plain)
    finally:
        sock.close()
        stop.set()
        for t in threads:
            t.join(5)
    assert find_leaks(before) == []
