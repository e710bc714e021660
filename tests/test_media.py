"""ttboost.media: audio validation by content, safe names, atomic storage, serving and streaming uploads."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import string
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient

from tests.audio_samples import make_flac, make_m4a, make_mp3, make_ogg, make_opus, make_wav
from ttboost import keys
from ttboost.errors import ApiError, error_middleware
from ttboost.media import (AudioInfo, MediaStore, is_sound_name, read_upload, sanitize_filename, serve_sound,
                           validate_audio)
from ttboost.media.upload import CHUNK_BYTES

LIMITS = {"min_seconds": 0.1, "max_seconds": 30.0}
ROUTE = "/static/sounds/{user_id}/{filename}"
ClientFactory = Callable[..., Awaitable[TestClient]]


def count_files(store: MediaStore, user_id: int) -> int:
    """Sound files on disk in the user's folder (temp files and other names do not count)."""
    folder = store.user_dir(user_id)
    return sum(1 for f in folder.iterdir() if is_sound_name(f.name) and f.is_file()) if folder.exists() else 0


def check(data: bytes, **limits: float) -> AudioInfo:
    return validate_audio(data, **{**LIMITS, **limits})


def rejected(data: bytes, **limits: float) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check(data, **limits)
    assert caught.value.status == 422
    assert caught.value.fields == {"file": [caught.value.detail]}
    return caught.value


# --- validate_audio ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "fmt", "ext", "ctype"), [
    (make_mp3, "mp3", ".mp3", "audio/mpeg"),
    (make_wav, "wav", ".wav", "audio/wav"),
    (make_ogg, "ogg", ".ogg", "audio/ogg"),
    (make_opus, "ogg", ".ogg", "audio/ogg"),
    (make_m4a, "m4a", ".m4a", "audio/mp4"),
])
def test_accepts_real_audio(make: Callable[[float], bytes], fmt: str, ext: str, ctype: str) -> None:
    info = check(make(0.5))
    assert (info.format, info.ext, info.content_type) == (fmt, ext, ctype)
    # Encoders round up to whole frames (LAME: 1152 samples and its delay, AAC: 1024), never down.
    assert 500 <= info.duration_ms <= 560


def test_max_duration_allows_encoder_padding() -> None:
    assert 30_000 < check(make_mp3(30.0)).duration_ms <= 30_100


@pytest.mark.parametrize("data", [
    b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(2000),
    "просто текст, not audio at all\n".encode() * 50,
    b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"not an mpeg frame " * 100,  # a tag and no audio after it
    make_flac(0.5),  # real audio, unsupported format
    make_m4a(0.5, handler=b"vide"),  # MP4 without an audio track
], ids=["html", "jpeg", "text", "id3-only", "flac", "mp4-video"])
def test_rejects_what_is_not_supported_audio(data: bytes) -> None:
    assert rejected(data).code == "invalid_audio"


def test_rejects_empty() -> None:
    assert rejected(b"").detail == "the file is empty"


def test_rejects_random_blobs() -> None:
    rng = random.Random(20240501)
    for _ in range(200):
        blob = rng.randbytes(rng.choice((1, 16, 512, 4096, 65536)))
        assert rejected(blob).code == "invalid_audio"


@pytest.mark.parametrize(("seconds", "make"), [(0.05, make_wav), (0.05, make_ogg), (31.0, make_wav),
                                               (31.0, make_ogg), (31.0, make_mp3)])
def test_rejects_duration_out_of_range(seconds: float, make: Callable[[float], bytes]) -> None:
    error = rejected(make(seconds))
    assert error.code == "bad_duration"
    assert "0.1–30 s" in error.detail


def test_rejects_truncated_mp3_as_sketchy() -> None:
    # 600 bytes of MP3 parse as 0.075 s: with the minimum out of the way, only `sketchy` rejects them.
    assert rejected(make_mp3(0.5)[:600], min_seconds=0.01).code == "invalid_audio"


def test_rejects_truncated_wav() -> None:
    assert rejected(make_wav(0.5)[:1000]).code == "invalid_audio"  # header still claims 0.5 s


def test_format_comes_from_content_not_name() -> None:
    # validate_audio never sees a name; a WAV sent as "song.mp3" is stored as song.wav (see the upload test).
    info = check(make_wav(0.5))
    assert info.format == "wav"
    assert sanitize_filename("song.mp3", info.ext) == "song.wav"


# --- sanitize_filename ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "ext", "expected"), [
    ("../../etc/passwd", ".mp3", "passwd.mp3"),
    ("..%2F..%2Fx.mp3", ".mp3", "x.mp3"),
    ("..%252F..%252Fx.mp3", ".mp3", "x.mp3"),  # double-encoded
    ("a\\b.mp3", ".mp3", "b.mp3"),
    ("a%5Cb.mp3", ".mp3", "b.mp3"),
    ("C:\\Users\\me\\Song (1).MP3", ".mp3", "Song_1.mp3"),
    ("ｆｕｌｌ／ｗｉｄｔｈ.mp3", ".mp3", "width.mp3"),  # fullwidth solidus is a separator too
    ("Роза для Стримера!.mp3", "mp3", "Roza_dlya_Strimera.mp3"),
    ("café déjà vu.ogg", ".ogg", "cafe_deja_vu.ogg"),
    ("日本語の音.wav", ".wav", "sound.wav"),
    ("emoji 🎉 party.mp3", ".m4a", "emoji_party.m4a"),
    (".hidden", ".mp3", "hidden.mp3"),
    ("", ".mp3", "sound.mp3"),
    ("..", ".mp3", "sound.mp3"),
    ("a/b/", ".mp3", "sound.mp3"),
    ("a..b__c--d.mp3", ".mp3", "a.b_c-d.mp3"),
    ("-rf *.mp3", ".mp3", "rf.mp3"),
    ("x\x00y.mp3", ".mp3", "x_y.mp3"),
    ("song.mp3", ".wav", "song.wav"),  # the detected format's extension wins
])
def test_sanitize_filename(name: str, ext: str, expected: str) -> None:
    assert sanitize_filename(name, ext) == expected


def test_sanitize_filename_limits_length_including_extension() -> None:
    result = sanitize_filename("x" * 200 + ".mp3", ".mp3")
    assert result == "x" * 76 + ".mp3"
    assert sanitize_filename("a" * 75 + "_____b.mp3", ".m4a") == "a" * 75 + ".m4a"  # no "_" left at the cut


def test_sanitize_filename_rejects_unknown_extension() -> None:
    with pytest.raises(ValueError):
        sanitize_filename("x.exe", ".exe")


def test_sanitize_filename_always_gives_a_servable_name() -> None:
    rng = random.Random(7)
    alphabet = string.printable + "./\\%2F%5C..—ёЁ🎉\u0301\u200b\ufeff"
    for _ in range(500):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        result = sanitize_filename(name, ".ogg")
        assert is_sound_name(result), (name, result)
        assert len(result) <= 80 and result.endswith(".ogg")
        assert "/" not in result and "\\" not in result and not result.startswith(".")


# --- MediaStore -------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "media")


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


async def test_save_is_atomic_and_replaces(store: MediaStore) -> None:
    await store.save(1, "rose.mp3", b"first")
    folder = store.root / "sounds" / "1"
    assert files_in(folder) == ["rose.mp3"]  # no temp file left
    assert (folder / "rose.mp3").stat().st_mode & 0o777 == 0o600  # owner-only (spec §1)
    await store.save(1, "rose.mp3", b"second version")
    assert files_in(folder) == ["rose.mp3"]
    assert (folder / "rose.mp3").read_bytes() == b"second version"
    assert count_files(store, 1) == 1


async def test_save_refuses_unsanitized_names(store: MediaStore) -> None:
    for bad in ("../x.mp3", "a/b.mp3", ".hidden.mp3", "x.txt", ""):
        with pytest.raises(ValueError):
            await store.save(1, bad, b"data")
    assert not store.root.exists()


async def test_failed_rename_leaves_nothing(store: MediaStore) -> None:
    # A directory in the target's place makes os.replace fail for real, after the data is written.
    blocker = store.root / "sounds" / "1" / "rose.mp3"
    blocker.mkdir(parents=True)
    (blocker / "keep").write_bytes(b"x")
    with pytest.raises(OSError):
        await store.save(1, "rose.mp3", b"data")
    assert files_in(blocker.parent) == ["rose.mp3"]
    assert files_in(blocker) == ["keep"]


async def test_failed_write_keeps_the_old_sound(store: MediaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.save(1, "rose.mp3", b"old")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    # No injection point is worth adding to the store for this: a full disk surfaces at fsync.
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        await store.save(1, "rose.mp3", b"new")
    folder = store.root / "sounds" / "1"
    assert files_in(folder) == ["rose.mp3"]
    assert (folder / "rose.mp3").read_bytes() == b"old"


async def test_path_for(store: MediaStore, tmp_path: Path) -> None:
    await store.save(1, "rose.mp3", b"audio")
    await store.save(2, "other.mp3", b"audio")
    folder = store.root / "sounds" / "1"
    assert store.path_for(1, "rose.mp3") == (folder / "rose.mp3").resolve()
    secret = tmp_path / "secret.mp3"
    secret.write_bytes(b"secret")
    (folder / "link.mp3").symlink_to(secret)
    (folder / "inner.mp3").symlink_to(folder / "rose.mp3")  # symlinks are refused even inside the folder
    (folder / ".upload-x.tmp").write_bytes(b"half")
    (store.root / "sounds" / "3").symlink_to(folder, target_is_directory=True)
    for user_id, name in [(1, "missing.mp3"), (1, "../2/other.mp3"), (1, "..%2F2%2Fother.mp3"),
                          (1, "..\\2\\other.mp3"), (1, ".."), (1, "."), (1, "link.mp3"), (1, "inner.mp3"),
                          (1, ".upload-x.tmp"), (1, "rose.MP3"), (1, "/etc/passwd"), (3, "rose.mp3"),
                          (-1, "rose.mp3"), (True, "rose.mp3"), (2, "rose.mp3")]:
        assert store.path_for(user_id, name) is None, (user_id, name)
    (folder / "dir.mp3").mkdir()
    assert store.path_for(1, "dir.mp3") is None


async def test_delete_usage_and_cleanup(store: MediaStore) -> None:
    assert count_files(store, 1) == 0
    assert await store.cleanup_temp() == 0  # no media folder yet
    await store.save(1, "a.mp3", b"a")
    await store.save(1, "b.ogg", b"b")
    await store.save(2, "c.wav", b"c")
    for user_id in (1, 2):
        (store.root / "sounds" / str(user_id) / ".upload-crash.tmp").write_bytes(b"half")
    (store.root / "sounds" / "1" / "notes.txt").write_bytes(b"not a sound")
    assert count_files(store, 1) == 2
    assert await store.cleanup_temp() == 2
    assert files_in(store.root / "sounds" / "1") == ["a.mp3", "b.ogg", "notes.txt"]
    assert await store.delete(1, "a.mp3") is True
    assert await store.delete(1, "a.mp3") is False
    assert await store.delete(1, "../2/c.wav") is False
    assert count_files(store, 1) == 1
    assert files_in(store.root / "sounds" / "2") == ["c.wav"]


# --- serve_sound ------------------------------------------------------------------------------------------

@pytest.fixture
async def media_client(aiohttp_client: ClientFactory, store: MediaStore) -> TestClient:
    app = web.Application(middlewares=[error_middleware])
    app[keys.MEDIA] = store
    app.router.add_get(ROUTE, serve_sound)
    return await aiohttp_client(app)


async def raw_get(client: TestClient, target: str) -> tuple[int, bytes]:
    """Sends the request target exactly as written: HTTP clients normalize "..", and that is the point here."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def raw_status(client: TestClient, request: bytes) -> int:
    """Sends raw bytes (a body that never ends, or only headers) and reads just the status line."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize(("make", "name", "ctype"), [
    (make_mp3, "rose.mp3", "audio/mpeg"), (make_wav, "rose.wav", "audio/wav"),
    (make_ogg, "rose.ogg", "audio/ogg"), (make_m4a, "rose.m4a", "audio/mp4"),
])
async def test_serves_sound_with_headers(media_client: TestClient, store: MediaStore,
                                         make: Callable[[float], bytes], name: str, ctype: str) -> None:
    data = make(0.2)
    await store.save(7, name, data)
    resp = await media_client.get(f"/static/sounds/7/{name}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == ctype
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert "ETag" in resp.headers and "Last-Modified" in resp.headers
    assert await resp.read() == data
    again = await media_client.get(f"/static/sounds/7/{name}", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


async def test_serves_ranges(media_client: TestClient, store: MediaStore) -> None:
    data = make_mp3(0.5)
    await store.save(7, "rose.mp3", data)
    resp = await media_client.get("/static/sounds/7/rose.mp3", headers={"Range": "bytes=0-9"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 0-9/{len(data)}"
    assert await resp.read() == data[:10]


async def test_refuses_escapes(media_client: TestClient, store: MediaStore, tmp_path: Path) -> None:
    await store.save(7, "rose.mp3", b"audio")
    await store.save(8, "other.mp3", b"audio")
    (tmp_path / "secret.mp3").write_bytes(b"secret")
    (store.root / "sounds" / "7" / "link.mp3").symlink_to(tmp_path / "secret.mp3")
    for target in ["/static/sounds/7/..", "/static/sounds/7/%2e%2e", "/static/sounds/7/..%2F8%2Fother.mp3",
                   "/static/sounds/7/%2e%2e%2f8%2fother.mp3", "/static/sounds/7/..%5C8%5Cother.mp3",
                   "/static/sounds/7/link.mp3", "/static/sounds/7/missing.mp3",
                   "/static/sounds/7/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.mp3", "/static/sounds/..%2F7/rose.mp3",
                   "/static/sounds/abc/rose.mp3", "/static/sounds/%D9%A7/rose.mp3", "/static/sounds/-7/rose.mp3"]:
        status, body = await raw_get(media_client, target)
        assert status == 404, target
        assert b"secret" not in body and b"audio" not in body
    status, body = await raw_get(media_client, "/static/sounds/7/link.mp3")
    assert body == b'{"detail": "not found", "code": "not_found"}'
    status, _ = await raw_get(media_client, "/static/sounds/7/rose.mp3")
    assert status == 200  # the raw helper itself works


# --- read_upload ------------------------------------------------------------------------------------------

@pytest.fixture
async def upload_client(aiohttp_client: ClientFactory) -> AsyncIterator[tuple[TestClient, list[bytes]]]:
    """A route that reads an upload with a 4 KiB limit, validates it and answers the stored name."""
    seen: list[bytes] = []

    async def upload(request: web.Request) -> web.Response:
        received = await read_upload(request, 4096)
        seen.append(received.data)
        info = await asyncio.to_thread(validate_audio, received.data, min_seconds=0.01, max_seconds=30.0)
        return web.json_response({"filename": sanitize_filename(received.filename, info.ext),
                                  "format": info.format, "name": received.name})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/upload", upload)
    yield await aiohttp_client(app), seen


def form(*fields: tuple[str, bytes | str, str | None]) -> FormData:
    data = FormData(default_to_multipart=True)  # text fields alone would otherwise go url-encoded
    for name, value, filename in fields:
        data.add_field(name, value, filename=filename)
    return data


async def test_upload_reads_file_and_name_in_any_order(upload_client: tuple[TestClient, list[bytes]]) -> None:
    client, seen = upload_client
    wav = make_wav(0.02)  # 1.8 KB, under the 4 KiB limit
    resp = await client.post("/upload", data=form(("name", "  Роза  ", None), ("file", wav, "song.mp3")))
    assert resp.status == 200
    # Sent as "song.mp3", parsed as WAV: the name never decides the format.
    assert await resp.json() == {"filename": "song.wav", "format": "wav", "name": "Роза"}
    resp = await client.post("/upload", data=form(("file", wav, "Роза.mp3"), ("name", "я" * 80, None)))
    assert resp.status == 200  # 80 characters is the limit, however many bytes they take
    assert await resp.json() == {"filename": "Roza.wav", "format": "wav", "name": "я" * 80}
    assert seen == [wav, wav]


async def test_upload_over_limit_is_refused_unread(upload_client: tuple[TestClient, list[bytes]]) -> None:
    client, seen = upload_client
    # The declared length is within limit + multipart overhead, so this one is cut off while streaming.
    resp = await client.post("/upload", data=form(("file", bytes(5000), "big.mp3")))
    assert resp.status == 413
    assert await resp.json() == {"detail": "file too large", "code": "file_too_large"}

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse it by
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp3\"\r\n\r\n"
        for _ in range(10):
            yield bytes(1000)
        yield b"\r\n--XyZ--\r\n"

    resp = await client.post("/upload", data=chunks(), headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status == 413
    assert seen == []


async def test_upload_stops_reading_at_the_limit(upload_client: tuple[TestClient, list[bytes]]) -> None:
    # The body never ends: an answer proves the server stopped reading soon after the limit was passed
    # (aiohttp's multipart reader looks one chunk ahead for the boundary, hence more than two chunks here).
    client, seen = upload_client
    part = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\n\r\n"
            + bytes(3 * CHUNK_BYTES))
    status = await raw_status(client, b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                                      b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
                                      + b"%x\r\n" % len(part) + part + b"\r\n")
    assert status == 413
    assert seen == []


async def test_upload_refused_by_declared_length(upload_client: tuple[TestClient, list[bytes]]) -> None:
    # Only the headers are sent: a Content-Length far over the limit is refused before any body arrives.
    client, seen = upload_client
    status = await raw_status(client, b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100000000\r\n"
                                      b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n")
    assert status == 413
    assert seen == []


@pytest.mark.parametrize(("fields", "expected"), [
    ((("name", "x", None),), {"file": ["required"]}),
    ((), {"file": ["required"]}),
    ((("file", b"a", "a.mp3"), ("other", "x", None)), {"other": ["unknown field"]}),
    ((("file", b"a", "a.mp3"), ("file", b"b", "b.mp3")), {"file": ["given more than once"]}),
    ((("file", b"a", "a.mp3"), ("name", "n" * 81, None)), {"name": ["at most 80 characters"]}),
])
async def test_upload_field_errors(upload_client: tuple[TestClient, list[bytes]],
                                   fields: tuple[tuple[str, bytes | str, str | None], ...],
                                   expected: dict[str, list[str]]) -> None:
    client, seen = upload_client
    resp = await client.post("/upload", data=form(*fields))
    assert resp.status == 422
    body = await resp.json()
    assert body["code"] == "validation_error" and body["fields"] == expected
    assert seen == []


async def test_upload_invalid_audio_is_422(upload_client: tuple[TestClient, list[bytes]]) -> None:
    client, _ = upload_client
    resp = await client.post("/upload", data=form(("file", b"<html></html>", "x.mp3")))
    assert resp.status == 422
    body = await resp.json()
    assert body["code"] == "invalid_audio" and list(body["fields"]) == ["file"]


async def test_upload_needs_multipart(upload_client: tuple[TestClient, list[bytes]]) -> None:
    client, _ = upload_client
    resp = await client.post("/upload", json={"file": "x"})
    assert resp.status == 415
    assert (await resp.json())["code"] == "unsupported_media_type"
    resp = await client.post("/upload", data=b"garbage without boundary",
                             headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status == 400
    assert (await resp.json()) == {"detail": "malformed multipart body", "code": "bad_request"}


def charset_body(charset: bytes, audio: bytes = b"abc") -> bytes:
    return (b"--XyZ\r\nContent-Disposition: form-data; name=\"_charset_\"\r\n\r\n" + charset + b"\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n" + audio
            + b"\r\n--XyZ--\r\n")


@pytest.mark.parametrize("charset", [b"u" * 40, b"u" * 4000, b"latin-1", b"no-such-charset", b"\xff\xfe"])
async def test_upload_charset_other_than_utf8_is_422(upload_client: tuple[TestClient, list[bytes]],
                                                     charset: bytes) -> None:
    """An RFC 7578 `_charset_` part: aiohttp's own handling of it raised RuntimeError when it was long (a 500)."""
    client, seen = upload_client
    resp = await client.post("/upload", data=charset_body(charset),
                             headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status == 422
    assert (await resp.json())["fields"] == {"_charset_": ["only UTF-8 is supported"]}
    assert seen == []


@pytest.mark.parametrize("charset", [b"utf-8", b"UTF8", b" us-ascii "])
async def test_upload_with_a_utf8_charset_part_works(upload_client: tuple[TestClient, list[bytes]],
                                                     charset: bytes) -> None:
    client, seen = upload_client
    wav = make_wav(0.02)
    resp = await client.post("/upload", data=charset_body(charset, wav),
                             headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status == 200, await resp.text()
    assert seen == [wav]


@pytest.mark.parametrize("body", [
    # a part whose header block is no header (the closing boundary right after the opening one): InvalidHeader
    b"--XyZ\r\n--XyZ--\r\n",
    b"--XyZ\r\nno colon in this header line\r\n\r\nabc\r\n--XyZ--\r\n",
])
async def test_upload_malformed_parts_are_400(upload_client: tuple[TestClient, list[bytes]], body: bytes) -> None:
    client, seen = upload_client
    resp = await client.post("/upload", data=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status == 400
    assert await resp.json() == {"detail": "malformed multipart body", "code": "bad_request"}
    assert seen == []

