"""The contrastive pair miner: agent trajectories in, pair records (`PairRecord`, JSONL) and a funnel report out.

    python -m trainer.pairs mine --trajectories FILE... --out pairs.jsonl [--judge-url URL --judge-model NAME]

Construction (the paper mines 1k pairs from 66k SWE-smith trajectories with this cascade; where it is silent, the
choice is a `MinerConfig` field):

1. Pass 1 streams every input (SWE-smith, SWE-Gym/OpenHands and SWE-agent sets through `agent.readers`, or our own
   trajectory JSONL) and keeps a bounded summary per trajectory: ids, repository and base commit, outcome, edited
   files and functions (`diffs`: the final patch as a unified diff; top-level new files are scratch scripts), a
   bottom-k MinHash of the problem statement's words, and where the record is (file, record index). Repository and
   commit come from the record's own `repo` / `base_commit` when it has them, else from the instance id
   (`owner__repo.<commit>.<bug>` for SWE-smith; `owner__repo-<n>` for SWE-bench / SWE-Gym, commit unknown). A later
   trajectory with an episode_id already seen is skipped.
2. Anchors (the positives) are trajectories with a known repository, an issue text, a patch that edits at least one
   file and an acceptable outcome (`anchor_outcome`: by default a trajectory the data marks as failed is never a
   positive); at most `max_anchors_per_instance` per task instance, chosen with the seed. Any trajectory of another
   instance may be a confounder, a failed one included (it shows look-alike work that does not support the answer).
3. The cascade, over ordered (anchor, confounder) pairs of different task instances; each stage filters the one before:
   same_repo_commit (same repository, and the same base commit when both are known) → same_file (an edited file in
   common) → same_function (an edited function in common, `path::qualname`) → related_issue (estimated Jaccard
   similarity of the two problem statements' word sets ≥ `similarity_threshold`). Blocking keeps it sub-quadratic:
   stage 1 is counted from per-repository / per-commit / per-instance counts without enumerating pairs, and
   confounders are enumerated from an index of (repository, file) → trajectories. When more than
   `max_candidates_per_anchor` share a file with an anchor, a seeded sample of that many goes on (the report shows
   the `capped` count).
4. Selection: candidates that passed at least `min_stage`, ranked by the deepest stage passed, then (from
   same_function on, where it is computed) problem-statement similarity, then a seeded hash; the first
   `pairs_per_anchor` with distinct confounder instances become pairs. `funnel_stage` is the deepest stage the pair
   passed.
5. Pass 2 re-reads only the selected trajectories (by record index, one file at a time), masks and renders each once
   (`masking`) and spools the text to a temporary file, so memory stays bounded by the summaries.
6. Records, in anchor order: Q = the anchor's issue text; A = its change described at the level of files, functions
   and what the code now uses (`diffs.describe`; no diff line); C+ / C− = the two masked renderings, then every line
   holding a non-trivial line of either patch is masked too. A pair whose contexts still contain a line of the
   anchor's patch (`masking.leaked_lines`), or whose two contexts came out identical, is dropped and counted.
   pair_id = "pair-" + a hash of the two episode ids (stable across runs and seeds).
7. The optional judge (`judge`) rejects shortcut cues and ambiguous labels; every verdict is kept in the record's
   `judge` field (rejected pairs go to `rejected.jsonl` in the report folder).

Same input + config → byte-identical pairs file and funnel.json.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import heapq
import itertools
import json
import os
import re
import tempfile
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.readers import FORMATS, ReaderError, convert_record, sniff_format
from agent.readers.common import iter_records
from agent.trajectory import Trajectory
from trainer.pairs.diffs import describe, patch_lines, summarize_patch
from trainer.pairs.funnel import Funnel
from trainer.pairs.masking import LineScrubber, leaked_lines, mask_messages, problem_statement, render
from trainer.pairs.record import PairRecord

MINER_VERSION = 1
STAGES = ("same_repo_commit", "same_file", "same_function", "related_issue")
Stage = Literal["same_repo_commit", "same_file", "same_function", "related_issue"]
OWN_FORMAT = "contextrl"
"""Our own trajectory JSONL (`agent.trajectory`), told apart from third-party sets by its `task_id` key."""


class MinerError(ValueError):
    """A user error (missing file, unreadable record, bad setting); the CLI prints it without a traceback."""


class MinerConfig(BaseModel):
    """Every choice the paper leaves open. Defaults follow the paper where it says something."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    """Seeds every choice: which trajectory anchors an instance, the candidate sample, ties."""
    min_stage: Stage = "related_issue"
    """The stage a candidate must pass to become a pair (the paper: the whole cascade); an earlier stage also keeps
    shallower, easier confounders."""
    similarity_threshold: float = Field(0.2, ge=0.0, le=1.0)
    """related_issue: estimated Jaccard similarity of the problem statements' word sets. Unrelated issues of the
    sample sets score ≤ 0.15 (SWE-smith's issue template shares words)."""
    signature_size: int = Field(128, ge=8)
    """Words kept in a problem statement's signature (bottom-k MinHash: exact for fewer than k distinct words)."""
    anchor_outcome: Literal["resolved", "not_failed", "any"] = "not_failed"
    """Which trajectories may be positives: only resolved ones, any the data does not mark failed, or any."""
    max_anchors_per_instance: int = Field(1, ge=1)
    """Anchors per task instance (several resolved runs of one instance would repeat the same query)."""
    pairs_per_anchor: int = Field(1, ge=1)
    """Pairs per anchor, each with a confounder from a different instance."""
    max_candidates_per_anchor: int = Field(1000, ge=1)
    """File-sharing candidates examined per anchor (a seeded sample beyond this): bounds the work in huge repos."""
    drop_top_level_new_files: bool = True
    """A file the patch creates at the repository's top level is a scratch script, not part of the fix."""
    min_patch_line_chars: int = Field(10, ge=1)
    """A patch line shorter than this (collapsed, stripped) is trivial (`else:`, `pass`, `)`) and not masked."""
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


def open_source(path: str | Path) -> Source:
    """Check the file and tell its format from the first record."""
    path = Path(path)
    if not path.exists():
        raise MinerError(f"{path}: no such file")
    if not path.is_file():
        raise MinerError(f"{path}: not a file")
    try:
        first = next(iter_records(path), None)
    except (ReaderError, UnicodeDecodeError, OSError) as exc:
        raise MinerError(f"{path}: cannot read: {exc}") from None
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
        raise MinerError(f"{source.path}: {where}: not a readable trajectory: {reason}") from None


def iter_source(source: Source, wanted: set[int] | None = None) -> Iterator[tuple[int, Trajectory]]:
    """(record index, trajectory) for every record, or only the `wanted` ones (the others are parsed as JSON but not
    converted; reading stops after the last wanted one)."""
    last = max(wanted) if wanted else None
    try:
        for index, record in iter_records(source.path):
            if wanted is None or index in wanted:
                yield index, _convert(source, index, record)
            if last is not None and index >= last:
                return
    except ReaderError as exc:
        raise MinerError(str(exc)) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise MinerError(f"{source.path}: cannot read: {exc}") from None


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
        files=tuple(sorted({intern(path) for path in patch.paths})),
        scopes=tuple(sorted({intern(scope) for scope in patch.scopes})),
        signature=signature(issue, config.signature_size), has_issue=bool(issue),
        has_patch=bool(trajectory.patch and trajectory.patch.strip()), patch_error=bool(patch.error))


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
        return "patch edits only scratch files"
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


def cascade(summaries: list[Summary], anchors: list[int], config: MinerConfig, funnel: Funnel) -> list[Choice]:
    """Stages 3 and 4 of the module docstring: funnel counts and the chosen pairs, in anchor order."""
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

    min_depth = STAGES.index(config.min_stage)
    stages = funnel.stages
    choices: list[Choice] = []
    for a_index in anchors:
        a = summaries[a_index]
        assert a.repo is not None
        block = repo_count[a.repo] if a.commit is None else \
            commit_count[(a.repo, a.commit)] + commit_count[(a.repo, None)]
        stages["same_repo_commit"] += max(0, block - task_count[a.task_id])

        sharing = sorted({b for path in a.files for b in by_file[(a.repo, path)]
                          if summaries[b].task_id != a.task_id
                          and (a.commit is None or summaries[b].commit is None or summaries[b].commit == a.commit)})
        stages["same_file"] += len(sharing)
        shares_a_file = set(sharing)  # before the cap: a capped-out candidate is no repo-only confounder either
        if len(sharing) > config.max_candidates_per_anchor:
            sharing = sorted(sorted(sharing, key=lambda b: _rank(config.seed, "cap", a.episode_id,
                                                                 summaries[b].episode_id))
                             [:config.max_candidates_per_anchor])
        stages["capped"] += len(sharing)

        a_files, a_scopes, a_words = set(a.files), set(a.scopes), set(a.signature)
        found: list[Choice] = []
        for b_index in sharing:
            b = summaries[b_index]
            scopes = tuple(sorted(a_scopes.intersection(b.scopes)))
            depth, score = 1, 0.0
            if scopes:
                stages["same_function"] += 1
                depth = 2
                score = similarity(a.signature, b.signature, config.signature_size, a_words)
                if score >= config.similarity_threshold:
                    stages["related_issue"] += 1
                    depth = 3
            if depth >= min_depth:
                found.append(Choice(a_index, b_index, depth, score, tuple(sorted(a_files.intersection(b.files))),
                                    scopes))
        found.sort(key=lambda c: (-c.depth, -c.similarity,
                                  _rank(config.seed, "pick", a.episode_id, summaries[c.negative].episode_id)))
        if min_depth == 0 and len({summaries[c.negative].task_id for c in found}) < config.pairs_per_anchor:
            found += _repo_only(summaries, by_repo[a.repo], a_index, shares_a_file, config)
        picked: list[Choice] = []
        tasks: set[str] = set()
        for choice in found:
            task = summaries[choice.negative].task_id
            if task not in tasks:
                picked.append(choice)
                tasks.add(task)
            if len(picked) == config.pairs_per_anchor:
                break
        choices += picked
    stages["selected"] = len(choices)
    return choices


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
    """Masked renderings of the selected trajectories in a temporary file; memory holds offsets only."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        self.where: dict[int, tuple[int, int]] = {}

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
            spool.put(records[record], {
                "context": render(masked, include_system=config.include_system,
                                  max_output_chars=config.max_output_chars),
                "patch": trajectory.patch or "",
                "issue": problem_statement(trajectory.messages, given),
            })
    return spool


def pair_id(anchor_episode: str, negative_episode: str) -> str:
    return "pair-" + hashlib.blake2b(f"{anchor_episode}\0{negative_episode}".encode(), digest_size=8).hexdigest()


def build_record(choice: Choice, summaries: list[Summary], sources: list[Source], spool: Spool,
                 config: MinerConfig) -> tuple[PairRecord | None, str | None]:
    """(the pair, None) or (None, why it was dropped)."""
    a, b = summaries[choice.anchor], summaries[choice.negative]
    pos, neg = spool.get(choice.anchor), spool.get(choice.negative)
    answer_lines = patch_lines(pos["patch"], config.min_patch_line_chars)
    scrubber = LineScrubber(answer_lines + patch_lines(neg["patch"], config.min_patch_line_chars))
    positive, _ = scrubber.scrub(pos["context"])
    negative, _ = scrubber.scrub(neg["context"])
    if leaked_lines(positive, answer_lines) or leaked_lines(negative, answer_lines):
        return None, "patch line left in a context"
    if positive == negative:
        return None, "contexts identical after masking"
    if not positive.strip() or not negative.strip():
        return None, "empty context"

    def side(summary: Summary) -> dict[str, Any]:
        return {"episode_id": summary.episode_id, "task_id": summary.task_id, "resolved": summary.resolved,
                "file": sources[summary.source].path.name, "format": sources[summary.source].format,
                "record": summary.record}

    record = PairRecord(
        pair_id=pair_id(a.episode_id, b.episode_id),
        query=pos["issue"],
        answer=describe(summarize_patch(pos["patch"], config.drop_top_level_new_files)),
        positive=positive,
        negative=negative,
        funnel_stage=STAGES[choice.depth],
        provenance={"miner_version": MINER_VERSION, "seed": config.seed, "repo": a.repo, "commit": a.commit,
                    "positive": side(a), "negative": side(b), "shared_files": list(choice.shared_files),
                    "shared_functions": list(choice.shared_scopes),
                    "similarity": round(similarity(a.signature, b.signature, config.signature_size), 4)},
    )
    return record, None


# ---------------------------------------------------------------------------------------------------------- mine


@dataclass
class MineResult:
    funnel: Funnel
    out: Path
    report: dict[str, Path]


def mine(paths: list[str | Path], out: str | Path, config: MinerConfig | None = None,
         report_dir: str | Path | None = None, progress: Callable[[str], None] | None = None) -> MineResult:
    """Mine pairs from trajectory files into `out` (JSONL) and write the funnel report (funnel.json, funnel.png,
    rejected.jsonl when judged) into report_dir (default: `<out stem>.report` beside out)."""
    config = config or MinerConfig()
    say = progress or (lambda message: None)
    if not paths:
        raise MinerError("no trajectory files given")
    if bool(config.judge_url) != bool(config.judge_model):
        raise MinerError("the judge needs both --judge-url and --judge-model")
    out = Path(out)
    report_path = Path(report_dir) if report_dir else out.parent / f"{out.stem}.report"
    sources = [open_source(path) for path in paths]
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
        funnel.inputs.append({"path": str(source.path), "format": source.format, "records": count})
    del seen
    funnel.trajectories = len(summaries)
    funnel.unknown_repo = sum(1 for s in summaries if s.repo is None)
    funnel.with_edits = sum(1 for s in summaries if s.files)
    say(f"pass 1 done: {funnel.trajectories:,} trajectories, {funnel.with_edits:,} with edits")

    anchors = choose_anchors(summaries, config, funnel)
    choices = cascade(summaries, anchors, config, funnel)
    say(f"cascade done: {len(choices):,} pairs selected from {len(anchors):,} anchors")

    # pass 2: re-read only the selected trajectories
    needed = {c.anchor for c in choices} | {c.negative for c in choices}
    spool = spool_selected(sources, summaries, needed, config)
    try:
        _write_records(choices, summaries, sources, spool, config, funnel, out, report_path)
    finally:
        spool.close()
    report = funnel.write(report_path)
    return MineResult(funnel=funnel, out=out, report=report)


def _write_records(choices: list[Choice], summaries: list[Summary], sources: list[Source], spool: Spool,
                   config: MinerConfig, funnel: Funnel, out: Path, report_path: Path) -> None:
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

    async def run() -> None:
        with partial.open("w", encoding="utf-8") as handle, \
                (rejected_path.open("w", encoding="utf-8") if engine else open(os.devnull, "w")) as rejected:
            batch_size = config.judge_batch if engine else 16  # records are big (two contexts): few at a time
            iterator = iter(choices)
            while batch := list(itertools.islice(iterator, batch_size)):
                records: list[PairRecord] = []
                for choice in batch:
                    record, problem = build_record(choice, summaries, sources, spool, config)
                    if record is None:
                        funnel.masking_failures[problem] = funnel.masking_failures.get(problem, 0) + 1
                    else:
                        records.append(record)
                funnel.stages["masked"] += len(records)
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
    funnel.masking_failures = dict(sorted(funnel.masking_failures.items()))


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
