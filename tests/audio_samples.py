"""Real, small audio files made in memory for tests (no fixtures on disk, no network, no ffmpeg)."""

from __future__ import annotations

import io
import struct
from typing import Final

import lameenc
import numpy as np
import soundfile

RATE: Final = 44_100  # Hz, for WAV, MP3 and OGG/Vorbis
OPUS_RATE: Final = 48_000  # Hz, the rate Opus is defined at
AAC_FRAME_SAMPLES: Final = 1024  # samples per AAC-LC frame
# One raw AAC-LC frame of silence for a mono stream: SCE, global_gain 160, long window, max_sfb 0, END.
# Every bit is spelled out in make_m4a's docstring; it is the frame encoders emit for digital silence.
AAC_SILENT_FRAME: Final = b"\x01\x40\x20\x07"


def tone(seconds: float, rate: int = RATE, hz: float = 440.0) -> np.ndarray:
    """A mono sine wave, 16-bit range, as float32 in [-0.5, 0.5]."""
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _pcm16(seconds: float, rate: int = RATE) -> bytes:
    return (tone(seconds, rate) * 32767).astype("<i2").tobytes()


def make_wav(seconds: float = 0.5) -> bytes:
    """PCM 16-bit mono WAV."""
    buf = io.BytesIO()
    soundfile.write(buf, tone(seconds), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def make_mp3(seconds: float = 0.5) -> bytes:
    """MPEG-1 Layer III, 64 kbit/s mono, encoded by LAME (it writes a Xing/Info frame, so length is exact)."""
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(64)
    encoder.set_in_sample_rate(RATE)
    encoder.set_channels(1)
    encoder.set_quality(7)  # fastest usable setting; quality is irrelevant here
    return bytes(encoder.encode(_pcm16(seconds)) + encoder.flush())


def make_ogg(seconds: float = 0.5) -> bytes:
    """Ogg/Vorbis mono."""
    buf = io.BytesIO()
    soundfile.write(buf, tone(seconds), RATE, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def make_opus(seconds: float = 0.5) -> bytes:
    """Ogg/Opus mono at 48 kHz."""
    buf = io.BytesIO()
    soundfile.write(buf, tone(seconds, OPUS_RATE), OPUS_RATE, format="OGG", subtype="OPUS")
    return buf.getvalue()


def make_flac(seconds: float = 0.5) -> bytes:
    """FLAC: real audio of a format the server does not accept."""
    buf = io.BytesIO()
    soundfile.write(buf, tone(seconds), RATE, format="FLAC")
    return buf.getvalue()


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _descriptor(tag: int, payload: bytes) -> bytes:
    assert len(payload) < 128  # one-byte size form is enough here
    return bytes([tag, len(payload)]) + payload


def make_m4a(seconds: float = 0.5, *, handler: bytes = b"soun") -> bytes:
    """AAC-LC in an MP4 (.m4a) container, assembled box by box, since no AAC encoder is available offline.

    The audio is digital silence: every frame is AAC_SILENT_FRAME, whose 32 bits are id_syn_ele=SCE (000),
    element_instance_tag=0 (0000), global_gain=160 (10100000), ics_reserved_bit=0, window_sequence=
    ONLY_LONG (00), window_shape=1, max_sfb=0 (000000), predictor_data_present=0, pulse/tns/gain_control
    present=0 (000), id_syn_ele=END (111). With max_sfb=0 there are no sections, scale factors or spectral
    data, so the frame is complete and decodes to 1024 zero samples. `handler=b"vide"` gives a file whose only
    track is not audio (for rejection tests).
    """
    frames = max(1, round(seconds * RATE / AAC_FRAME_SAMPLES))
    duration = frames * AAC_FRAME_SAMPLES  # in samples; the media timescale is the sample rate
    ftyp = _box(b"ftyp", b"M4A ", struct.pack(">I", 0), b"M4A mp42isom")
    mdat = _box(b"mdat", AAC_SILENT_FRAME * frames)
    # AudioSpecificConfig: object type 2 (AAC LC), frequency index 4 (44.1 kHz), 1 channel.
    asc = bytes([(2 << 3) | (4 >> 1), ((4 & 1) << 7) | (1 << 3)])
    dec_config = _descriptor(0x04, bytes([0x40, 0x15]) + b"\x00\x00\x00" + struct.pack(">II", 0, 0)
                             + _descriptor(0x05, asc))
    es = _descriptor(0x03, struct.pack(">HB", 1, 0) + dec_config + _descriptor(0x06, b"\x02"))
    esds = _full_box(b"esds", 0, 0, es)
    mp4a = _box(b"mp4a", b"\x00" * 6, struct.pack(">H", 1), b"\x00" * 8,
                struct.pack(">HHHH", 1, 16, 0, 0), struct.pack(">I", RATE << 16), esds)
    stsd = _full_box(b"stsd", 0, 0, struct.pack(">I", 1), mp4a)
    stts = _full_box(b"stts", 0, 0, struct.pack(">III", 1, frames, AAC_FRAME_SAMPLES))
    stsc = _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, frames, 1))
    stsz = _full_box(b"stsz", 0, 0, struct.pack(">II", len(AAC_SILENT_FRAME), frames))

    def moov_with(chunk_offset: int) -> bytes:
        stco = _full_box(b"stco", 0, 0, struct.pack(">II", 1, chunk_offset))
        stbl = _box(b"stbl", stsd, stts, stsc, stsz, stco)
        dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
        minf = _box(b"minf", _full_box(b"smhd", 0, 0, b"\x00" * 4), dinf, stbl)
        hdlr = _full_box(b"hdlr", 0, 0, b"\x00" * 4, handler, b"\x00" * 12, b"SoundHandler\x00")
        mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, RATE, duration, 0x55C4, 0))  # 'und'
        mdia = _box(b"mdia", mdhd, hdlr, minf)
        matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
        tkhd = _full_box(b"tkhd", 0, 7, struct.pack(">IIIII", 0, 0, 1, 0, duration), b"\x00" * 8,
                         struct.pack(">hhhH", 0, 0, 0x0100, 0), matrix, struct.pack(">II", 0, 0))
        trak = _box(b"trak", tkhd, mdia)
        mvhd = _full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, RATE, duration),
                         struct.pack(">IH", 0x10000, 0x0100), b"\x00" * 10, matrix, b"\x00" * 24,
                         struct.pack(">I", 2))
        return _box(b"moov", mvhd, trak)

    # moov's size does not depend on the offset value, so build it once to learn where mdat's payload starts.
    offset = len(ftyp) + len(moov_with(0)) + 8
    return ftyp + moov_with(offset) + mdat


def id3v1(title: str) -> bytes:
    """An ID3v1 tag (128 bytes at the end of an MP3): makes every upload's bytes unique, still valid MP3."""
    return b"TAG" + title.encode("ascii").ljust(30, b"\0") + b"\0" * 60 + b"2024" + b"\0" * 30 + b"\xff"
