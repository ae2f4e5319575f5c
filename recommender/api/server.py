"""The HTTP protocol `recommender serve` runs: uvicorn's httptools protocol
with the limits it lacks.

httptools (the fast parser that ``uvicorn[standard]`` brings) accepts request
headers of any size and uvicorn has no request-read timeout, so one client
could hold 54 MB per 32 MB header, or keep hundreds of half-sent requests open
for good. This subclass adds, per connection:

* a size limit on a request's headers (``max_header_bytes``): over it, the
  client gets ``431`` and the connection is closed, after at most one more
  read of the socket (a 2 MB header is refused before it is all in memory);
* a deadline for the headers (``header_timeout_seconds``), from a
  connection's first byte or a kept-alive connection's next request: a client
  that stops half-way gets ``408`` and is disconnected;
* a deadline for the body (``body_timeout_seconds``), from the end of the
  headers: a declared body that never arrives gets ``408``.

uvicorn's own ``timeout_keep_alive`` closes idle kept-alive connections and
``limit_concurrency`` answers ``503`` past a number of connections or tasks.
docs/reliability.md ("hostile review") has the measurements, and the
throughput against plain httptools and h11.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from recommender.api.errors import error_body
from recommender.config import Settings

_DEFAULTS = Settings()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a header size limit and read deadlines, set from
    the settings once per worker process (``app_from_environment``)."""

    max_header_bytes: int = _DEFAULTS.max_header_bytes
    header_timeout: float = _DEFAULTS.header_timeout_seconds
    body_timeout: float = _DEFAULTS.body_timeout_seconds

    @classmethod
    def configure(cls, *, max_header_bytes: int, header_timeout: float, body_timeout: float) -> None:
        cls.max_header_bytes = max_header_bytes
        cls.header_timeout = header_timeout
        cls.body_timeout = body_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0
        self._reading_headers = True
        self._count_next = True
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.header_timeout, "request headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        counted = self._reading_headers and self._count_next
        self._count_next = True
        super().data_received(data)
        if counted and self._reading_headers and not self.transport.is_closing():
            # Every byte of a chunk that did not finish the headers belongs to them.
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large",
                             f"request headers are larger than {self.max_header_bytes} bytes")

    # Parser callbacks (called from inside data_received)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._header_bytes = 0
        # This chunk may end a previous request's body: count from the next one.
        self._count_next = False
        self._arm(self.header_timeout, "request headers")

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._arm(self.body_timeout, "request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # Deadlines

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection: the %s did not arrive in time", what)
            self._refuse(408, "Request Timeout", f"the {what} did not arrive in time")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` unless a response has started, then close."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = json.dumps(error_body(status, None, message), separators=(",", ":")).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
            )
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's later sends are dropped; its receive() sees a disconnect
            cycle.message_event.set()
        self.transport.close()

