"""Built-in list of common edge-tts neural voices, so GET /v2/voices works without the network."""

from __future__ import annotations

import re
from typing import Final

from .engine import Voice

# ShortName as edge-tts spells it: <lang>-<REGION>[-<script/variant>]-<Person>Neural.
EDGE_VOICE_RE: Final = re.compile(r"^(?P<locale>[a-z]{2,3}(?:-[A-Za-z0-9]+)+?)-(?P<person>[A-Za-z]+)Neural$")

# (id, gender): names and locales are derived from the id, so they cannot disagree with it.
_EDGE_VOICES: Final[tuple[tuple[str, str], ...]] = (
    ("ru-RU-SvetlanaNeural", "Female"),
    ("ru-RU-DmitryNeural", "Male"),
    ("uk-UA-PolinaNeural", "Female"),
    ("uk-UA-OstapNeural", "Male"),
    ("kk-KZ-AigulNeural", "Female"),
    ("kk-KZ-DauletNeural", "Male"),
    ("uz-UZ-MadinaNeural", "Female"),
    ("uz-UZ-SardorNeural", "Male"),
    ("az-AZ-BanuNeural", "Female"),
    ("az-AZ-BabekNeural", "Male"),
    ("ka-GE-EkaNeural", "Female"),
    ("ka-GE-GiorgiNeural", "Male"),
    ("en-US-JennyNeural", "Female"),
    ("en-US-GuyNeural", "Male"),
    ("en-US-AriaNeural", "Female"),
    ("en-US-EmmaMultilingualNeural", "Female"),
    ("en-US-AndrewMultilingualNeural", "Male"),
    ("en-GB-SoniaNeural", "Female"),
    ("en-GB-RyanNeural", "Male"),
    ("de-DE-KatjaNeural", "Female"),
    ("de-DE-ConradNeural", "Male"),
    ("fr-FR-DeniseNeural", "Female"),
    ("fr-FR-HenriNeural", "Male"),
    ("es-ES-ElviraNeural", "Female"),
    ("es-ES-AlvaroNeural", "Male"),
    ("es-MX-DaliaNeural", "Female"),
    ("es-MX-JorgeNeural", "Male"),
    ("it-IT-ElsaNeural", "Female"),
    ("it-IT-DiegoNeural", "Male"),
    ("pt-BR-FranciscaNeural", "Female"),
    ("pt-BR-AntonioNeural", "Male"),
    ("pl-PL-ZofiaNeural", "Female"),
    ("pl-PL-MarekNeural", "Male"),
    ("tr-TR-EmelNeural", "Female"),
    ("tr-TR-AhmetNeural", "Male"),
    ("nl-NL-ColetteNeural", "Female"),
    ("nl-NL-MaartenNeural", "Male"),
    ("cs-CZ-VlastaNeural", "Female"),
    ("cs-CZ-AntoninNeural", "Male"),
    ("he-IL-HilaNeural", "Female"),
    ("he-IL-AvriNeural", "Male"),
    ("ar-SA-ZariyahNeural", "Female"),
    ("ar-SA-HamedNeural", "Male"),
    ("hi-IN-SwaraNeural", "Female"),
    ("hi-IN-MadhurNeural", "Male"),
    ("id-ID-GadisNeural", "Female"),
    ("id-ID-ArdiNeural", "Male"),
    ("vi-VN-HoaiMyNeural", "Female"),
    ("vi-VN-NamMinhNeural", "Male"),
    ("th-TH-PremwadeeNeural", "Female"),
    ("th-TH-NiwatNeural", "Male"),
    ("ja-JP-NanamiNeural", "Female"),
    ("ja-JP-KeitaNeural", "Male"),
    ("ko-KR-SunHiNeural", "Female"),
    ("ko-KR-InJoonNeural", "Male"),
    ("zh-CN-XiaoxiaoNeural", "Female"),
    ("zh-CN-YunxiNeural", "Male"),
)


def edge_voice(voice_id: str, gender: str) -> Voice | None:
    """A Voice for an edge ShortName, or None when the id does not look like one."""
    match = EDGE_VOICE_RE.match(voice_id)
    if match is None:
        return None
    person = match["person"]
    if person.endswith("Multilingual"):
        person = person.removesuffix("Multilingual") + " (multilingual)"
    return Voice(id=voice_id, name=person, locale=match["locale"], gender=gender, engine="edge")


def builtin_edge_voices() -> list[Voice]:
    """A fresh copy each call: callers may sort or filter it."""
    voices = [edge_voice(voice_id, gender) for voice_id, gender in _EDGE_VOICES]
    return [v for v in voices if v is not None]


def language_of(locale_or_id: str) -> str:
    """"ru-RU-SvetlanaNeural" / "ru-RU" / "ru" → "ru"."""
    return locale_or_id.split("-", 1)[0].lower()
