"""The real server (create_app, same config and logging as `python run.py`) with TikTok replaced by a raw feed.

Run by bench_pipeline.py as its own process. The LIVE source connects to 127.0.0.1:$BENCH_RAW_PORT and turns
each line ("type\\tnickname\\thandle\\tuser_id\\tfield…") into a LiveEvent: what the TikTok adapter hands the
pipeline, minus TikTokLive's protobuf parsing. This isolates the server's own pipeline (session → combos →
triggers → bus → WebSocket writer) from the library.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402

from ttboost.app import create_app  # noqa: E402
from ttboost.config import load_config  # noqa: E402
from ttboost.logsetup import setup_logging  # noqa: E402
from ttboost.live.tiktok import YIELD_EVERY  # noqa: E402
from ttboost.pipeline.events import LiveEvent  # noqa: E402


def parse_line(line: bytes) -> LiveEvent:
    type_, nick, handle, user_id, *rest = line.decode().rstrip("\n").split("\t")
    event = LiveEvent(type_, user=nick, username=handle, user_id=user_id)
    if type_ == "chat":
        event.message = rest[0]
    elif type_ == "gift":
        event.gift_id, event.gift_name, event.diamond_count = int(rest[0]), rest[1], int(rest[2])
        event.count, event.repeat_end = 1, True
    elif type_ == "like":
        event.count, event.total = int(rest[0]), int(rest[1])
    return event


class RawSource:
    """LiveSource reading events from a local TCP feed; the feed closing ends the LIVE."""

    def __init__(self, port: int) -> None:
        self._port = port

    async def watch(self, unique_id: str, on_event: Callable[[LiveEvent], None],
                    on_connected: Callable[[], None]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        try:
            on_connected()
            count = 0
            while line := await reader.readline():
                on_event(parse_line(line))
                count += 1
                if count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # as the TikTok adapter does: let the socket writers run in a burst
        finally:
            writer.close()


def main() -> None:
    config = load_config("config.toml")
    setup_logging()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(config, live_source=RawSource(int(os.environ["BENCH_RAW_PORT"])))
    web.run_app(app, host=config.server.host, port=config.server.port, access_log=None, print=None,
                shutdown_timeout=config.server.shutdown_timeout)


if __name__ == "__main__":
    main()
