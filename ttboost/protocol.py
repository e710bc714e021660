"""The HTTP connection layer under the handlers (spec §2): what aiohttp answers on its own, in the envelope.

- Errors raised inside aiohttp's parser (a request line or header over 8,190 bytes, bytes that are no HTTP, NUL
  in a header) get the JSON envelope with `Server: TTBoost`, never a text/plain page echoing the input, and one
  log line without a traceback.
- A connection must deliver a request's headers within `header_timeout` seconds of opening, or of its previous
  request; a client trickling a byte at a time is closed instead of holding a file descriptor for an hour.
- At most `max_connections` connections are open: a new one first displaces one that is only lingering (below),
  then the oldest idle one (reading headers, or kept alive between requests); if every one is busy it is answered
  503 and closed.
- A connection closed with an answer the client may still be sending to (a parser error, a 500, a 503 refusal)
  closes lingering: answer, half-close, then read and drop what still arrives until the client closes too or
  `linger_seconds` pass. Closing at once with unread input makes the kernel send RST, and a client whose RST
  arrives before it reads loses the answer (ECONNRESET instead of the 400).
- The event loop's "accept out of system resource" errors are logged at most once per interval.

aiohttp offers no setting for the first three, so HardenedRunner builds the server with its own handler
class; it runs under aiohttp's own run loop code paths otherwise (AppRunner, TCPSite).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from .logsetup import redact_text

_LOGGER = logging.getLogger(__name__)

ACCEPT_LOG_INTERVAL: Final = 60.0  # seconds between two log lines about failing accept() calls
# Seconds a closing connection keeps reading after its answer: long enough for a client to finish sending a
# request and read the answer, short enough that lingering connections do not pile up (they also make room first).
LINGER_SECONDS: Final = 2.0
_PARSER_ERRORS: Final = {400: ("bad request", "bad_request"), 413: ("request too large", "payload_too_large"),
                         431: ("request headers too large", "headers_too_large"),
                         500: ("internal server error", "internal_error")}


def _envelope(status: int, detail: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(text=json.dumps({"detail": detail, "code": code}), status=status,
                            content_type="application/json", headers={"Server": "TTBoost", **(headers or {})})
    response.force_close()
    return response


def _canned(status: int, reason: str, detail: str, code: str) -> bytes:
    """A whole response as bytes, for a connection refused before any request was read."""
    body = json.dumps({"detail": detail, "code": code}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nServer: TTBoost\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


_REFUSED: Final = _canned(503, "Service Unavailable", "busy, try again", "busy")


class HardenedHandler(RequestHandler):
    """aiohttp's protocol with a header read timeout and errors in the envelope."""

    def __init__(self, manager: HardenedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = manager.header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_seconds = manager.linger_seconds
        self._linger_after_answer = False  # set by handle_error: its answer closes the connection
        self._linger_timer: asyncio.TimerHandle | None = None

    @property
    def lingering(self) -> bool:
        """Answered and half-closed, reading only to drop what the client still sends."""
        return self._linger_timer is not None

    @property
    def idle(self) -> bool:
        """No request being handled or waiting, not a WebSocket: reading headers, or kept alive between requests."""
        return not (self._request_in_progress or self._messages or self._upgraded) and self.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._stop_lingering()
        super().connection_lost(exc)

    def force_close(self) -> None:
        self._stop_lingering()  # displaced, shut down or lingered long enough: the timer goes with the transport
        super().force_close()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # dropped: the connection has answered and is closing
        requests = self._request_count
        super().data_received(data)
        if self._upgraded or self._request_count != requests:
            self._disarm()  # a whole header block arrived (or the socket is a WebSocket now)
        elif self._header_timer is None and self.idle:
            self._arm()  # the first bytes of a next request: its headers are on the clock from now

    def _arm(self) -> None:
        self._disarm()
        if self._header_timeout > 0 and not self.lingering:
            self._header_timer = self._loop.call_later(self._header_timeout, self._header_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.idle:
            self.logger.debug("closing a connection that sent no complete request headers in %.0f s",
                              self._header_timeout)
            self.force_close()

    def linger(self) -> None:
        """Closes after an answer without losing it: half-close (the answer, then FIN), keep reading and dropping
        input until the client closes (EOF closes the transport: aiohttp's eof_received returns None) or
        linger_seconds pass. No task: one timer, cancelled when the connection goes (shutdown force-closes)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.lingering:
            return
        self._disarm()
        # aiohttp's own flag: start() ends without closing the transport and data_received drops all input
        self._force_close = True
        if self._waiter is not None:
            self._waiter.cancel()
        self._linger_timer = self._loop.call_later(self._linger_seconds, self.force_close)
        if transport.can_write_eof():
            transport.write_eof()  # after the answer still buffered, if any
        transport.resume_reading()  # a full queue of pipelined requests may have paused it: unread input is an RST

    def _stop_lingering(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        if self._linger_after_answer:
            self.linger()
        return answered

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The envelope instead of aiohttp's text page; one line in the log, no traceback, no input echoed."""
        if request.writer.output_size > 0:  # a response (or a 101) is on the wire: nothing more may be written
            raise ConnectionError("response already sent")
        if status >= 500:
            _LOGGER.error("error handling %s from %s: %s", request.method, request.remote,
                          redact_text(repr(exc)), exc_info=exc if not isinstance(exc, ConnectionError) else None)
        else:
            # A malformed request is the client's problem: worth a line, not a traceback. Its text can quote the
            # request line, so only the kind of error is logged.
            _LOGGER.info("malformed request from %s: %s", request.remote, type(exc).__name__ if exc else status)
        detail, code = _PARSER_ERRORS.get(status, _PARSER_ERRORS[400 if status < 500 else 500])
        self._linger_after_answer = True  # the rest of a bad request may still be on its way
        return _envelope(status, detail, code)


class HardenedServer(Server):
    """aiohttp's low-level server making HardenedHandlers, with a cap on open connections."""

    def __init__(self, *args: Any, header_timeout: float, max_connections: int, linger_seconds: float,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.linger_seconds = linger_seconds

    def __call__(self) -> RequestHandler:
        return HardenedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if self.max_connections <= 0 or len(self._connections) <= self.max_connections:
            return
        # dicts keep insertion order: the first found is the oldest. A lingering connection has given its answer,
        # so it goes first; cutting them keeps lingering from holding descriptors past the cap (at most one, the
        # refused one below, is over it).
        others = [h for h in self._connections if h is not handler and isinstance(h, HardenedHandler)]
        for victim in [h for h in others if h.lingering] + [h for h in others if h.idle and not h.lingering]:
            victim.force_close()
            self._connections.pop(victim, None)
            if len(self._connections) <= self.max_connections:
                return
        _LOGGER.warning("%d connections open, all busy: refusing a new one", len(self._connections) - 1)
        transport.write(_REFUSED)
        assert isinstance(handler, HardenedHandler)  # __call__ makes no other kind
        handler.linger()  # the request is probably on its way already: closing at once could RST the 503


class HardenedRunner(web.AppRunner):
    """AppRunner whose server is a HardenedServer (same application, same sites)."""

    def __init__(self, app: web.Application, *, header_timeout: float, max_connections: int,
                 linger_seconds: float = LINGER_SECONDS, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout
        self._max_connections = max_connections
        self._linger_seconds = linger_seconds

    async def _make_server(self) -> Server:
        plain = await super()._make_server()  # runs the app's startup, as AppRunner does
        # The same arguments aiohttp gave its own server (application handler, request factory, settings).
        return HardenedServer(plain.request_handler, request_factory=plain.request_factory,
                              handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                              header_timeout=self._header_timeout, max_connections=self._max_connections,
                              linger_seconds=self._linger_seconds,
                              **plain._kwargs)


class AcceptErrorLog:
    """A loop exception handler: "accept out of system resource" (the process ran out of file descriptors) is
    logged once per interval with a count, not once per failed accept() with a traceback (tens of thousands a
    minute under a connection flood); everything else goes to the default handler."""

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL, clock: Any = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        now = self._clock()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        _LOGGER.error("cannot accept connections: %s (%d more such errors in the last %.0f s); raise the open "
                      "file limit (systemd LimitNOFILE) or lower [server] max_connections",
                      context.get("exception"), self._suppressed, self._interval)
        self._last, self._suppressed = now, 0
