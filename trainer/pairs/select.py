"""The miner's selection: from a pool of built pair records (a few candidate confounders per anchor, best first),
choose the pairs whose label cannot be read off by a label-blind rule (`audit`).

Two steps, both deterministic:

1. Balance (`balanced_selection`). Anchors are visited in the pool's (seeded) order, their records built a chunk at a
   time until `max_pairs` are chosen. Each anchor takes its first candidate, in preference order, that keeps every
   scalar baseline of the audit balanced: for a baseline k, s_k(pair) = sign(f_k(C+) − f_k(C−)) (+1 when the
   baseline would pick the positive, −1 the negative, 0 on a tie); the running sum S_k over the chosen pairs stays
   within ±max(2, (2·bound − 1)·n), i.e. the baseline picks the positive in at most `bound` of the pairs. When no
   candidate fits, the one that unbalances least is taken (step 2 repairs). A candidate whose two issues already
   form a chosen pair (its mirror) ranks after the others: distinct issue pairs are worth more than mirrors. This is
   "hard confounders chosen to match the baselines' features": the confounder of an anchor whose trajectory talks
   about the issue a lot is one that talks about it as much.
2. Adversarial filtering (`adversarial_filter`), AFLite-style but against the audit itself: while the baseline
   furthest from chance (classifiers included, either direction) is outside [1 − target, target], the pairs it gets
   right (or, below chance, wrong) — as many as its excess — are swapped for their anchor's next untried candidate,
   or dropped when there is none; never below `min_pairs` distinct issue pairs. Which go first: those the most
   baselines solve, then mirrors of a kept pair, then the least preferred. The audit's classifiers are
   cross-validated, so a pair they solve is one that a rule learned from the *other* pairs solves: dropping it
   removes a cue shared across the set, not noise. Both directions count because a set filtered one way can end
   with C− the closer context, which a model would learn as readily.

What this does not do: change any context. The pairs stay faithful to z = (Q, A, C+, C−) — C+ is the trajectory that
made the change A describes, C− a trajectory of another issue that edited the same file; only which confounder is
used, and which anchors are kept, is chosen.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.pairs.record import PairRecord


@dataclass(frozen=True)
class Candidate:
    """One built pool pair: its anchor (position in the pool order), its preference within the anchor (0 best), its
    issue group and where its record is in the store."""

    anchor: int
    rank: int
    group: str
    key: int


class RecordStore:
    """Built pair records in a temporary file (two contexts each: too big to hold a pool of them); the chosen ones
    are cached in memory."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - the store owns it; close() closes it
        self.where: list[tuple[int, int]] = []
        self.cache: dict[int, PairRecord] = {}

    def put(self, record: PairRecord) -> int:
        data = record.model_dump_json().encode()
        self.file.seek(0, os.SEEK_END)
        self.where.append((self.file.tell(), len(data)))
        self.file.write(data)
        return len(self.where) - 1

    def get(self, key: int) -> PairRecord:
        if key not in self.cache:
            offset, size = self.where[key]
            self.file.seek(offset)
            self.cache[key] = PairRecord.model_validate_json(self.file.read(size))
        return self.cache[key]

    def keep_only(self, keys: set[int]) -> None:
        for key in [key for key in self.cache if key not in keys]:
            del self.cache[key]

    def close(self) -> None:
        self.cache.clear()
        self.file.close()


@dataclass
class SelectionLog:
    """What the selection did, for the funnel report."""

    built: int = 0
    balanced: int = 0
    filter_rounds: int = 0
    swapped: int = 0
    dropped: int = 0
    best_before: dict[str, Any] = field(default_factory=dict)
    best_after: dict[str, Any] = field(default_factory=dict)
    stopped: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "built": self.built,
            "balanced": self.balanced,
            "filter_rounds": self.filter_rounds,
            "swapped": self.swapped,
            "dropped": self.dropped,
            "best_before": self.best_before,
            "best_after": self.best_after,
            "stopped": self.stopped,
        }


def _tiebreak(seed: int, *parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\0".join(map(str, (seed, *parts))).encode(), digest_size=8).digest(), "big")


def scalar_signs(records: Sequence[PairRecord]) -> np.ndarray:
    """pairs × scalar baselines of the audit: +1 where the baseline would pick C+, −1 where C−, 0 on a tie."""
    from trainer.pairs.audit_features import Corpus, scalar_features

    corpus = Corpus.build([r.query for r in records] + [r.positive for r in records] + [r.negative for r in records])
    positive, negative = scalar_features(records, corpus)
    return np.sign(positive - negative).astype(np.int64)


Build = Callable[[Any], tuple[PairRecord | None, str | None]]
"""Builds one pool choice's record, or says why it was dropped."""


def balanced_selection(
    pools: Sequence[Sequence[Any]],
    build: Build,
    store: RecordStore,
    pairs_per_anchor: int,
    bound: float,
    max_pairs: int,
    failures: dict[str, int],
    chunk: int = 64,
) -> tuple[list[Candidate], list[int]]:
    """Step 1 of the module docstring over `pools` (one list of choices per anchor, anchors in the order to visit,
    choices best first). Records are built a chunk of anchors at a time, and building stops once `max_pairs` are
    chosen, so a large input costs what the kept pairs need. Returns (every built candidate, the chosen indices)."""
    candidates: list[Candidate] = []
    chosen: list[int] = []
    totals: np.ndarray | None = None
    groups: set[str] = set()
    slack = 2 * bound - 1
    for start in range(0, len(pools), chunk):
        if len(chosen) >= max_pairs:
            break
        first = len(candidates)
        for anchor in range(start, min(start + chunk, len(pools))):
            rank = 0
            for choice in pools[anchor]:
                record, problem = build(choice)
                if record is None:
                    failures[problem or "?"] = failures.get(problem or "?", 0) + 1
                    continue
                candidates.append(
                    Candidate(anchor, rank, str(record.provenance.get("group", record.pair_id)), store.put(record))
                )
                rank += 1
        if len(candidates) == first:
            continue
        built = list(range(first, len(candidates)))
        # the chunk's signs (its own TF-IDF and rare words): the running totals only need each pair's direction
        signs = dict(zip(built, scalar_signs([store.get(candidates[i].key) for i in built])))
        store.keep_only({candidates[i].key for i in chosen})
        if totals is None:
            totals = np.zeros(len(next(iter(signs.values()))), dtype=np.int64)
        by_anchor: dict[int, list[int]] = {}
        for index in built:
            by_anchor.setdefault(candidates[index].anchor, []).append(index)
        for options in by_anchor.values():
            for _ in range(pairs_per_anchor):
                if not options or len(chosen) >= max_pairs:
                    break
                allowed = max(2.0, slack * (len(chosen) + 1))
                options.sort(key=lambda i: (candidates[i].group in groups, candidates[i].rank))
                fitting = [i for i in options if np.abs(totals + signs[i]).max() <= allowed]
                pick = (
                    fitting[0]
                    if fitting
                    else min(
                        options,
                        key=lambda i: (
                            int(np.abs(totals + signs[i]).max()),
                            candidates[i].group in groups,
                            candidates[i].rank,
                        ),
                    )
                )
                options.remove(pick)
                chosen.append(pick)
                totals += signs[pick]
                groups.add(candidates[pick].group)
    return candidates, sorted(chosen)


def adversarial_filter(
    candidates: Sequence[Candidate],
    store: RecordStore,
    chosen: list[int],
    target: float,
    min_pairs: int,
    seed: int,
    log: SelectionLog,
    max_rounds: int = 60,
) -> list[int]:
    """Step 2 of the module docstring: the filtered indices (sorted); `log` says what was done."""
    from trainer.pairs.audit import baseline_outcomes

    chosen = list(chosen)
    tried = set(chosen)
    next_of = _by_anchor(candidates)
    if len(chosen) < 2:
        log.stopped = "fewer than 2 pairs: nothing to audit"
        return sorted(chosen)
    for round_ in range(max_rounds):
        store.keep_only({candidates[i].key for i in chosen})
        outcomes = baseline_outcomes([store.get(candidates[i].key) for i in chosen], seed=seed)
        accuracies = {
            name: float(np.mean(per_pair)) for name, per_pair in outcomes.items() if not isinstance(per_pair, str)
        }
        # two-sided: a cross-validated classifier far below chance is the filtering's own artefact (what is left is
        # what the rest taught it wrong), and as much a cue as one far above
        name = max(accuracies, key=lambda n: max(accuracies[n], 1 - accuracies[n]))
        accuracy = max(accuracies[name], 1 - accuracies[name])
        best = {"name": name, "accuracy": round(accuracies[name], 4), "pairs": len(chosen)}
        if round_ == 0:
            log.best_before = best
        log.best_after = best
        if accuracy <= target:
            log.stopped = (
                f"every baseline within [{1 - target:.2f}, {target}] (furthest: {name} {accuracies[name]:.3f})"
            )
            break
        excess = max(1, math.ceil((accuracy - target) * len(chosen)))
        solved = _solved_first_to_go(outcomes, name, accuracies[name] < 0.5, candidates, chosen, seed)
        chosen, changed = _swap_or_drop(solved[:excess], candidates, chosen, next_of, tried, min_pairs, log)
        log.filter_rounds = round_ + 1
        if not changed:
            log.stopped = (
                f"best baseline {name} {accuracies[name]:.3f} > target {target}, but no candidate is "
                f"left to swap and dropping would leave fewer than min_pairs ({min_pairs}) issue pairs"
            )
            break
    else:
        log.stopped = f"stopped after {max_rounds} rounds"
    return sorted(chosen)


def _by_anchor(candidates: Sequence[Candidate]) -> dict[int, list[int]]:
    """Each anchor's candidate indices, in preference order."""
    next_of: dict[int, list[int]] = {}
    for index, candidate in enumerate(candidates):
        next_of.setdefault(candidate.anchor, []).append(index)
    for indices in next_of.values():
        indices.sort(key=lambda i: candidates[i].rank)
    return next_of


def _solved_first_to_go(
    outcomes: dict[str, np.ndarray | str],
    name: str,
    below_chance: bool,
    candidates: Sequence[Candidate],
    chosen: list[int],
    seed: int,
) -> list[int]:
    """The positions in `chosen` of the pairs the baseline `name` solves (below chance: gets wrong), in the order they
    go: the pairs most baselines solve first (the most shortcut-laden), then mirrors of a kept pair (dropping one loses
    no issue pair), then the least preferred."""
    per_pair = np.asarray(outcomes[name])
    if below_chance:
        per_pair = 1 - per_pair  # the pairs it gets wrong are the ones to go
    solved = [k for k in range(len(chosen)) if per_pair[k] > 0.5]
    solved_by = np.sum([np.asarray(o) for o in outcomes.values() if not isinstance(o, str)], axis=0)
    group_count = Counter(candidates[i].group for i in chosen)
    solved.sort(
        key=lambda k: (
            -float(solved_by[k]),
            group_count[candidates[chosen[k]].group] == 1,
            -candidates[chosen[k]].rank,
            _tiebreak(seed, "drop", chosen[k]),
        )
    )
    return solved


def _swap_or_drop(
    positions: list[int],
    candidates: Sequence[Candidate],
    chosen: list[int],
    next_of: dict[int, list[int]],
    tried: set[int],
    min_pairs: int,
    log: SelectionLog,
) -> tuple[list[int], bool]:
    """Each pair at `positions` of `chosen` is swapped for its anchor's next untried candidate of a new issue pair, or
    dropped when there is none (unless that would leave fewer than `min_pairs` issue pairs). Returns (the new chosen
    list, whether anything changed); `tried` and `log` are updated."""
    group_count = Counter(candidates[i].group for i in chosen)
    changed = False
    drop: list[int] = []
    groups = {candidates[i].group for i in chosen}
    for k in positions:
        current = chosen[k]
        replacement = next(
            (i for i in next_of[candidates[current].anchor] if i not in tried and candidates[i].group not in groups),
            None,
        )
        if replacement is not None:
            chosen[k] = replacement
            tried.add(replacement)
            groups.add(candidates[replacement].group)
            log.swapped += 1
            changed = True
        elif group_count[candidates[current].group] > 1 or len(group_count) > min_pairs:
            drop.append(k)
            group_count[candidates[current].group] -= 1
            if not group_count[candidates[current].group]:
                del group_count[candidates[current].group]
    if drop:
        chosen = [i for k, i in enumerate(chosen) if k not in set(drop)]
        log.dropped += len(drop)
        changed = True
    return chosen, changed
