"""OBS overlay and /metrics: event → text on the overlay page in headless chromium, and the cost of a scrape.

The server runs as `python run.py`; chromium (Debian's package) runs the overlay page with chat lines on, since
chat lines show at once (alerts queue behind each other's sounds by design, so their delay is the queue's). Each
event is a simulated chat whose message carries its index; a MutationObserver in the page stamps each line as it
enters the DOM (Date.now(), the same wall clock as the sender's time.time() on this machine).

    python -m bench.bench_overlay [--events 200] [--rate 20] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp

from bench.common import Server, auth, insert_users, machine, summary_ms, tokens, write_result
from tests.chromium import launch

LINE_PROBE = """
window.__lines = [];
new MutationObserver(records => {
  for (const r of records) for (const node of r.addedNodes) {
    if (node.classList && node.classList.contains("line")) window.__lines.push([node.textContent, Date.now()]);
  }
}).observe(document, {childList: true, subtree: true});
"""


async def overlay_latency(server: Server, token: str, events: int, rate: float) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/v2/overlay/key", headers=auth(token)) as resp:
            overlay_url = (await resp.json())["overlay_url"]
        async with launch() as page:
            await page.call("Page.addScriptToEvaluateOnNewDocument", source=LINE_PROBE)
            await page.call("Page.navigate", url=overlay_url + "?chat=1&audio=0")
            await page.wait_for("document.documentElement.dataset.state === 'live'", timeout=10)
            sent: dict[str, float] = {}
            started = time.perf_counter()
            for i in range(events):
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                message = f"m{i:05d}"
                sent[message] = time.time()
                body = {"type": "chat", "user": "bench", "message": message}
                async with http.post(server.url + "/v2/events/simulate", headers=auth(token), json=body) as resp:
                    assert resp.status == 200, await resp.text()
            await page.wait_for(f"window.__lines.length >= {events}", timeout=30)
            lines = await page.evaluate("window.__lines")
    latencies = [at / 1000 - sent[text.removeprefix("bench")] for text, at in lines if text.startswith("bench")]
    return {"events": events, "rate": rate, "shown": len(latencies), **summary_ms(latencies)}


async def scrape_cost(server: Server, scrapes: int) -> dict[str, Any]:
    times: list[float] = []
    size = 0
    async with aiohttp.ClientSession() as http:
        for _ in range(scrapes):
            started = time.perf_counter()
            async with http.get(server.url + "/metrics") as resp:
                body = await resp.read()
            times.append(time.perf_counter() - started)
            size = len(body)
    return {"scrapes": scrapes, "bytes": size, "median_ms": round(statistics.median(times) * 1000, 2)}


async def measure(events: int, rate: float, scrapes: int) -> dict[str, Any]:
    server = Server()
    server.env["TTBOOST_SERVER_PUBLIC_URL"] = server.url  # the page and its socket at the address chromium uses
    server.env["TTBOOST_LIMITS_TTS_PER_MINUTE"] = "0"  # simulate shares that limit: off for the run
    async with server:
        [user_id] = insert_users(server.db_path, ["overlay_bench"], settings={"auto_connect": False,
                                                                              "chat_tts_mode": "off"})
        [token] = tokens([user_id])
        overlay = await overlay_latency(server, token, events, rate)
        metrics = await scrape_cost(server, scrapes)
    return {"overlay_chat_line": overlay, "metrics_scrape": metrics}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="simulated events per second")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args(argv)
    result = {"machine": machine(), **asyncio.run(measure(args.events, args.rate, args.scrapes))}
    write_result("overlay", result)
    return result


if __name__ == "__main__":
    main()
