"""CSV of a stream's events: RFC 4180 quoting, and no cell a spreadsheet would run as a formula."""

from __future__ import annotations

import csv
import io
from typing import Any, Final, Iterable

COLUMNS: Final = ("time", "type", "username", "user", "message", "gift", "count", "diamonds")
BOM: Final = "\ufeff"  # without it Excel reads UTF-8 as the local code page and garbles Cyrillic names
# A cell starting with one of these is a formula (or DDE payload) to Excel, LibreOffice and Google Sheets.
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r", "\n")


def safe_cell(text: str) -> str:
    """Viewer-written text (names, messages, gift names) made inert: a leading quote shows it as text."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _count(frame: dict[str, Any]) -> int | str:
    """`count`: the gift's combo count, the likes of the burst, the viewers now (viewer frames)."""
    if frame["type"] == "viewer":
        return frame.get("current", "")
    return frame.get("count", "")


def row(frame: dict[str, Any]) -> list[Any]:
    return [frame["ts"], frame["type"], safe_cell(str(frame.get("username", ""))),
            safe_cell(str(frame.get("user", ""))), safe_cell(str(frame.get("message", ""))),
            safe_cell(str(frame.get("gift_name", ""))), _count(frame), frame.get("diamonds", "")]


def encode_rows(rows: Iterable[list[Any]]) -> str:
    """CSV text (CRLF line ends, fields quoted when they hold a comma, quote or line break)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def header() -> str:
    return BOM + encode_rows([list(COLUMNS)])
