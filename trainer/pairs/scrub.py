"""The second masking pass, on a rendered context (`masking.render`'s text), against the pair's own sources: the lines
that hold a line of either patch (`LineScrubber`), the lines that quote a stretch of either patch's added code or
either issue (`StretchScrubber`), and the words of either issue (`mask_terms`). Structure masking (`masking`) misses
what it cannot parse (a `python -c` that rewrites a file, an editor's view after the edit, a thought that quotes the
new code); this pass is what makes the guarantee checkable.

The guarantee (tested): after masking, for every non-trivial line L of the answer's patch — an added or removed line,
whitespace runs collapsed, stripped, at least `min_patch_line_chars` long with a letter, digit or `_` — no line of
either context, whitespace collapsed the same way, contains L as a substring (`leaked_lines` finds any).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from trainer.pairs.diffs import collapse, normalize_newlines
from trainer.pairs.masking import LINE_PLACEHOLDER

# ---------------------------------------------------------------------------------------------------- line scrub


class LineScrubber:
    """Finds the lines of a text that contain any of a set of patch lines: a plain substring test on lines whose
    whitespace runs are collapsed to one space (`diffs.collapse`).

    Fast path, exact: collapsing only rewrites whitespace, so a line that contains a pattern after collapsing holds
    the pattern's longest whitespace-free run verbatim. That run is searched with `str.find` over the whole text (one
    C-level scan per pattern); only the lines where it occurs are collapsed and tested."""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = [p for p in dict.fromkeys(collapse(p) for p in patterns) if p]
        self._runs = [max(p.split(" "), key=len) for p in self.patterns]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, line: str) -> list[str]:
        """The patterns that `line` contains."""
        norm = collapse(line)
        return [pattern for pattern in self.patterns if pattern in norm]

    def hits(self, text: str) -> dict[tuple[int, int], list[str]]:
        """(start, end) of each line (offsets in `text`, end excluding the newline) -> the patterns it contains, for
        every line with at least one."""
        found: dict[tuple[int, int], list[str]] = {}
        for pattern, run in zip(self.patterns, self._runs):
            position = text.find(run)
            while position != -1:
                start = text.rfind("\n", 0, position) + 1
                end = text.find("\n", position)
                end = len(text) if end == -1 else end
                if pattern in collapse(text[start:end]):
                    found.setdefault((start, end), []).append(pattern)
                position = text.find(run, end)
        return found

    def scrub(self, text: str) -> tuple[str, int]:
        """(text with every matching line replaced by LINE_PLACEHOLDER, how many lines were replaced)."""
        hits = self.hits(text) if self else {}
        if not hits:
            return text, 0
        pieces: list[str] = []
        previous = 0
        for start, end in sorted(hits):
            pieces += [text[previous:start], LINE_PLACEHOLDER]
            previous = end
        pieces.append(text[previous:])
        return "".join(pieces), len(hits)


def leaked_lines(text: str, patch_lines: Iterable[str]) -> list[str]:
    """The patch lines that some line of `text` contains (the masking check: empty when masking held)."""
    scrubber = LineScrubber(patch_lines)
    found = {pattern for patterns in scrubber.hits(text).values() for pattern in patterns}
    return [pattern for pattern in scrubber.patterns if pattern in found]


# ------------------------------------------------------------------------------------------------- stretch scrub

QUOTE_WIDTH = 40
"""A stretch of this many characters (whitespace collapsed) shared with a patch's added code or an issue's text is a
quote: the line holding it is masked (the acceptance check's unit)."""
MIN_TITLE_CHARS = 12
"""An issue title shorter than this (`Bug`, `Typo in docs`) is too common to count as a quote of the issue."""


class StretchScrubber:
    """Masks every line that shares a QUOTE_WIDTH-character stretch with one of the source texts (the patches'
    added code, the issues' text: what an agent copies into its notes, scripts and restatements), or that contains
    one of the titles. Lines are compared with whitespace collapsed (`diffs.collapse`), source lines one by one.

    Exact and fast enough without a string-matching library: the sources' windows go in a set (a few thousand for a
    patch and an issue) and each context line is scanned window by window (~3 ms for a 60 kB trajectory)."""

    def __init__(self, sources: Iterable[str], titles: Iterable[str] = (), width: int = QUOTE_WIDTH):
        self.width = width
        self.windows: set[str] = set()
        for source in sources:
            for line in normalize_newlines(source).split("\n"):
                norm = collapse(line)
                self.windows.update(norm[i : i + width] for i in range(len(norm) - width + 1))
        self.titles = [t for t in dict.fromkeys(collapse(t).lower() for t in titles) if len(t) >= MIN_TITLE_CHARS]

    def line_hits(self, line: str) -> bool:
        norm = collapse(line)
        width = self.width
        if len(norm) >= width and any(norm[i : i + width] in self.windows for i in range(len(norm) - width + 1)):
            return True
        lowered = norm.lower()
        return any(title in lowered for title in self.titles)

    def scrub(self, text: str) -> tuple[str, int]:
        """(text with every line that quotes a source replaced by LINE_PLACEHOLDER, how many lines were replaced)."""
        if not self.windows and not self.titles:
            return text, 0
        lines = text.split("\n")
        count = 0
        for index, line in enumerate(lines):
            if line != LINE_PLACEHOLDER and self.line_hits(line):
                lines[index] = LINE_PLACEHOLDER
                count += 1
        return "\n".join(lines), count


def added_lines(patch: str | None) -> list[str]:
    """The `+` lines of a unified diff (headers left out), without their marker."""
    if not patch:
        return []
    return [
        line[1:]
        for line in normalize_newlines(patch).split("\n")
        if line.startswith("+") and not line.startswith("+++")
    ]


def issue_title(issue: str) -> str:
    """The issue's first non-empty line (GitHub issues open with their title)."""
    return next((line.strip() for line in normalize_newlines(issue).split("\n") if line.strip()), "")


# --------------------------------------------------------------------------------------------------- issue terms

TERM_PLACEHOLDER = "[issue term]"


_TOKEN = re.compile(r"[A-Za-z0-9_]+")


def mask_terms(text: str, terms: Iterable[str]) -> tuple[str, int]:
    """(text with every whole-word occurrence of `terms` (case-insensitive; a word is a run of letters, digits and
    `_`) replaced by TERM_PLACEHOLDER, how many were replaced). One tokenizing pass with a set look-up per word: an
    alternation of a few hundred terms under IGNORECASE is ~20× slower on a 60 kB trajectory."""
    wanted = {term.lower() for term in terms}
    if not wanted:
        return text, 0
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if match.group(0).lower() in wanted:
            count += 1
            return TERM_PLACEHOLDER
        return match.group(0)

    return _TOKEN.sub(replace, text), count
