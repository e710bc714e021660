"""Revocation reaches open sockets (spec §6): a changed password or a removed account closes them with 4002
`token_revoked`; a revoked or expired licence sends the `license_expired` error, then closes with 4003. Overlay
sockets (spec §9) end with 4002 `key_revoked` when their key was rotated or revoked by another worker.

The CLI revokes keys and sets passwords from another process, and a licence expires by the clock alone, so the
server cannot be told: it looks, every few seconds, at the users that have a socket open (one query).
`RevocationWatch.check()` is the one place that decides; a cluster runs it on every worker for its own sockets.
"""

from __future__ import annotations

import logging
from typing import Final

from .db import Database
from .licenses import users_in_good_standing
from .live.manager import LiveManager
from .messages import text
from .overlay.store import current_digests
from .periodic import Periodic
from .sockets import Connection, SocketRegistry

_LOGGER = logging.getLogger(__name__)

CLOSE_TOKEN_REVOKED: Final = 4002  # password changed or account removed
CLOSE_LICENSE: Final = 4003  # no active licence: no LIVE events
CLOSE_KEY_REVOKED: Final = CLOSE_TOKEN_REVOKED  # an overlay's key was rotated or revoked: its page stops for good


def close_for_license(conn: Connection) -> None:
    """The license_expired error frame, then 4003 once it is sent."""
    conn.send_local("error", code="license_expired", message=text("license_expired", conn.language))
    conn.close_after_flush(CLOSE_LICENSE, "license_expired")


class RevocationWatch:
    """Closes the sockets whose token or licence stopped being good; a task checks every `interval` seconds."""

    def __init__(self, db: Database, sockets: SocketRegistry, live: LiveManager, interval: float) -> None:
        self._db = db
        self._sockets = sockets
        self._live = live
        self._checks = Periodic("revocation-watch", interval, self.check)

    async def start(self) -> None:
        self._checks.start()

    async def close(self) -> None:
        await self._checks.close()

    async def check(self, user_id: int | None = None) -> None:
        """Checks the open sockets (of one user, e.g. right after a password change in this process)."""
        conns = [c for c in (*self._sockets.connections(), *self._sockets.overlays())
                 if user_id is None or c.user.id == user_id]
        if not conns:
            return
        standing = await users_in_good_standing(self._db, {c.user.id for c in conns})
        # Overlay keys rotated or revoked elsewhere (another worker): this worker's sockets of them end too.
        overlay_keys = await current_digests(self._db, {c.user.id for c in conns if c.kind == "overlay"})
        unlicensed: set[int] = set()
        for conn in conns:
            state = standing.get(conn.user.id)
            if conn.kind == "overlay" and state is not None \
                    and overlay_keys.get(conn.user.id) != self._sockets.overlay_key_digest(conn):
                if not conn.closing:
                    _LOGGER.info("overlay user=%s: key rotated or revoked, closing", conn.user.id)
                    conn.close(CLOSE_KEY_REVOKED, "key_revoked")
                continue
            # An overlay's credential is its key, which a password change leaves alone; a removed account ends it.
            if state is None or (conn.kind == "app" and state[0] != conn.user.token_version):
                _LOGGER.info("ws user=%s: token revoked (password changed or account removed), closing",
                             conn.user.id)
                conn.close(CLOSE_TOKEN_REVOKED, "token_revoked")
            elif not state[1]:
                if not conn.closing:
                    _LOGGER.info("ws user=%s: licence no longer active, closing", conn.user.id)
                    close_for_license(conn)
                unlicensed.add(conn.user.id)
        for uid in unlicensed:  # the LIVE watch too, now rather than at the manager's next round
            session = self._live.session(uid)
            if session is not None and session.running:
                await self._live.stop(uid)
