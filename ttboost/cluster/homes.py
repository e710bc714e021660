"""Each user's home worker: the one that numbers the user's frames and runs the user's TikTok connection.

The home is the holder of the user's lease (leases.py). The worker where a user's app socket opens becomes the
home when no other worker is (the session then runs next to the socket); otherwise that worker is an edge: its
copy of the user's channel is fed with the home's frames (frames.py), and what the app or a route asks of the
session (home.py's operations: connect_tiktok, disconnect_tiktok, a simulate…) goes to the home as a NATS request
on `ttboost.home.<user id>`, which only the home subscribes to. A frame made on an edge (a demo event, a
rehearsal) is sent there to be numbered.

Every third of a lease, a worker renews the leases it holds and each edge tells the home its app is still there
(the home's idle stop counts it). A home that no longer answers (killed) is noticed by that same word: the edge
takes the lease once it has expired and, as the new home, resumes the watch the old one was running (the
watches bucket says which: a watch stopped on purpose is deleted from it). A worker that stops gracefully hands
each of its users over at once: it stops the TikTok connection without a word to the app, gives back the unused
seq numbers, releases the lease and asks another worker (`ttboost.adopt`, a queue group) to take the user on;
so an app sees `reconnecting` then `connected`, and seq goes on rising with no repeats.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import deque
from typing import Any, Final

from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from .. import keys
from ..errors import ApiError
from ..home import OPERATIONS
from ..live.history import close_dangling, users_with_open_streams
from ..periodic import Periodic
from ..pipeline.bus import FrameTiming
from ..sockets import CLOSE_REPLACED
from .broker import HEARTBEATS_PER_LEASE, Broker
from .frames import FrameRelay
from .leases import SessionLeases

_LOGGER = logging.getLogger(__name__)

WATCHES_BUCKET: Final = "ttboost_watches"  # user.<id> -> {"username", "auto"} of a watch that should run
ADOPT_SUBJECT: Final = "ttboost.adopt"
APPS_SUBJECT: Final = "ttboost.apps"  # an app socket opened on a worker: the user's older one elsewhere closes
CALL_TIMEOUT: Final = 10.0  # seconds for the home's answer (a connect may wait for a stopping watch)
# Operations that only say an app or an overlay is there: harmless to ask twice. A home that took one and died
# before answering (kill -9: NATS cannot tell the caller) costs one lease, then they go to the next home; an app
# socket opening meanwhile was closed 1011 after CALL_TIMEOUT instead.
PRESENCE_OPS: Final = frozenset({"app_opened", "app_present", "ping"})
SWEEP_EVERY: Final = 3  # rounds between looks for watches whose home died with no app anywhere


def home_subject(user_id: int) -> str:
    return f"ttboost.home.{user_id}"


def _busy() -> ApiError:
    return ApiError(503, "busy, try again", "busy")


class Homes:
    """This worker's homes (the users whose lease it holds) and the way to any other user's home."""

    def __init__(self, app: web.Application, broker: Broker, leases: SessionLeases) -> None:
        config = app[keys.CONFIG]
        self._app = app
        self._broker = broker
        self._leases = leases
        self._bus = app[keys.BUS]
        self._live = app[keys.LIVE]
        self._sockets = app[keys.SOCKETS]
        self.frames = FrameRelay(broker, self._bus, replay_events=config.limits.replay_events,
                                 replay_seconds=config.limits.replay_seconds)
        self._held: dict[int, int] = {}  # user id -> revision of the lease this worker holds
        self._subs: dict[int, Subscription] = {}
        self._claiming: dict[int, asyncio.Lock] = {}
        self._watches: KeyValue | None = None
        self._watch_writes: deque[tuple[int, bytes | None]] = deque()
        self._writes_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._adopt: Subscription | None = None
        self._round_no = 0
        self._closing = False  # handing everything over: no new homes here
        every = leases.lease_seconds / HEARTBEATS_PER_LEASE
        # Two loops: the renewals never wait behind a round of questions to homes or a sweep of the database,
        # which a busy machine can stretch past the rest of a lease.
        self._keeper = Periodic("cluster-leases", every, self._renew_all)
        self._rounds = Periodic("cluster-homes", every, self._round)

    async def start(self) -> None:
        self._watches = await self._broker.key_value(WATCHES_BUCKET, 0)
        await self.frames.start()
        self._bus.relay_to(self)
        self._live.watches = self
        self._live.presence_seconds = self._leases.lease_seconds
        self._spawn(self._write_watches(), "cluster-watch-writes")
        self._keeper.start()
        self._adopt = await self._broker.nc.subscribe(ADOPT_SUBJECT, queue="adopters", cb=self._on_adopt)
        await self._broker.subscribe(APPS_SUBJECT, self._on_app_elsewhere)
        self._rounds.start()

    async def hand_over_all(self) -> None:
        """At shutdown, before the app sockets close (on_shutdown): hands every user over. This worker stops
        answering for them first, so that an app reconnecting elsewhere meanwhile waits for the new home instead
        of starting a watch here again; then, for all users at once, the watch stops without a word to the app,
        the unused seq numbers go back, the frames on their way are sent, the lease is released and another worker
        is asked to adopt the user (it resumes the watch the bucket of watches names)."""
        if self._closing:
            return
        self._closing = True
        await self._rounds.close()
        await self._keeper.close()
        if self._adopt is not None:
            await self._adopt.unsubscribe()
        held = list(self._held)
        # All at once: each drain is a round trip to NATS (one after another, hundreds of users took seconds).
        await asyncio.gather(*(self._unsubscribe(user_id) for user_id in held))
        for _ in range(200):  # the last started/stopped marks reach the bucket (2 s at most: NATS may be away)
            if not self._watch_writes:
                break
            await asyncio.sleep(0.01)
        await asyncio.gather(*(self._hand_over(user_id) for user_id in held))
        try:
            await self._broker.flush()
        except Exception:  # NATS away: the watches are adopted by the others' sweep instead
            _LOGGER.warning("cluster: could not ask another worker to adopt the watches", exc_info=True)

    async def close(self) -> None:
        await self.hand_over_all()
        await self.frames.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _hand_over(self, user_id: int) -> None:
        try:
            await self._live.hand_over(user_id)
            await self._bus.disown(user_id, give_back=True, follow=False)
            await self.frames.drained()  # the old home's last frames go before the new home's first
        except Exception:  # one user's trouble must not keep the others from being handed over
            _LOGGER.exception("cluster: handing user %s over failed", user_id)
        await self._let_go(user_id)
        try:
            await self._broker.nc.publish(ADOPT_SUBJECT, str(user_id).encode())
        except Exception:
            _LOGGER.warning("cluster: could not ask another worker to adopt user %s", user_id, exc_info=True)

    # --- the bus's relay (pipeline/bus.py Relay) ---

    def sent(self, user_id: int, seq: int, type_: str, frame: str, timing: FrameTiming | None) -> None:
        self.frames.sent(user_id, seq, type_, frame, timing)

    def forward(self, user_id: int, type_: str, payload: dict[str, Any], log: bool, live: bool) -> None:
        body = {"op": "frame", "args": {"type": type_, "payload": payload, "log": log, "live": live}}
        self.frames.post(home_subject(user_id), json.dumps(body).encode())

    async def follow(self, user_id: int) -> None:
        await self.frames.follow(user_id)

    async def unfollow(self, user_id: int) -> None:
        await self.frames.unfollow(user_id)

    def forgotten(self, user_id: int, home: bool) -> None:
        # Let go of at once, only the network part waits for the task: a channel made again before it runs (a
        # socket opening) must neither find the old copy's follow about to end nor this worker still the home.
        if home:
            work = self._release(user_id, *self._drop(user_id))
        else:
            work = self._broker.unsubscribe(self.frames.stop_following(user_id))
        self._spawn(work, f"cluster-forget-{user_id}")

    # --- the live manager's watches (live/manager.py Watches) ---

    def started(self, user_id: int, tiktok_username: str, auto: bool) -> None:
        self._watch_writes.append((user_id, json.dumps({"username": tiktok_username, "auto": auto}).encode()))
        self._writes_ready.set()

    def stopped(self, user_id: int) -> None:
        self._watch_writes.append((user_id, None))
        self._writes_ready.set()

    async def _write_watches(self) -> None:
        assert self._watches is not None
        while True:
            await self._writes_ready.wait()
            self._writes_ready.clear()
            while self._watch_writes:
                user_id, value = self._watch_writes[0]
                try:
                    if value is None:
                        await self._watches.delete(f"user.{user_id}")
                    else:
                        await self._watches.put(f"user.{user_id}", value)
                except Exception:  # NATS away for a moment: tried again
                    _LOGGER.warning("cluster: the watch of user %s could not be stored", user_id, exc_info=True)
                    await asyncio.sleep(0.5)
                    continue
                self._watch_writes.popleft()

    async def _watch_of(self, user_id: int) -> dict[str, Any] | None:
        assert self._watches is not None
        try:
            entry = await self._watches.get(f"user.{user_id}")
        except NotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    # --- operations, wherever the home is (home.py Home) ---

    def holds(self, user_id: int) -> bool:
        return user_id in self._held

    async def run(self, user_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Runs the operation on the user's home: here if this worker is it or becomes it, else on the worker
        that is. Waits through a takeover (a dead home's lease expiring) for up to two leases."""
        if op == "app_opened":  # one app socket per user in the whole cluster, as in one process
            await self._broker.publish(APPS_SUBJECT, {"user": user_id})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self._leases.lease_seconds + 1
        while True:
            if user_id in self._held:
                return await OPERATIONS[op](self._app, user_id, args)
            reply = await self._ask(user_id, op, args)
            if reply is not None:
                return reply
            if loop.time() > deadline:
                raise _busy()
            await asyncio.sleep(0.1)  # the lease is held by a worker that died or is not subscribed yet

    async def _ask(self, user_id: int, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The home's answer; None when no worker answers and this one could not become the home either, or when
        the home did not answer a presence op within a lease."""
        body = json.dumps({"op": op, "args": {**args, "remote": True}}).encode()
        presence = op in PRESENCE_OPS
        timeout = min(CALL_TIMEOUT, self._leases.lease_seconds) if presence else CALL_TIMEOUT
        try:
            msg = await self._broker.nc.request(home_subject(user_id), body, timeout=timeout)
        except NoRespondersError:
            try:
                claimed = await self.claim(user_id)
            except NatsError:  # NATS slow to answer the lease's create (a busy machine): the caller tries again
                _LOGGER.warning("cluster: user %s: taking the lease failed", user_id, exc_info=True)
                return None
            if claimed:
                return await OPERATIONS[op](self._app, user_id, args)
            return None
        except NatsTimeout:
            if presence:
                return None  # dead or frozen: run() asks again, and takes the home once its lease lapsed
            raise _busy() from None
        reply = json.loads(msg.data)
        if reply.get("moved"):
            return None
        if "error" in reply:
            error = reply["error"]
            raise ApiError(error["status"], error["detail"], error["code"], fields=error.get("fields"),
                           extra=error.get("extra"))
        return reply["result"]

    async def _on_request(self, user_id: int, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
            op, args = body["op"], body["args"]
            if op == "frame":  # an edge's frame, numbered here
                if user_id in self._held and self._bus.get(user_id) is not None:
                    self._bus.publish(user_id, args["type"], args["payload"], log=args["log"], live=args["live"])
                return
            if user_id not in self._held:  # let go of since the request was sent: the caller asks the next home
                await msg.respond(json.dumps({"moved": True}).encode())
                return
            try:
                reply: dict[str, Any] = {"result": await OPERATIONS[op](self._app, user_id, args)}
            except ApiError as exc:
                reply = {"error": {"status": exc.status, "detail": exc.detail, "code": exc.code,
                                   "fields": exc.fields, "extra": exc.extra}}
            await msg.respond(json.dumps(reply).encode())
        except Exception:  # one bad request must not end the subscription; the caller times out into 503
            _LOGGER.exception("cluster: a request for user %s could not be handled", user_id)

    # --- leases ---

    async def claim(self, user_id: int) -> bool:
        """Makes this worker the user's home if no worker is; True if it is (now or already). The user counts as
        held here only once its channel numbers frames and its subject answers: an operation run meanwhile
        would otherwise send its frames to a home that does not listen yet."""
        if self._closing:
            return False
        lock = self._claiming.setdefault(user_id, asyncio.Lock())
        try:
            async with lock:
                if user_id in self._held:
                    return True
                revision = await self._leases.acquire(user_id)
                if revision is None:
                    return False
                try:
                    await self._bus.own(user_id)
                    self._subs[user_id] = await self._broker.nc.subscribe(
                        home_subject(user_id), cb=functools.partial(self._on_request, user_id))
                except BaseException:
                    await asyncio.shield(self._undo_claim(user_id, revision))
                    raise
                _LOGGER.info("cluster: worker %s is now the home of user %s", self._broker.worker_id, user_id)
                # Before anything here runs an operation for the user (an app's auto_connect would start the watch
                # as new, `connecting`, where the app should see the old one go on: `reconnecting`).
                await self._resume(user_id)
                self._held[user_id] = revision
        finally:
            if not lock.locked():
                self._claiming.pop(user_id, None)
        return True

    async def _undo_claim(self, user_id: int, revision: int) -> None:
        await self._unsubscribe(user_id)
        await self._bus.disown(user_id, give_back=True, follow=True)
        await self._leases.release(user_id, revision)

    async def _resume(self, user_id: int) -> None:
        """Goes on with the watch a home that died or stopped was running; a stream row it left open (killed)
        ends as `crashed` first, as at a single process's restart. A failure here costs the watch, not the home
        (the app's connect_tiktok or auto_connect starts it again)."""
        try:
            if self._live.session(user_id) is None:
                await close_dangling(self._app[keys.DB], user_id)
            watch = await self._watch_of(user_id)
            session = self._live.session(user_id)
            if watch is None or (session is not None and session.running):
                return
            _LOGGER.info("cluster: taking over the LIVE watch of user %s (@%s)", user_id, watch["username"])
            await self._live.start(user_id, watch["username"], auto=watch["auto"], taken_over=True)
        except Exception:
            _LOGGER.exception("cluster: the watch of user %s could not be taken over", user_id)

    async def _unsubscribe(self, user_id: int) -> None:
        await self._broker.unsubscribe(self._subs.pop(user_id, None), drain=True)

    async def _let_go(self, user_id: int) -> None:
        await self._release(user_id, *self._drop(user_id))

    def _drop(self, user_id: int) -> tuple[int | None, Subscription | None]:
        """No longer the home from now on; the lease and subscription returned are ended by _release()."""
        return self._held.pop(user_id, None), self._subs.pop(user_id, None)

    async def _release(self, user_id: int, revision: int | None, sub: Subscription | None) -> None:
        # Drained: a request already on its way is answered (as moved, once this worker is no longer the home).
        await self._broker.unsubscribe(sub, drain=True)
        if revision is not None:
            try:
                await self._leases.release(user_id, revision)
            except Exception:  # it expires after lease_seconds: a slower handover, nothing worse
                _LOGGER.warning("cluster: the lease of user %s could not be released", user_id, exc_info=True)

    async def _lost(self, user_id: int) -> None:
        """The lease expired and another worker took it (this one could not renew in time): stop here."""
        _LOGGER.warning("cluster: the lease of user %s was lost; its watch stops on this worker", user_id)
        await self._let_go(user_id)
        await self._live.hand_over(user_id)
        # Followed even with no socket here now: the channel stays until the janitor forgets it, and a socket
        # opening meanwhile is handed this one (bus.channel()); a copy nobody feeds would leave it without frames.
        await self._bus.disown(user_id, give_back=False, follow=True)

    async def _on_app_elsewhere(self, body: dict[str, Any]) -> None:
        conn = self._sockets.current(body["user"])
        if conn is not None:
            conn.close(CLOSE_REPLACED, "replaced")

    async def _on_adopt(self, msg: Msg) -> None:
        try:
            await self.claim(int(msg.data))
        except Exception:
            _LOGGER.exception("cluster: adopting user %s failed", msg.data)

    async def _renew_all(self) -> None:
        """Every third of a lease: the leases held here live on."""
        await asyncio.gather(*(self._renew(user_id) for user_id in list(self._held)))

    async def _round(self) -> None:
        """Every third of a lease: say to each home that this worker's apps are there (taking the home over if it
        is gone), and now and then adopt a watch whose home died unseen."""
        edges = {conn.user.id: "ping" for conn in self._sockets.overlays()}
        edges.update((conn.user.id, "app_present") for conn in self._sockets.connections())  # apps count more
        await asyncio.gather(*(self._check(user_id, op) for user_id, op in edges.items() if user_id not in self._held))
        self._round_no += 1
        if self._round_no % SWEEP_EVERY == 0:
            await self._sweep()

    async def _renew(self, user_id: int) -> None:
        revision = self._held.get(user_id)
        if revision is None:
            return
        try:
            kept = await self._leases.renew(user_id, revision)
        except Exception:  # NATS away for a moment: the next round tries again while the lease may still live
            _LOGGER.warning("cluster: the lease of user %s could not be renewed", user_id, exc_info=True)
            return
        if kept is None:
            await self._lost(user_id)
        elif user_id in self._held:
            self._held[user_id] = kept

    async def _check(self, user_id: int, op: str) -> None:
        try:
            await self._ask(user_id, op, {})
        except Exception:  # the next round asks again
            _LOGGER.debug("cluster: user %s: the home did not answer", user_id, exc_info=True)

    async def _sweep(self) -> None:
        """Watches that should run, and stream rows left open, whose home is gone with no app anywhere to notice:
        one worker adopts each such user (the lease decides which), resuming the watch or closing the rows."""
        assert self._watches is not None
        try:
            watched = [int(key.removeprefix("user."))
                       for key in await self._broker.live_keys(WATCHES_BUCKET, self._watches)]
            streaming = await users_with_open_streams(self._app[keys.DB])
            for user_id in dict.fromkeys(watched + streaming):
                if user_id not in self._held and await self._leases.holder(user_id) is None:
                    await self.claim(user_id)
        except Exception:
            _LOGGER.warning("cluster: the look for watches without a home failed", exc_info=True)

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
