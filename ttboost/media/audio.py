"""Decides what an uploaded file is by parsing its bytes with mutagen, never by its name or content type."""

from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass
from typing import Final, Iterator

import mutagen
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from ..errors import ApiError

_LOGGER = logging.getLogger(__name__)

# format → (extension, Content-Type). Opus and Vorbis are both Ogg, so both are stored and served as .ogg.
FORMATS: Final[dict[str, tuple[str, str]]] = {
    "mp3": (".mp3", "audio/mpeg"),
    "wav": (".wav", "audio/wav"),
    "ogg": (".ogg", "audio/ogg"),
    "m4a": (".m4a", "audio/mp4"),
}
CONTENT_TYPES: Final[dict[str, str]] = {ext: ctype for ext, ctype in FORMATS.values()}
# Only these parsers ever see untrusted bytes; mutagen.File would otherwise try ~20 formats.
_KINDS: Final = (MP3, WAVE, OggVorbis, OggOpus, MP4)
# LAME and AAC encoders pad the end (~50 ms), so a sound trimmed to exactly the maximum must not fail on that.
MAX_DURATION_SLACK: Final = 0.1  # seconds
SUPPORTED_TEXT: Final = "MP3, WAV, OGG (Vorbis/Opus) or M4A (AAC)"


@dataclass(frozen=True, slots=True)
class AudioInfo:
    format: str  # "mp3" | "wav" | "ogg" | "m4a"
    ext: str  # ".mp3" | ".wav" | ".ogg" | ".m4a"
    content_type: str
    duration_ms: int


def _invalid(detail: str, code: str = "invalid_audio") -> ApiError:
    return ApiError(422, detail, code, fields={"file": [detail]})


def validate_audio(data: bytes, *, min_seconds: float, max_seconds: float) -> AudioInfo:
    """The detected format and duration, or ApiError 422. Blocking (parses): callers run it in a thread."""
    if not data:
        raise _invalid("the file is empty")
    try:
        parsed = mutagen.File(io.BytesIO(data), options=_KINDS)
    except Exception as exc:  # untrusted bytes: mutagen raises its own errors but also IndexError and the like
        _LOGGER.debug("audio rejected by the parser: %r", exc)
        parsed = None
    # `is None`, not truthiness: a parsed file without tags is an empty mapping and so falsy.
    fmt = None if parsed is None else _format_of(parsed, data)
    if parsed is None or fmt is None:
        raise _invalid(f"not a supported audio file: send {SUPPORTED_TEXT}")
    length = getattr(parsed.info, "length", None)
    if not isinstance(length, (int, float)) or not math.isfinite(length) or length <= 0:
        raise _invalid("could not read the duration of the sound")
    if length < min_seconds or length > max_seconds + MAX_DURATION_SLACK:
        detail = f"the sound must last {min_seconds:g}–{max_seconds:g} s (this one lasts {length:.2f} s)"
        raise _invalid(detail, "bad_duration")
    ext, content_type = FORMATS[fmt]
    return AudioInfo(format=fmt, ext=ext, content_type=content_type, duration_ms=round(length * 1000))


def _format_of(parsed: mutagen.FileType, data: bytes) -> str | None:
    """Our format name for a parsed file, or None when it is a kind or variant we do not accept."""
    info = parsed.info
    if isinstance(parsed, MP3):
        # sketchy: mutagen found no consistent run of MPEG frames (a truncated file or noise after an ID3 tag).
        return None if info.sketchy else "mp3"
    if isinstance(parsed, WAVE):
        # The header states the data size; a truncated upload would claim seconds it does not hold.
        claimed = info.length * info.bitrate / 8  # bytes
        return "wav" if info.bitrate > 0 and claimed <= len(data) else None
    if isinstance(parsed, (OggVorbis, OggOpus)):
        return "ogg"
    if isinstance(parsed, MP4):
        # mutagen falls back to the movie's length when there is no audio track, leaving codec empty; the app
        # plays AAC (mp4a.*) only, and a video is not a sound even when it has an AAC track.
        if not str(info.codec).startswith("mp4a") or b"vide" in _mp4_handlers(data):
            return None
        return "m4a"
    return None


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISO-BMFF boxes in data[start:end]; stops at a malformed one."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1 and pos + 16 <= end:  # 64-bit size follows the type
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:  # box runs to the end of its parent
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _mp4_handlers(data: bytes) -> list[bytes]:
    """Handler type of every track (b"soun", b"vide", ...), from moov/trak/mdia/hdlr."""
    handlers: list[bytes] = []
    for moov in (b for b in _boxes(data, 0, len(data)) if b[0] == b"moov"):
        for trak in (b for b in _boxes(data, moov[1], moov[2]) if b[0] == b"trak"):
            for mdia in (b for b in _boxes(data, trak[1], trak[2]) if b[0] == b"mdia"):
                for kind, start, end in _boxes(data, mdia[1], mdia[2]):
                    if kind == b"hdlr" and end - start >= 12:
                        handlers.append(data[start + 8:start + 12])  # after version/flags and pre_defined
    return handlers
