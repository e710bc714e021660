"""The bus's fast frame encoding gives the very text of the plain one: timestamps and JSON frames."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

import pytest

from ttboost.pipeline.bus import encode, encode_frame, frame_ts


def reference_ts(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_frame_ts_is_datetime_isoformat_with_milliseconds() -> None:
    rng = random.Random(5)
    walls = [rng.uniform(0, 4e9) for _ in range(20_000)]
    walls += [int(rng.uniform(1.6e9, 1.9e9)) + k / 1e6 for k in range(0, 1_000_000, 97)]  # every microsecond step
    walls += [int(rng.uniform(1.6e9, 1.9e9)) + (k + 0.5) / 1e6 for k in range(0, 1_000_000, 89)]  # ties
    walls += [0.0, 1.0, 0.0009995, 0.9999995, 1_700_000_000.9995, 1_700_000_000.9999995, 1e9 + 0.999_999_9]
    assert [frame_ts(w) for w in walls] == [reference_ts(w) for w in walls]


@pytest.mark.parametrize(("type_", "payload"), [
    ("chat", {"user": 'A"b\\', "message": "привет\n😀\u2028", "volume": 1.5, "tts_url": None}),
    ("status", {}),
    ("gift", {"type": "override", "count": 3}),  # a payload key that collides with a head key wins, as before
    ("error", {"seq": 99}),
    ('we"ird', {"nested": [1, {"a": "b"}], "ok": True}),
])
def test_encode_frame_is_encode_of_the_merged_dict(type_: str, payload: dict[str, Any]) -> None:
    ts = frame_ts(1_700_000_000.123)
    assert encode_frame(type_, 42, ts, payload, encode(payload)) == encode({"type": type_, "seq": 42, "ts": ts,
                                                                            **payload})
