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

This module runs the baselines (grouped cross-validation, bootstrap) and reads and writes the files; the features
they score are `audit_features`'s, the report (audit.json, audit.png, the table) is `audit_report`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.pairs.audit_features import Corpus, bow_features, scalar_features
from trainer.pairs.audit_report import SHORTCUT_BOUND, AuditReport, BaselineRow, BestBaseline, write_report
from trainer.pairs.record import PairRecord, load_pairs
from trainer.pairs.split import pair_group

RESAMPLES = 1000
MAX_FOLDS = 5
MIN_CV_GROUPS = 2
"""Grouped cross-validation needs at least this many groups (one to train on, one to test)."""
DECIMALS = 4


class AuditError(ValueError):
    """A user error (missing or unreadable file, too few pairs); the CLI prints it without a traceback."""


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
    fold_of = np.asarray(folds)
    decision_forward = np.zeros(len(fold_of))
    decision_backward = np.zeros(len(fold_of))
    for fold in np.unique(fold_of):
        train, test = fold_of != fold, fold_of == fold
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
    corpus = Corpus.build(
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
    best_name, best_accuracy = max(  # the first on a tie
        ((row.name, row.accuracy) for row in rows if row.accuracy is not None), key=lambda item: item[1]
    )
    return AuditReport(
        pairs=len(pairs),
        groups=len(distinct),
        folds=folds_used,
        seed=seed,
        resamples=resamples,
        best=BestBaseline(name=best_name, accuracy=best_accuracy),
        passes=best_accuracy <= SHORTCUT_BOUND,
        rows=rows,
    )


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
