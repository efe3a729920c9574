import pytest

from textkit.strings import normalize_whitespace, slugify, truncate, wrap


def test_normalize_whitespace():
    assert normalize_whitespace("  a \t b\n\nc  ") == "a b c"


def test_slugify_basic():
    assert slugify("Hello, World!") == "hello-world"
    assert slugify("  --Already--slugged--  ") == "already-slugged"


def test_slugify_separator_and_max_length():
    assert slugify("The quick brown fox", separator="_") == "the_quick_brown_fox"
    assert slugify("The quick brown fox", max_length=12) == "the-quick"


def test_truncate_leaves_short_text_alone():
    assert truncate("short", 10) == "short"


def test_truncate_without_suffix():
    assert truncate("hello world", 5, suffix="") == "hello"


def test_truncate_rejects_tiny_length():
    with pytest.raises(ValueError):
        truncate("anything", 2)


def test_wrap_greedy():
    text = "the quick brown fox jumps over the lazy dog"
    assert wrap(text, 10) == ["the quick", "brown fox", "jumps over", "the lazy", "dog"]


def test_wrap_long_word_gets_own_line():
    assert wrap("a supercalifragilistic word", 8) == ["a", "supercalifragilistic", "word"]
