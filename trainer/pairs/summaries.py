"""Pass 1 of the miner: what it keeps of each trajectory (`Summary`: ids, repository and commit, outcome, edited files
and functions, a MinHash of the issue's words) and which trajectories may be positives."""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import heapq
import re
from array import array
from dataclasses import dataclass

from agent.trajectory import Trajectory
from trainer.pairs.diffs import summarize_patch
from trainer.pairs.masking import problem_statement
from trainer.pairs.mine_config import MinerConfig

_SMITH_ID = re.compile(r"^(?P<owner>[^/\s]+?)__(?P<name>[^/\s]+?)\.(?P<commit>[0-9a-f]{7,40})\.")
_BENCH_ID = re.compile(r"^(?P<owner>[^/\s]+?)__(?P<name>[^/\s]+)-\d+$")
WORD_PATTERN = re.compile(r"[a-z_][a-z0-9_]{2,}")
STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "that",
        "this",
        "from",
        "are",
        "was",
        "were",
        "not",
        "but",
        "have",
        "has",
        "had",
        "you",
        "your",
        "can",
        "will",
        "would",
        "should",
        "could",
        "when",
        "then",
        "than",
        "into",
        "our",
        "out",
        "use",
        "using",
        "used",
        "all",
        "any",
        "its",
        "also",
        "been",
        "being",
        "there",
        "their",
        "they",
        "them",
        "what",
        "which",
        "who",
        "how",
        "why",
        "where",
        "does",
        "did",
        "doing",
        "just",
        "only",
        "some",
        "such",
        "more",
        "most",
        "very",
        "other",
        "here",
        "these",
        "those",
        "each",
        "get",
        "got",
        "now",
        "one",
        "two",
        "may",
        "might",
        "must",
        "like",
        "want",
        "need",
        "make",
        "made",
        "see",
        "seems",
    ]
)


def repo_and_commit(trajectory: Trajectory) -> tuple[str | None, str | None]:
    """(owner/name, base commit or None) from the record's own fields, else from its instance id."""
    extra = trajectory.model_extra or {}
    repo = extra.get("repo") if isinstance(extra.get("repo"), str) else None
    commit = extra.get("base_commit") if isinstance(extra.get("base_commit"), str) else None
    if repo:
        return repo, commit or None
    match = _SMITH_ID.match(trajectory.task_id)
    if match:
        return f"{match['owner']}/{match['name']}", commit or match["commit"]
    match = _BENCH_ID.match(trajectory.task_id)
    if match:
        return f"{match['owner']}/{match['name']}", commit
    return None, commit


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def signature(text: str, size: int) -> array:
    """Bottom-k MinHash of the text's words (lowercased, ≥ 3 characters, stopwords out): the k smallest 64-bit word
    hashes, sorted (at most k × 8 bytes, whatever the text's length)."""
    words = set(WORD_PATTERN.findall(text.lower())) - STOPWORDS
    return array("Q", heapq.nsmallest(size, {_hash64(word) for word in words}))


def similarity(a: array, b: array, size: int, a_set: set[int] | None = None) -> float:
    """Estimated Jaccard similarity of two word sets from their bottom-k signatures (sorted hashes): both are cut to
    the hashes ≤ t, t the smaller of the two largest kept hashes of a full (k-long) signature; then
    |A ∩ B| / |A ∪ B| over what is left. Both cut sets are exact samples of their words by hash, so this is the
    Jaccard of a uniform sample; exact when both statements have < k words. `a_set` (= set(a)) saves rebuilding it
    when one anchor meets many candidates."""
    if not a or not b:
        return 0.0
    common = (a_set if a_set is not None else set(a)).intersection(b)
    limits = [s[-1] for s in (a, b) if len(s) >= size]
    if limits:
        t = min(limits)
        kept_a, kept_b = bisect.bisect_right(a, t), bisect.bisect_right(b, t)
        both = sum(1 for h in common if h <= t)
    else:
        kept_a, kept_b, both = len(a), len(b), len(common)
    return both / (kept_a + kept_b - both)


def seeded_rank(seed: int, *parts: str) -> int:
    """A seeded, stable pseudo-random key (independent of Python's per-process hash salt)."""
    return _hash64("\0".join((str(seed),) + parts))


@dataclass(slots=True)
class Summary:
    """What pass 1 keeps of a trajectory: a few hundred bytes plus its signature."""

    source: int
    record: int
    episode_id: str
    task_id: str
    repo: str | None
    commit: str | None
    resolved: bool | None
    files: tuple[str, ...]
    scopes: tuple[str, ...]
    signature: array
    has_issue: bool
    has_patch: bool
    patch_error: bool


def summarize(
    trajectory: Trajectory, source: int, record: int, config: MinerConfig, interned: dict[str, str]
) -> Summary:
    def intern(text: str) -> str:
        return interned.setdefault(text, text)

    extra = trajectory.model_extra or {}
    issue = problem_statement(
        trajectory.messages, extra.get("problem_statement") if isinstance(extra.get("problem_statement"), str) else None
    )
    repo, commit = repo_and_commit(trajectory)
    patch = summarize_patch(trajectory.patch, config.drop_top_level_new_files)
    return Summary(
        source=source,
        record=record,
        episode_id=trajectory.episode_id or f"{trajectory.task_id}/{source}:{record}",
        task_id=intern(trajectory.task_id),
        repo=intern(repo) if repo else None,
        commit=intern(commit) if commit else None,
        resolved=trajectory.resolved,
        files=tuple(sorted({intern(path) for path in patch.paths if not ignored(path, config.ignored_paths)})),
        scopes=tuple(
            sorted(
                {intern(scope) for scope in patch.scopes if not ignored(scope.split("::", 1)[0], config.ignored_paths)}
            )
        ),
        signature=signature(issue, config.signature_size),
        has_issue=bool(issue),
        has_patch=bool(trajectory.patch and trajectory.patch.strip()),
        patch_error=bool(patch.error),
    )


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a file matches one of `ignored_paths` (fnmatchcase, so `*` spans `/`)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def anchor_problem(summary: Summary, config: MinerConfig) -> str | None:
    """Why a trajectory cannot be a positive, or None."""
    if config.anchor_outcome == "resolved" and summary.resolved is not True:
        return "not marked resolved"
    if config.anchor_outcome == "not_failed" and summary.resolved is False:
        return "failed"
    if summary.repo is None:
        return "unknown repository"
    if not summary.has_issue:
        return "no issue text"
    if not summary.has_patch:
        return "no patch"
    if summary.patch_error:
        return "unparseable patch"
    if not summary.files:
        return "patch edits only scratch or ignored files"
    return None
