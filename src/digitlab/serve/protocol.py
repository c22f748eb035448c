"""uvicorn's HTTP protocol with a header timeout: a connection must send a request's headers in time.

uvicorn times out idle keep-alive connections between requests, but not a connection that
opens and then sends nothing, or sends a request's headers a byte at a time (slowloris): such a
connection is held open for ever. :class:`HTTPProtocol` closes it after
``header_timeout`` seconds (``digitlab serve --header-timeout``) without complete headers. The
body has its own deadline in the app (``--body-timeout``, answered with 408).

:data:`HTTPProtocol` is built on uvicorn's httptools protocol when httptools is installed
(faster parsing), else on its h11 protocol. The timeout comes from the serve settings in
``$DIGITLAB_SERVE_SETTINGS`` (so worker processes get it too), else :data:`DEFAULT_HEADER_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DEFAULT_HEADER_TIMEOUT", "HTTPProtocol", "header_timeout", "set_header_timeout"]

DEFAULT_HEADER_TIMEOUT = 10.0
"""Seconds a connection has to send complete request headers."""

_SETTINGS_ENV = "DIGITLAB_SERVE_SETTINGS"  # = digitlab.serve.app.SETTINGS_ENV (not imported: no cycle)


_timeout: float | None = None


def set_header_timeout(seconds: float) -> None:
    """Set the header timeout of the connections this process accepts from now on."""
    global _timeout
    _timeout = float(seconds)


def header_timeout() -> float:
    """The header timeout of this process: as set, else from its serve settings, else the default."""
    if _timeout is not None:
        return _timeout
    raw = os.environ.get(_SETTINGS_ENV)
    try:
        value = json.loads(raw).get("header_timeout") if raw else None
    except (ValueError, AttributeError):
        value = None
    return float(value) if isinstance(value, (int, float)) and value > 0 else DEFAULT_HEADER_TIMEOUT


class _HeaderTimeout:
    """Mixin for uvicorn's HTTP protocols: close a connection whose request headers don't arrive in time."""

    _header_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(header_timeout(), self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers():
            self._arm_header_timer()  # a new request starts arriving (after a keep-alive pause too)
        super().data_received(data)  # type: ignore[misc]
        if not self._waiting_for_headers():
            self._disarm_header_timer()  # headers complete: the app's body deadline takes over

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]


class H11HeaderTimeoutProtocol(_HeaderTimeout, H11Protocol):
    """uvicorn's h11 protocol with the header timeout."""


HTTPProtocol: type[asyncio.Protocol] = H11HeaderTimeoutProtocol
"""The protocol ``digitlab serve`` runs: httptools-based when httptools is installed, else h11."""

if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsHeaderTimeoutProtocol(_HeaderTimeout, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header timeout."""

    HTTPProtocol = HttpToolsHeaderTimeoutProtocol
