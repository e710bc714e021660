"""Reads a multipart sound upload as a stream, refusing it as soon as it passes the size limit."""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass
from typing import Callable, Final

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http import HttpProcessingError

from ..errors import ApiError, validation_error

_LOGGER = logging.getLogger(__name__)

FILE_FIELD: Final = "file"
NAME_FIELD: Final = "name"
CHARSET_FIELD: Final = "_charset_"  # RFC 7578 §4.6: the charset of text fields, allowed as the first part
CHARSET_MAX_BYTES: Final = 40  # the longest charset label in the WHATWG encoding list has 19 characters
MAX_NAME_CHARS: Final = 80  # characters of the optional display name
CHUNK_BYTES: Final = 64 * 1024  # bytes read from the socket at a time
# Boundaries, part headers and the name field come on top of the file; a larger declared body cannot fit.
MULTIPART_OVERHEAD_BYTES: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class Upload:
    data: bytes
    filename: str  # as the client sent it ("" if none): untrusted, for sanitize_filename only
    name: str | None  # the optional "name" field, stripped; None when absent or blank


def file_too_large() -> ApiError:
    return ApiError(413, "file too large", "file_too_large")


async def read_upload(request: web.Request, max_bytes: int) -> Upload:
    """The `file` part (required) and `name` part (optional), in any order; never holds more than max_bytes."""
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "send the sound as multipart/form-data with a 'file' field", "unsupported_media_type")
    if request.content_length is not None and request.content_length > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise file_too_large()  # refused before a byte of the body is read
    data: bytes | None = None
    filename = ""
    name: str | None = None
    seen_name = False
    first = True
    try:
        reader = _form_reader(request)
        while (part := await _next_part(reader)) is not None:
            if not isinstance(part, BodyPartReader):
                raise validation_error({"_schema": ["nested multipart bodies are not accepted"]})
            field = part.name or ""
            if field == CHARSET_FIELD and first:
                _check_charset(await _read_part(part, CHARSET_MAX_BYTES, _bad_charset))
                first = False
                continue
            first = False
            if field not in (FILE_FIELD, NAME_FIELD):
                raise validation_error({field or "_schema": ["unknown field"]})
            if (field == FILE_FIELD and data is not None) or (field == NAME_FIELD and seen_name):
                raise validation_error({field: ["given more than once"]})
            if part.headers.get("Content-Transfer-Encoding", "binary").lower() not in ("binary", "7bit", "8bit"):
                raise validation_error({field: ["Content-Transfer-Encoding is not supported"]})  # RFC 7578 §4.7
            if field == FILE_FIELD:
                filename = part.filename or ""
                data = await _read_part(part, max_bytes, file_too_large)
            else:
                seen_name = True
                name = _decode_name(await _read_part(part, MAX_NAME_CHARS * 4, _name_too_long))  # ≤ 4 B a char
    except ValueError as exc:  # aiohttp's word for a malformed body: bad boundary, missing CRLF, ...
        raise malformed(exc) from None
    if data is None:
        raise validation_error({FILE_FIELD: ["required"]})
    return Upload(data=data, filename=filename, name=name)


def malformed(exc: Exception) -> ApiError:
    _LOGGER.debug("malformed multipart upload: %s", exc)
    return ApiError(400, "malformed multipart body", "bad_request")


def _form_reader(request: web.Request) -> MultipartReader:
    """request.multipart(), without aiohttp's own handling of a leading `_charset_` part.

    aiohttp 3.14 consumes that part inside next() and then takes the delimiter after it for a header line
    (aio-libs/aiohttp PR 13640): a valid `_charset_` broke the parse, and a longer one raised RuntimeError, a
    500. Read as multipart/mixed, the same framing, `_charset_` is an ordinary part that read_upload checks.
    (The one other difference: a part's Content-Length, which RFC 7578 clients do not send, is honoured.)
    """
    content_type = re.sub(r"^\s*multipart/form-data", "multipart/mixed", request.headers[hdrs.CONTENT_TYPE],
                          count=1, flags=re.IGNORECASE)
    return MultipartReader({hdrs.CONTENT_TYPE: content_type}, request.content)


async def _next_part(reader: MultipartReader) -> MultipartReader | BodyPartReader | None:
    try:
        return await reader.next()
    except HttpProcessingError as exc:  # a part's header block: a line that is no header, too many headers
        raise malformed(exc) from None


def _bad_charset() -> ApiError:
    return validation_error({CHARSET_FIELD: ["only UTF-8 is supported"]})


def _check_charset(raw: bytes) -> None:
    """The name field is read as UTF-8: a `_charset_` may confirm that (US-ASCII is a subset), not change it."""
    try:
        name = codecs.lookup(raw.decode("ascii").strip()).name
    except (UnicodeDecodeError, LookupError):
        raise _bad_charset() from None
    if name not in ("utf-8", "ascii"):
        raise _bad_charset()


async def _read_part(part: BodyPartReader, limit: int, too_large: Callable[[], ApiError]) -> bytes:
    buf = bytearray()
    while chunk := await part.read_chunk(CHUNK_BYTES):
        buf += chunk
        if len(buf) > limit:
            # Stop here: the rest of the body is drained and dropped by aiohttp after the response, not kept.
            raise too_large()
    return bytes(buf)


def _name_too_long() -> ApiError:
    return validation_error({NAME_FIELD: [f"at most {MAX_NAME_CHARS} characters"]})


def _decode_name(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise validation_error({NAME_FIELD: ["must be UTF-8 text"]}) from None
    if len(text) > MAX_NAME_CHARS:
        raise _name_too_long()
    return text or None
