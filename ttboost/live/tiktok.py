"""TikTokAdapter: the only module that speaks TikTokLive; it turns the library's client into a LiveSource."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
import time
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any, Callable, Final

from ttboost.config import TikTokConfig
from ttboost.live.errors import (
    Blocked, ConnectionDropped, LiveError, SignRateLimited, UserNotFound, UserOffline,
)
from ttboost.live.heap import HeapFreezer
from ttboost.live.normalize import gift_event, live_event, stamp
from ttboost.pipeline.events import LiveEvent

_LOGGER = logging.getLogger(__name__)

_LIBRARY_LOGGER: Final = "TikTokLive"
_LIBRARY_MODULE: Final = "TikTokLive.client.client"
_DEFAULT_RETRY_AFTER: Final = 60.0  # seconds to wait after a 429 that names no usable wait
_UNIX_TIME_FLOOR: Final = 1_000_000_000  # a RateLimit-Reset above this is a timestamp, not seconds
_STOP: Final = object()  # queued after the library's connection task has finished
_LIVE_ENDED: Final = object()  # queued when a fast-decoded frame says the LIVE ended
_CLEAN_CLOSE_CODES: Final = frozenset({1000, 1001, 1005})  # normal, going away, no status: websockets' OK
# Events delivered in a row before the consumer lets other tasks run. queue.get() does not suspend while events
# are waiting, so without this a burst (TikTok batches many messages per frame; a stalled process catches up)
# is dispatched whole before any socket writer runs, and a burst above limits.ws_send_queue would close a
# client that is reading fine as "too slow". Well under the default queue of 256 frames.
YIELD_EVERY: Final = 32
_BETTERPROTO2_WITH_SLOW_VALIDATE: Final = "0.9.1"  # see _reuse_validators


@functools.cache  # one per process: the classes, the decoder and the TLS context are shared by every session
def _import_library() -> SimpleNamespace:
    """The TikTokLive names the adapter uses (imported here, never at module load: it costs ~3 s)."""
    import httpx
    from TikTokLive import events
    from TikTokLive.client import errors
    from TikTokLive.client.client import TikTokLiveClient
    from TikTokLive.client.web.web_settings import WebDefaults
    # The protocol class TikTokLive's connection uses (websockets' legacy client, loaded by it above).
    from websockets.legacy.client import WebSocketClientProtocol

    from ttboost.live.webcast import FrameDecoder  # protobuf's C parser: imported with the library, not before
    _reuse_validators()
    return SimpleNamespace(
        httpx=httpx, errors=errors, TikTokLiveClient=TikTokLiveClient, WebDefaults=WebDefaults,
        PushProtocol=_push_protocol_class(WebSocketClientProtocol), ConnectEvent=events.ConnectEvent,
        LiveEndEvent=events.LiveEndEvent, converters=_conversions(events),
        decoder=FrameDecoder(frozenset(events.proto_events.EVENT_MAPPINGS)),
        # httpx's default (verify=True), made once: each client would otherwise load the CA bundle into a
        # context of its own, ~0.8 MB per LIVE session.
        ssl_context=httpx.create_ssl_context(),
    )


def _push_protocol_class(base: type[Any]) -> type[Any]:
    """The push socket's protocol: frames of hot messages are decoded here and never reach the library.

    TikTokLive reads the socket through this protocol's recv(). A frame the fast decoder (webcast.py) reads
    is acked and its events delivered here, in the library's task and in arrival order, and recv() goes on
    to the next frame; any other frame is returned to the library, which parses, acks and emits it as
    before. The library still connects, enters the room, sends heartbeats and closes.
    """

    class PushProtocol(base):  # type: ignore[misc, valid-type]
        decoder: Any = None  # FrameDecoder; set by the adapter on each new socket
        deliver: Callable[[Any], None] = staticmethod(lambda _item: None)

        async def recv(self) -> Any:
            while True:
                data = await super().recv()
                frame = self.decoder.decode(data) if isinstance(data, bytes) else None
                if frame is None:
                    return data
                if frame.ack is not None and self.open:
                    await self.send(frame.ack)
                for event in frame.events:
                    self.deliver(event)
                if frame.live_ended:
                    self.deliver(_LIVE_ENDED)

    return PushProtocol


def _reuse_validators() -> None:
    """Makes betterproto2 reuse one pydantic validator per message class instead of building one per message.

    TikTokLive's protobuf classes are pydantic dataclasses, and betterproto2 0.9.1 validates every parsed
    message (and each nested one) with `pydantic_core.SchemaValidator(schema)` built anew on each call: about
    a third of the CPU a LIVE event costs the server (profile in bench/README.md). The replacement validates
    the same dict against a validator of the same schema, so the checks and errors are the library's own. It is
    installed for that release only; any other keeps its own method.
    """
    import betterproto2
    import pydantic_core

    message = betterproto2.Message
    if getattr(message._validate, "ttboost_reuses_validators", False):
        return
    if version("betterproto2") != _BETTERPROTO2_WITH_SLOW_VALIDATE:
        _LOGGER.debug("betterproto2 %s: keeping its own Message._validate", version("betterproto2"))
        return
    validators: dict[type, tuple[Any, Any]] = {}  # class → (its core schema, a validator built from it)

    def _validate(self: Any) -> None:
        cls = type(self)
        cached = validators.get(cls)
        if cached is None or cached[0] is not cls.__pydantic_core_schema__:
            if not self._is_pydantic():
                raise TypeError("Validation is only available for pydantic dataclasses.")
            schema = cls.__pydantic_core_schema__
            cached = validators[cls] = (schema, pydantic_core.SchemaValidator(schema))
        data = self.__dict__.copy()
        del data["_unknown_fields"]
        cached[1].validate_python(data)

    _validate.ttboost_reuses_validators = True  # type: ignore[attr-defined]
    message._validate = _validate  # type: ignore[method-assign]


def _warm_up(lib: SimpleNamespace) -> None:
    """Builds, parses and converts one message of each listened type, so a session's first events do not pay.

    betterproto2 resolves a class's field metadata and pydantic builds its validator the first time the class
    is used (together 100-300 ms, measured as the first chat and gift of a fresh session); protobuf builds its
    message classes on first use too. Run in the import thread: it holds the GIL for this long either way,
    but the event loop keeps serving.
    """
    from TikTokLive import events
    from TikTokLive.proto import (
        BaseProtoMessage, CommonMessageData, ExtendedGift, ExtendedUser, ProtoMessageFetchResult, PushHeader,
        WebcastPushFrame,
    )

    # Event classes only, never their Webcast*Message parents: encoding a parent first changes what
    # betterproto2 parses later (LIBRARIES.md).
    user = ExtendedUser(id=1, nickname="warm", display_id="warm")
    samples = [
        events.CommentEvent(user=user, content="warm"),
        events.GiftEvent(user=user, gift=ExtendedGift(id=1, name="warm", diamond_count=1, type=1), repeat_count=1),
        events.LikeEvent(user=user, count=1, total=1), events.JoinEvent(user=user),
        events.SocialEvent(user=user), events.SubNotifyEvent(user=user, sub_month=1),
        events.RoomUserSeqEvent(total=1, total_user=1),
    ]
    messages = []
    for sample in samples:
        sample.common = CommonMessageData(method=type(sample).__name__, msg_id=1)
        wire = bytes(sample)
        converter = lib.converters.get(type(sample))
        parsed = type(sample)().parse(wire)
        if converter is not None:
            converter(parsed)
        method = next(m for m, cls in events.proto_events.EVENT_MAPPINGS.items() if cls is type(sample))
        messages.append(BaseProtoMessage(method=method, payload=wire, msg_id=1))
    for follow in (events.FollowEvent, events.ShareEvent):
        lib.converters[follow](follow().parse(bytes(samples[4])))
    result = ProtoMessageFetchResult(messages=messages, internal_ext="warm", need_ack=True)
    frame = bytes(WebcastPushFrame(log_id=1, payload_type="msg", headers=[PushHeader(key="compress_type", value="")],
                                   payload=bytes(result)))
    WebcastPushFrame().parse(frame)
    ProtoMessageFetchResult().parse(bytes(result))
    lib.decoder.decode(frame)


async def _load_library() -> SimpleNamespace:
    if _LIBRARY_MODULE not in sys.modules:
        # The first import takes seconds of CPU: keep it off the event loop.
        await asyncio.to_thread(lambda: _warm_up(_import_library()))
        # The library brings ~45 MB of long-lived objects (modules, proto classes, pydantic schemas) that every
        # full garbage collection would scan again: 60-80 ms with the event loop stopped, where the same pass
        # takes ~10 ms once they are frozen. They live as long as the process, so freezing them loses nothing.
        gc.collect()
        gc.freeze()
    return _import_library()


class TikTokAdapter:
    """LiveSource backed by TikTokLive; one fresh library client per watch."""

    def __init__(self, config: TikTokConfig, heap: HeapFreezer | None = None) -> None:
        self._config = config
        self._heap = heap or HeapFreezer()

    async def watch(
        self,
        unique_id: str,
        on_event: Callable[[LiveEvent], None],
        on_connected: Callable[[], None],
    ) -> None:
        """See LiveSource.watch."""
        unique_id = unique_id.strip().lstrip("@")
        lib = await _load_library()
        sockets: list[Any] = []  # the push connection's websockets protocol, to read its close frame
        # Library handlers and the push protocol only enqueue (a raising handler would kill the connection);
        # the loop below is the one consumer, so events keep TikTok's order.
        queue: asyncio.Queue[Any] = asyncio.Queue()
        client = self._new_client(lib, unique_id, sockets, queue.put_nowait)
        for event_class in (lib.ConnectEvent, lib.LiveEndEvent, *lib.converters):
            client.add_listener(event_class, queue.put_nowait)
        task: asyncio.Task[None] | None = None
        try:
            try:
                # Room id lookup (app_url), live check (webcast_url) and signing (sign_api_url).
                task = await client.start(fetch_live_check=True)
            except Exception as exc:
                raise _map_error(lib, exc, unique_id) from exc
            # Every event of the connection is emitted before its task completes, so this comes last.
            task.add_done_callback(lambda _task: queue.put_nowait(_STOP))
            if await self._consume(lib, queue, unique_id, on_event, on_connected):
                _LOGGER.info("@%s: LIVE ended", unique_id)
                return
            if task.cancelled():
                raise ConnectionDropped(f"@{unique_id}: the connection task was cancelled")
            exc = task.exception()
            if exc is not None:
                raise _map_error(lib, exc, unique_id) from exc
            code = _unclean_close(sockets[-1]) if sockets else None
            if code is not None:
                raise ConnectionDropped(f"@{unique_id}: TikTok closed the connection with code {code}")
            _LOGGER.info("@%s: TikTok closed the LIVE connection", unique_id)
        finally:
            await _shutdown(client, task, unique_id)
            self._heap.changed()

    def _new_client(self, lib: SimpleNamespace, unique_id: str, sockets: list[Any],
                    deliver: Callable[[Any], None]) -> Any:
        cfg = self._config
        # TikTokLive 7.0.1 has no per-client setting for these two: its routes read the module-wide
        # WebDefaults at call time (web/routes/fetch_room_id_live_html.py, fetch_room_id_api.py,
        # fetch_is_live.py). Every adapter in the process is built from the one [tiktok] config, so
        # setting them here, right before each client is made, is consistent.
        lib.WebDefaults.tiktok_app_url = cfg.app_url.rstrip("/")
        lib.WebDefaults.tiktok_webcast_url = cfg.webcast_url.rstrip("/")
        signer: dict[str, str] = {"sign_api_base": cfg.sign_api_url.rstrip("/")}
        if cfg.sign_api_key:
            signer["sign_api_key"] = cfg.sign_api_key
        proxy = lib.httpx.Proxy(cfg.proxy) if cfg.proxy else None

        def create_protocol(*args: Any, **kwargs: Any) -> Any:
            protocol = lib.PushProtocol(*args, **kwargs)
            protocol.decoder, protocol.deliver = lib.decoder, deliver
            sockets.append(protocol)
            return protocol

        client = lib.TikTokLiveClient(
            unique_id=unique_id, web_proxy=proxy, ws_proxy=proxy,
            web_kwargs={"signer_kwargs": signer, "httpx_kwargs": {"verify": lib.ssl_context}},
            # ws_kwargs go to websockets' connect(); create_protocol decodes hot frames (PushProtocol) and lets
            # us see how the socket closed. No permessage-deflate: TikTok's payloads are gzip already, so it
            # only costs CPU per frame and ~0.3 MB of zlib state per socket (the JS connector's WebSocket
            # client never offers it either).
            ws_kwargs={"create_protocol": create_protocol, "compression": None},
        )
        _route_library_logger()
        return client

    async def _consume(
        self,
        lib: SimpleNamespace,
        queue: asyncio.Queue[Any],
        unique_id: str,
        on_event: Callable[[LiveEvent], None],
        on_connected: Callable[[], None],
    ) -> bool:
        """Delivers queued events until the task ends (False) or TikTok says the LIVE ended (True)."""
        delivered = 0
        while True:
            if delivered >= YIELD_EVERY:
                delivered = 0
                await asyncio.sleep(0)
            item = await queue.get()
            if type(item) is LiveEvent:  # decoded by the push protocol
                on_event(item)
                delivered += 1
                continue
            if item is _STOP:
                return False
            if item is _LIVE_ENDED or isinstance(item, lib.LiveEndEvent):
                return True
            if isinstance(item, lib.ConnectEvent):
                _LOGGER.info("@%s: connected to room %s", unique_id, item.room_id)
                on_connected()
                self._heap.changed()
                continue
            try:
                event = lib.converters[type(item)](item)
                common = getattr(item, "common", None)
                stamp(event, common.create_time if common is not None else 0)
            except Exception:
                # A payload that does not look as expected costs one event, not the connection.
                _LOGGER.warning("@%s: skipped an unreadable %s", unique_id, type(item).__name__,
                                exc_info=True)
                continue
            on_event(event)
            delivered += 1


def _unclean_close(protocol: Any) -> int | None:
    """The close code if the push socket did not end cleanly, else None.

    Needed because TikTokLive (client/ws/ws_client.py, WebcastWSClient.connect: `if not self.connected:
    break` after each yield) ends its task normally when a close frame arrives while it is handling a
    message, so a 1011 drop can look like a clean end.
    """
    received = protocol.close_rcvd
    if received is not None:
        return None if received.code in _CLEAN_CLOSE_CODES else received.code
    if protocol.close_sent is None and protocol.closed:
        return 1006  # no close frame either way: the TCP connection was lost
    return None  # we (or the library, at LIVE end) closed it


def _route_library_logger() -> None:
    """Hands the library's log records to our logging config.

    Its "TikTokLive" logger has its own stderr handler, propagate=False, and every client construction
    resets its level to ERROR (client/client.py TikTokLiveClient.__init__), hence once per client.
    """
    library_logger = logging.getLogger(_LIBRARY_LOGGER)
    for handler in list(library_logger.handlers):
        library_logger.removeHandler(handler)
    library_logger.propagate = True
    library_logger.setLevel(logging.WARNING)


async def _shutdown(client: Any, task: asyncio.Task[None] | None, unique_id: str) -> None:
    """Closes the WebSocket (close handshake included) and both HTTP clients; never raises."""
    try:
        if task is not None and not task.done() and not client.connected:
            # Still in the WebSocket handshake: nothing to close politely, and disconnect() would wait
            # for the handshake. Awaiting a cancelled task raises CancelledError, so skip disconnect().
            task.cancel()
            await asyncio.wait([task])
        if task is None or not task.cancelled():
            await client.disconnect()
    except Exception:
        _LOGGER.warning("@%s: disconnecting the TikTok client failed", unique_id, exc_info=True)
    # web.close() leaves the sign server's own httpx client (TikTokSigner) open: close it as well.
    for close in (lambda: client.web.close(), lambda: client.web.signer.client.aclose()):
        try:
            await close()
        except Exception:
            _LOGGER.warning("@%s: closing a TikTok HTTP client failed", unique_id, exc_info=True)


def _map_error(lib: SimpleNamespace, exc: BaseException, unique_id: str) -> LiveError:
    """The project's error for a library failure; anything unexpected counts as a dropped connection."""
    errors = lib.errors
    if isinstance(exc, LiveError):
        return exc
    if isinstance(exc, errors.UserOfflineError):
        return UserOffline(f"@{unique_id} is not LIVE now")
    if isinstance(exc, errors.UserNotFoundError):
        return UserNotFound(f"@{unique_id} does not exist or cannot go LIVE")
    if isinstance(exc, (errors.WebcastBlockedError, errors.AgeRestrictedError)):
        return Blocked(f"@{unique_id}: TikTok refused the connection: {exc}")
    if isinstance(exc, errors.SignatureRateLimitError):
        retry_after = _retry_after(exc)
        return SignRateLimited(retry_after, f"sign server rate limit, retry in {retry_after:g} s")
    if isinstance(exc, errors.SignAPIError):
        return ConnectionDropped(f"@{unique_id}: sign server failed ({exc.reason.name}): {exc}")
    _LOGGER.debug("@%s: library failure", unique_id, exc_info=exc)
    return ConnectionDropped(f"@{unique_id}: {type(exc).__name__}: {exc}")


def _retry_after(exc: Any) -> float:
    """Seconds the sign server asked us to wait.

    The library reads them from RateLimit-Remaining (client/errors.py calculate_retry_after); when that
    is not a positive number, fall back to Retry-After, then RateLimit-Reset (seconds or a timestamp).
    """
    try:
        seconds = float(exc.retry_after)
    except (TypeError, ValueError, AssertionError):
        seconds = 0.0
    headers = exc.response.headers if exc.response is not None else {}
    for name in ("Retry-After", "RateLimit-Reset"):
        if seconds > 0:
            break
        try:
            value = float(headers.get(name, ""))
        except ValueError:
            continue
        seconds = value - time.time() if value > _UNIX_TIME_FLOOR else value
    return seconds if seconds > 0 else _DEFAULT_RETRY_AFTER


# Conversions of library events (frames the push protocol leaves to the library, and the first fetch's
# messages); the fast decoder builds the same LiveEvents through the same two functions.

def _user(event: Any) -> tuple[str, str, int] | None:
    user = getattr(event, "user", None)
    return None if user is None else (user.nickname, user.display_id, user.id)


def _msg_id(event: Any) -> int:
    common = getattr(event, "common", None)
    return common.msg_id if common is not None else 0


def _base(event: Any, type_: str, **fields: Any) -> LiveEvent:
    """A LiveEvent with who sent it (if anyone) and TikTok's message id, plus the type's own fields."""
    return live_event(type_, _msg_id(event), _user(event), **fields)


def _gift(event: Any) -> LiveEvent:
    gift = event.gift  # parses may give a plain Gift rather than an ExtendedGift: read the raw fields
    described = None if gift is None else (gift.id, gift.name, gift.diamond_count, gift.type)
    return gift_event(_msg_id(event), _user(event), event.repeat_count, event.repeat_end, event.gift_id,
                      described)


def _conversions(events: Any) -> dict[type, Callable[[Any], LiveEvent]]:
    """Library event class -> conversion, for the classes the adapter listens to."""
    return {
        events.CommentEvent: lambda e: _base(e, "chat", message=e.content),
        events.GiftEvent: _gift,
        events.LikeEvent: lambda e: _base(e, "like", count=e.count, total=e.total),
        events.JoinEvent: lambda e: _base(e, "viewer_join"),
        events.FollowEvent: lambda e: _base(e, "follow"),  # not SocialEvent: the library emits both
        events.ShareEvent: lambda e: _base(e, "share"),
        events.SubNotifyEvent: lambda e: _base(e, "subscribe", sub_month=e.sub_month),
        # RoomUserSeqMessage: `total` is the current viewer count, `total_user` everyone seen this LIVE.
        events.RoomUserSeqEvent: lambda e: _base(e, "viewer", current=e.total, total=e.total_user),
    }
