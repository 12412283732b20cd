"""Loop factories: each worker thread builds its own event loop with one of these.

* ``"uvloop"``: libuv through uvloop (the default where uvloop is installed);
* ``"epoll"``, ``"poll"``, ``"select"``: the stdlib ``SelectorEventLoop`` on that selector;
* ``"asyncio"``: the stdlib default selector loop;
* any zero-argument callable returning an ``asyncio.AbstractEventLoop``.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable

from ._errors import ConfigError

__all__ = [
    "BACKENDS",
    "LoopFactory",
    "available_backends",
    "close_loop",
    "resolve_backend",
]

#: A zero-argument callable that builds a new event loop (one per worker thread).
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _uvloop() -> asyncio.AbstractEventLoop:
    import uvloop

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _selector(cls: type[selectors.BaseSelector]) -> LoopFactory:
    def factory() -> asyncio.AbstractEventLoop:
        return asyncio.SelectorEventLoop(cls())

    factory.__name__ = f"{cls.__name__}_loop"
    return factory


BACKENDS: dict[str, LoopFactory] = {"uvloop": _uvloop}
if hasattr(selectors, "EpollSelector"):
    BACKENDS["epoll"] = _selector(selectors.EpollSelector)
if hasattr(selectors, "PollSelector"):
    BACKENDS["poll"] = _selector(selectors.PollSelector)
BACKENDS["select"] = _selector(selectors.SelectSelector)
BACKENDS["asyncio"] = _selector(selectors.DefaultSelector)


def available_backends() -> list[str]:
    """Names of the backends usable on this machine (uvloop only if importable)."""
    names = []
    for name in BACKENDS:
        if name == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                continue
        names.append(name)
    return names


def resolve_backend(backend: str | LoopFactory | None) -> tuple[str, LoopFactory]:
    """Turn a backend name or loop factory into ``(name, factory)``; fail fast if unknown."""
    if backend is None:
        usable = available_backends()
        backend = next(name for name in ("uvloop", "epoll", "asyncio") if name in usable)
    if callable(backend):
        return getattr(backend, "__name__", "custom"), backend
    factory = BACKENDS.get(backend)
    if factory is None:
        raise ConfigError(
            f"unknown backend {backend!r}: use one of {sorted(BACKENDS)} "
            "or pass a callable that returns an event loop"
        )
    if backend == "uvloop" and "uvloop" not in available_backends():
        raise ConfigError("backend 'uvloop' needs the uvloop package: pip install uvloop")
    return backend, factory


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a loop that stopped running: cancel its tasks and wait for them, finish its
    async generators, then close it (closed even if a step fails, which propagates)."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
