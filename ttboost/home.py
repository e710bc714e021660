"""What an app socket or a route asks of a user's LIVE session, run where the session lives: in this process, or in
cluster mode on the user's home worker (cluster/homes.py sends it there and brings the answer back).

Each operation takes the application, the user and JSON-able arguments and answers a JSON-able dict, so that the
same code runs whether the caller is on the home worker or not. An ApiError raised here reaches the caller's client.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Final, Protocol

from aiohttp import web

from . import keys
from .api.events import simulated_event
from .licenses import has_active_license

Operation = Callable[[web.Application, int, dict[str, Any]], Awaitable[dict[str, Any]]]


class Home(Protocol):
    async def run(self, user_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Runs OPERATIONS[op] for the user where the user's session lives, and returns its answer."""


async def auto_connect(app: web.Application, user_id: int) -> bool:
    """Starts the LIVE watch as `auto_connect` promises, if it is on and no watch runs; True if it started.

    Runs when an app socket opens and when the streamer switches auto_connect on while one is open. A watch
    that ended in an error (user not found, blocked) gets a new try here: the streamer may have fixed the
    username or the block in between.
    """
    settings = await app[keys.SETTINGS].get(user_id)
    session = app[keys.LIVE].session(user_id)
    if (session is not None and session.running) or not settings.get("auto_connect") \
            or not settings.get("tiktok_username"):
        return False
    await app[keys.LIVE].start(user_id, settings["tiktok_username"], auto=True)
    return True


async def report_idle(app: web.Application, user_id: int) -> None:
    settings = await app[keys.SETTINGS].get(user_id)
    app[keys.DISPATCHER].status(user_id, "idle", tiktok_username=settings.get("tiktok_username") or "")


async def _app_opened(app: web.Application, user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """An app socket opened (here or on another worker): the watch starts as auto_connect says, and every socket
    learns a state first, demo ones too."""
    dispatcher = app[keys.DISPATCHER]
    await dispatcher.prepare(user_id)
    channel = dispatcher.bus.get(user_id)
    assert channel is not None
    if args.get("language"):
        channel.language = args["language"]  # the status and error texts are made here, in the app's language
    if args.get("remote"):  # set by cluster/homes.py: the socket is on another worker
        app[keys.LIVE].app_present(user_id)
    started = not args.get("demo") and await auto_connect(app, user_id)
    if not started and channel.state is None:
        await report_idle(app, user_id)
    return {}


async def _app_present(app: web.Application, user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """An app socket on another worker is still open (it says so every third of a lease): the session is not idle,
    and the channel is kept."""
    await app[keys.DISPATCHER].prepare(user_id)
    app[keys.LIVE].app_present(user_id)
    return {}


async def _connect(app: web.Application, user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    await app[keys.DISPATCHER].prepare(user_id)
    await app[keys.LIVE].start(user_id, args["username"])
    return {}


async def _disconnect(app: web.Application, user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    dispatcher = app[keys.DISPATCHER]
    await dispatcher.prepare(user_id)
    channel = dispatcher.bus.get(user_id)
    before = channel.last_status if channel is not None else None
    await app[keys.LIVE].stop(user_id)  # a running session reports idle itself as it stops
    # Always answered with a status frame (the original app waits for one): idle again when nothing ran.
    if channel is None or channel.last_status is before:
        await report_idle(app, user_id)
    return {}


async def _simulate(app: web.Application, user_id: int, data: dict[str, Any]) -> dict[str, Any]:
    dispatcher = app[keys.DISPATCHER]
    await dispatcher.prepare(user_id)
    event = simulated_event(data)
    # Simulating viewer_first_message tests that trigger: the viewer counts as new to the stream every time.
    # live=False: a simulated event is no part of the LIVE's history or figures.
    published = dispatcher.dispatch_all(user_id, event, first_message=data["type"] == "viewer_first_message" or None,
                                        live=False)
    (seq, _), *follow_up = published
    body: dict[str, Any] = {"status": "ok", "seq": seq, "event": {"type": event.type, **event.to_payload()}}
    for follow_seq, follow in follow_up:
        body[follow.type] = {"seq": follow_seq, "event": {"type": follow.type, **follow.to_payload()}}
    return body


async def _settings_changed(app: web.Application, user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """A running watch follows the settings at once, so that nothing a streamer just changed waits for the
    next app connection to take effect."""
    changes = args["changes"]
    store = app[keys.SETTINGS]
    store.invalidate(user_id)  # changed through another worker: its notice may not have reached this one yet
    settings = await store.get(user_id)
    live = app[keys.LIVE]
    session = live.session(user_id)
    running = session is not None and session.running
    name = settings.get("tiktok_username")
    # A new TikTok username: the streamer just fixed a typo, most likely.
    if "tiktok_username" in changes and session is not None and running and name \
            and name != session.tiktok_username:
        await live.start(user_id, name, auto=live.auto_started(user_id))
    # auto_connect off undoes what auto_connect did: a watch it started stops (a watch the streamer started
    # with connect_tiktok keeps running). On again, with the app connected, it starts as on a connection.
    if changes.get("auto_connect") is False and running and live.auto_started(user_id):
        await live.stop(user_id)
    elif changes.get("auto_connect") is True:
        conn = app[keys.SOCKETS].current(user_id)
        app_here = conn is not None and conn.demo is None
        if (app_here or live.app_elsewhere(user_id)) and await has_active_license(app[keys.DB], user_id):
            await auto_connect(app, user_id)
    return {}


async def _rehearse(app: web.Application, user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """One rehearsal per user in the whole cluster, its frames numbered where the user's are."""
    return await app[keys.REHEARSALS].start(user_id, args["stream_id"], args["speed"])


async def _stop_rehearsal(app: web.Application, user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"stopped": await app[keys.REHEARSALS].stop(user_id)}


async def _ping(app: web.Application, user_id: int, args: dict[str, Any]) -> dict[str, Any]:
    """An overlay socket on another worker reads the user's frames: there must be a home (no app presence)."""
    await app[keys.DISPATCHER].prepare(user_id)
    return {}


OPERATIONS: Final[dict[str, Operation]] = {
    "app_opened": _app_opened,
    "app_present": _app_present,
    "connect": _connect,
    "disconnect": _disconnect,
    "simulate": _simulate,
    "settings_changed": _settings_changed,
    "ping": _ping,
    "rehearse": _rehearse,
    "stop_rehearsal": _stop_rehearsal,
}


class LocalHome:
    """One process: every user's home is here."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def run(self, user_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return await OPERATIONS[op](self._app, user_id, args)
