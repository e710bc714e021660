"""Chat text → something worth speaking: links named, emoji and junk dropped, spam squeezed, length bounded."""

from __future__ import annotations

import re
import unicodedata
from typing import Final, Iterable

LINK_WORD: Final = "link"  # one word for every URL; Russian voices read it fine, and it keeps the rule simple
MAX_REPEAT: Final = 3  # characters: "!!!" and "ааа" still sound emphatic, "!!!!!!!" is spam
MAX_MARKS: Final = 4  # combining marks on one letter: enough for Devanagari, Arabic, Vietnamese; stops "Zalgo"
RAW_FACTOR: Final = 8  # raw input beyond max_chars × this is ignored: bounds CPU per message on the event loop
CHAR_TABLE_MAX: Final = 4096  # characters whose fate _filter_chars remembers (ASCII, Cyrillic, common emoji…)

# Symbols that voices read as words ("+", "=", "25°", "№5"); currency signs (category Sc) are kept too.
_KEEP_SYMBOLS: Final = frozenset("+=°№")
_COMMON_TLDS: Final = (
    "com|net|org|info|biz|io|tv|gg|xyz|site|online|shop|store|app|dev|live|link|ru|рф|su|ua|kz|uz|de|uk|fr|pl|"
    "tr|eu")
_TRAILING: Final = r"""[.,!?;:)\]}>»"'…]"""  # punctuation after a URL belongs to the sentence, not the URL
_URL_RE: Final = re.compile(
    rf"(?:https?://|www\.)\S*?(?={_TRAILING}*(?:\s|$))"  # explicit scheme or www.
    r"|(?<![\w.@/-])(?:[^\W_][\w-]*\.)+[^\W\d_]{2,24}/\S*?" rf"(?={_TRAILING}*(?:\s|$))"  # bare domain/path
    rf"|(?<![\w.@/-])(?:[^\W_][\w-]*\.)+(?:{_COMMON_TLDS})(?![\w-]|\.\w)",  # bare domain, common TLD only
    re.IGNORECASE)
_REPEAT_RE: Final = re.compile(rf"(\D)\1{{{MAX_REPEAT},}}")  # digits are exempt: 1000000 is a number
_NFKC_KEEP_RE: Final = re.compile("([№²³™])")
_SQUEEZE_RE: Final = re.compile(r"(.)\1+")
_ASCII_ALNUM_RE: Final = re.compile(r"[A-Za-z0-9]")  # the ASCII characters of Unicode categories L and N


def clean_text(text: str, max_chars: int) -> str:
    """The speakable form of `text`, at most `max_chars` long; "" when nothing speakable is left.

    NFKC first, so the "𝓯𝓪𝓷𝓬𝔂" letters of TikTok nicknames and full-width forms become plain letters. Letters,
    digits and punctuation of every script stay, with their combining marks; emoji, pictographs, most symbols
    and control characters go (a removed symbol leaves a space, so "hi😀there" stays two words). Runs of one
    character longer than MAX_REPEAT are cut to MAX_REPEAT (digits excepted). The result is cut on a word
    boundary; a single word longer than max_chars is cut hard.
    """
    if max_chars <= 0 or not text:
        return ""
    text = _nfkc(text[: max_chars * RAW_FACTOR])
    if "." in text or "://" in text:  # every URL form has one of them: most chat lines skip the regex
        text = _URL_RE.sub(f" {LINK_WORD}", text)  # what follows a URL is already a space or punctuation
    text = " ".join(_filter_chars(text).split())
    text = _REPEAT_RE.sub(lambda m: m.group(1) * MAX_REPEAT, text)
    text = _cut(text, max_chars)
    return text if _speakable(text) else ""


def contains_blocked(text: str, blocklist: Iterable[str]) -> bool:
    """True when any blocklist entry occurs in `text`, case-insensitively, as a substring.

    Substring on purpose: slurs hide inside longer words and the streamer writes the list. The text is also
    checked with every run of a repeated character squeezed to one, so "baaaad" is caught by "bad"; "ё" counts
    as "е". The price is the usual one of substring filters (a short entry matches inside innocent words).
    """
    if isinstance(blocklist, (list, tuple)) and not blocklist:
        return False  # the usual case (no list set): skip folding the text
    haystack = _fold(text)
    squeezed = _SQUEEZE_RE.sub(r"\1", haystack)
    for entry in blocklist:
        needle = _fold(entry)
        if needle and (needle in haystack or needle in squeezed):
            return True
    return False


class _Marks(Exception):
    """The text has a combining mark: what happens to it depends on the characters before it."""


class _CharTable(dict[int, "int | str | None"]):
    """ord → what _filter_chars_each does with that character (kept, a space, or dropped), for str.translate.

    Filled on first sight, up to CHAR_TABLE_MAX entries; a combining mark raises _Marks instead of an answer.
    """

    def __missing__(self, code: int) -> int | str | None:
        ch = chr(code)
        category = unicodedata.category(ch)
        major = category[0]
        result: int | str | None
        if major == "M":
            raise _Marks
        if major in "LN" or major == "P" or category == "Sc" or ch in _KEEP_SYMBOLS:
            result = code
        elif major in "SZ" or ch in "\t\n\r\v\f":
            result = " "
        else:
            result = None
        if len(self) < CHAR_TABLE_MAX:
            self[code] = result
        return result


_CHAR_TABLE: Final = _CharTable()


def _filter_chars(text: str) -> str:
    """Letters, digits, punctuation and a few symbols kept; other symbols and spaces made spaces; the rest dropped.

    Without combining marks every character's fate is its own, so one str.translate does it at C speed;
    text with marks takes the character loop, which counts the marks on each letter.
    """
    try:
        return text.translate(_CHAR_TABLE)
    except _Marks:
        return _filter_chars_each(text)


def _filter_chars_each(text: str) -> str:
    out: list[str] = []
    marks = -1  # combining marks kept on the current letter; -1 when there is no letter to attach to
    for ch in text:
        category = unicodedata.category(ch)
        major = category[0]
        if major in "LN":
            out.append(ch)
            marks = 0
        elif major == "M":
            # Marks belong to a letter (Devanagari vowel signs, Arabic harakat); a variation selector or an
            # enclosing keycap after a removed emoji does not.
            if category != "Me" and not _is_variation_selector(ch) and 0 <= marks < MAX_MARKS:
                out.append(ch)
                marks += 1
        elif major == "P" or category == "Sc" or ch in _KEEP_SYMBOLS:
            out.append(ch)
            marks = -1
        elif major in "SZ" or ch in "\t\n\r\v\f":
            out.append(" ")  # emoji between words must not glue them together
            marks = -1
        # Everything else (Cc, Cf such as ZWJ and bidi controls, private use, unassigned) is dropped silently:
        # ZWNJ inside a Persian or Hindi word must not split it.
    return "".join(out)


def _is_variation_selector(ch: str) -> bool:
    code = ord(ch)
    return 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    if text[max_chars] == " ":
        return text[:max_chars].rstrip()
    space = text.rfind(" ", 0, max_chars)
    if space > 0:
        return text[:space].rstrip()
    # One giant word: cut hard, but never between a letter and its combining marks.
    end = max_chars
    while end > 0 and unicodedata.category(text[end])[0] == "M":
        end -= 1
    return text[:end]


def _nfkc(text: str) -> str:
    if text.isascii():
        return text  # NFKC leaves ASCII as it is, and the exceptions below are not ASCII
    # NFKC would turn "№" into "No" (read as English by a Russian voice), "м²" into "м2" and "™" into "TM";
    # those few keep their own form, and the fraction slash of "½" → "1⁄2" becomes a plain "/".
    parts = _NFKC_KEEP_RE.split(text)
    return "".join(part if i % 2 else unicodedata.normalize("NFKC", part) for i, part in enumerate(parts)) \
        .replace("\u2044", "/")


def _speakable(text: str) -> bool:
    if text.isascii():
        return _ASCII_ALNUM_RE.search(text) is not None
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def _fold(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold().replace("ё", "е")
    return " ".join(folded.split())
