"""EspeakEngine with a fake espeak-ng script (always) and the real one (when installed)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from ttboost.tts.engine import TTSEngine, TTSError
from ttboost.tts.espeak import EspeakEngine

mutagen = pytest.importorskip("mutagen")

WAIT = 5.0  # seconds: upper bound for anything a test waits on

# Writes 0.2 s of a 440 Hz tone, 16-bit mono 22050 Hz, where -w says, and records argv and stdin next to itself.
FAKE_ESPEAK = """\
import json, math, struct, sys, time, wave
from pathlib import Path
args = sys.argv[1:]
text = sys.stdin.buffer.read().decode("utf-8")
Path(__file__).with_suffix(".json").write_text(json.dumps({"args": args, "text": text}))
MODE
out = args[args.index("-w") + 1]
with wave.open(out, "wb") as wav:
    wav.setnchannels(1); wav.setsampwidth(2); wav.setframerate(22050)
    wav.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 8))) for i in range(4410)))
"""
MODES = {
    "ok": "",
    "crash": "sys.stderr.write('Error: voice does not exist'); sys.exit(1)",
    "silent": "sys.exit(0)",  # exits 0 without writing a WAV, as espeak-ng does for empty input
    "hang": "time.sleep(30)",
}


def fake_espeak(tmp_path: Path, mode: str = "ok") -> Path:
    script = tmp_path / f"espeak-{mode}"
    script.write_text(f"#!{sys.executable}\n" + FAKE_ESPEAK.replace("MODE", MODES[mode]), encoding="utf-8")
    script.chmod(0o755)
    return script


async def collect(engine: EspeakEngine, text: str, voice: str, rate: int = 0) -> bytes:
    async with asyncio.timeout(WAIT):
        return b"".join([chunk async for chunk in engine.stream(text, voice, rate)])


def assert_mp3(data: bytes, min_seconds: float) -> None:
    assert data[0] == 0xFF and data[1] & 0xE0 == 0xE0  # MPEG frame sync
    audio = mutagen.File(io.BytesIO(data))
    assert type(audio).__name__ == "MP3"
    assert not audio.info.sketchy
    assert audio.info.length >= min_seconds


async def test_fake_binary_wav_becomes_mp3(tmp_path):
    script = fake_espeak(tmp_path)
    engine = EspeakEngine(str(script))
    assert isinstance(engine, TTSEngine)
    mp3 = await collect(engine, "-привет; rm -rf / $(id)", "ru-RU-SvetlanaNeural", rate=100)
    assert_mp3(mp3, 0.15)
    seen = json.loads(script.with_suffix(".json").read_text())
    args = seen["args"]
    assert seen["text"] == "-привет; rm -rf / $(id)"  # on stdin, untouched, never on the command line
    assert args[args.index("-v") + 1] == "ru"
    assert args[args.index("-s") + 1] == "350"  # +100 % of 175 words per minute
    assert "--stdin" in args and not any("привет" in a for a in args)
    assert not Path(args[args.index("-w") + 1]).parent.exists()  # the temp dir is gone


@pytest.mark.parametrize("mode", ["crash", "silent"])
async def test_fake_binary_failures(tmp_path, mode):
    engine = EspeakEngine(str(fake_espeak(tmp_path, mode)))
    with pytest.raises(TTSError):
        await collect(engine, "hello", "espeak-en-us")


async def test_hanging_binary_is_killed(tmp_path):
    script = fake_espeak(tmp_path, "hang")
    engine = EspeakEngine(str(script), timeout=0.3)
    with pytest.raises(TTSError, match="timed out"):
        await collect(engine, "hello", "en-GB-SoniaNeural")
    args = json.loads(script.with_suffix(".json").read_text())["args"]
    assert not Path(args[args.index("-w") + 1]).parent.exists()


async def test_missing_binary(tmp_path):
    assert not EspeakEngine.available(str(tmp_path / "nope"))
    with pytest.raises(TTSError):
        await collect(EspeakEngine(str(tmp_path / "nope")), "hello", "espeak-ru")


def test_voices_and_resolution():
    engine = EspeakEngine("espeak-ng")
    voices = {v.id: v for v in engine.voices()}
    assert voices["espeak-ru"].engine == "espeak" and voices["espeak-ru"].locale == "ru-RU"
    assert engine.resolve_voice("espeak-ru") == "ru"
    assert engine.resolve_voice("ru-RU-SvetlanaNeural") == "ru"
    assert engine.resolve_voice("en-US-JennyNeural") == "en-us"
    assert engine.resolve_voice("en-AU-NatashaNeural") == "en-gb"
    assert engine.resolve_voice("pt-BR-FranciscaNeural") == "pt-br"
    assert engine.resolve_voice("zh-CN-XiaoxiaoNeural") == "cmn"
    assert engine.resolve_voice("kk-KZ-AigulNeural") == "kk"
    assert engine.resolve_voice("sr-Latn-RS-NicholasNeural") == "sr"
    with pytest.raises(TTSError):
        engine.resolve_voice("xx-XX-NobodyNeural")


async def test_refresh_voices_is_none():
    assert await EspeakEngine().refresh_voices() is None


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_real_espeak_ng():
    assert EspeakEngine.available()
    mp3 = await collect(EspeakEngine(), "Привет, как дела?", "ru-RU-SvetlanaNeural")
    assert_mp3(mp3, 0.5)
