"""The frames of each user's home worker, on NATS for every other worker with a socket of the user.

The home publishes each numbered frame, as the app receives it, to `ttboost.frames.<user id>`: a plain publish,
in order on its one connection, never awaited by the event path (a pump task sends them). The JetStream stream
TTBOOST_FRAMES keeps the replay window of every subject (the last replay_events frames, none older than
replay_seconds), so a worker that starts following a user, or an app that comes back to another worker with
`since`, finds the frames it missed. Memory storage: the window is minutes long and a NATS restart costs only
the replay of that window on other workers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Protocol

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import BadRequestError

from ..pipeline.bus import FrameTiming
from .broker import STREAM_CONFIG_DIFFERS, Broker

_LOGGER = logging.getLogger(__name__)

STREAM: Final = "TTBOOST_FRAMES"
SUBJECTS: Final = "ttboost.frames.*"
BACKFILL_TIMEOUT: Final = 5.0  # seconds for the stored window of one user to arrive
CLOSE_SEND_SECONDS: Final = 2.0
OUTBOX_MAX: Final = 100_000  # frames waiting for NATS (it is away): the oldest go first past this

H_SEQ: Final = "Ttb-Seq"
H_TYPE: Final = "Ttb-Type"
H_FROM: Final = "Ttb-From"
H_TIMING: Final = "Ttb-Timing"  # "<event type>|<tiktok ms>|<received ms>" of a LIVE event's frame


class Receiver(Protocol):
    """The bus: receive() takes a home's frame into this worker's copy of the channel."""

    def receive(self, user_id: int, seq: int, type_: str, frame: str, timing: FrameTiming | None) -> None: ...


def subject(user_id: int) -> str:
    return f"ttboost.frames.{user_id}"


@dataclass(eq=False, slots=True)
class _Following:
    sub: Subscription | None = None
    waiting: list[Msg] | None = field(default_factory=list)  # live frames held back while the window loads


class FrameRelay:
    def __init__(self, broker: Broker, receiver: Receiver, *, replay_events: int, replay_seconds: float) -> None:
        self._broker = broker
        self._receiver = receiver
        self._replay_events = replay_events
        self._replay_seconds = replay_seconds
        self._outbox: deque[tuple[str, bytes, dict[str, str]]] = deque(maxlen=OUTBOX_MAX)
        self._ready = asyncio.Event()  # something to send
        self._empty = asyncio.Event()  # nothing waits to be sent
        self._empty.set()
        self._pump: asyncio.Task[None] | None = None
        self._following: dict[int, _Following] = {}
        # This process's frames are skipped when they come back; a restarted worker of the same id takes its
        # predecessor's frames like any other worker's.
        self._me = f"{broker.worker_id}/{secrets.token_hex(4)}"

    async def start(self) -> None:
        config = StreamConfig(name=STREAM, subjects=[SUBJECTS], storage=StorageType.MEMORY,
                              max_msgs_per_subject=self._replay_events, max_age=self._replay_seconds,
                              discard=DiscardPolicy.OLD)
        js = self._broker.nc.jetstream()
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != STREAM_CONFIG_DIFFERS:
                raise
            await js.update_stream(config)  # another replay window in this worker's config: it wins
        self._pump = asyncio.create_task(self._send_forever(), name="cluster-frames-out")

    async def close(self) -> None:
        """After the last frame: sends what is still waiting (for CLOSE_SEND_SECONDS at most: NATS may be away),
        then stops."""
        await self.drained()
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        for user_id in list(self._following):
            await self.unfollow(user_id)

    # --- frames numbered here ---

    def sent(self, user_id: int, seq: int, type_: str, frame: str, timing: FrameTiming | None) -> None:
        headers = {H_SEQ: str(seq), H_TYPE: type_, H_FROM: self._me}
        if timing is not None:
            headers[H_TIMING] = f"{timing.type}|{timing.tiktok_ms}|{timing.received_ms}"
        self._outbox.append((subject(user_id), frame.encode(), headers))
        self._empty.clear()
        self._ready.set()

    async def drained(self) -> None:
        """Returns once every frame sent so far has gone to NATS (CLOSE_SEND_SECONDS at most): a handover waits
        for it, so that the old home's last frames are on NATS before the new home's first."""
        try:
            async with asyncio.timeout(CLOSE_SEND_SECONDS):
                await self._empty.wait()
        except TimeoutError:
            _LOGGER.warning("cluster: %d frames still wait for NATS", len(self._outbox))

    def post(self, subject_: str, data: bytes) -> None:
        """Any other message that must keep its order after the frames sent before it (a frame for a home)."""
        self._outbox.append((subject_, data, {}))
        self._empty.clear()
        self._ready.set()

    async def _send_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self._send_waiting()

    async def _send_waiting(self) -> None:
        nc = self._broker.nc
        while self._outbox:
            subject_, data, headers = self._outbox[0]
            try:
                await nc.publish(subject_, data, headers=headers or None)
            except Exception:  # NATS away: the client reconnects; the frame waits (the oldest go past OUTBOX_MAX)
                _LOGGER.warning("cluster: frames wait for NATS (%d)", len(self._outbox), exc_info=True)
                await asyncio.sleep(0.5)
                continue
            self._outbox.popleft()
        self._empty.set()

    # --- frames of a home elsewhere ---

    async def follow(self, user_id: int) -> None:
        """Subscribes first and holds back what arrives live, loads the stored window, then lets the held frames
        through: nothing falls between the two, and receive() drops what both carried."""
        if user_id in self._following:
            return
        following = self._following[user_id] = _Following()

        async def live(msg: Msg) -> None:
            if following.waiting is not None:
                following.waiting.append(msg)
            else:
                self._take(user_id, msg)

        following.sub = await self._broker.nc.subscribe(subject(user_id), cb=live)
        try:
            stored = await self._stored(user_id)
        except Exception:  # the window could not be read: the live frames still come
            _LOGGER.warning("cluster: user %s: the stored frames could not be read", user_id, exc_info=True)
            stored = []
        for msg in stored:
            self._take(user_id, msg, live=False)
        waiting, following.waiting = following.waiting or [], None
        for msg in waiting:
            self._take(user_id, msg)

    async def unfollow(self, user_id: int) -> None:
        await self._broker.unsubscribe(self.stop_following(user_id))

    def stop_following(self, user_id: int) -> Subscription | None:
        """Forgets the user at once and returns the subscription to end apart: a follow() right after (the
        channel made again) subscribes anew instead of finding one about to end. Frames the old one still
        brings meanwhile are dropped by receive() as already taken."""
        following = self._following.pop(user_id, None)
        return following.sub if following is not None else None

    async def _stored(self, user_id: int) -> list[Msg]:
        js = self._broker.nc.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                                inactive_threshold=30.0, mem_storage=True)
        pull = await js.pull_subscribe(subject(user_id), stream=STREAM, config=config)
        try:
            left = (await pull.consumer_info()).num_pending
            msgs: list[Msg] = []
            while left > 0:
                try:
                    batch = await pull.fetch(min(left, 256), timeout=BACKFILL_TIMEOUT)
                except NatsTimeout:  # the rest aged out of the window since the count: keep what came
                    break
                msgs.extend(batch)
                left -= len(batch)
            return msgs
        finally:
            await pull.unsubscribe()
            try:
                await js.delete_consumer(STREAM, config.name)
            except Exception:  # it ends by itself after inactive_threshold
                pass

    def _take(self, user_id: int, msg: Msg, *, live: bool = True) -> None:
        """live=False: a frame of the stored window, which carries no timing (spec §6: live frames only)."""
        headers = msg.headers or {}
        if headers.get(H_FROM) == self._me:
            return  # this worker's own frames (it was the home) reached its sockets directly
        try:
            seq = int(headers[H_SEQ])
            timing = None
            if live and H_TIMING in headers:
                type_, tiktok_ms, received_ms = headers[H_TIMING].split("|")
                timing = FrameTiming(type_, int(tiktok_ms), int(received_ms))
            self._receiver.receive(user_id, seq, headers.get(H_TYPE, ""), msg.data.decode(), timing)
        except Exception:  # one bad message must not end the subscription
            _LOGGER.exception("cluster: a frame of user %s could not be taken", user_id)
