"""The overlay page in a real headless chromium (spec §9): alerts, sounds one after another, rotation stops it."""

from __future__ import annotations

import base64
import os
import struct
import zlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port

from tests.audio_samples import make_wav
from tests.chromium import HEIGHT, WIDTH, Page, binary, launch
from tests.conftest import make_config
from tests.fake_tts import FakeEngine
from tests.helpers import bearer, make_user
from tests.test_sounds_api import upload
from ttboost import keys
from ttboost.app import create_app

DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "overlay-alert.png"
# Records what the page's audio element does, from the test's side (media events do not bubble; capture does).
AUDIO_PROBE = """
window.__audio = [];
for (const name of ["play", "ended"]) {
  document.addEventListener(name, e => window.__audio.push(
    {event: name, src: e.target.currentSrc, volume: e.target.volume, at: performance.now()}), true);
}
window.__alerts = [];  // the type of every alert the page puts up, in order
new MutationObserver(records => {
  for (const r of records) for (const node of r.addedNodes) {
    if (node.classList && node.classList.contains("alert")) window.__alerts.push(node.dataset.type);
  }
}).observe(document, {childList: true, subtree: true});
"""


@pytest.fixture
async def served(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    """The real app on a real port, its public URL that port (the browser fetches the sound URLs it hands out)."""
    binary()  # skip (or fail under CI) before starting anything
    port = unused_port()
    config = make_config(tmp_path / "data").replace(server={"public_url": f"http://127.0.0.1:{port}"})
    app = create_app(config, tts_engine=FakeEngine())
    return await aiohttp_client(TestServer(app, host="127.0.0.1", port=port))


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async with launch() as page:
        await page.call("Page.addScriptToEvaluateOnNewDocument", source=AUDIO_PROBE)
        yield page


async def _streamer_with_sounds(client: TestClient) -> tuple[str, dict[str, str]]:
    """A streamer whose gifts and follows play sounds (volume 80 and 50); returns its token and the sound URLs."""
    _, token = await make_user(client.server.app)
    resp = await client.post("/v2/settings/update", headers=bearer(token), json={"auto_connect": False})
    assert resp.status == 200
    urls = {}
    for event_type, name, volume in (("gift", "rose.wav", 80), ("follow", "hello.wav", 50)):
        urls[event_type] = (await upload(client, token, make_wav(0.4), name))["url"]
        trigger = {"event_type": event_type, "condition_key": "always", "action": "play_sound",
                   "action_params": {"sound_filename": name, "volume": volume}}
        resp = await client.post("/v2/triggers/set", headers=bearer(token), json=trigger)
        assert resp.status == 200, await resp.text()
    return token, urls


async def _simulate(client: TestClient, token: str, **event: Any) -> None:
    resp = await client.post("/v2/events/simulate", headers=bearer(token), json=event)
    assert resp.status == 200, await resp.text()


def _png_size_and_colours(png: bytes) -> tuple[tuple[int, int], int]:
    """(width, height) from the header, and how many distinct byte values the image data holds: a blank
    (one-colour) canvas has a handful, an alert with text and gradients hundreds. No pixel is compared."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    size = struct.unpack(">II", png[16:24])
    data, offset = b"", 8
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        if kind == b"IDAT":
            data += png[offset + 8:offset + 8 + length]
        offset += 12 + length
    return size, len(set(zlib.decompress(data)))


async def _open_overlay(client: TestClient, page: Any, query: str) -> tuple[str, dict[str, str], str]:
    """A streamer with sounds and an overlay key, and the page opened on its overlay URL with `query`, live."""
    token, sound_urls = await _streamer_with_sounds(client)
    resp = await client.post("/v2/overlay/key", headers=bearer(token))
    overlay_url = (await resp.json())["overlay_url"]
    await page.call("Page.navigate", url=f"{overlay_url}?{query}")
    await page.wait_for("document.documentElement.dataset.state === 'live'")
    return token, sound_urls, overlay_url


async def test_a_gift_shows_and_sounds_the_next_waits_and_rotation_stops_the_page(served, page, tmp_path) -> None:
    client = served
    token, sound_urls, overlay_url = await _open_overlay(client, page, "hold=2&lang=en")

    await _simulate(client, token, type="gift", user="Bob", gift_name="Rose", count=3)
    await _simulate(client, token, type="follow", user="Аня")
    # The gift's alert, with its text, within a second of the event.
    text = await page.wait_for("document.querySelector('.alert.gift')?.innerText", timeout=1.0)
    assert "Bob" in text and "sent Rose" in text and "×3" in text

    # A screenshot of the alert once its entrance is over (what OBS shows), checked for what it shows.
    await page.wait_for("document.querySelector('.alert.gift').getAnimations()"
                        ".every(a => a.playState === 'finished')")
    shot = await page.call("Page.captureScreenshot", format="png")
    box = await page.evaluate("JSON.stringify(document.querySelector('.alert.gift').getBoundingClientRect())")
    png = base64.b64decode(shot["data"])
    size, colours = _png_size_and_colours(png)
    assert size == (WIDTH, HEIGHT) and colours > 100
    assert '"width":0' not in box and await page.evaluate("document.querySelector('.alert.gift .who').innerText") \
        == "Bob"
    target = DOCS_SCREENSHOT if os.environ.get("TTBOOST_UPDATE_DOCS") else tmp_path / DOCS_SCREENSHOT.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)

    # The gift's sound plays to its end at its volume; only then the follow's alert and sound.
    await page.wait_for("window.__audio.length >= 4", timeout=10.0)
    audio = await page.evaluate("window.__audio")
    assert [(a["event"], a["src"]) for a in audio] == [
        ("play", sound_urls["gift"]), ("ended", sound_urls["gift"]),
        ("play", sound_urls["follow"]), ("ended", sound_urls["follow"])]
    assert [round(a["volume"], 2) for a in audio] == [0.8, 0.8, 0.5, 0.5]
    assert audio[1]["at"] <= audio[2]["at"]
    follow = await page.wait_for("document.querySelector('.alert.follow')?.innerText")
    assert "Аня" in follow and "followed" in follow

    # A new key: the old page stops at once and shows nothing more.
    assert (await client.post("/v2/overlay/key", headers=bearer(token))).status == 200
    await page.wait_for("document.documentElement.dataset.state === 'stopped'")
    await _simulate(client, token, type="gift", user="Late", gift_name="Lion", count=1)
    assert await page.evaluate("document.querySelectorAll('.alert').length") == 0
    assert (await client.get(overlay_url.removeprefix(str(client.make_url(""))))).status == 404


async def test_options_pick_the_alerts_show_chat_and_silence_the_sounds(served, page) -> None:
    client = served
    token, _sound_urls, overlay_url = await _open_overlay(client, page, "events=follow&chat=1&audio=0&hold=1&lang=ru")
    await _simulate(client, token, type="gift", user="Bob", gift_name="Rose", count=3)  # not in events=
    await _simulate(client, token, type="chat", user="Аня", message="привет <b>всем</b>")
    # A rehearsal's frame (spec §8) stays off the stream; it would otherwise be the first follow alert.
    user_id = await client.server.app[keys.DB].fetchval("SELECT id FROM users")
    client.server.app[keys.BUS].publish(user_id, "follow", {"user": "Rehearsed", "username": "rehearsed",
                                                            "rehearsal": True}, log=False)
    await _simulate(client, token, type="follow", user="Kim")
    follow = await page.wait_for("document.querySelector('.alert.follow')?.innerText")
    assert "Kim" in follow and "подписка" in follow  # lang=ru
    line = await page.wait_for("document.querySelector('#chat .line')?.innerText")
    assert "Аня" in line and "привет <b>всем</b>" in line  # viewers' text stays text
    assert await page.evaluate("document.querySelectorAll('#chat b').length") == 0
    # The gift came first: had it been shown, it would be the first alert. Once the follow's alert is gone its
    # sound would have played (an alert stays up until its sound ends): none did.
    await page.wait_for("!document.querySelector('.alert')")
    assert await page.evaluate("window.__alerts") == ["follow"]
    assert await page.evaluate("window.__audio") == []
