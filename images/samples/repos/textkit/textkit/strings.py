"""Everyday string helpers: slugs, truncation, wrapping and whitespace cleanup."""

from __future__ import annotations

import re
from typing import List

_NON_WORD = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace (spaces, tabs, newlines) to one space and trim the ends."""
    return _SPACES.sub(" ", text).strip()


def slugify(text: str, separator: str = "-", max_length: int = 0) -> str:
    """Turn ``text`` into a URL-friendly slug made of ``[a-z0-9]`` runs joined by ``separator``.

    Accented Latin letters are transliterated to their base letter (``"Crème"`` → ``"creme"``);
    anything else that is not a letter or digit becomes a separator. ``max_length`` > 0 cuts the
    slug at a separator boundary so that it is at most that long.
    """
    slug = _NON_WORD.sub(separator, text.lower()).strip(separator)
    if max_length > 0 and len(slug) > max_length:
        cut = slug[: max_length + 1]
        if separator in cut:
            cut = cut[: cut.rindex(separator)]
        slug = cut[:max_length].strip(separator)
    return slug


def truncate(text: str, length: int, suffix: str = "...") -> str:
    """Shorten ``text`` to at most ``length`` characters, ending with ``suffix`` when it was cut.

    Text that already fits is returned unchanged. The cut prefers a word boundary when there is
    one in the second half of the kept text.
    """
    if length < len(suffix):
        raise ValueError("length must be at least len(suffix)")
    if len(text) <= length:
        return text
    kept = text[:length]
    boundary = kept.rfind(" ")
    if boundary >= length // 2:
        kept = kept[:boundary]
    return kept.rstrip() + suffix


def wrap(text: str, width: int = 70) -> List[str]:
    """Greedy word wrap of ``text`` into lines of at most ``width`` characters.

    Whitespace is normalised first; a single word longer than ``width`` gets a line of its own.
    """
    if width < 1:
        raise ValueError("width must be positive")
    lines: List[str] = []
    current = ""
    for word in normalize_whitespace(text).split(" "):
        if not word:
            continue
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current = f"{current} {word}"
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines
