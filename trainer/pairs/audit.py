"""The shortcut audit of a contrastive pair set: can label-blind heuristics pick the positive context?

    python -m trainer.pairs audit --pairs pairs.jsonl [--out DIR] [--seed N] [--fail-above 0.6]

A pair (Q, A, C+, C−) asks a model which context supports the answer A to the query Q. L_CA is meant to teach reading
the contexts; if a rule that never reads them for meaning — word overlap with the issue, the length of the
trajectory, a bag of words — picks C+ far above chance, the set is a *shortcut set*: the model can learn the rule
instead (DESIGN.md, principle 12). The audit runs such rules and reports each one's accuracy with a 95% bootstrap
confidence interval; the set passes when the best of them stays at or under `SHORTCUT_BOUND` (0.60).

Baselines. Each scores a context from (Q, A, context) alone and picks the option with the higher score; none sees
the label:

- `issue_tfidf`: TF-IDF cosine between Q and the context (identifier tokens, sublinear tf; fitted on the distinct
  queries and contexts of the set, so a mirrored trajectory is not counted twice).
- `issue_rare_words`: how many of Q's rare words the context contains; a word is rare when its document frequency
  over the set's distinct contexts is at most the lower quartile over the contexts' vocabulary (`RARE_QUANTILE`).
  Common words are in both options and say nothing; rare ones are what a grep for the issue finds.
- `answer_identifiers`: how many identifiers named in A (backticked spans, and dotted names, paths, snake_case and
  CamelCase tokens, with their parts) the context contains. The miner masks patch contents but not the files and
  functions the agent looked at, so this is the most direct leak of the answer.
- `issue_quote`: the context quotes the issue — its title (first non-empty line of Q, at least 12 characters) or any
  40-character stretch of Q, whitespace collapsed. The miner replaces the issue text with a placeholder; a quote that
  got through (a reproduction script's output, an echoed title) names the positive.
- `longer` / `shorter` (characters), `more_masks` / `fewer_masks` (`[patch content masked]` and `[line masked]`
  placeholders): a label-blind rule may go either way, so both directions are rows of their own. A successful
  trajectory that edits more has more masks; a failed one often runs longer.
- `less_issue_tfidf`, `fewer_issue_rare_words`, `fewer_answer_identifiers`, `no_issue_quote`: the four overlap rules
  inverted. Picking the context with *less* overlap sounds perverse, but a set built by removing the pairs that the
  overlap rules solve (adversarial filtering) can end up with C− the closer one, and a model would learn that as
  readily: the bound holds in both directions.
- `bow_classifier`: logistic regression on the difference of two bag-of-words vectors, x(first option) −
  x(second option), each x the context's words plus its words shared with Q and with A (binary, each block
  L2-normalised); the label is whether the first option is the positive.
- `feature_classifier`: logistic regression on the differences of the scalar features above (TF-IDF cosine, rare
  words, answer identifiers, quote, log length, log masks), standardised.

Both orders. Every pair is scored as (C+, C−) and as (C−, C+), as the model sees it
(`record.balanced_presentations`), so a rule that favours a position cannot score above chance. The scalar rules are
symmetric and give the same answer in both orders; the classifiers have no intercept, so their decision is
antisymmetric too (an intercept could only learn a position, which the balanced orders make worthless).

Ties. A rule that cannot tell the options apart (equal scores, a zero decision) scores 0.5 for that order: it is at
chance there, not right or wrong. The `ties` column shows how often that happened; a rule that mostly ties is blind,
not clean.

Grouped cross-validation. The classifiers are trained and tested on different pairs (`GroupKFold`, up to 5 folds), and
a group (`split.pair_group`: the miner's `provenance["group"]`, shared by the mirrored pairs A/B and B/A of two
issues) never straddles folds: a classifier that saw A/B in training would meet the same two trajectories in B/A at
test time and could score by remembering them instead of by a cue that generalises. With fewer than two groups the
classifiers are skipped, with the reason. The bootstrap resamples groups, for the same reason: mirrored pairs are not
independent evidence.

Same pairs + seed → byte-identical audit.json (numbers rounded to 4 decimals, no paths or timings in it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from trainer.pairs.masking import LINE_PLACEHOLDER, PLACEHOLDER
from trainer.pairs.record import PairRecord, load_pairs
from trainer.pairs.split import pair_group

AUDIT_VERSION = 1
SHORTCUT_BOUND = 0.60
"""A set passes when no baseline's accuracy exceeds this. Chance is 0.5; with a few hundred pairs the bootstrap
interval of a chance-level rule is about ±0.05, so 0.60 is beyond noise but loose enough for real sets to meet."""
RESAMPLES = 1000
MAX_FOLDS = 5
MIN_CV_GROUPS = 2
"""Grouped cross-validation needs at least this many groups (one to train on, one to test)."""
TITLE_MIN_CHARS = 12
QUOTE_CHARS = 40
RARE_QUANTILE = 0.25
"""A query word is rare when its document frequency over the contexts is at most this quantile of the vocabulary's.
Word frequencies are Zipfian, so in a real set this is usually 1 (a word of one context only); the median would let in
mid-frequency words wherever the vocabulary is flat, and those sit in both options."""
TOKEN_PATTERN = r"(?u)\b[A-Za-z_][A-Za-z0-9_]+\b"
"""Identifier-like words of two or more characters (numbers, line numbers and hashes are not words here)."""
DECIMALS = 4

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BACKTICKED = re.compile(r"`([^`\n]+)`")
_COMPOUND = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|/|::)[A-Za-z_][A-Za-z0-9_]*)+")
_SNAKE = re.compile(r"\b_*[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]*\b")
_CAMEL = re.compile(r"\b(?:[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*|[a-z][a-z0-9]*[A-Z][A-Za-z0-9]*)\b")
_GENERIC_PARTS = frozenset({"src", "lib", "py", "self", "cls", "test", "tests"})
"""Path and dotted-name parts too common to point at anything."""


class AuditError(ValueError):
    """A user error (missing or unreadable file, too few pairs); the CLI prints it without a traceback."""


class BaselineRow(BaseModel):
    """One baseline's result. `accuracy` and the interval are None when the baseline was skipped (`skipped` says
    why)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    ties: float | None
    """Fraction of (pair, order) decisions that were ties (scored 0.5)."""
    shortcut: bool
    """accuracy > the bound."""
    description: str
    skipped: str | None = None


class BestBaseline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    accuracy: float


class AuditReport(BaseModel):
    """The audit of one pair set (audit.json)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = AUDIT_VERSION
    pairs: int
    groups: int
    folds: int
    """Cross-validation folds of the classifiers (0 when they were skipped)."""
    seed: int
    resamples: int
    bound: float = SHORTCUT_BOUND
    best: BestBaseline
    passes: bool
    """best.accuracy ≤ bound."""
    rows: list[BaselineRow]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"

    def table(self) -> Any:
        """A rich Table of the rows; accuracies over the bound in red, the best in bold."""
        from rich.table import Table

        verdict = "[green]passes[/green]" if self.passes else "[red]shortcut set[/red]"
        table = Table(
            title=f"shortcut audit: {self.pairs} pairs, {self.groups} groups — best {self.best.name} "
            f"{self.best.accuracy:.3f} vs bound {self.bound:.2f}: {verdict}"
        )
        table.add_column("baseline")
        table.add_column("accuracy", justify="right")
        table.add_column("95% CI", justify="right")
        table.add_column("ties", justify="right")
        table.add_column("what it does", style="dim")
        for row in self.rows:
            if row.accuracy is None:
                table.add_row(row.name, "skipped", "", "", f"{row.description} ({row.skipped})")
                continue
            style = "red" if row.shortcut else "green"
            weight = "bold " if row.name == self.best.name else ""
            table.add_row(
                row.name,
                f"[{weight}{style}]{row.accuracy:.3f}[/{weight}{style}]",
                f"{row.ci_low:.3f}–{row.ci_high:.3f}",
                f"{row.ties:.2f}",
                row.description,
            )
        return table

    def plot(self, path: Path) -> Path:
        """Horizontal bars of the accuracies with their 95% intervals, chance (0.5) and the bound (dashed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [row.name for row in self.rows]
        accuracies = [row.accuracy if row.accuracy is not None else 0.0 for row in self.rows]
        # a percentile interval need not contain the point estimate (a skewed resample distribution, rounding), and
        # matplotlib refuses negative whiskers
        low = [max(0.0, row.accuracy - row.ci_low) if row.accuracy is not None else 0.0 for row in self.rows]
        high = [max(0.0, row.ci_high - row.accuracy) if row.accuracy is not None else 0.0 for row in self.rows]
        colors = ["#c44e52" if row.shortcut else "#4c72b0" for row in self.rows]
        figure, axis = plt.subplots(figsize=(8, 0.42 * len(names) + 1.4), layout="constrained")
        axis.barh(
            range(len(names)),
            accuracies,
            xerr=[low, high],
            color=colors,
            capsize=3,
            error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        for index, row in enumerate(self.rows):
            label = " skipped" if row.accuracy is None else f" {row.accuracy:.2f}"
            axis.text(row.ci_high if row.ci_high is not None else 0.0, index, label, va="center", fontsize=8)
        axis.axvline(0.5, color="black", linewidth=1, label="chance (0.5)")
        axis.axvline(self.bound, color="#c44e52", linestyle="--", linewidth=1, label=f"bound ({self.bound:.2f})")
        axis.set_yticks(range(len(names)), names)
        axis.invert_yaxis()
        axis.set_xlim(0, 1.1)
        axis.set_xlabel("accuracy over both option orders (95% bootstrap CI)")
        axis.set_title(
            f"shortcut audit ({self.pairs:,} pairs, {self.groups:,} groups): "
            f"{'passes' if self.passes else 'shortcut set'}",
            fontsize=10,
        )
        figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)  # clear of the bars
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path


# ---------------------------------------------------------------------------------------------------------- features


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
class _Corpus:
    """The set's texts, each distinct text once, tokenised once (one CountVectorizer pass feeds TF-IDF, the rare words,
    the identifier look-up and the bag of words)."""

    texts: list[str]
    counts: Any
    """csr (texts × vocabulary) word counts, lower-cased identifier tokens."""
    vocabulary: dict[str, int]
    index: dict[str, int]

    @classmethod
    def build(cls, texts: Sequence[str]) -> _Corpus:
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


def scalar_features(pairs: Sequence[PairRecord], corpus: _Corpus) -> tuple[np.ndarray, np.ndarray]:
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


def bow_features(pairs: Sequence[PairRecord], corpus: _Corpus) -> tuple[Any, Any]:
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


# ------------------------------------------------------------------------------------------------------ evaluation


def _group_codes(groups: Sequence[str], distinct: Sequence[str]) -> np.ndarray:
    """Each item's index in `distinct` (the sorted distinct groups)."""
    position = {group: index for index, group in enumerate(distinct)}
    return np.array([position[group] for group in groups], dtype=np.int64)


def pick(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """1 where the first option wins, 0 where the second does, 0.5 on a tie."""
    return np.where(first > second, 1.0, np.where(first < second, 0.0, 0.5))


def assign_folds(groups: Sequence[str], max_folds: int = MAX_FOLDS) -> list[int]:
    """The cross-validation fold of each item (GroupKFold with min(max_folds, distinct groups) folds): items of one
    group share a fold. Deterministic (GroupKFold without shuffling balances folds by group size)."""
    from sklearn.model_selection import GroupKFold

    distinct = sorted(set(groups))
    if len(distinct) < MIN_CV_GROUPS:
        raise AuditError(f"grouped cross-validation needs at least {MIN_CV_GROUPS} groups, got {len(distinct)}")
    codes = _group_codes(groups, distinct)
    folds = np.full(len(groups), -1, dtype=np.int64)
    splitter = GroupKFold(n_splits=min(max_folds, len(distinct)))
    for fold, (_, test) in enumerate(splitter.split(np.zeros((len(groups), 1)), groups=codes)):
        folds[test] = fold
    return folds.tolist()


def cross_validated(
    positive: Any, negative: Any, folds: Sequence[int], make_model: Callable[[], Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out decisions of a classifier on feature differences, for the pairs shown as (C+, C−) and as (C−, C+).

    `positive` / `negative` are the features of C+ / C− (pairs × features, dense or sparse); the examples are
    x(C+) − x(C−) labelled 1 (the first option is the positive) and x(C−) − x(C+) labelled 0, both orders of a
    pair in the pair's fold. Returns (decision in order (C+, C−), decision in order (C−, C+)): positive means the
    model picks the first option."""
    difference = positive - negative
    folds = np.asarray(folds)
    decision_forward = np.zeros(len(folds))
    decision_backward = np.zeros(len(folds))
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        features = _vstack([difference[train], -difference[train]])
        labels = np.concatenate([np.ones(int(train.sum())), np.zeros(int(train.sum()))])
        model = make_model().fit(features, labels)
        decision_forward[test] = model.decision_function(difference[test])
        decision_backward[test] = model.decision_function(-difference[test])
    return decision_forward, decision_backward


def _vstack(blocks: list[Any]) -> Any:
    from scipy import sparse

    return sparse.vstack(blocks).tocsr() if sparse.issparse(blocks[0]) else np.vstack(blocks)


def _logistic(scaled: bool) -> Callable[[], Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def make() -> Any:
        # no intercept: the decision stays antisymmetric under swapping the options (see the module docstring)
        model = LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000)
        # with_mean=False: both orders make the training mean exactly zero anyway, and centring would break the
        # antisymmetry by rounding
        return make_pipeline(StandardScaler(with_mean=False), model) if scaled else model

    return make


@dataclass
class _Outcome:
    per_pair: np.ndarray
    """Mean over the two orders of 1 (right), 0 (wrong), 0.5 (tie)."""
    ties: float


def _from_scores(positive: np.ndarray, negative: np.ndarray) -> _Outcome:
    # shown as (C+, C−) it is right when the first option wins; shown as (C−, C+), when the second does
    return _from_orders(pick(positive, negative), 1.0 - pick(negative, positive))


def _from_orders(forward: np.ndarray, backward: np.ndarray) -> _Outcome:
    ties = float(np.mean(np.concatenate([forward == 0.5, backward == 0.5])))
    return _Outcome((forward + backward) / 2, ties)


def _from_decisions(forward: np.ndarray, backward: np.ndarray) -> _Outcome:
    """Held-out decisions (positive: the first option) in the orders (C+, C−) and (C−, C+)."""
    zero = np.zeros_like(forward)
    return _from_orders(pick(forward, zero), 1.0 - pick(backward, zero))


def bootstrap_interval(per_pair: np.ndarray, group_codes: np.ndarray, draws: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of the accuracy over resampled groups (`draws`: resamples × groups of group indices);
    a resample's accuracy is the pairs' mean in the groups drawn, so a large group weighs by its pairs."""
    sums = np.bincount(group_codes, weights=per_pair)
    sizes = np.bincount(group_codes).astype(np.float64)
    accuracies = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    low, high = np.percentile(accuracies, [2.5, 97.5])
    return float(low), float(high)


_DESCRIPTIONS = {
    "issue_tfidf": "TF-IDF cosine of Q and the context",
    "issue_rare_words": "Q's rare words in the context",
    "answer_identifiers": "identifiers named in A in the context",
    "issue_quote": "the context quotes Q's title or 40 chars of Q",
    "less_issue_tfidf": "the context less TF-IDF-similar to Q",
    "fewer_issue_rare_words": "fewer of Q's rare words in the context",
    "fewer_answer_identifiers": "fewer identifiers named in A in the context",
    "no_issue_quote": "the context that does not quote Q",
    "longer": "the longer context",
    "shorter": "the shorter context",
    "more_masks": "the context with more masked patch lines",
    "fewer_masks": "the context with fewer masked patch lines",
    "bow_classifier": "logistic regression on bag-of-words differences (grouped CV)",
    "feature_classifier": "logistic regression on the scalar features' differences (grouped CV)",
}
_SCALAR_ROWS = [
    ("issue_tfidf", 0, 1),
    ("issue_rare_words", 1, 1),
    ("answer_identifiers", 2, 1),
    ("issue_quote", 3, 1),
    ("less_issue_tfidf", 0, -1),
    ("fewer_issue_rare_words", 1, -1),
    ("fewer_answer_identifiers", 2, -1),
    ("no_issue_quote", 3, -1),
    ("longer", 4, 1),
    ("shorter", 4, -1),
    ("more_masks", 5, 1),
    ("fewer_masks", 5, -1),
]
"""(row, feature column, direction)."""


def _round(value: float) -> float:
    return round(value, DECIMALS) + 0.0  # + 0.0: no "-0.0" in the JSON


def _run_baselines(pairs: Sequence[PairRecord], groups: Sequence[str]) -> tuple[dict[str, _Outcome | str], int]:
    """Every baseline's outcome (or the reason it was skipped), in `_DESCRIPTIONS` order, and the folds used."""
    corpus = _Corpus.build(
        [pair.query for pair in pairs] + [pair.positive for pair in pairs] + [pair.negative for pair in pairs]
    )
    positive, negative = scalar_features(pairs, corpus)
    outcomes: dict[str, _Outcome | str] = {}
    for name, column, direction in _SCALAR_ROWS:
        outcomes[name] = _from_scores(direction * positive[:, column], direction * negative[:, column])
    distinct = len(set(groups))
    if distinct < MIN_CV_GROUPS:
        reason = f"needs ≥ {MIN_CV_GROUPS} groups for grouped cross-validation, the set has {distinct}"
        outcomes["bow_classifier"] = outcomes["feature_classifier"] = reason
        return outcomes, 0
    folds = assign_folds(groups)
    bow_positive, bow_negative = bow_features(pairs, corpus)
    outcomes["bow_classifier"] = _from_decisions(
        *cross_validated(bow_positive, bow_negative, folds, _logistic(scaled=False))
    )
    outcomes["feature_classifier"] = _from_decisions(
        *cross_validated(positive, negative, folds, _logistic(scaled=True))
    )
    return outcomes, len(set(folds))


def baseline_outcomes(pairs: Sequence[PairRecord], seed: int = 0) -> dict[str, np.ndarray | str]:
    """Per baseline (in report order), each pair's score over its two orders — 1 solved, 0 wrong, 0.5 at chance
    (ties) — or, for a skipped baseline, the reason. For callers that act on single pairs (the miner's selection
    drops or swaps the pairs a baseline solves); the classifiers' scores are held-out ones. `seed` is accepted for
    symmetry with `audit_pairs`: no baseline draws anything, so the outcomes do not depend on it."""
    del seed
    if len(pairs) < 2:
        raise AuditError(f"the audit needs at least 2 pairs, got {len(pairs)}")
    outcomes, _ = _run_baselines(pairs, [pair_group(pair) for pair in pairs])
    return {name: outcome if isinstance(outcome, str) else outcome.per_pair for name, outcome in outcomes.items()}


def audit_pairs(pairs: Sequence[PairRecord], seed: int = 0, resamples: int = RESAMPLES) -> AuditReport:
    """Run every baseline on `pairs` and return the report. Deterministic in (pairs, seed, resamples); the seed only
    draws the bootstrap resamples."""
    if len(pairs) < 2:
        raise AuditError(f"the audit needs at least 2 pairs, got {len(pairs)}")
    if resamples < 1:
        raise AuditError(f"resamples must be at least 1, got {resamples}")
    groups = [pair_group(pair) for pair in pairs]
    distinct = sorted(set(groups))
    codes = _group_codes(groups, distinct)
    draws = np.random.default_rng(seed).integers(0, len(distinct), size=(resamples, len(distinct)))
    outcomes, folds_used = _run_baselines(pairs, groups)

    rows = []
    for name, description in _DESCRIPTIONS.items():
        outcome = outcomes[name]
        if isinstance(outcome, str):
            rows.append(
                BaselineRow(
                    name=name,
                    accuracy=None,
                    ci_low=None,
                    ci_high=None,
                    ties=None,
                    shortcut=False,
                    description=description,
                    skipped=outcome,
                )
            )
            continue
        accuracy = _round(float(np.mean(outcome.per_pair)))
        low, high = bootstrap_interval(outcome.per_pair, codes, draws)
        rows.append(
            BaselineRow(
                name=name,
                accuracy=accuracy,
                ci_low=_round(low),
                ci_high=_round(high),
                ties=_round(outcome.ties),
                shortcut=accuracy > SHORTCUT_BOUND,
                description=description,
            )
        )
    best = max((row for row in rows if row.accuracy is not None), key=lambda row: row.accuracy)  # first on a tie
    return AuditReport(
        pairs=len(pairs),
        groups=len(distinct),
        folds=folds_used,
        seed=seed,
        resamples=resamples,
        best=BestBaseline(name=best.name, accuracy=best.accuracy),
        passes=best.accuracy <= SHORTCUT_BOUND,
        rows=rows,
    )


def write_report(report: AuditReport, out_dir: str | Path) -> dict[str, Path]:
    """audit.json and audit.png in out_dir (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "audit.json"
    json_path.write_text(report.to_json(), encoding="utf-8")
    return {"json": json_path, "png": report.plot(out_dir / "audit.png")}


def default_out_dir(pairs_path: str | Path) -> Path:
    """`<pairs stem>.audit` beside the pairs file."""
    pairs_path = Path(pairs_path)
    return pairs_path.with_name(pairs_path.stem + ".audit")


def audit_file(
    pairs_path: str | Path,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> tuple[AuditReport, dict[str, Path]]:
    """Load a pairs JSONL, audit it and write the report (default: `default_out_dir`). User errors (a missing file,
    bad records, too few pairs) raise AuditError."""
    pairs_path = Path(pairs_path)
    if not pairs_path.is_file():
        raise AuditError(f"{pairs_path}: no such file")
    try:
        pairs = load_pairs(pairs_path)
    except UnicodeDecodeError as exc:
        raise AuditError(f"{pairs_path}: not UTF-8 text ({exc.reason})") from None
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    if not pairs:
        raise AuditError(f"{pairs_path}: no pair records (empty file)")
    report = audit_pairs(pairs, seed=seed)
    return report, write_report(report, out_dir if out_dir is not None else default_out_dir(pairs_path))
