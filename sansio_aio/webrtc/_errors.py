"""The WHIP/WHEP errors (no aiortc, no aiohttp): both derive from ``SansioAioError``."""

from __future__ import annotations

from .._errors import SansioAioError

__all__ = ["SdpError", "WhipError"]


class SdpError(SansioAioError, ValueError):
    """An offer or fragment the server cannot use; ``status`` is 400 (malformed) or 422."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class WhipError(SansioAioError):
    """The server refused the offer; ``status`` and ``text`` are its answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text.strip()}")
        self.status = status
        self.text = text
