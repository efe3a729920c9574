"""The miner's cascade: same repository/commit → same file → same function → related issue over (anchor, confounder)
pairs, counted into the funnel, and each anchor's pool of candidates (mine.py's docstring, step 3)."""

from __future__ import annotations

import math
import statistics
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass

from trainer.pairs.funnel import Funnel
from trainer.pairs.mine_config import STAGES, MinerConfig
from trainer.pairs.summaries import Summary, anchor_problem, seeded_rank, similarity


@dataclass(frozen=True)
class Choice:
    anchor: int
    negative: int
    depth: int
    """Index in STAGES of the deepest stage passed."""
    similarity: float
    shared_files: tuple[str, ...]
    shared_scopes: tuple[str, ...]


def _compatible(a: Summary, b: Summary) -> bool:
    return (
        a.repo == b.repo and a.task_id != b.task_id and (a.commit is None or b.commit is None or a.commit == b.commit)
    )


POOL_HEADROOM = 2
"""Anchors pooled per pair wanted (`max_pairs`)."""


@dataclass
class _Blocks:
    """The summaries indexed for blocking: counts per repository, per (repository, commit) and per instance (stage 1
    is counted from them, never enumerated), and who edited each file and who is in each repository."""

    repo_count: Counter[str]
    commit_count: Counter[tuple[str, str | None]]
    task_count: Counter[str]
    by_file: defaultdict[tuple[str, str], list[int]]
    by_repo: defaultdict[str, list[int]]

    @classmethod
    def build(cls, summaries: list[Summary]) -> _Blocks:
        blocks = cls(Counter(), Counter(), Counter(), defaultdict(list), defaultdict(list))
        for index, summary in enumerate(summaries):
            if summary.repo is None:
                continue
            blocks.repo_count[summary.repo] += 1
            blocks.commit_count[(summary.repo, summary.commit)] += 1
            blocks.task_count[summary.task_id] += 1
            blocks.by_repo[summary.repo].append(index)
            for path in summary.files:
                blocks.by_file[(summary.repo, path)].append(index)
        return blocks

    def same_repo_commit(self, a: Summary) -> int:
        """How many summaries of other instances share `a`'s repository and commit (stage 1)."""
        assert a.repo is not None
        block = (
            self.repo_count[a.repo]
            if a.commit is None
            else self.commit_count[(a.repo, a.commit)] + self.commit_count[(a.repo, None)]
        )
        return max(0, block - self.task_count[a.task_id])

    def sharing(self, summaries: list[Summary], a: Summary, config: MinerConfig) -> tuple[list[int], set[int]]:
        """(capped candidates sharing an edited file with `a`, all of them before the cap)."""
        found = sorted(
            {
                b
                for path in a.files
                for b in self.by_file[(a.repo or "", path)]
                if summaries[b].task_id != a.task_id
                and (a.commit is None or summaries[b].commit is None or summaries[b].commit == a.commit)
            }
        )
        every = set(found)  # before the cap: a capped-out candidate is no repo-only confounder either
        if len(found) > config.max_candidates_per_anchor:
            found = sorted(
                sorted(found, key=lambda b: seeded_rank(config.seed, "cap", a.episode_id, summaries[b].episode_id))[
                    : config.max_candidates_per_anchor
                ]
            )
        return found, every


def cascade(summaries: list[Summary], anchors: list[int], config: MinerConfig, funnel: Funnel) -> list[list[Choice]]:
    """Stage 3 of the module docstring: funnel counts and the pools (per anchor with a candidate: at most
    `pool_per_anchor` choices, best first, distinct confounder instances; anchors in a seeded order, as many as
    `max_pairs` can need). The related-issue threshold is fixed first, from the similarities of every same_function
    candidate (`related_threshold`)."""
    blocks = _Blocks.build(summaries)
    threshold = _fix_related_threshold(summaries, anchors, blocks, config, funnel)
    pools: list[list[Choice]] = []
    for a_index in anchors:
        picked = _anchor_pool(summaries, a_index, blocks, threshold, config, funnel.stages)
        if picked:
            pools.append(picked)
    # The pool visits anchors in a seeded order and holds what max_pairs can need (twice over, for the pairs that
    # masking, balance and filtering turn down): a large input costs what the kept pairs need.
    pools.sort(key=lambda pool: seeded_rank(config.seed, "anchor-order", summaries[pool[0].anchor].episode_id))
    pools = pools[: math.ceil(POOL_HEADROOM * config.max_pairs / config.pairs_per_anchor)]
    funnel.stages["pooled"] = sum(len(pool) for pool in pools)
    return pools


def _fix_related_threshold(
    summaries: list[Summary], anchors: list[int], blocks: _Blocks, config: MinerConfig, funnel: Funnel
) -> float:
    """The first walk: the similarities of the same_function candidates, to set the threshold from the data (recorded
    in the funnel)."""
    observed = array("d")
    for a_index in anchors:
        a = summaries[a_index]
        a_scopes, a_words = set(a.scopes), set(a.signature)
        for b_index in blocks.sharing(summaries, a, config)[0]:
            if a_scopes.intersection(summaries[b_index].scopes):
                observed.append(similarity(a.signature, summaries[b_index].signature, config.signature_size, a_words))
    threshold = related_threshold(observed, config)
    funnel.related_issue = {
        "threshold": round(threshold, 4),
        "from": "similarity_threshold"
        if config.similarity_threshold is not None
        else f"quantile {config.similarity_quantile} of {len(observed)} same_function similarities",
        "median": round(statistics.median(observed), 4) if observed else None,
    }
    return threshold


def _anchor_pool(
    summaries: list[Summary],
    a_index: int,
    blocks: _Blocks,
    threshold: float,
    config: MinerConfig,
    stages: dict[str, int],
) -> list[Choice]:
    """One anchor's walk down the cascade, counted into `stages`: its pool (at most `pool_per_anchor` choices that
    passed `min_stage`, deepest stage and most similar issue first, distinct confounder instances)."""
    a = summaries[a_index]
    assert a.repo is not None
    min_depth = STAGES.index(config.min_stage)
    stages["same_repo_commit"] += blocks.same_repo_commit(a)
    capped, shares_a_file = blocks.sharing(summaries, a, config)
    stages["same_file"] += len(shares_a_file)
    stages["capped"] += len(capped)

    a_files, a_scopes, a_words = set(a.files), set(a.scopes), set(a.signature)
    found: list[Choice] = []
    for b_index in capped:
        b = summaries[b_index]
        scopes = tuple(sorted(a_scopes.intersection(b.scopes)))
        score = similarity(a.signature, b.signature, config.signature_size, a_words)
        depth = 1
        if scopes:
            stages["same_function"] += 1
            depth = 2
            if score >= threshold:
                stages["related_issue"] += 1
                depth = 3
        if depth >= min_depth:
            found.append(Choice(a_index, b_index, depth, score, tuple(sorted(a_files.intersection(b.files))), scopes))
    # deepest stage first, then the more similar issue: the hardest look-alikes lead the pool
    found.sort(
        key=lambda c: (
            -c.depth,
            -c.similarity,
            seeded_rank(config.seed, "pick", a.episode_id, summaries[c.negative].episode_id),
        )
    )
    if min_depth == 0 and len({summaries[c.negative].task_id for c in found}) < config.pool_per_anchor:
        found += _repo_only(summaries, blocks.by_repo[a.repo], a_index, shares_a_file, config)
    picked: list[Choice] = []
    tasks: set[str] = set()
    for choice in found:
        task = summaries[choice.negative].task_id
        if task not in tasks:
            picked.append(choice)
            tasks.add(task)
        if len(picked) == config.pool_per_anchor:
            break
    return picked


def related_threshold(observed: array, config: MinerConfig) -> float:
    """The related_issue threshold: `similarity_threshold` when set, else the `similarity_quantile` quantile of the
    observed same_function similarities (1.0, passing none, when there are none)."""
    if config.similarity_threshold is not None:
        return config.similarity_threshold
    if not observed:
        return 1.0
    ordered = sorted(observed)
    return ordered[min(len(ordered) - 1, int(config.similarity_quantile * len(ordered)))]


def _repo_only(
    summaries: list[Summary], block: list[int], a_index: int, sharing: set[int], config: MinerConfig
) -> list[Choice]:
    """Confounders that passed only stage 1 (min_stage = same_repo_commit), in seeded order. This walks the whole
    repository block, so it costs O(block) per anchor: an opt-in mode, not the paper's."""
    a = summaries[a_index]
    rest = [b for b in block if b not in sharing and _compatible(a, summaries[b])]
    rest.sort(key=lambda b: seeded_rank(config.seed, "pick", a.episode_id, summaries[b].episode_id))
    return [Choice(a_index, b, 0, 0.0, (), ()) for b in rest]


def choose_anchors(summaries: list[Summary], config: MinerConfig, funnel: Funnel) -> list[int]:
    eligible: dict[str, list[int]] = defaultdict(list)
    for index, summary in enumerate(summaries):
        problem = anchor_problem(summary, config)
        if problem is None:
            eligible[summary.task_id].append(index)
        else:
            funnel.ineligible[problem] = funnel.ineligible.get(problem, 0) + 1
    funnel.ineligible = dict(sorted(funnel.ineligible.items()))
    funnel.eligible_anchors = sum(len(group) for group in eligible.values())
    anchors: list[int] = []
    for group in eligible.values():
        group.sort(key=lambda i: seeded_rank(config.seed, "anchor", summaries[i].episode_id))
        anchors += group[: config.max_anchors_per_instance]
    anchors.sort()
    funnel.anchors = len(anchors)
    return anchors
