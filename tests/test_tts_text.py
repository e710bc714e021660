"""Text cleanup before synthesis, and the blocklist check."""

from __future__ import annotations

import pytest

from ttboost.tts.text import LINK_WORD, MAX_REPEAT, clean_text, contains_blocked

assert LINK_WORD == "link" and MAX_REPEAT == 3


@pytest.mark.parametrize(("raw", "spoken"), [
    ("смотри https://example.com/a?b=1, круто!", "смотри link, круто!"),
    ("HTTP://EXAMPLE.COM", "link"),
    ("go to www.test.org.", "go to link."),
    ("join t.me/mychannel now", "join link now"),
    ("сайт.рф лучший", "link лучший"),
    ("see example.com and youtube.com/watch?v=x", "see link and link"),
    ("(см. https://x.ru/a)", "(см. link)"),
    ("ok.by the way", "ok.by the way"),  # a missing space after a full stop is not a link
    ("hi.how are you", "hi.how are you"),
])
def test_urls_become_link(raw, spoken):
    assert clean_text(raw, 200) == spoken


@pytest.mark.parametrize(("raw", "spoken"), [
    ("Привет 😀😀😀 мир👍🏻", "Привет мир"),
    ("hi😀there", "hi there"),  # a removed emoji still separates words
    ("👨‍👩‍👧 family 🇷🇺", "family"),
    ("1️⃣ #️⃣ ♥ ✨ ©", "1 #"),
    ("Привет, как дела?", "Привет, как дела?"),
    ("Слава Україні! Ґанок, їжак", "Слава Україні! Ґанок, їжак"),
    ("你好，世界！🎉", "你好,世界!"),  # NFKC turns full-width punctuation into ASCII
    ("こんにちは 안녕하세요", "こんにちは 안녕하세요"),
    ("مرحبا بالعالم 🌙", "مرحبا بالعالم"),
    ("نَصٌّ مُشَكَّلٌ", "نَصٌّ مُشَكَّلٌ"),  # Arabic harakat are kept
    ("नमस्ते दुनिया", "नमस्ते दुनिया"),  # Devanagari vowel signs and virama are kept
    ("Tiếng Việt, Zürich, café", "Tiếng Việt, Zürich, café"),
    ("𝓗𝓮𝓵𝓵𝓸 ＷＯＲＬＤ", "Hello WORLD"),
    ("цена 100$, 5€, +1 = 2, 25°, №5, 10 м², ½, Brand™", "цена 100$, 5€, +1 = 2, 25°, №5, 10 м², 1/2, Brand"),
])
def test_emoji_removed_every_script_kept(raw, spoken):
    assert clean_text(raw, 200) == spoken


@pytest.mark.parametrize(("raw", "spoken"), [
    ("ааааааааааа", "ааа"),
    ("ура!!!!!!!!", "ура!!!"),
    ("нууууу даааааа!!!!!!", "нууу дааа!!!"),
    ("ооо", "ооо"),
    ("1000000 лайков", "1000000 лайков"),  # digits are numbers, not spam
])
def test_repeated_characters_collapsed(raw, spoken):
    assert clean_text(raw, 200) == spoken


@pytest.mark.parametrize("raw", ["😀🎉👍🏻❤️", "!!! ... ???", "   ", "", "\x00\x07", "♥♥♥ ©", "$$$ +++"])
def test_nothing_speakable_is_empty(raw):
    assert clean_text(raw, 200) == ""


def test_control_characters_and_whitespace():
    assert clean_text("a\x00b\x07c\u200bd\u202ee\ufeff", 200) == "abcde"
    assert clean_text("  line1\n\nline2\tend \r\n", 200) == "line1 line2 end"
    assert clean_text("می\u200cخواهم", 200) == "میخواهم"  # ZWNJ dropped, not turned into a word break
    zalgo = "H" + "\u0301\u0300\u0302\u0303\u0304" * 4 + "i"
    assert clean_text(zalgo, 200) == "H\u0301\u0300\u0302\u0303i"  # "Zalgo" stacks capped at 4 marks


def test_cut_on_word_boundary():
    text = "one two three four five"
    assert clean_text(text, 9) == "one two"
    assert clean_text(text, 7) == "one two"
    assert clean_text(text, 8) == "one two"
    assert clean_text(text, 100) == text
    long = "Привет " * 100
    cut = clean_text(long, 50)
    assert len(cut) <= 50 and cut.endswith("Привет") and "Приве " not in cut + " "


def test_giant_word_is_cut_hard():
    assert clean_text("abcdefghijklmnop", 5) == "abcde"
    assert clean_text("नमस्ते", 3) == "नम"  # never between a letter and its marks


def test_cut_leaving_only_punctuation_is_empty():
    assert clean_text("!!! ааааа", 3) == ""
    assert clean_text("hello", 0) == ""


def test_huge_input_is_bounded():
    assert len(clean_text("слово " * 100_000, 100)) <= 100


def test_blocklist():
    words = ["плохое", "BadWord", "  spaced  out "]
    assert contains_blocked("Это ПЛОХОЕ слово", words)
    assert contains_blocked("xxbadwordxx", words)  # substring: slurs hide inside longer words
    assert contains_blocked("baaaadword!", words)  # stretched letters do not hide it
    assert contains_blocked("so SPACED   OUT", words)
    assert contains_blocked("Ёлка", ["елка"]) and contains_blocked("елка", ["ёлка"])
    assert not contains_blocked("хорошее слово", words)
    assert not contains_blocked("anything", ["", "   "])
    assert not contains_blocked("anything", [])


def test_fast_character_filter_matches_the_character_loop():
    """_filter_chars uses str.translate unless combining marks need the loop: both give the same text."""
    import random

    from ttboost.tts.text import _filter_chars, _filter_chars_each

    rng = random.Random(3)
    pools = ("abc XYZ 019 ,.!?:/-_@#$%^&*()<>~|\t\n\x00\x7f+=°№", "привет ёЁ", "😀🔥👍🏽❤️‍🔥™²½⁄€",
             "\u0301\u0308\u20dd\ufe0f\u200d\u200c\u202e\ue000", "नमस्ते مَرحبا Tiếng ＦＵＬＬ　")
    for _ in range(5000):
        text = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 40)))
        assert _filter_chars(text) == _filter_chars_each(text), repr(text)
    for code in range(0, 0x3000):
        assert _filter_chars(f"a{chr(code)}b") == _filter_chars_each(f"a{chr(code)}b"), hex(code)


def test_empty_blocklist_of_any_kind_blocks_nothing():
    for empty in ([], (), set(), iter(())):
        assert not contains_blocked("anything at all", empty)
