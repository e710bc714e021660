"""Numbered schema steps; step N runs once, in its own transaction, and sets PRAGMA user_version = N."""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (  # 1: the first schema
        # AUTOINCREMENT: an id is never handed out twice, so a deleted account's unexpired token can never
        # match a newer account that would otherwise inherit its id.
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            username TEXT UNIQUE,  -- NULL for a key-only account made by the legacy login
            password_hash TEXT,
            token_version INTEGER NOT NULL DEFAULT 0,
            settings TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE licenses (
            key TEXT PRIMARY KEY,
            plan TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
            issued_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
            order_id TEXT UNIQUE,
            email TEXT,
            amount INTEGER,
            currency TEXT
        )""",
        "CREATE INDEX licenses_user ON licenses(user_id)",
        """CREATE TABLE sounds (
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            filename TEXT NOT NULL,
            size INTEGER NOT NULL,
            duration_ms INTEGER NOT NULL,
            format TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (user_id, filename)
        )""",
        """CREATE TABLE triggers (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the app keeps ids; a reused one would edit the wrong rule
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            event_type TEXT NOT NULL,
            condition_key TEXT NOT NULL,
            condition_value TEXT NOT NULL DEFAULT '',
            action TEXT NOT NULL,
            action_params TEXT NOT NULL DEFAULT '{}',
            enabled INTEGER NOT NULL DEFAULT 1,
            priority INTEGER NOT NULL DEFAULT 0,
            cooldown_seconds INTEGER NOT NULL DEFAULT 0,
            once_per_stream INTEGER NOT NULL DEFAULT 0,
            trigger_name TEXT NOT NULL DEFAULT '',
            executed_count INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            UNIQUE (user_id, event_type, condition_key, condition_value)
        )""",
        """CREATE TABLE stream_sessions (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            tiktok_username TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            end_reason TEXT
        )""",
        "CREATE INDEX stream_sessions_user ON stream_sessions(user_id, started_at)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            session_id INTEGER REFERENCES stream_sessions(id) ON DELETE SET NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            ts TEXT NOT NULL,
            payload TEXT NOT NULL
        )""",
        "CREATE INDEX events_user_seq ON events(user_id, seq)",
        "CREATE INDEX events_ts ON events(ts)",  # retention pruning
    ),
    (  # 2: stream figures (spec §8), kept as the stream runs so they outlive the event log's retention
        *(f"ALTER TABLE stream_sessions ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0" for column in (
            "diamonds", "gifts", "likes", "chats", "follows", "shares", "joins", "subscribes", "peak_viewers",
            "unique_chatters")),
        # ts of the last recorded frame (seconds): where a stream a crash cut off is closed at the next start
        "ALTER TABLE stream_sessions ADD COLUMN last_event_at TEXT",
        # Portable column names (no "user"): the same statements must run on PostgreSQL in cluster mode.
        """CREATE TABLE stream_gifters (
            session_id INTEGER NOT NULL REFERENCES stream_sessions(id) ON DELETE CASCADE,
            username TEXT NOT NULL,
            display_name TEXT NOT NULL,
            diamonds INTEGER NOT NULL,
            gifts INTEGER NOT NULL,
            PRIMARY KEY (session_id, username)
        )""",
        """CREATE TABLE stream_gifts (
            session_id INTEGER NOT NULL REFERENCES stream_sessions(id) ON DELETE CASCADE,
            gift_id INTEGER NOT NULL,
            gift_name TEXT NOT NULL,
            count INTEGER NOT NULL,
            diamonds INTEGER NOT NULL,
            PRIMARY KEY (session_id, gift_id, gift_name)
        )""",
        """CREATE TABLE stream_minutes (
            session_id INTEGER NOT NULL REFERENCES stream_sessions(id) ON DELETE CASCADE,
            minute TEXT NOT NULL,  -- 2026-11-30T20:15:00Z
            diamonds INTEGER NOT NULL,
            chats INTEGER NOT NULL,
            likes INTEGER NOT NULL,
            viewers INTEGER,  -- the highest count of the minute's viewer frames; NULL: none came
            PRIMARY KEY (session_id, minute)
        )""",
        """CREATE TABLE stream_chatters (
            session_id INTEGER NOT NULL REFERENCES stream_sessions(id) ON DELETE CASCADE,
            username TEXT NOT NULL,
            PRIMARY KEY (session_id, username)
        )""",
        "CREATE INDEX events_session_seq ON events(session_id, seq)",  # a stream's events, in order
    ),
    (  # 3: seq numbers reserved ahead of use (pipeline/seqs.py); MAX(seq) of the log lagged and was pruned
        """CREATE TABLE seq_blocks (
            user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
            reserved INTEGER NOT NULL  -- no seq above this was handed out; a new block starts above it
        )""",
        "INSERT INTO seq_blocks (user_id, reserved) SELECT user_id, MAX(seq) FROM events GROUP BY user_id",
    ),
    (  # 4: OBS overlay keys (spec §9), one per user; only the key's SHA-256 (hex) is kept, so a database leak
       # opens nobody's overlay
        """CREATE TABLE overlay_keys (
            user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
            key_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        )""",
    ),
)
