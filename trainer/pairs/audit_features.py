"""What the shortcut audit's label-blind baselines read off a pair (audit.py's docstring lists the baselines): per
context, its TF-IDF similarity to the query, the query's rare words in it, the answer's identifiers in it, whether it
quotes the query, its length and its masks (`scalar_features`), and its bag of words with the words it shares with the
query and the answer (`bow_features`). Every text of the set is tokenised once (`Corpus`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.pairs.masking import LINE_PLACEHOLDER, PLACEHOLDER
from trainer.pairs.record import PairRecord

TITLE_MIN_CHARS = 12
QUOTE_CHARS = 40
RARE_QUANTILE = 0.25
"""A query word is rare when its document frequency over the contexts is at most this quantile of the vocabulary's.
Word frequencies are Zipfian, so in a real set this is usually 1 (a word of one context only); the median would let in
mid-frequency words wherever the vocabulary is flat, and those sit in both options."""
TOKEN_PATTERN = r"(?u)\b[A-Za-z_][A-Za-z0-9_]+\b"
"""Identifier-like words of two or more characters (numbers, line numbers and hashes are not words here)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BACKTICKED = re.compile(r"`([^`\n]+)`")
_COMPOUND = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|/|::)[A-Za-z_][A-Za-z0-9_]*)+")
_SNAKE = re.compile(r"\b_*[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]*\b")
_CAMEL = re.compile(r"\b(?:[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*|[a-z][a-z0-9]*[A-Z][A-Za-z0-9]*)\b")
_GENERIC_PARTS = frozenset({"src", "lib", "py", "self", "cls", "test", "tests"})
"""Path and dotted-name parts too common to point at anything."""


def collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def issue_title(query: str) -> str | None:
    """The first non-empty line of the issue (markdown heading marks stripped), when it is long enough to be a quote
    and not a coincidence."""
    for line in query.splitlines():
        title = collapse_whitespace(line.strip().lstrip("#").strip())
        if title:
            return title if len(title) >= TITLE_MIN_CHARS else None
    return None


class QuoteFinder:
    """Does a text contain the issue's title or any QUOTE_CHARS-long stretch of it (whitespace collapsed)?

    Searching a long trajectory for every 40-character window of Q is quadratic; instead Q's windows (40 characters)
    and half-windows (20) at every offset go into sets, and the text is probed at a stride of 20: any common stretch
    of 40 characters covers one probe completely, so only a probe that is a half-window of Q is checked, at the 21
    alignments of a 40-character window around it (a bounded cost per probe, however repetitive Q is)."""

    def __init__(self, query: str) -> None:
        self.title = issue_title(query)
        flat = collapse_whitespace(query)
        self.half = QUOTE_CHARS // 2
        self.halves = {flat[start : start + self.half] for start in range(len(flat) - self.half + 1)}
        self.windows = {flat[start : start + QUOTE_CHARS] for start in range(len(flat) - QUOTE_CHARS + 1)}

    def __call__(self, text: str) -> bool:
        text = collapse_whitespace(text)
        if self.title and self.title in text:
            return True
        if not self.windows:
            return False
        for probe in range(0, len(text) - self.half + 1, self.half):
            if text[probe : probe + self.half] in self.halves:
                for start in range(max(0, probe - self.half), min(probe, len(text) - QUOTE_CHARS) + 1):
                    if text[start : start + QUOTE_CHARS] in self.windows:
                        return True
        return False


def answer_identifiers(answer: str) -> list[str]:
    """Identifiers the answer names: backticked spans (whole, when they hold no space, and every identifier inside)
    and, anywhere in the text, dotted names, paths, `::` names, snake_case and CamelCase; compound names add their
    parts (path components, the file's basename, dotted segments) unless generic. Sorted, distinct."""
    found: set[str] = set()
    for span in _BACKTICKED.findall(answer):
        span = span.strip()
        if span and not any(ch.isspace() for ch in span) and len(span) >= 3:
            found.add(span.strip("()[]{},;:"))
        found.update(_COMPOUND.findall(span))
        found.update(token for token in _IDENTIFIER.findall(span) if len(token) >= 3)
    outside = _BACKTICKED.sub(" ", answer)
    for pattern in (_COMPOUND, _SNAKE, _CAMEL):
        found.update(pattern.findall(outside))
    for name in list(found):
        if "/" in name:
            found.add(name.rsplit("/", 1)[1])  # the basename: `unittest.py`
        found.update(
            part
            for part in re.split(r"[./:()\[\],]+", name)
            if len(part) >= 3 and part.lower() not in _GENERIC_PARTS and _IDENTIFIER.fullmatch(part)
        )
    return sorted(name for name in found if len(name) >= 3 and name.lower() not in _GENERIC_PARTS)


def mask_count(text: str) -> int:
    return text.count(PLACEHOLDER) + text.count(LINE_PLACEHOLDER)


@dataclass
class Corpus:
    """The set's texts, each distinct text once, tokenised once (one CountVectorizer pass feeds TF-IDF, the rare words,
    the identifier look-up and the bag of words)."""

    texts: list[str]
    counts: Any
    """csr (texts × vocabulary) word counts, lower-cased identifier tokens."""
    vocabulary: dict[str, int]
    index: dict[str, int]

    @classmethod
    def build(cls, texts: Sequence[str]) -> Corpus:
        from sklearn.feature_extraction.text import CountVectorizer

        distinct = list(dict.fromkeys(texts))
        vectorizer = CountVectorizer(token_pattern=TOKEN_PATTERN, lowercase=True, dtype=np.float64)
        counts = vectorizer.fit_transform(distinct).tocsr()
        return cls(
            distinct,
            counts,
            {word: int(column) for word, column in vectorizer.vocabulary_.items()},
            {text: row for row, text in enumerate(distinct)},
        )

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.index[text] for text in texts], dtype=np.int64)

    def words(self, row: int) -> set[int]:
        return set(self.counts.indices[self.counts.indptr[row] : self.counts.indptr[row + 1]].tolist())


FEATURES = ("issue_tfidf", "issue_rare_words", "answer_identifiers", "issue_quote", "log_length", "log_masks")


def _row_dot(left: Any, right: Any) -> np.ndarray:
    """Row-wise dot products of two sparse matrices with the same shape."""
    return np.asarray(left.multiply(right).sum(axis=1)).ravel()


def scalar_features(pairs: Sequence[PairRecord], corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """(features of C+, features of C−), each pairs × FEATURES."""
    from sklearn.feature_extraction.text import TfidfTransformer

    queries = corpus.rows([pair.query for pair in pairs])
    sides = {
        "positive": corpus.rows([pair.positive for pair in pairs]),
        "negative": corpus.rows([pair.negative for pair in pairs]),
    }
    context_rows = np.unique(np.concatenate(list(sides.values())))
    # TF-IDF over the distinct queries and contexts (what TfidfVectorizer(sublinear_tf=True) fits, tokenised once)
    fitted_on = np.unique(np.concatenate([queries, context_rows]))
    tfidf = TfidfTransformer(sublinear_tf=True).fit(corpus.counts[fitted_on]).transform(corpus.counts)
    # rare words: document frequency over the distinct contexts at most the vocabulary's RARE_QUANTILE
    present = (corpus.counts[context_rows] > 0).astype(np.float64)
    frequency = np.asarray(present.sum(axis=0)).ravel()
    threshold = float(np.quantile(frequency[frequency > 0], RARE_QUANTILE)) if (frequency > 0).any() else 0.0
    rare = (frequency > 0) & (frequency <= threshold)
    binary = (corpus.counts > 0).astype(np.float64).tocsr()
    rare_query = binary[queries].multiply(rare[np.newaxis, :].astype(np.float64)).tocsr()

    identifiers = {pair.answer: answer_identifiers(pair.answer) for pair in pairs}
    quoting = {query: QuoteFinder(query) for query in dict.fromkeys(pair.query for pair in pairs)}
    context_words: dict[int, set[int]] = {}

    def identifier_count(answer: str, row: int) -> int:
        text = corpus.texts[row]
        if row not in context_words:
            context_words[row] = corpus.words(row)
        words = context_words[row]
        count = 0
        for name in identifiers[answer]:
            if _IDENTIFIER.fullmatch(name):
                column = corpus.vocabulary.get(name.lower())
                count += column is not None and column in words
            else:
                count += name in text  # dotted names and paths: verbatim
        return count

    out = []
    for side in ("positive", "negative"):
        rows = sides[side]
        columns = [
            _row_dot(tfidf[queries], tfidf[rows]),
            _row_dot(rare_query, binary[rows]),
            np.array([identifier_count(pair.answer, row) for pair, row in zip(pairs, rows)], dtype=np.float64),
            np.array([float(quoting[pair.query](corpus.texts[row])) for pair, row in zip(pairs, rows)]),
            np.log1p([len(corpus.texts[row]) for row in rows]),
            np.log1p([mask_count(corpus.texts[row]) for row in rows]),
        ]
        out.append(np.column_stack(columns))
    return out[0], out[1]


def bow_features(pairs: Sequence[PairRecord], corpus: Corpus) -> tuple[Any, Any]:
    """(bag of words of C+, of C−): the context's words, its words shared with Q and its words shared with A, three
    binary blocks, each L2-normalised (so a long trajectory is not a large vector, and the overlap blocks still grow
    with the number of shared words)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    binary = (corpus.counts > 0).astype(np.float64).tocsr()
    # the answers in the corpus's vocabulary (a word of A that no context has cannot be shared with one)
    answer_rows = (
        CountVectorizer(
            token_pattern=TOKEN_PATTERN, lowercase=True, vocabulary=corpus.vocabulary, binary=True, dtype=np.float64
        )
        .transform([pair.answer for pair in pairs])
        .tocsr()
    )
    query_rows = binary[corpus.rows([pair.query for pair in pairs])]
    out = []
    for side in ("positive", "negative"):
        context = binary[corpus.rows([getattr(pair, side) for pair in pairs])]
        blocks = [context, context.multiply(query_rows), context.multiply(answer_rows)]
        out.append(sparse.hstack([normalize(sparse.csr_matrix(block)) for block in blocks]).tocsr())
    return out[0], out[1]
