"""The contrastive pair miner: agent trajectories in, pair records (`PairRecord`, JSONL), a funnel report and a
shortcut audit out.

    python -m trainer.pairs mine --trajectories FILE_OR_RUN_FOLDER... --out pairs.jsonl [--judge-url URL …]

The paper mines 1k pairs from 66k SWE-smith trajectories with a cascade (same repository/commit → same file → same
function → related issue) and an LLM judge. Run as written on real, published trajectories (271 mini-swe-agent runs
on SWE-bench Verified, README findings 2026-12-06), that cascade leaves a handful of pairs, and those pairs are
solvable without reasoning: the positive is simply the context that shares the query's rare words (TF-IDF picks it
in ~99% of pairs), because an agent greps for its issue's names, reproduces its example and restates it. L_CA on such
pairs teaches word matching. This miner keeps the paper's z = (Q, A, C+, C−) — Q the anchor's issue, A its change,
C+ the anchor's trajectory, C− a trajectory of another issue of the same repository that edited the same file — and
adds what real data needs; the choices the paper leaves open are `MinerConfig` fields:

1. Pass 1 streams every input (SWE-smith, SWE-Gym/OpenHands, SWE-agent and mini-swe-agent sets through
   `agent.readers` — a directory is a mini-swe-agent run folder with its results file — or our own trajectory
   JSONL) and keeps a bounded summary per trajectory: ids, repository and base commit, outcome, edited files and
   functions (`diffs`: top-level new files are scratch scripts; `ignored_paths` — packaging, harness configuration,
   docs, tests — are not edits; a class body is not a function), a bottom-k MinHash of the issue's words, and where
   the record is. Repository and commit come from the record's `repo` / `base_commit`, else from the instance id
   (`owner__repo.<commit>.<bug>` for SWE-smith; `owner__repo-<n>` for SWE-bench). A repeated episode_id is skipped.
2. Anchors (positives) are trajectories with a known repository, an issue text, a patch that edits a file and an
   acceptable outcome (`anchor_outcome`: a trajectory the data marks failed is never a positive); at most
   `max_anchors_per_instance` per instance. Any trajectory of another instance may be a confounder.
3. The cascade over ordered (anchor, confounder) pairs of different instances: same_repo_commit → same_file →
   same_function (a function or method in common) → related_issue (estimated Jaccard similarity of the issues' word
   sets ≥ a threshold that comes from the data: the `similarity_quantile` of every same_function candidate's
   similarity, reported in the funnel; `similarity_threshold` fixes it instead). Blocking keeps it sub-quadratic
   (stage 1 is counted from per-repository counts; confounders come from a (repository, file) index; at most
   `max_candidates_per_anchor` per anchor, a seeded sample). Candidates that passed `min_stage` (default same_file:
   on real data the whole cascade keeps too few) form each anchor's pool, deepest stage and most similar issue first,
   at most `pool_per_anchor`, distinct confounder instances.
4. Pass 2 re-reads only the pooled trajectories, masks and renders each once (`masking`: edit contents, diffs, the
   issue's own text; an in-place edit keeps the files it names) and spools them to a temporary file, so memory
   stays bounded by the summaries.
5. Records for the whole pool, each context masked against both sides with the same sources, so that masking itself
   cannot tell the options apart:
   - every line holding a non-trivial line of either patch (`LineScrubber`), and every line sharing a 40-character
     stretch with either patch's added code, either issue's text, or naming either issue's title (`StretchScrubber`:
     the agent's notes quote the new code — "use `getattr(self, "_x", False)`" — and its scripts print the issue);
   - every word of either issue that at most `issue_term_max_df` of the pool's issues use, and every name either
     patch's new code starts or stops using, becomes `[issue term]` in both contexts — except the names of the files
     and functions the two patches edit. This is what removes the agent's restatements of its issue: without it the
     issue's vocabulary in C+ gives the label away; with it, what ties C+ to A is where the change was made;
   - a pair is dropped when a patch line is still there, the contexts came out identical, or C+ holds no evidence:
     `provenance.evidence` lists the lines of C+ (0-based) that name A's files or functions, edits first.
   Q = the anchor's issue; A = its change described by files, functions and what the code uses (`diffs.describe`;
   no diff line); pair_id = a hash of the two episode ids; `provenance.group` = the two instances (A/B and B/A share
   it, so a train/held-out split and the audit's cross-validation keep mirrors together).
6. Selection (`select`): each anchor's pair is the first candidate that keeps every scalar baseline of the audit
   balanced (the positive's feature above the negative's in at most `balance_bound` of the pairs): hard
   confounders matched to the anchor on the baselines' own features. Then adversarial filtering against the audit
   (classifiers included, both directions): the pairs the furthest baseline solves are swapped for their anchor's
   next candidate or dropped, until every baseline is within [1 − `audit_target`, `audit_target`] or
   `min_pairs` distinct issue pairs are left. Contexts are never edited here: only which confounder, and which
   anchors, are kept.
7. The optional judge (`judge`) sees the shortcut list the audit measures and rejects shortcut cues and ambiguous
   labels; verdicts go into the record's `judge` field (rejections to `rejected.jsonl`).
8. The written pairs are audited (`audit`): audit.json / audit.png beside funnel.json / funnel.png; the funnel
   shows every stage's count, the related_issue threshold and where it came from, what the selection did and the
   audit's verdict.

Same input + config → byte-identical pairs file, funnel.json and audit.json.
"""

from __future__ import annotations

import asyncio
import bisect
import fnmatch
import hashlib
import heapq
import itertools
import json
import math
import os
import re
import statistics
import tempfile
import zlib
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.readers import FORMATS, ReaderError, convert_record, mini_swe_agent, sniff_format
from agent.readers.common import iter_records
from agent.readers.mini_swe_agent import RunFolder
from agent.trajectory import Trajectory
from trainer.pairs.diffs import PatchSummary, describe, patch_lines, summarize_patch
from trainer.pairs.funnel import Funnel
from trainer.pairs.masking import (PLACEHOLDER, LineScrubber, StretchScrubber, added_lines, issue_title, leaked_lines,
                                   mask_messages, mask_terms, problem_statement, render)
from trainer.pairs.record import PairRecord
from trainer.pairs.select import RecordStore, SelectionLog, adversarial_filter, balanced_selection
from trainer.pairs.split import issue_group

MINER_VERSION = 1
STAGES = ("same_repo_commit", "same_file", "same_function", "related_issue")
Stage = Literal["same_repo_commit", "same_file", "same_function", "related_issue"]
OWN_FORMAT = "contextrl"
"""Our own trajectory JSONL (`agent.trajectory`), told apart from third-party sets by its `task_id` key."""


class MinerError(ValueError):
    """A user error (missing file, unreadable record, bad setting); the CLI prints it without a traceback."""


HARNESS_PATHS = ("setup.py", "setup.cfg", "pyproject.toml", "tox.ini", "MANIFEST.in", "requirements*.txt",
                 "*/requirements*.txt", "Makefile", "*.cfg", "*.ini", "*.toml", "*.lock", "*.md", "*.rst", "*.txt",
                 "AUTHORS*", "CHANGES*", "CHANGELOG*", "HISTORY*", "NEWS*", "doc/*", "docs/*", ".github/*",
                 ".gitignore", "conftest.py", "*/conftest.py", "tests/*", "test/*", "testing/*", "*/tests/*",
                 "*/test/*", "test_*.py", "*/test_*.py", "*_test.py", "*/_pytest/*/test_*.py")
"""The default `ignored_paths`."""


class EmptyInput(MinerError):
    """The inputs hold no trajectory: almost always a wrong path or format, so not a silent empty result."""


class MinerConfig(BaseModel):
    """Every choice the paper leaves open. Defaults follow the paper where it says something."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    """Seeds every choice: which trajectory anchors an instance, the candidate sample, ties."""
    min_stage: Stage = "same_file"
    """The stage a candidate must pass to enter the pool; deeper stages rank first in it (the paper keeps only the
    whole cascade's survivors, which on a few hundred real trajectories are a handful: README, findings)."""
    similarity_threshold: float | None = Field(None, ge=0.0, le=1.0)
    """related_issue: a fixed threshold on the estimated Jaccard similarity of the problem statements' word sets;
    None: `similarity_quantile` of the observed same_function similarities (the funnel reports the value)."""
    similarity_quantile: float = Field(0.5, ge=0.0, le=1.0)
    """related_issue, when no fixed threshold: the quantile of the same_function candidates' similarities that a
    candidate must reach (0.5: the more related half)."""
    ignored_paths: list[str] = Field(default_factory=lambda: list(HARNESS_PATHS))
    """fnmatch patterns (`*` spans `/`) of files that never make two trajectories `same_file` and do not count as
    edits: packaging, harness and test configuration, docs, tests (what the test harness or a release touches,
    not the fix)."""
    pool_per_anchor: int = Field(4, ge=1)
    """Candidates per anchor (distinct confounder instances, best first) whose records are built and scored, from
    which the balanced selection picks `pairs_per_anchor`."""
    balance_bound: float = Field(0.55, gt=0.5, le=1.0)
    """Selection: each label-blind baseline may pick the positive in at most this share of the pairs (and at least
    1 − this): `audit.SHORTCUT_BOUND` minus room for the cross-validated classifiers' noise."""
    audit_target: float | None = Field(0.6, gt=0.5, le=1.0)
    """Adversarial filtering: pairs a baseline solves are swapped or dropped until the audit's best baseline is ≤
    this (the audit's bound; its accuracies are deterministic in the pairs file); None: no filtering (the audit
    still runs and is reported)."""
    max_pairs: int = Field(1000, ge=1)
    """Pairs kept at most (the paper's set is 1k): anchors are visited in a seeded order and records are built only
    until this many are chosen, so the cost of a large input is bounded by what is kept."""
    min_pairs: int = Field(20, ge=2)
    """Adversarial filtering stops rather than leave fewer distinct issue pairs than this (the report then shows the
    bound missed)."""
    signature_size: int = Field(128, ge=8)
    """Words kept in a problem statement's signature (bottom-k MinHash: exact for fewer than k distinct words)."""
    anchor_outcome: Literal["resolved", "not_failed", "any"] = "not_failed"
    """Which trajectories may be positives: only resolved ones, any the data does not mark failed, or any."""
    max_anchors_per_instance: int = Field(1, ge=1)
    """Anchors per task instance (several resolved runs of one instance would repeat the same query)."""
    pairs_per_anchor: int = Field(1, ge=1)
    """Pairs per anchor, each with a confounder from a different instance (at most `pool_per_anchor`)."""
    max_candidates_per_anchor: int = Field(1000, ge=1)
    """File-sharing candidates examined per anchor (a seeded sample beyond this): bounds the work in huge repos."""
    drop_top_level_new_files: bool = True
    """A file the patch creates at the repository's top level is a scratch script, not part of the fix."""
    min_patch_line_chars: int = Field(10, ge=1)
    """A patch line shorter than this (collapsed, stripped) is trivial (`else:`, `pass`, `)`) and not masked."""
    issue_term_max_df: float | None = Field(0.1, gt=0.0, le=1.0)
    """Words of either pair's issue that are in at most this share of the pooled trajectories' issues (the issue's
    own vocabulary: names, error text, example values) are masked in both contexts, except the names of the
    patches' files and functions; None: off. An agent restates, greps and reproduces its issue, so without this the
    positive is the context that shares the query's rare words (README, findings)."""
    omit_issue_in_context: bool = True
    """Replace the issue text inside the contexts (the query quoted verbatim would give the positive away)."""
    include_system: bool = False
    """Render the system prompt into the contexts (boilerplate of the agent framework)."""
    max_output_chars: int = Field(4000, ge=0)
    """A tool output or user message longer than this keeps its head and tail (0: no limit)."""
    judge_url: str | None = None
    """OpenAI-compatible endpoint of the judge (e.g. http://127.0.0.1:8001/v1); None: no judge."""
    judge_model: str | None = None
    """Model name the judge endpoint serves."""
    judge_concurrency: int = Field(8, ge=1)
    """Judge requests in flight."""
    judge_max_context_chars: int = Field(12000, ge=200)
    """Each context is cut to its head and tail at this many characters for the judge."""
    judge_batch: int = Field(64, ge=1)
    """Pairs judged per batch (bounds the records held in memory)."""


# ------------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Source:
    path: Path
    format: str
    run: RunFolder | None = None
    """A mini-swe-agent run folder's files and resolved flags (the source is a directory)."""


READ_ERRORS = (ReaderError, UnicodeDecodeError, OSError, EOFError, zlib.error)
"""What reading a (possibly gzipped) file raises when the file is bad: a truncated `.gz` raises EOFError, a corrupt
one zlib.error or gzip.BadGzipFile (an OSError)."""


def _read_error(path: Path, exc: BaseException) -> MinerError:
    if isinstance(exc, ReaderError):
        return MinerError(str(exc))
    cause = "the compressed file is truncated or corrupt" if isinstance(exc, (EOFError, zlib.error)) else "cannot read"
    return MinerError(f"{path}: {cause}: {exc}")


def open_source(path: str | Path, results: str | Path | None = None) -> Source:
    """Check the file (or run folder) and tell its format from the first record. A directory is a mini-swe-agent run
    folder; `results` gives its resolved flags (else its own results files do)."""
    path = Path(path)
    if not path.exists():
        raise MinerError(f"{path}: no such file or directory")
    if path.is_dir() or path.name.endswith(mini_swe_agent.TRAJ_SUFFIX):
        try:
            run = mini_swe_agent.scan_run(path, results) if path.is_dir() else mini_swe_agent.RunFolder(
                root=path.parent, files=[path], results=mini_swe_agent.read_results(results) if results else {})
        except READ_ERRORS as exc:
            raise _read_error(path, exc) from None
        return Source(path, mini_swe_agent.SOURCE, run)
    if not path.is_file():
        raise MinerError(f"{path}: not a file")
    try:
        first = next(iter_records(path), None)
    except READ_ERRORS as exc:
        raise _read_error(path, exc) from None
    if first is None:
        return Source(path, OWN_FORMAT)
    record = first[1]
    if isinstance(record, dict) and "task_id" in record and "messages" in record:
        return Source(path, OWN_FORMAT)
    name = sniff_format(record) if isinstance(record, dict) else None
    if name is None:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise MinerError(f"{path}: record 0: not a trajectory of any known format (keys {keys}); known: "
                         f"{OWN_FORMAT}, {', '.join(sorted(FORMATS))}")
    return Source(path, name)


def _convert(source: Source, index: int, record: Any) -> Trajectory:
    try:
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, found {type(record).__name__}")
        if source.format == OWN_FORMAT:
            return Trajectory.model_validate(record)
        return convert_record(record, source.format)
    except (KeyError, TypeError, ValueError) as exc:
        label = record.get("instance_id") or record.get("task_id") if isinstance(record, dict) else None
        where = f"record {index}" + (f" ({label})" if isinstance(label, str) else "")
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:500]
        path = source.run.files[index] if source.run is not None else source.path
        raise MinerError(f"{path}: {where}: not a readable trajectory: {reason}") from None


def iter_source(source: Source, wanted: set[int] | None = None) -> Iterator[tuple[int, Trajectory]]:
    """(record index, trajectory) for every record, or only the `wanted` ones (the others are parsed as JSON but not
    converted; reading stops after the last wanted one)."""
    last = max(wanted) if wanted else None
    if source.run is not None:
        records = mini_swe_agent.iter_run(source.run, wanted)
    else:
        records = iter_records(source.path)
    try:
        for index, record in records:
            if wanted is None or index in wanted:
                yield index, _convert(source, index, record)
            if last is not None and index >= last:
                return
    except READ_ERRORS as exc:
        raise _read_error(source.path, exc) from None


# ----------------------------------------------------------------------------------------------------- summaries

_SMITH_ID = re.compile(r"^(?P<owner>[^/\s]+?)__(?P<name>[^/\s]+?)\.(?P<commit>[0-9a-f]{7,40})\.")
_BENCH_ID = re.compile(r"^(?P<owner>[^/\s]+?)__(?P<name>[^/\s]+)-\d+$")
_WORDS = re.compile(r"[a-z_][a-z0-9_]{2,}")
STOPWORDS = frozenset("""the and for with that this from are was were not but have has had you your can will would
should could when then than into our out use using used all any its also been being there their they them what which
who how why where does did doing just only some such more most very other here these those each get got now one two
may might must like want need make made see seems""".split())


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
    words = set(_WORDS.findall(text.lower())) - STOPWORDS
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


def _rank(seed: int, *parts: str) -> int:
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


def summarize(trajectory: Trajectory, source: int, record: int, config: MinerConfig,
              interned: dict[str, str]) -> Summary:
    def intern(text: str) -> str:
        return interned.setdefault(text, text)

    extra = trajectory.model_extra or {}
    issue = problem_statement(trajectory.messages, extra.get("problem_statement")
                              if isinstance(extra.get("problem_statement"), str) else None)
    repo, commit = repo_and_commit(trajectory)
    patch = summarize_patch(trajectory.patch, config.drop_top_level_new_files)
    return Summary(
        source=source, record=record, episode_id=trajectory.episode_id or f"{trajectory.task_id}/{source}:{record}",
        task_id=intern(trajectory.task_id), repo=intern(repo) if repo else None,
        commit=intern(commit) if commit else None, resolved=trajectory.resolved,
        files=tuple(sorted({intern(path) for path in patch.paths if not ignored(path, config.ignored_paths)})),
        scopes=tuple(sorted({intern(scope) for scope in patch.scopes
                             if not ignored(scope.split("::", 1)[0], config.ignored_paths)})),
        signature=signature(issue, config.signature_size), has_issue=bool(issue),
        has_patch=bool(trajectory.patch and trajectory.patch.strip()), patch_error=bool(patch.error))


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


# ------------------------------------------------------------------------------------------------------- cascade


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
    return a.repo == b.repo and a.task_id != b.task_id and (a.commit is None or b.commit is None
                                                            or a.commit == b.commit)


POOL_HEADROOM = 2
"""Anchors pooled per pair wanted (`max_pairs`)."""


def cascade(summaries: list[Summary], anchors: list[int], config: MinerConfig,
            funnel: Funnel) -> list[list[Choice]]:
    """Stage 3 of the module docstring: funnel counts and the pools (per anchor with a candidate: at most
    `pool_per_anchor` choices, best first, distinct confounder instances; anchors in a seeded order, as many as
    `max_pairs` can need). The related-issue threshold is fixed first, from the similarities of every same_function
    candidate (`related_threshold`)."""
    repo_count: Counter[str] = Counter()
    commit_count: Counter[tuple[str, str | None]] = Counter()
    task_count: Counter[str] = Counter()
    by_file: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_repo: dict[str, list[int]] = defaultdict(list)
    for index, summary in enumerate(summaries):
        if summary.repo is None:
            continue
        repo_count[summary.repo] += 1
        commit_count[(summary.repo, summary.commit)] += 1
        task_count[summary.task_id] += 1
        by_repo[summary.repo].append(index)
        for path in summary.files:
            by_file[(summary.repo, path)].append(index)

    def sharing(a: Summary) -> tuple[list[int], set[int]]:
        """(capped candidates sharing an edited file, all of them before the cap)."""
        found = sorted({b for path in a.files for b in by_file[(a.repo or "", path)]
                        if summaries[b].task_id != a.task_id
                        and (a.commit is None or summaries[b].commit is None or summaries[b].commit == a.commit)})
        every = set(found)  # before the cap: a capped-out candidate is no repo-only confounder either
        if len(found) > config.max_candidates_per_anchor:
            found = sorted(sorted(found, key=lambda b: _rank(config.seed, "cap", a.episode_id,
                                                             summaries[b].episode_id))
                           [:config.max_candidates_per_anchor])
        return found, every

    # First walk: the similarities of the same_function candidates, to set the threshold from the data.
    observed = array("d")
    for a_index in anchors:
        a = summaries[a_index]
        a_scopes, a_words = set(a.scopes), set(a.signature)
        for b_index in sharing(a)[0]:
            if a_scopes.intersection(summaries[b_index].scopes):
                observed.append(similarity(a.signature, summaries[b_index].signature, config.signature_size, a_words))
    threshold = related_threshold(observed, config)
    funnel.related_issue = {"threshold": round(threshold, 4), "from": "similarity_threshold"
                            if config.similarity_threshold is not None else f"quantile {config.similarity_quantile} "
                            f"of {len(observed)} same_function similarities",
                            "median": round(statistics.median(observed), 4) if observed else None}

    min_depth = STAGES.index(config.min_stage)
    stages = funnel.stages
    pools: list[list[Choice]] = []
    for a_index in anchors:
        a = summaries[a_index]
        assert a.repo is not None
        block = repo_count[a.repo] if a.commit is None else \
            commit_count[(a.repo, a.commit)] + commit_count[(a.repo, None)]
        stages["same_repo_commit"] += max(0, block - task_count[a.task_id])
        capped, shares_a_file = sharing(a)
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
                found.append(Choice(a_index, b_index, depth, score, tuple(sorted(a_files.intersection(b.files))),
                                    scopes))
        # deepest stage first, then the more similar issue: the hardest look-alikes lead the pool
        found.sort(key=lambda c: (-c.depth, -c.similarity,
                                  _rank(config.seed, "pick", a.episode_id, summaries[c.negative].episode_id)))
        if min_depth == 0 and len({summaries[c.negative].task_id for c in found}) < config.pool_per_anchor:
            found += _repo_only(summaries, by_repo[a.repo], a_index, shares_a_file, config)
        picked: list[Choice] = []
        tasks: set[str] = set()
        for choice in found:
            task = summaries[choice.negative].task_id
            if task not in tasks:
                picked.append(choice)
                tasks.add(task)
            if len(picked) == config.pool_per_anchor:
                break
        if picked:
            pools.append(picked)
    # The pool visits anchors in a seeded order and holds what max_pairs can need (twice over, for the pairs that
    # masking, balance and filtering turn down): a large input costs what the kept pairs need.
    pools.sort(key=lambda pool: _rank(config.seed, "anchor-order", summaries[pool[0].anchor].episode_id))
    pools = pools[:math.ceil(POOL_HEADROOM * config.max_pairs / config.pairs_per_anchor)]
    stages["pooled"] = sum(len(pool) for pool in pools)
    return pools


def related_threshold(observed: array, config: MinerConfig) -> float:
    """The related_issue threshold: `similarity_threshold` when set, else the `similarity_quantile` quantile of the
    observed same_function similarities (1.0, passing none, when there are none)."""
    if config.similarity_threshold is not None:
        return config.similarity_threshold
    if not observed:
        return 1.0
    ordered = sorted(observed)
    return ordered[min(len(ordered) - 1, int(config.similarity_quantile * len(ordered)))]


def _repo_only(summaries: list[Summary], block: list[int], a_index: int, sharing: set[int],
               config: MinerConfig) -> list[Choice]:
    """Confounders that passed only stage 1 (min_stage = same_repo_commit), in seeded order. This walks the whole
    repository block, so it costs O(block) per anchor: an opt-in mode, not the paper's."""
    a = summaries[a_index]
    rest = [b for b in block if b not in sharing and _compatible(a, summaries[b])]
    rest.sort(key=lambda b: _rank(config.seed, "pick", a.episode_id, summaries[b].episode_id))
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
        group.sort(key=lambda i: _rank(config.seed, "anchor", summaries[i].episode_id))
        anchors += group[:config.max_anchors_per_instance]
    anchors.sort()
    funnel.anchors = len(anchors)
    return anchors


# --------------------------------------------------------------------------------------------------- rendering


class Spool:
    """Masked renderings of the selected trajectories in a temporary file; memory holds offsets only (and the issue
    words' document frequencies over the spooled trajectories)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        self.where: dict[int, tuple[int, int]] = {}
        self.issue_df: Counter[str] = Counter()
        self.issues = 0

    def put(self, key: int, item: dict[str, Any]) -> None:
        data = json.dumps(item, ensure_ascii=False).encode()
        self.file.seek(0, os.SEEK_END)
        self.where[key] = (self.file.tell(), len(data))
        self.file.write(data)

    def get(self, key: int) -> dict[str, Any]:
        offset, size = self.where[key]
        self.file.seek(offset)
        return json.loads(self.file.read(size))

    def close(self) -> None:
        self.file.close()


def spool_selected(sources: list[Source], summaries: list[Summary], needed: set[int], config: MinerConfig) -> Spool:
    """Pass 2: re-read the needed trajectories and spool {context, patch, issue} for each."""
    spool = Spool()
    wanted: dict[int, dict[int, int]] = defaultdict(dict)  # source -> record index -> summary index
    for index in needed:
        wanted[summaries[index].source][summaries[index].record] = index
    for source_index, records in sorted(wanted.items()):
        for record, trajectory in iter_source(sources[source_index], set(records)):
            extra = trajectory.model_extra or {}
            given = extra.get("problem_statement") if isinstance(extra.get("problem_statement"), str) else None
            masked = mask_messages(trajectory.messages, omit_issue=config.omit_issue_in_context)
            issue = problem_statement(trajectory.messages, given)
            spool.put(records[record], {
                "context": render(masked, include_system=config.include_system,
                                  max_output_chars=config.max_output_chars),
                "patch": trajectory.patch or "",
                "issue": issue,
            })
            spool.issue_df.update(issue_words(issue))
            spool.issues += 1
    return spool


def issue_words(issue: str) -> set[str]:
    return set(_WORDS.findall(issue.lower())) - STOPWORDS


def protected_names(patch: PatchSummary) -> set[str]:
    """Lower-cased parts of the files' paths and the functions' names a patch edits: where the answer's change was
    made, the evidence that ties C+ to A, never masked as terms."""
    names: set[str] = set()
    for edit in patch.files:
        parts = re.split(r"[/.]", edit.path) + [p for f in edit.functions for p in f.split(".")]
        names.update(part.lower() for part in parts if part)
    return names


def code_names(patch: PatchSummary) -> set[str]:
    """Lower-cased names the patch's new code starts or stops using (`describe`'s "the new code uses …"): what the
    change is, as words; an agent's notes name them while it writes the change."""
    return {part.lower() for edit in patch.files for name in edit.new_names + edit.dropped_names
            for part in name.split(".") if len(part) >= 3}


def issue_terms(spool: Spool, issues: list[str], protected: set[str], max_df: float) -> set[str]:
    """The words of the issues that at most max_df of the spooled trajectories' issues use, protected names out."""
    limit = max(1.0, max_df * spool.issues)
    return {word for issue in issues for word in issue_words(issue)
            if spool.issue_df[word] <= limit and word not in protected}


MAX_EVIDENCE = 12


def find_evidence(context: str, patch: PatchSummary) -> list[dict[str, Any]]:
    """Where C+ shows the answer's change: the lines (0-based, of the masked context) that name an edited file (its
    path or file name) or an edited function (its last name component, ≥ 4 characters), at most MAX_EVIDENCE, the
    edits first. Empty: nothing in C+ ties it to A, and the pair would not be answerable."""
    names: dict[str, str] = {}
    for edit in patch.files:
        names[edit.path] = edit.path
        names.setdefault(edit.path.rsplit("/", 1)[-1], edit.path)
        for function in edit.functions:
            short = function.rsplit(".", 1)[-1]
            if len(short) >= 4:
                names.setdefault(short, f"{edit.path}::{function}")
    if not names:
        return []
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                         + r")(?![\w])")
    found: list[tuple[bool, int, list[str]]] = []
    for number, line in enumerate(context.split("\n")):
        hits = list(dict.fromkeys(names[m] for m in pattern.findall(line)))
        if hits:
            found.append((PLACEHOLDER not in line, number, hits))
    found.sort(key=lambda item: (item[0], item[1]))  # masked edits that name the file first, then by position
    return [{"line": number, "mentions": hits} for _, number, hits in found[:MAX_EVIDENCE]]


def pair_id(anchor_episode: str, negative_episode: str) -> str:
    return "pair-" + hashlib.blake2b(f"{anchor_episode}\0{negative_episode}".encode(), digest_size=8).hexdigest()


def build_record(choice: Choice, summaries: list[Summary], sources: list[Source], spool: Spool,
                 config: MinerConfig) -> tuple[PairRecord | None, str | None]:
    """(the pair, None) or (None, why it was dropped)."""
    a, b = summaries[choice.anchor], summaries[choice.negative]
    pos, neg = spool.get(choice.anchor), spool.get(choice.negative)
    answer_lines = patch_lines(pos["patch"], config.min_patch_line_chars)
    both_patches = answer_lines + patch_lines(neg["patch"], config.min_patch_line_chars)
    scrubber = LineScrubber(both_patches)
    # Both contexts get the same treatment from the same sources (both patches, both issues), so what is masked
    # cannot itself tell them apart beyond what the texts already do.
    quotes = StretchScrubber(added_lines(pos["patch"]) + added_lines(neg["patch"]) + [pos["issue"], neg["issue"]],
                             titles=[issue_title(pos["issue"]), issue_title(neg["issue"])])
    positive = quotes.scrub(scrubber.scrub(pos["context"])[0])[0]
    negative = quotes.scrub(scrubber.scrub(neg["context"])[0])[0]
    answer_patch = summarize_patch(pos["patch"], config.drop_top_level_new_files)
    if config.issue_term_max_df is not None:
        negative_patch = summarize_patch(neg["patch"], config.drop_top_level_new_files)
        protected = protected_names(answer_patch) | protected_names(negative_patch)
        terms = issue_terms(spool, [pos["issue"], neg["issue"]], protected, config.issue_term_max_df)
        terms |= (code_names(answer_patch) | code_names(negative_patch)) - protected - STOPWORDS
        positive, negative = mask_terms(positive, terms)[0], mask_terms(negative, terms)[0]
    if leaked_lines(positive, both_patches) or leaked_lines(negative, both_patches):
        return None, "patch line left in a context"
    if positive == negative:
        return None, "contexts identical after masking"
    if not positive.strip() or not negative.strip():
        return None, "empty context"
    evidence = find_evidence(positive, answer_patch)
    if not evidence:
        return None, "no evidence of the answer left in the positive"

    def side(summary: Summary) -> dict[str, Any]:
        return {"episode_id": summary.episode_id, "task_id": summary.task_id, "resolved": summary.resolved,
                "file": sources[summary.source].path.name, "format": sources[summary.source].format,
                "record": summary.record}

    record = PairRecord(
        pair_id=pair_id(a.episode_id, b.episode_id),
        query=pos["issue"],
        answer=describe(answer_patch),
        positive=positive,
        negative=negative,
        funnel_stage=STAGES[choice.depth],
        provenance={"miner_version": MINER_VERSION, "seed": config.seed, "repo": a.repo, "commit": a.commit,
                    "positive": side(a), "negative": side(b), "shared_files": list(choice.shared_files),
                    "shared_functions": list(choice.shared_scopes),
                    "similarity": round(similarity(a.signature, b.signature, config.signature_size), 4),
                    "group": issue_group(a.task_id, b.task_id), "evidence": evidence},
    )
    return record, None


# ---------------------------------------------------------------------------------------------------------- mine


@dataclass
class MineResult:
    funnel: Funnel
    out: Path
    report: dict[str, Path]


def mine(paths: list[str | Path], out: str | Path, config: MinerConfig | None = None,
         report_dir: str | Path | None = None, progress: Callable[[str], None] | None = None,
         results: str | Path | None = None, allow_empty: bool = False) -> MineResult:
    """Mine pairs from trajectory files (or mini-swe-agent run folders) into `out` (JSONL) and write the funnel
    report (funnel.json, funnel.png, rejected.jsonl when judged) into report_dir (default: `<out stem>.report` beside
    out). `results`: resolved flags for run folders (`mini_swe_agent.read_results`). Inputs that hold no trajectory
    at all are an error (`EmptyInput`) unless allow_empty."""
    config = config or MinerConfig()
    say = progress or (lambda message: None)
    if not paths:
        raise MinerError("no trajectory files given")
    if bool(config.judge_url) != bool(config.judge_model):
        raise MinerError("the judge needs both --judge-url and --judge-model")
    out = Path(out)
    report_path = Path(report_dir) if report_dir else out.parent / f"{out.stem}.report"
    sources = [open_source(path, results) for path in paths]
    funnel = Funnel(config=config.model_dump())

    # pass 1: summaries
    summaries: list[Summary] = []
    seen: set[str] = set()
    interned: dict[str, str] = {}
    for source_index, source in enumerate(sources):
        count = 0
        for record, trajectory in iter_source(source):
            count += 1
            summary = summarize(trajectory, source_index, record, config, interned)
            if summary.episode_id in seen:
                funnel.duplicates += 1
                continue
            seen.add(summary.episode_id)
            summaries.append(summary)
            if len(summaries) % 5000 == 0:
                say(f"read {len(summaries):,} trajectories")
        entry: dict[str, Any] = {"path": str(source.path), "format": source.format, "records": count}
        if source.run is not None:
            entry["resolved_known"] = sum(1 for s in summaries if s.source == source_index and s.resolved is not None)
            entry["results_from"] = source.run.results_from
            entry["not_trajectories"] = source.run.skipped
        funnel.inputs.append(entry)
    del seen
    if not summaries and not allow_empty:
        raise EmptyInput("no trajectories in " + ", ".join(str(source.path) for source in sources)
                         + " (pass --allow-empty to write an empty pairs file)")
    funnel.trajectories = len(summaries)
    funnel.unknown_repo = sum(1 for s in summaries if s.repo is None)
    funnel.with_edits = sum(1 for s in summaries if s.files)
    say(f"pass 1 done: {funnel.trajectories:,} trajectories, {funnel.with_edits:,} with edits")

    anchors = choose_anchors(summaries, config, funnel)
    pools = cascade(summaries, anchors, config, funnel)
    say(f"cascade done: {funnel.stages['pooled']:,} candidates pooled for {len(pools):,} of {len(anchors):,} anchors")

    # pass 2: re-read only the pooled trajectories
    needed = {c.anchor for pool in pools for c in pool} | {c.negative for pool in pools for c in pool}
    spool = spool_selected(sources, summaries, needed, config)
    store = RecordStore()
    try:
        records = select_pairs(pools, summaries, sources, spool, store, config, funnel)
    finally:
        spool.close()
        store.close()
    say(f"selected {len(records):,} pairs")
    _write_records(records, config, funnel, out, report_path)
    del records  # the audit reads the written file: one copy of the pairs in memory at a time
    report = funnel.write(report_path)
    if funnel.stages["written"] >= 2:
        from trainer.pairs.audit import audit_file

        audit, files = audit_file(out, report_path, seed=config.seed)
        funnel.audit = {"best": audit.best.name, "accuracy": audit.best.accuracy, "bound": audit.bound,
                        "passes": audit.passes}
        report = {**funnel.write(report_path), "audit_json": files["json"], "audit_png": files["png"]}
    return MineResult(funnel=funnel, out=out, report=report)


def select_pairs(pools: list[list[Choice]], summaries: list[Summary], sources: list[Source], spool: Spool,
                 store: RecordStore, config: MinerConfig, funnel: Funnel) -> list[PairRecord]:
    """Build the pool's records (masked, checked, with evidence) as the balanced selection visits them, then filter
    against the audit (`select`); the kept records in pool order."""
    log = SelectionLog()
    failures: dict[str, int] = {}
    candidates, chosen = balanced_selection(
        pools, lambda choice: build_record(choice, summaries, sources, spool, config), store, config.pairs_per_anchor,
        config.balance_bound, config.max_pairs, failures)
    funnel.masking_failures = dict(sorted(failures.items()))
    funnel.stages["masked"] = log.built = len(candidates)
    funnel.stages["selected"] = log.balanced = len(chosen)
    if config.audit_target is not None and len(chosen) >= 2:
        chosen = adversarial_filter(candidates, store, chosen, config.audit_target, config.min_pairs, config.seed, log)
    funnel.selection = log.as_dict()
    funnel.stages["filtered"] = len(chosen)
    return [store.get(candidates[index].key) for index in chosen]


def _write_records(records: list[PairRecord], config: MinerConfig, funnel: Funnel, out: Path,
                   report_path: Path) -> None:
    engine = None
    if config.judge_url:
        from agent.engines.openai import OpenAIChatEngine

        engine = OpenAIChatEngine(config.judge_url, config.judge_model or "", retries=2)
        funnel.judge = {"model": config.judge_model, "accepted": 0, "rejected": 0, "shortcut": 0, "ambiguous": 0}
    report_path.mkdir(parents=True, exist_ok=True)
    rejected_path = report_path / "rejected.jsonl"
    if engine is None:
        rejected_path.unlink(missing_ok=True)  # a previous judged run's rejections do not belong to this run
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    all_records = records

    async def run() -> None:
        with partial.open("w", encoding="utf-8") as handle, \
                (rejected_path.open("w", encoding="utf-8") if engine else open(os.devnull, "w")) as rejected:
            batch_size = config.judge_batch if engine else 16  # records are big (two contexts): few at a time
            iterator = iter(all_records)
            while records := list(itertools.islice(iterator, batch_size)):
                if engine is not None:
                    from trainer.pairs.judge import judge_pairs

                    verdicts = await judge_pairs(engine, records, seed=config.seed,
                                                 concurrency=config.judge_concurrency,
                                                 max_context_chars=config.judge_max_context_chars)
                    kept = []
                    for record, verdict in zip(records, verdicts):
                        record.judge = verdict
                        assert funnel.judge is not None
                        funnel.judge["accepted" if verdict["accepted"] else "rejected"] += 1
                        funnel.judge["shortcut"] += bool(verdict.get("shortcut"))
                        funnel.judge["ambiguous"] += bool(verdict.get("ambiguous"))
                        if verdict["accepted"]:
                            kept.append(record)
                        else:
                            rejected.write(record.model_dump_json() + "\n")
                    records = kept
                funnel.stages["judged"] += len(records)
                for record in records:
                    handle.write(record.model_dump_json() + "\n")
                    funnel.pairs_by_stage[record.funnel_stage] = funnel.pairs_by_stage.get(record.funnel_stage, 0) + 1
                funnel.stages["written"] += len(records)
        if engine is not None:
            await engine.close()

    try:
        asyncio.run(run())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    funnel.pairs_by_stage = {stage: funnel.pairs_by_stage[stage] for stage in STAGES if stage in funnel.pairs_by_stage}


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> MinerConfig:
    """A MinerConfig from a JSON (or YAML) file of its fields, with `overrides` (None values ignored) on top."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MinerError(f"{path}: no such config file")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
            raise MinerError(f"{path}: cannot parse the config: {exc}") from None
        if not isinstance(data, dict):
            raise MinerError(f"{path}: the config must be an object of MinerConfig fields")
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return MinerConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}" for e in exc.errors())
        raise MinerError(f"bad miner setting: {problems}") from None
