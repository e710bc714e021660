"""The offline engine: espeak-ng writes WAV, lameenc turns it into MP3 so every TTS URL is audio/mpeg."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import wave
from pathlib import Path
from typing import AsyncIterator, Final

import lameenc

from .engine import TTSError, Voice, clamp_rate
from .voices import EDGE_VOICE_RE, language_of

_LOGGER = logging.getLogger(__name__)

BINARY: Final = "espeak-ng"
TIMEOUT: Final = 15.0  # seconds for one phrase; espeak-ng needs ~35 ms per sentence
BASE_WPM: Final = 175  # words per minute at rate +0% (espeak-ng's own default)
MP3_KBPS: Final = 48  # kbit/s, what edge-tts produces too
CHUNK_BYTES: Final = 32 * 1024  # bytes per yielded piece, so a streaming reader starts early on long phrases
_ID_PREFIX: Final = "espeak-"

# (espeak-ng voice, locale, name) offered in GET /v2/voices; espeak-ng knows ~130 more, resolve_voice accepts them.
_LANGUAGES: Final[tuple[tuple[str, str, str], ...]] = (
    ("ru", "ru-RU", "Russian"), ("uk", "uk-UA", "Ukrainian"), ("be", "be-BY", "Belarusian"),
    ("kk", "kk-KZ", "Kazakh"), ("uz", "uz-UZ", "Uzbek"), ("az", "az-AZ", "Azerbaijani"), ("ka", "ka-GE", "Georgian"),
    ("en-us", "en-US", "English (US)"), ("en-gb", "en-GB", "English (UK)"), ("de", "de-DE", "German"),
    ("fr-fr", "fr-FR", "French"), ("es", "es-ES", "Spanish"), ("es-419", "es-MX", "Spanish (Latin America)"),
    ("it", "it-IT", "Italian"), ("pt-br", "pt-BR", "Portuguese (Brazil)"), ("pl", "pl-PL", "Polish"),
    ("tr", "tr-TR", "Turkish"), ("nl", "nl-NL", "Dutch"), ("cs", "cs-CZ", "Czech"), ("he", "he-IL", "Hebrew"),
    ("ar", "ar-SA", "Arabic"), ("hi", "hi-IN", "Hindi"), ("id", "id-ID", "Indonesian"),
    ("vi", "vi-VN", "Vietnamese"), ("th", "th-TH", "Thai"), ("ja", "ja-JP", "Japanese"), ("ko", "ko-KR", "Korean"),
    ("cmn", "zh-CN", "Chinese (Mandarin)"), ("yue", "zh-HK", "Chinese (Cantonese)"),
)
# Every language espeak-ng 1.51 ships (`espeak-ng --voices`), so edge ids of other languages still map.
_KNOWN: Final = frozenset((
    "af am an ar as az ba be bg bn bpy bs ca cmn cs cv cy da de el en en-029 en-gb en-gb-scotland en-gb-x-rp "
    "en-us eo es es-419 et eu fa fi fr fr-be fr-ch fr-fr ga gd gn grc gu hak haw he hi hr ht hu hy hyw ia id io "
    "is it ja jbo ka kk kl kn ko kok ku ky la lb lfn lt ltg lv mi mk ml mr ms mt my nb nci ne nl nog om or pa "
    "pap pl pt pt-br py qu quc ro ru ru-lv sd shn si sk sl smj sq sr sv sw ta te th tk tn tr tt ug uk ur uz vi "
    "yue").split())
# Edge locales whose language code espeak-ng spells differently.
_ALIASES: Final = {"zh-cn": "cmn", "zh-tw": "cmn", "zh-hk": "yue", "zh": "cmn", "no": "nb",
                   "en-au": "en-gb", "en-in": "en-gb", "en-ie": "en-gb", "en-nz": "en-gb", "en-za": "en-gb",
                   "pt-pt": "pt", "es-mx": "es-419", "es-us": "es-419", "es-ar": "es-419", "es-co": "es-419"}


class EspeakEngine:
    """Speaks ~130 languages without the network; robotic, but a stream never goes silent for lack of Wi-Fi."""

    name = "espeak"

    def __init__(self, binary: str = BINARY, *, timeout: float = TIMEOUT) -> None:
        self._binary = binary  # injectable: tests drive a fake script
        self._timeout = timeout

    @classmethod
    def available(cls, binary: str = BINARY) -> bool:
        return shutil.which(binary) is not None

    async def stream(self, text: str, voice: str, rate: int) -> AsyncIterator[bytes]:
        language = self.resolve_voice(voice)
        words_per_minute = round(BASE_WPM * (100 + clamp_rate(rate)) / 100)
        mp3 = await self._synthesize(text, language, words_per_minute)
        for start in range(0, len(mp3), CHUNK_BYTES):
            yield mp3[start:start + CHUNK_BYTES]

    def voices(self) -> list[Voice]:
        return [Voice(id=_ID_PREFIX + code, name=f"{name} (eSpeak)", locale=locale, gender="Male", engine=self.name)
                for code, locale, name in _LANGUAGES]

    async def refresh_voices(self) -> list[Voice] | None:
        return None  # nothing live to ask: the built-in list is the list

    def resolve_voice(self, voice_id: str) -> str:
        wanted = voice_id.removeprefix(_ID_PREFIX).lower()
        match = EDGE_VOICE_RE.match(voice_id)
        if match:
            wanted = match["locale"].lower()
        for candidate in (wanted, _ALIASES.get(wanted, ""), language_of(wanted),
                          _ALIASES.get(language_of(wanted), "")):
            if candidate in _KNOWN:
                return candidate
        raise TTSError(f"no espeak-ng voice for {voice_id!r}")

    async def _synthesize(self, text: str, language: str, words_per_minute: int) -> bytes:
        """Runs espeak-ng into a private temp dir and returns MP3 bytes; the dir is gone afterwards."""
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="ttboost-espeak-"))
        try:
            wav = workdir / "speech.wav"
            await self._run(["-v", language, "-s", str(words_per_minute), "-w", str(wav), "--stdin"], text)
            return await asyncio.to_thread(_wav_to_mp3, wav)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _run(self, args: list[str], text: str) -> None:
        # The text goes in on stdin, never through a shell or argv: chat is untrusted, and argv is visible in
        # `ps` to every local user.
        try:
            proc = await asyncio.create_subprocess_exec(
                self._binary, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise TTSError(f"cannot run {self._binary}: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout):
                _, stderr = await proc.communicate(text.encode("utf-8"))
        except TimeoutError:
            raise TTSError(f"{self._binary} timed out after {self._timeout:.0f}s") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: no orphaned process, no zombie
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            detail = stderr.decode("utf-8", "replace").strip()[-200:]
            raise TTSError(f"{self._binary} exited with {proc.returncode}: {detail}")


def _wav_to_mp3(path: Path) -> bytes:
    """Blocking: runs in a worker thread (a few ms per sentence)."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, sample_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            pcm = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise TTSError(f"espeak-ng wrote no usable WAV: {exc}") from exc
    if width != 2 or channels not in (1, 2):
        raise TTSError(f"unsupported WAV: {channels} channel(s), {width * 8}-bit")
    if not pcm:
        raise TTSError("espeak-ng produced no audio")
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(MP3_KBPS)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(channels)
    encoder.set_quality(5)  # 2 = best, 7 = fastest; 5 is LAME's default trade-off
    mp3 = bytes(encoder.encode(pcm) + encoder.flush())
    if not mp3:
        raise TTSError("MP3 encoder produced no audio")
    return mp3
