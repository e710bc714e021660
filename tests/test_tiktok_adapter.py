"""TikTokAdapter end to end: the real TikTokLive client against the local FakeTikTok."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import subprocess
import sys
import time
from typing import AsyncIterator, Callable

import pytest

from tests.fake_tiktok import FakeTikTok
from ttboost.live.errors import (
    Blocked, ConnectionDropped, SignRateLimited, UserNotFound, UserOffline,
)
from ttboost.live.source import LiveSource
from ttboost.live.tiktok import TikTokAdapter
from ttboost.pipeline.events import LiveEvent

BOB = ("Bob", "bob", 42)
NO_NICK = ("", "quiet_one", 43)
ENDED = 5.0  # seconds a finished watch may take to return


class Watch:
    """One adapter.watch running as a task, recording what it delivers."""

    def __init__(self, source: LiveSource, unique_id: str) -> None:
        self.events: list[LiveEvent] = []
        self.connected = 0
        self.task = asyncio.create_task(source.watch(unique_id, self.events.append, self._on_connected))

    def _on_connected(self) -> None:
        self.connected += 1

    async def result(self) -> None:
        await asyncio.wait_for(self.task, ENDED)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTikTok]:
    async with FakeTikTok() as server:
        server.set_user("streamer", room_id=7001)
        yield server


@pytest.fixture
async def watch(fake: FakeTikTok) -> AsyncIterator[Callable[..., Watch]]:
    watches: list[Watch] = []

    def start(unique_id: str = "streamer", **config: object) -> Watch:
        watches.append(Watch(TikTokAdapter(fake.config(**config)), unique_id))
        return watches[-1]

    yield start
    for running in watches:
        running.task.cancel()
    await asyncio.gather(*(w.task for w in watches), return_exceptions=True)


def _closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_library_is_not_imported_with_the_adapter() -> None:
    code = "import sys, ttboost.live.tiktok; sys.exit('TikTokLive' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


async def test_every_event_type_arrives_normalized_and_in_order(
        fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    w = watch("@streamer")
    await fake.wait_connected()
    ids = [
        await fake.send_chat(BOB, "привет"),
        await fake.send_gift(BOB, 5655, "Rose", 1, 1, True),
        await fake.send_like(BOB, 15, 300),
        await fake.send_join(NO_NICK),
        await fake.send_follow(BOB),
        await fake.send_share(BOB),
        await fake.send_subscribe(BOB, 3),
        await fake.send_viewers(120, 4500),
    ]
    await fake.end_live()
    await w.result()

    who = {"user": "Bob", "username": "bob", "user_id": "42"}
    expected = [
        LiveEvent(type="chat", message="привет", **who),
        LiveEvent(type="gift", gift_id=5655, gift_name="Rose", diamond_count=1, count=1, streakable=True,
                  repeat_end=True, **who),
        LiveEvent(type="like", count=15, total=300, **who),
        LiveEvent(type="viewer_join", user="quiet_one", username="quiet_one", user_id="43"),
        LiveEvent(type="follow", **who),
        LiveEvent(type="share", **who),
        LiveEvent(type="subscribe", sub_month=3, **who),
        LiveEvent(type="viewer", current=120, total=4500),
    ]
    # Timing: TikTok's create time from the message header, then when the adapter read it.
    for event, msg_id in zip(w.events, ids):
        assert fake.create_times[msg_id] == event.tiktok_ms <= event.received_ms <= time.time() * 1000
    assert w.events == [dataclasses.replace(e, msg_id=str(i), tiktok_ms=fake.create_times[i],
                                            received_ms=got.received_ms)
                        for e, i, got in zip(expected, ids, w.events)]
    assert w.connected == 1
    assert fake.sign_api_keys == ["fake-key"]
    # Room lookup on the app URL and the live check on the webcast URL, both reached the fake.
    assert fake.page_requests == ["/@streamer/live", "/webcast/room/check_alive/"]
    assert fake.client_frames[0] == "im_enter_room" and fake.client_frames.count("ack") == len(ids) + 1
    library_logger = logging.getLogger("TikTokLive")
    assert (library_logger.handlers, library_logger.propagate, library_logger.level) == ([], True,
                                                                                        logging.WARNING)


async def test_gift_combo_is_delivered_raw(fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    w = watch()
    await fake.wait_connected()
    for count in (1, 2, 3):
        await fake.send_gift(BOB, 5655, "Rose", 1, count, False)
    await fake.send_gift(BOB, 5655, "Rose", 1, 3, True)
    await fake.send_gift(BOB, 6369, "Lion", 29999, 1, True, streakable=False)
    await fake.send_chat(BOB, "again", msg_id=99)
    await fake.send_chat(BOB, "again", msg_id=99)  # a duplicate delivery: dropping it is combos.py's job
    await fake.end_live()
    await w.result()

    gifts = [(e.gift_name, e.count, e.streakable, e.repeat_end) for e in w.events if e.type == "gift"]
    assert gifts == [("Rose", 1, True, False), ("Rose", 2, True, False), ("Rose", 3, True, False),
                     ("Rose", 3, True, True), ("Lion", 1, False, True)]
    assert [e.msg_id for e in w.events if e.type == "chat"] == ["99", "99"]
    assert w.events[-3].diamonds == 29999


@pytest.mark.parametrize("control", [True, False], ids=["stream-ended", "close-1000"])
async def test_clean_end_returns(fake: FakeTikTok, watch: Callable[..., Watch], control: bool) -> None:
    w = watch()
    await fake.wait_connected()
    await fake.send_chat(BOB, "bye")
    await fake.end_live(control=control)
    await w.result()  # returns, no error
    assert [e.message for e in w.events] == ["bye"]
    await fake.wait_closed()
    assert fake.close_codes == [1000]
    # The streamer is offline now: the next watch says so before any signing.
    with pytest.raises(UserOffline):
        await watch().result()
    assert fake.sign_calls == 1


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "right-after-a-message"])
async def test_drop_raises_connection_dropped(
        fake: FakeTikTok, watch: Callable[..., Watch], idle: bool) -> None:
    # "right-after-a-message": the close frame arrives while the library handles the message; it then
    # ends its task normally, and only the close code tells the drop from a clean end.
    w = watch()
    await fake.wait_connected()
    await fake.send_chat(BOB, "before the drop")
    while idle and not w.events:
        await asyncio.sleep(0.01)
    await fake.drop(1011)
    with pytest.raises(ConnectionDropped, match="1011"):
        await w.result()
    assert [e.message for e in w.events] == ["before the drop"]


async def test_offline_streamer_raises_user_offline(fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    fake.set_user("sleeping", live=False)
    with pytest.raises(UserOffline):
        await watch("sleeping").result()
    assert (fake.sign_calls, fake.connections) == (0, 0)


async def test_unknown_user_raises_user_not_found(fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    fake.set_user("deleted", exists=False)
    with pytest.raises(UserNotFound):
        await watch("deleted").result()
    with pytest.raises(UserNotFound):
        await watch("never_registered").result()
    assert (fake.sign_calls, fake.connections) == (0, 0)


async def test_sign_rate_limit_raises_with_retry_after(fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    fake.sign_rate_limit(42)
    with pytest.raises(SignRateLimited) as raised:
        await watch().result()
    assert raised.value.retry_after == 42
    assert fake.connections == 0


async def test_blocked_handshake_raises_blocked(fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    fake.block_handshake()
    with pytest.raises(Blocked, match="DEVICE_BLOCKED"):
        await watch().result()
    assert fake.sign_calls == 1


async def test_unreachable_sign_server_raises_connection_dropped(
        fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    with pytest.raises(ConnectionDropped, match="sign server"):
        await watch(sign_api_url=f"http://127.0.0.1:{_closed_port()}").result()


async def test_proxy_is_used(fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    # A proxy that refuses connections: the fake must never be reached directly.
    with pytest.raises(ConnectionDropped):
        await watch(proxy=f"http://127.0.0.1:{_closed_port()}").result()
    assert fake.page_requests == []


async def test_cancel_closes_the_socket_cleanly(fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    w = watch()
    await fake.wait_connected()
    await fake.send_chat(BOB, "hi")
    while not w.events:  # the chat is through: the watch is idle, waiting for more
        await asyncio.sleep(0.01)
    w.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w.result()
    await fake.wait_closed()
    assert fake.close_codes == [1000]


async def test_cancel_before_connecting_leaves_nothing_open(
        fake: FakeTikTok, watch: Callable[..., Watch]) -> None:
    w = watch()
    await asyncio.sleep(0)  # let it start, then cancel during the HTTP stage
    w.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await w.result()
    assert fake.connections == 0


async def test_betterproto2_reuses_validators_and_still_validates() -> None:
    """The adapter makes betterproto2 keep one pydantic validator per class: same checks, same errors."""
    from importlib.metadata import version

    import betterproto2
    from pydantic import ValidationError

    from ttboost.live.tiktok import _load_library

    await _load_library()
    from TikTokLive.proto import CommonMessageData, WebcastPushFrame

    if version("betterproto2") == "0.9.1":
        assert getattr(betterproto2.Message._validate, "ttboost_reuses_validators", False)
    wire = bytes(WebcastPushFrame(log_id=7, payload_type="msg", payload=b"x"))
    first, second = WebcastPushFrame().parse(wire), WebcastPushFrame().parse(wire)  # validated as they load
    assert first == second and (first.log_id, first.payload_type, first.payload) == (7, "msg", b"x")
    for _ in range(2):  # the first call builds the validator, the second reuses it: both check the same
        message = CommonMessageData(method="m", msg_id=1)
        message.msg_id = "not a number"  # type: ignore[assignment]  # set past pydantic's constructor
        with pytest.raises(ValidationError):
            message._validate()
    with pytest.raises(TypeError):
        betterproto2.Message._validate(object.__new__(type("Plain", (), {"_is_pydantic": lambda self: False})))


async def test_a_burst_of_events_lets_other_tasks_run() -> None:
    """_consume yields every YIELD_EVERY events, so a socket writer drains its queue during a burst."""
    from types import SimpleNamespace

    from ttboost.config import TikTokConfig
    from ttboost.live.tiktok import _STOP, YIELD_EVERY

    class Item:
        pass

    lib = SimpleNamespace(LiveEndEvent=type("LiveEnd", (), {}), ConnectEvent=type("Connect", (), {}),
                          converters={Item: lambda _item: LiveEvent("chat")})
    queue: asyncio.Queue[object] = asyncio.Queue()
    for _ in range(YIELD_EVERY * 4):
        queue.put_nowait(Item())
    queue.put_nowait(_STOP)
    delivered: list[int] = []
    seen_by_other_task: list[int] = []

    async def other_task() -> None:
        while len(delivered) < YIELD_EVERY * 4:
            seen_by_other_task.append(len(delivered))
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    adapter = TikTokAdapter(TikTokConfig())
    assert await adapter._consume(lib, queue, "streamer", lambda _e: delivered.append(1), lambda: None) is False
    await other
    assert len(delivered) == YIELD_EVERY * 4
    # The other task ran between the chunks of the burst, not only before and after it.
    assert any(0 < n < YIELD_EVERY * 4 for n in seen_by_other_task)
