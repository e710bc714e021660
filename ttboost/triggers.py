"""Triggers (event + condition → sound or speech): storage and the in-memory rules the pipeline reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Final, Mapping

from .errors import ApiError, not_found
from .pipeline.events import TRIGGER_EVENT_TYPES
from .timeutil import iso, utcnow

if TYPE_CHECKING:
    from .config import Config
    from .db import Database, Row

_LOGGER = logging.getLogger(__name__)

FLUSH_SECONDS: Final = 5.0  # executed_count increments are written at most this often, in one batch
PLACEHOLDERS: Final = ("user", "username", "message", "gift_name", "count", "diamonds", "likes")
TEMPLATE_RE: Final = re.compile(r"\{([^{}]*)\}")

# condition_key → kind of value: None (no value), "text", "int" (≥ 1) or "username" (normalized handle).
_VIEWER_KEYS: Final = {"always": None, "username": "username"}
CONDITIONS: Final[Mapping[str, Mapping[str, str | None]]] = {
    "chat": {"always": None, "message_contains": "text", "message_starts_with": "text", "username": "username"},
    "gift": {"always": None, "gift_name": "text", "gift_id": "int", "min_count": "int", "min_diamonds": "int"},
    "like": {"always": None, "min_likes": "int", "every_likes": "int"},
    **{t: _VIEWER_KEYS for t in ("viewer_join", "follow", "share", "subscribe", "viewer_first_message")},
}
_CASELESS_KEYS: Final = frozenset({"message_contains", "gift_name"})  # matched case-insensitively
assert set(CONDITIONS) == set(TRIGGER_EVENT_TYPES)


@dataclass(slots=True)
class Trigger:
    id: int
    user_id: int
    event_type: str
    condition_key: str
    condition_value: str | int | None  # typed by the key: None for "always", int for counts and ids
    action: str
    action_params: dict[str, Any]
    enabled: bool
    priority: int
    cooldown_seconds: int
    once_per_stream: bool
    trigger_name: str
    executed_count: int
    created_at: str

    @classmethod
    def from_row(cls, row: Row) -> Trigger:
        kind = CONDITIONS.get(row["event_type"], {}).get(row["condition_key"])
        raw = row["condition_value"]
        value: str | int | None = None if kind is None else int(raw) if kind == "int" else raw
        return cls(id=row["id"], user_id=row["user_id"], event_type=row["event_type"],
                   condition_key=row["condition_key"], condition_value=value, action=row["action"],
                   action_params=json.loads(row["action_params"] or "{}"), enabled=bool(row["enabled"]),
                   priority=row["priority"], cooldown_seconds=row["cooldown_seconds"],
                   once_per_stream=bool(row["once_per_stream"]), trigger_name=row["trigger_name"],
                   executed_count=row["executed_count"], created_at=row["created_at"])

    def to_json(self, pending: int = 0) -> dict[str, Any]:
        return {"id": self.id, "event_type": self.event_type, "condition_key": self.condition_key,
                "condition_value": self.condition_value, "action": self.action,
                "action_params": dict(self.action_params), "enabled": self.enabled, "priority": self.priority,
                "cooldown_seconds": self.cooldown_seconds, "once_per_stream": self.once_per_stream,
                "trigger_name": self.trigger_name, "executed_count": self.executed_count + pending,
                "created_at": self.created_at}


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Fills the placeholders; the template was checked at save time, so unknown names cannot occur."""
    return TEMPLATE_RE.sub(lambda m: str(values.get(m.group(1), "")), template)


_SELECT: Final = "SELECT * FROM triggers WHERE user_id = ?"
_ORDER: Final = " ORDER BY priority DESC, created_at, id"
_WRITABLE: Final = ("event_type", "condition_key", "condition_value", "action", "action_params", "enabled",
                    "priority", "cooldown_seconds", "once_per_stream", "trigger_name")
_INSERT: Final = (f"INSERT INTO triggers ({', '.join(_WRITABLE)}, user_id, created_at)"
                  f" VALUES ({', '.join('?' * (len(_WRITABLE) + 2))})")
_UPDATE: Final = f"UPDATE triggers SET {', '.join(c + ' = ?' for c in _WRITABLE)} WHERE id = ?"


class TriggerStore:
    """CRUD on the triggers table plus the per-user enabled rules in memory, refreshed on every change.

    executed_count is counted in memory on the event path and written in one batch every FLUSH_SECONDS.
    """

    def __init__(self, db: Database, config: Config, *, flush_seconds: float = FLUSH_SECONDS) -> None:
        self._db = db
        self._config = config
        self._flush_seconds = flush_seconds
        self._rules: dict[int, dict[str, list[Trigger]]] = {}  # user → event type → enabled, in match order
        self._loaded_gen: dict[int, int] = {}  # user → generation of the refresh that filled _rules
        self._refreshing: dict[int, int] = {}  # user → refreshes under way (only while there are some)
        self._gen = 0
        self._pending: dict[int, int] = {}  # trigger id → fired since the last flush
        self._task: asyncio.Task[None] | None = None
        # Cluster mode: tells the other workers, which then refresh their copy (cluster/changes.py).
        self.on_change: Callable[[int], Awaitable[None]] | None = None

    def plan_max(self, plan_id: str | None) -> int:
        """max_triggers of a plan id; no (known) plan means no new triggers."""
        plan = self._config.plan(plan_id) if plan_id else None
        return plan.max_triggers if plan else 0

    # --- event path (sync, no I/O) ---

    def rules(self, user_id: int, event_type: str) -> list[Trigger]:
        return self._rules.get(user_id, {}).get(event_type, [])

    def count_fired(self, trigger_id: int) -> None:
        self._pending[trigger_id] = self._pending.get(trigger_id, 0) + 1

    # --- reads and writes ---

    async def prepare(self, user_id: int) -> None:
        if user_id not in self._rules:
            await self.refresh(user_id)

    def cached_users(self) -> list[int]:
        return list(self._rules)

    def forget(self, user_id: int) -> None:
        """Drops the user's rules from memory; prepare() loads them again. Not while a refresh is under way:
        its generation check needs the newer one's mark."""
        if user_id not in self._refreshing:
            self._rules.pop(user_id, None)
            self._loaded_gen.pop(user_id, None)

    async def announce(self, user_id: int) -> None:
        """After a committed change: the other workers of a cluster reload the user's rules (no-op alone)."""
        if self.on_change is not None:
            await self.on_change(user_id)

    async def _changed(self, user_id: int) -> None:
        await self.refresh(user_id)
        await self.announce(user_id)

    async def refresh(self, user_id: int) -> None:
        """Reloads the user's rules (also after a caller's transaction that touched triggers rolled back)."""
        self._gen += 1
        gen = self._gen
        self._refreshing[user_id] = self._refreshing.get(user_id, 0) + 1
        try:
            rows = await self._db.fetchall(_SELECT + " AND enabled = 1" + _ORDER, (user_id,))
        finally:
            if self._refreshing[user_id] > 1:
                self._refreshing[user_id] -= 1
            else:
                del self._refreshing[user_id]
        if gen < self._loaded_gen.get(user_id, 0):
            return  # a later refresh already stored a newer view
        by_type: dict[str, list[Trigger]] = {}
        for row in rows:
            trigger = Trigger.from_row(row)
            by_type.setdefault(trigger.event_type, []).append(trigger)
        self._rules[user_id] = by_type
        self._loaded_gen[user_id] = gen

    async def list(self, user_id: int) -> list[Trigger]:
        rows = await self._db.fetchall(_SELECT + _ORDER, (user_id,))
        triggers = [Trigger.from_row(row) for row in rows]
        for trigger in triggers:
            trigger.executed_count += self._pending.get(trigger.id, 0)
        return triggers

    async def set(self, user_id: int, plan_max: int, data: Mapping[str, Any]) -> Trigger:
        """Creates or updates one trigger from TriggerSetSchema output."""
        event_type, key, value = data["event_type"], data["condition_key"], data["condition_value"]
        # One transaction: the limit check and the insert cannot interleave with another request's.
        async with self._db.transaction():
            current = await self._get(user_id, data["id"]) if "id" in data else None
            if "id" in data and current is None:
                raise not_found()
            same = await self._same_condition(user_id, event_type, key, value)
            if current is None:
                current = same
            elif same is not None and same.id != current.id:
                raise ApiError(409, "a trigger with this condition already exists", "trigger_exists",
                               extra={"id": same.id})
            params = data.get("action_params")
            if params is None:
                if current is None or current.action != data["action"]:
                    raise ApiError(422, "validation error", "validation_error",
                                   fields={"action_params": [f"required for {data['action']}"]})
                params = current.action_params
            if data["action"] == "play_sound" and not await self._db.fetchval(
                    "SELECT 1 FROM sounds WHERE user_id = ? AND filename = ?",
                    (user_id, params["sound_filename"])):
                raise not_found("sound file not found", "sound_not_found")
            values = (event_type, key, value, data["action"], json.dumps(params, ensure_ascii=False),
                      int(_pick(data, current, "enabled", True)), _pick(data, current, "priority", 0),
                      _pick(data, current, "cooldown_seconds", 0),
                      int(_pick(data, current, "once_per_stream", False)),
                      _pick(data, current, "trigger_name", ""))
            if current is None:
                if await self._db.fetchval("SELECT COUNT(*) FROM triggers WHERE user_id = ?", (user_id,)) >= plan_max:
                    raise ApiError(403, "trigger limit reached", "trigger_limit_reached",
                                   extra={"max_triggers": plan_max})
                trigger_id = await self._db.execute(_INSERT, (*values, user_id, iso(utcnow())))
            else:
                trigger_id = current.id
                await self._db.execute(_UPDATE, (*values, trigger_id))
            trigger = await self._get(user_id, trigger_id)
        await self._changed(user_id)
        assert trigger is not None
        trigger.executed_count += self._pending.get(trigger.id, 0)
        return trigger

    async def delete(self, user_id: int, trigger_id: int) -> None:
        if not await self._db.execute("DELETE FROM triggers WHERE id = ? AND user_id = ?", (trigger_id, user_id)):
            raise not_found()
        self._pending.pop(trigger_id, None)
        await self._changed(user_id)

    async def set_enabled(self, user_id: int, trigger_id: int, enabled: bool) -> Trigger:
        if not await self._db.execute("UPDATE triggers SET enabled = ? WHERE id = ? AND user_id = ?",
                                      (int(enabled), trigger_id, user_id)):
            raise not_found()
        await self._changed(user_id)
        trigger = await self._get(user_id, trigger_id)
        if trigger is None:
            raise not_found()
        trigger.executed_count += self._pending.get(trigger.id, 0)
        return trigger

    async def ids_using_sound(self, user_id: int, filename: str) -> list[int]:
        rows = await self._db.fetchall(
            "SELECT id FROM triggers WHERE user_id = ? AND action = 'play_sound'"
            " AND json_extract(action_params, '$.sound_filename') = ? ORDER BY id", (user_id, filename))
        return [row["id"] for row in rows]

    async def disable_for_sound(self, user_id: int, filename: str) -> list[int]:
        """Disables every trigger playing filename; one statement, so it may run inside the caller's transaction
        (which announces the change once it committed)."""
        rows = await self._db.fetchall(
            "UPDATE triggers SET enabled = 0 WHERE user_id = ? AND action = 'play_sound'"
            " AND json_extract(action_params, '$.sound_filename') = ? RETURNING id", (user_id, filename))
        await self.refresh(user_id)
        return sorted(row["id"] for row in rows)

    async def _get(self, user_id: int, trigger_id: int) -> Trigger | None:
        row = await self._db.fetchone(_SELECT + " AND id = ?", (user_id, trigger_id))
        return None if row is None else Trigger.from_row(row)

    async def _same_condition(self, user_id: int, event_type: str, key: str, value: str) -> Trigger | None:
        """The trigger this condition upserts onto; text conditions matched caselessly are compared caselessly."""
        rows = await self._db.fetchall(_SELECT + " AND event_type = ? AND condition_key = ?" + _ORDER,
                                       (user_id, event_type, key))
        fold = str.casefold if key in _CASELESS_KEYS else str
        return next((Trigger.from_row(r) for r in rows if fold(r["condition_value"]) == fold(value)), None)

    # --- executed_count batching ---

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="triggers-flush")

    async def close(self) -> None:
        """Stops the flush task and writes what is still pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Writes all pending increments in one transaction; on failure they stay pending for the next try."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            async with self._db.transaction():
                await self._db.executemany(
                    "UPDATE triggers SET executed_count = executed_count + ? WHERE id = ?",
                    [(n, trigger_id) for trigger_id, n in batch.items()])
        except BaseException as exc:
            for trigger_id, n in batch.items():
                self._pending[trigger_id] = self._pending.get(trigger_id, 0) + n
            if not isinstance(exc, Exception):
                raise
            _LOGGER.exception("triggers: could not write executed_count of %d triggers", len(batch))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            await self.flush()


def _pick(data: Mapping[str, Any], current: Trigger | None, name: str, default: Any) -> Any:
    """The field from the request, else the existing trigger's (an update keeps what it does not name)."""
    if name in data:
        return data[name]
    return getattr(current, name) if current is not None else default
