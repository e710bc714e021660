"""Stream figures end to end: a scripted LIVE through the real TikTokLive client against the fake TikTok, then
every figure of /v2/streams/{id}, its events and its CSV checked against the frames the app received."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

from tests.helpers import bearer, eventually
from tests.test_live_e2e import BOB, ANYA, fake, live_client, status  # noqa: F401 (fixtures)
from tests.test_ws import recv, register
from ttboost.pipeline.events import EVENT_TYPES

KIM = ("=Ким", "kim_77", 103)  # a nickname a spreadsheet would take for a formula
LEO = ("Leo, \"the\" fan", "leo.tt", 104)
INJECTION = "=HYPERLINK(\"http://evil.example\",\"click\")"


async def script_live(fake) -> None:
    """Chats from several viewers, combos from several gifters, likes, joins, follows, shares, viewers."""
    await fake.send_viewers(5, 10)
    await fake.send_chat(ANYA, "привет всем")
    await fake.send_chat(BOB, "hi")
    await fake.send_chat(ANYA, INJECTION)
    await fake.send_chat(KIM, "он сказал \"да\", ок\nвторая строка")
    for n in (1, 2, 3):
        await fake.send_gift(BOB, 5655, "Rose", 1, repeat_count=n, repeat_end=n == 3, streakable=True)
    await fake.send_gift(ANYA, 6064, "GG", 10, repeat_count=1, repeat_end=False, streakable=False)
    for n in (1, 2, 3, 4, 5):
        await fake.send_gift(KIM, 5655, "Rose", 1, repeat_count=n, repeat_end=n == 5, streakable=True)
    for n in (1, 2):
        await fake.send_gift(BOB, 5879, "Doughnut", 30, repeat_count=n, repeat_end=n == 2, streakable=True)
    await fake.send_gift(LEO, 6064, "GG", 10, repeat_count=1, repeat_end=False, streakable=False)
    await fake.send_like(BOB, 15, 1500)
    await fake.send_like(ANYA, 7, 1507)
    await fake.send_viewers(12, 20)
    await fake.send_join(KIM)
    await fake.send_join(LEO)
    await fake.send_follow(BOB)
    await fake.send_share(ANYA)
    await fake.send_subscribe(BOB, sub_month=2)
    await fake.send_chat(BOB, "ещё раз")
    await fake.send_viewers(9, 22)
    await fake.end_live()


def expected_figures(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures as the app could compute them from what it received."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in frames:
        by_type[f["type"]].append(f)
    gifters: dict[str, dict[str, Any]] = {}
    gifts: dict[tuple[int, str], dict[str, Any]] = {}
    minutes: dict[str, dict[str, Any]] = {}
    for f in frames:
        minute = minutes.setdefault(f["ts"][:16] + ":00Z", {"diamonds": 0, "chats": 0, "likes": 0, "viewers": None})
        if f["type"] == "gift":
            g = gifters.setdefault(f["username"], {"user": f["user"], "username": f["username"], "diamonds": 0,
                                                   "gifts": 0})
            g["diamonds"] += f["diamonds"]
            g["gifts"] += f["count"]
            t = gifts.setdefault((f["gift_id"], f["gift_name"]), {"gift_id": f["gift_id"],
                                                                  "gift_name": f["gift_name"], "count": 0,
                                                                  "diamonds": 0})
            t["count"] += f["count"]
            t["diamonds"] += f["diamonds"]
            minute["diamonds"] += f["diamonds"]
        elif f["type"] == "chat":
            minute["chats"] += 1
        elif f["type"] == "like":
            minute["likes"] += f["count"]
        elif f["type"] == "viewer":
            minute["viewers"] = max(minute["viewers"] or 0, f["current"])
    timeline, viewers = [], 0
    for key in sorted(minutes):
        m = minutes[key]
        viewers = m["viewers"] if m["viewers"] is not None else viewers
        timeline.append({"minute": key, "diamonds": m["diamonds"], "chats": m["chats"], "likes": m["likes"],
                         "viewers": viewers})
    return {
        "diamonds": sum(f["diamonds"] for f in by_type["gift"]),
        "gifts": sum(f["count"] for f in by_type["gift"]),
        "likes": sum(f["count"] for f in by_type["like"]),
        "chats": len(by_type["chat"]), "follows": len(by_type["follow"]), "shares": len(by_type["share"]),
        "joins": len(by_type["viewer_join"]), "subscribes": len(by_type["subscribe"]),
        "peak_viewers": max(f["current"] for f in by_type["viewer"]),
        "unique_chatters": len({f["username"] for f in by_type["chat"]}),
        "top_gifters": sorted(gifters.values(), key=lambda g: (-g["diamonds"], -g["gifts"], g["username"]))[:10],
        "gifts_by_name": sorted(gifts.values(), key=lambda g: (-g["diamonds"], -g["count"], g["gift_name"])),
        "timeline": timeline,
    }


async def test_stream_figures_events_and_csv_equal_what_the_app_received(live_client, fake) -> None:
    fake.set_user("streamer")
    client = await live_client(live_check_seconds=30)
    _user_id, token = await register(client)
    auth = bearer(token)
    ws = await client.ws_connect(f"/v2/ws?token={token}")
    await status(ws, "connected")

    async def current() -> tuple[int, Any]:
        resp = await client.get("/v2/streams/current", headers=auth)
        return resp.status, await resp.json()

    # The stream's row is written just after "connected" goes out: waited for, not raced.
    status_code, live = await eventually(current, lambda r: r[0] == 200)
    assert status_code == 200
    assert live["ended_at"] is None and live["tiktok_username"] == "streamer"
    stream_id = live["id"]

    await script_live(fake)
    frames = []
    while (frame := await recv(ws))["type"] != "status" or frame["state"] != "live_ended":
        frames.append(frame)
    events = [f for f in frames if f["type"] in EVENT_TYPES]
    assert [f["type"] for f in events].count("gift") == 5  # each combo once
    expected = expected_figures(events)
    assert expected["diamonds"] == 3 + 10 + 5 + 60 + 10 and expected["unique_chatters"] == 3

    async def detail() -> dict[str, Any]:
        return await (await client.get(f"/v2/streams/{stream_id}", headers=auth)).json()

    got = await eventually(detail, lambda d: d["ended_at"] is not None
                           and all(d[k] == v for k, v in expected.items()))
    assert {k: got[k] for k in expected} == expected
    assert got["end_reason"] == "ended" and got["started_at"] <= got["ended_at"]
    assert got["duration_s"] >= 0
    assert (await client.get("/v2/streams/current", headers=auth)).status == 404  # nothing is live now
    listed = (await (await client.get("/v2/streams", headers=auth)).json())["streams"]
    assert [s["id"] for s in listed] == [stream_id]
    assert {k: listed[0][k] for k in expected if k in listed[0]} == \
        {k: v for k, v in expected.items() if k not in ("top_gifters", "gifts_by_name", "timeline")}

    # The recorded events are the event frames the app received, page by page.
    async def all_events(limit: int) -> list[dict[str, Any]]:
        out, after = [], 0
        while after is not None:
            page = await (await client.get(f"/v2/streams/{stream_id}/events?after_seq={after}&limit={limit}",
                                           headers=auth)).json()
            out += page["events"]
            after = page["next_after_seq"]
        return out

    recorded = await eventually(lambda: all_events(4), lambda got: len(got) == len(events))
    assert recorded == events

    resp = await client.get(f"/v2/streams/{stream_id}/export.csv", headers=auth)
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert resp.headers["Content-Disposition"] == f'attachment; filename="stream-{stream_id}.csv"'
    raw = await resp.read()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert rows[0] == ["time", "type", "username", "user", "message", "gift", "count", "diamonds"]
    assert len(rows) == len(events) + 1
    for row, f in zip(rows[1:], events):
        count = f.get("current") if f["type"] == "viewer" else f.get("count")
        cells = [f.get("username", ""), f.get("user", ""), f.get("message", ""), f.get("gift_name", "")]
        cells = ["'" + c if c[:1] in ("=", "+", "-", "@") else c for c in cells]
        assert row == [f["ts"], f["type"], *cells, "" if count is None else str(count),
                       str(f.get("diamonds", ""))], row
    assert ["'" + INJECTION] == [r[4] for r in rows if r[4].startswith("'=HYPERLINK")]
    assert any(r[3] == "'=Ким" for r in rows)  # the nickname, made inert
    assert any(r[4] == "он сказал \"да\", ок\nвторая строка" for r in rows)  # quoted, not split
    await ws.close()
