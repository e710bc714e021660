"""Stored sound names: what an upload's name becomes, and what may be looked up on disk."""

from __future__ import annotations

import posixpath
import re
import unicodedata
from typing import Final
from urllib.parse import unquote

from .audio import FORMATS

MAX_NAME_CHARS: Final = 80  # characters, extension included
FALLBACK_STEM: Final = "sound"
SOUND_EXTENSIONS: Final = tuple(ext for ext, _ in FORMATS.values())
# %252F is %2F after one round and "/" after two; more rounds than that is not a name anyone typed.
_UNQUOTE_ROUNDS: Final = 3
_NOT_ALLOWED: Final = re.compile(r"[^A-Za-z0-9._-]")
_REPEATS: Final = re.compile(r"([._-])\1+")
_EDGES: Final = "._-"
_SOUND_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:%s)" % "|".join(map(re.escape, SOUND_EXTENSIONS)))

# Russian and Ukrainian streamers name files in Cyrillic; without this every such name would collapse to
# "sound.mp3", and each new upload would silently replace the previous one. "_" marks the silent signs ъ ь.
_CYRILLIC: Final = dict(zip(
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяєіїґ",
    "a b v g d e e zh z i y k l m n o p r s t u f kh ts ch sh shch _ y _ e yu ya ye i yi g".split(),
))
_TRANSLIT: Final = str.maketrans(
    {**{c: t.replace("_", "") for c, t in _CYRILLIC.items()},
     **{c.upper(): t.replace("_", "").capitalize() for c, t in _CYRILLIC.items()}}
)


def sanitize_filename(name: str, ext: str) -> str:
    """A safe stored name: [A-Za-z0-9._-], no path, no leading dot, ≤ 80 chars ending in ext (".mp3" or "mp3")."""
    ext = "." + ext.lstrip(".").lower()
    if ext not in SOUND_EXTENSIONS:
        raise ValueError(f"unknown sound extension {ext!r}")
    for _ in range(_UNQUOTE_ROUNDS):
        decoded = unquote(name)
        if decoded == name:
            break
        name = decoded
    # NFKC first: fullwidth "／" and "＼" become real separators and are cut off below, not kept as "_".
    name = unicodedata.normalize("NFKC", name).replace("\\", "/")
    stem = posixpath.splitext(posixpath.basename(name))[0]
    # Accents fold to their base letter ("é" → "e") rather than to "_".
    stem = unicodedata.normalize("NFKD", stem.translate(_TRANSLIT))
    stem = "".join(c for c in stem if not unicodedata.combining(c))
    stem = _REPEATS.sub(r"\1", _NOT_ALLOWED.sub("_", stem)).strip(_EDGES)
    stem = stem[:MAX_NAME_CHARS - len(ext)].rstrip(_EDGES)
    return (stem or FALLBACK_STEM) + ext


def is_sound_name(filename: str) -> bool:
    """True for names sanitize_filename can produce: no separator, no leading dot, a known extension."""
    return len(filename) <= MAX_NAME_CHARS and _SOUND_NAME.fullmatch(filename) is not None
