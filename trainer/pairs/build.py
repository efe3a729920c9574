"""Pass 2 of the miner and the pair records: the pooled trajectories masked and rendered once (spooled to disk), then
each candidate pair's record — masked against both sides, checked for leaks, with its evidence (mine.py's docstring,
steps 4 and 5)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter, defaultdict
from typing import Any

from trainer.pairs.cascade import Choice
from trainer.pairs.diffs import PatchSummary, describe, patch_lines, summarize_patch
from trainer.pairs.masking import PLACEHOLDER, mask_messages, problem_statement, render
from trainer.pairs.mine_config import MINER_VERSION, STAGES, MinerConfig
from trainer.pairs.record import PairRecord
from trainer.pairs.scrub import LineScrubber, StretchScrubber, added_lines, issue_title, leaked_lines, mask_terms
from trainer.pairs.sources import Source, iter_source
from trainer.pairs.split import issue_group
from trainer.pairs.summaries import STOPWORDS, WORD_PATTERN, Summary, similarity


class Spool:
    """Masked renderings of the selected trajectories in a temporary file; memory holds offsets only (and the issue
    words' document frequencies over the spooled trajectories)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - the spool owns it; close() closes it
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
            spool.put(
                records[record],
                {
                    "context": render(
                        masked, include_system=config.include_system, max_output_chars=config.max_output_chars
                    ),
                    "patch": trajectory.patch or "",
                    "issue": issue,
                },
            )
            spool.issue_df.update(issue_words(issue))
            spool.issues += 1
    return spool


def issue_words(issue: str) -> set[str]:
    return set(WORD_PATTERN.findall(issue.lower())) - STOPWORDS


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
    return {
        part.lower()
        for edit in patch.files
        for name in edit.new_names + edit.dropped_names
        for part in name.split(".")
        if len(part) >= 3
    }


def issue_terms(spool: Spool, issues: list[str], protected: set[str], max_df: float) -> set[str]:
    """The words of the issues that at most max_df of the spooled trajectories' issues use, protected names out."""
    limit = max(1.0, max_df * spool.issues)
    return {
        word
        for issue in issues
        for word in issue_words(issue)
        if spool.issue_df[word] <= limit and word not in protected
    }


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
    pattern = re.compile(
        r"(?<![\w.])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(?![\w])"
    )
    found: list[tuple[bool, int, list[str]]] = []
    for number, line in enumerate(context.split("\n")):
        hits = list(dict.fromkeys(names[m] for m in pattern.findall(line)))
        if hits:
            found.append((PLACEHOLDER not in line, number, hits))
    found.sort(key=lambda item: (item[0], item[1]))  # masked edits that name the file first, then by position
    return [{"line": number, "mentions": hits} for _, number, hits in found[:MAX_EVIDENCE]]


def pair_id(anchor_episode: str, negative_episode: str) -> str:
    return "pair-" + hashlib.blake2b(f"{anchor_episode}\0{negative_episode}".encode(), digest_size=8).hexdigest()


def build_record(
    choice: Choice, summaries: list[Summary], sources: list[Source], spool: Spool, config: MinerConfig
) -> tuple[PairRecord | None, str | None]:
    """(the pair, None) or (None, why it was dropped)."""
    a, b = summaries[choice.anchor], summaries[choice.negative]
    pos, neg = spool.get(choice.anchor), spool.get(choice.negative)
    answer_lines = patch_lines(pos["patch"], config.min_patch_line_chars)
    both_patches = answer_lines + patch_lines(neg["patch"], config.min_patch_line_chars)
    scrubber = LineScrubber(both_patches)
    # Both contexts get the same treatment from the same sources (both patches, both issues), so what is masked
    # cannot itself tell them apart beyond what the texts already do.
    quotes = StretchScrubber(
        added_lines(pos["patch"]) + added_lines(neg["patch"]) + [pos["issue"], neg["issue"]],
        titles=[issue_title(pos["issue"]), issue_title(neg["issue"])],
    )
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
        return {
            "episode_id": summary.episode_id,
            "task_id": summary.task_id,
            "resolved": summary.resolved,
            "file": sources[summary.source].path.name,
            "format": sources[summary.source].format,
            "record": summary.record,
        }

    record = PairRecord(
        pair_id=pair_id(a.episode_id, b.episode_id),
        query=pos["issue"],
        answer=describe(answer_patch),
        positive=positive,
        negative=negative,
        funnel_stage=STAGES[choice.depth],
        provenance={
            "miner_version": MINER_VERSION,
            "seed": config.seed,
            "repo": a.repo,
            "commit": a.commit,
            "positive": side(a),
            "negative": side(b),
            "shared_files": list(choice.shared_files),
            "shared_functions": list(choice.shared_scopes),
            "similarity": round(similarity(a.signature, b.signature, config.signature_size), 4),
            "group": issue_group(a.task_id, b.task_id),
            "evidence": evidence,
        },
    )
    return record, None
