"""A throw-away ``redis-server`` for the cluster tests (a child process, no persistence).

:class:`RedisServer` runs Debian's ``redis-server`` (or ``$REDIS_SERVER``) with its whole
configuration on the command line: one address, a free port (or the one given), no RDB
snapshots, no AOF, its files in a temporary directory. Readiness is read from its log
file ("Ready to accept connections"), so it also works inside a network namespace
(``popen=PrivateNetwork.popen``), and is checked with a PING when it runs in ours.
``stop()`` then ``start()`` restart it on the same port, empty: "Redis restarted".

:func:`need_redis` skips the calling test when no ``redis-server`` is installed (``make
test`` installs it, see ``scripts/ensure_redis.sh``) and fails it when ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["RedisServer", "need_redis", "redis_unavailable_reason"]

Popen = Callable[[list[str]], "subprocess.Popen[bytes]"]

_READY = "Ready to accept connections"


def _binary() -> str:
    return os.environ.get("REDIS_SERVER") or "redis-server"


def redis_unavailable_reason() -> str | None:
    """Why no Redis server can be started here, or ``None`` if one can."""
    if shutil.which(_binary()) is None:
        return (
            f"needs {_binary()!r} (Debian: apt-get install redis-server; "
            "`make test` installs it when run as root)"
        )
    return None


def need_redis() -> None:
    """Skip (or fail when CI=true) unless a Redis server can be started."""
    reason = redis_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the cluster tests cannot run: {reason}")
        pytest.skip(reason)


def _free_port(addr: str) -> int:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        port: int = s.getsockname()[1]
        return port


def _default_popen(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class RedisServer:
    """A ``redis-server`` child process on ``addr`` (see the module doc).

    Args:
        addr: the address it binds (only that one).
        port: its port; 0: a free one, picked at the first start and kept.
        popen: how to start it (``PrivateNetwork.popen`` to run it in a namespace).
        extra: more ``--name value`` arguments (e.g. ``["--requirepass", "secret"]``).
        tls: ``(cert, key, ca)`` PEM files: it then speaks TLS only (``rediss://``).
        ready_timeout: seconds it may take to accept connections.
    """

    def __init__(
        self,
        addr: str = "127.0.0.1",
        port: int = 0,
        *,
        popen: Popen | None = None,
        extra: list[str] | None = None,
        tls: tuple[str, str, str] | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        self.addr = addr
        self.port = port
        self._fixed = port != 0
        self._popen: Popen = popen or _default_popen
        self._extra = list(extra or [])
        self._tls = tls
        self._ready_timeout = ready_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._log = self._dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._in_our_netns = popen is None

    @property
    def url(self) -> str:
        """``redis://ADDR:PORT/0`` (``rediss://`` with TLS)."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"{'rediss' if self._tls else 'redis'}://{host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Its process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        """Start it (again, on the same port, empty) and wait until it is ready."""
        if self.running:
            return self
        attempts = 1 if self._fixed else 5
        failure = ""
        for _ in range(attempts):
            if not self._fixed:
                self.port = self.port or _free_port(self.addr)
            failure = self._start_once()
            if not failure:
                self._fixed = True  # a restart keeps the port
                return self
            if not self._fixed:
                self.port = 0  # taken in the meantime: another one
        raise RuntimeError(f"redis-server did not start: {failure}")

    def _start_once(self) -> str:
        self._log.write_text("")
        if self._tls is None:
            ports = ["--port", str(self.port)]
        else:
            cert, key, ca = self._tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert]
            ports += ["--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        args = [
            shutil.which(_binary()) or _binary(),
            *ports,
            "--bind",
            self.addr,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            str(self._dir),
            "--logfile",
            str(self._log),
            "--daemonize",
            "no",
            *self._extra,
        ]
        self.proc = self._popen(args)
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"it exited ({self.proc.returncode}): {self._tail()}"
            if _READY in self._log.read_text(errors="replace") and self._answers():
                return ""
            time.sleep(0.01)  # polling the log file for a condition, bounded by deadline
        self.kill()
        return f"not ready within {self._ready_timeout:g} s: {self._tail()}"

    def _answers(self) -> bool:
        if not self._in_our_netns:
            return True  # only its log can tell from here
        try:
            with socket.create_connection((self.addr, self.port), timeout=1.0) as raw:
                if self._tls is None:
                    raw.sendall(b"PING\r\n")
                    reply = raw.recv(64)
                else:
                    context = ssl.create_default_context(cafile=self._tls[2])
                    with context.wrap_socket(raw, server_hostname=self.addr) as s:
                        s.sendall(b"PING\r\n")
                        reply = s.recv(64)
        except OSError:
            return False
        # +PONG, or -NOAUTH when it has a password: either way it answers
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def _tail(self) -> str:
        try:
            lines = self._log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-5:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL it (and reap it)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(5.0)

    def close(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
