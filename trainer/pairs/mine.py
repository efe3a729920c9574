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
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from trainer.pairs.build import Spool, build_record, pair_id, spool_selected
from trainer.pairs.cascade import Choice, cascade, choose_anchors
from trainer.pairs.funnel import Funnel
from trainer.pairs.mine_config import STAGES, EmptyInput, MinerConfig, MinerError, load_config
from trainer.pairs.record import PairRecord
from trainer.pairs.select import RecordStore, SelectionLog, adversarial_filter, balanced_selection
from trainer.pairs.sources import Source, iter_source, open_source
from trainer.pairs.summaries import Summary, repo_and_commit, signature, similarity, summarize

__all__ = [
    "EmptyInput",
    "MineResult",
    "MinerConfig",
    "MinerError",
    "load_config",
    "mine",
    "pair_id",
    "repo_and_commit",
    "signature",
    "similarity",
]


@dataclass
class MineResult:
    funnel: Funnel
    out: Path
    report: dict[str, Path]


def mine(
    paths: Sequence[str | Path],
    out: str | Path,
    config: MinerConfig | None = None,
    report_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    results: str | Path | None = None,
    allow_empty: bool = False,
) -> MineResult:
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

    summaries = read_summaries(sources, config, funnel, say)
    if not summaries and not allow_empty:
        raise EmptyInput(
            "no trajectories in "
            + ", ".join(str(source.path) for source in sources)
            + " (pass --allow-empty to write an empty pairs file)"
        )
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
        report = _audit_written(out, report_path, config.seed, funnel)
    return MineResult(funnel=funnel, out=out, report=report)


def read_summaries(
    sources: list[Source], config: MinerConfig, funnel: Funnel, say: Callable[[str], None]
) -> list[Summary]:
    """Pass 1 (step 1 of the module docstring): every input streamed into bounded summaries, a repeated episode_id
    skipped; the funnel gets the inputs and the trajectory counts."""
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
    funnel.trajectories = len(summaries)
    funnel.unknown_repo = sum(1 for s in summaries if s.repo is None)
    funnel.with_edits = sum(1 for s in summaries if s.files)
    return summaries


def _audit_written(out: Path, report_path: Path, seed: int, funnel: Funnel) -> dict[str, Path]:
    """Step 8: audit the written pairs into report_path, put the verdict into the funnel and rewrite it; the report
    files."""
    from trainer.pairs.audit import audit_file

    audit, files = audit_file(out, report_path, seed=seed)
    funnel.audit = {
        "best": audit.best.name,
        "accuracy": audit.best.accuracy,
        "bound": audit.bound,
        "passes": audit.passes,
    }
    return {**funnel.write(report_path), "audit_json": files["json"], "audit_png": files["png"]}


def select_pairs(
    pools: list[list[Choice]],
    summaries: list[Summary],
    sources: list[Source],
    spool: Spool,
    store: RecordStore,
    config: MinerConfig,
    funnel: Funnel,
) -> list[PairRecord]:
    """Build the pool's records (masked, checked, with evidence) as the balanced selection visits them, then filter
    against the audit (`select`); the kept records in pool order."""
    log = SelectionLog()
    failures: dict[str, int] = {}
    candidates, chosen = balanced_selection(
        pools,
        lambda choice: build_record(choice, summaries, sources, spool, config),
        store,
        config.pairs_per_anchor,
        config.balance_bound,
        config.max_pairs,
        failures,
    )
    funnel.masking_failures = dict(sorted(failures.items()))
    funnel.stages["masked"] = log.built = len(candidates)
    funnel.stages["selected"] = log.balanced = len(chosen)
    if config.audit_target is not None and len(chosen) >= 2:
        chosen = adversarial_filter(candidates, store, chosen, config.audit_target, config.min_pairs, config.seed, log)
    funnel.selection = log.as_dict()
    funnel.stages["filtered"] = len(chosen)
    return [store.get(candidates[index].key) for index in chosen]


def _write_records(
    records: list[PairRecord], config: MinerConfig, funnel: Funnel, out: Path, report_path: Path
) -> None:
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

    async def run(handle: TextIO, rejected: TextIO) -> None:
        batch_size = config.judge_batch if engine else 16  # records are big (two contexts): few at a time
        iterator = iter(all_records)
        while records := list(itertools.islice(iterator, batch_size)):
            if engine is not None:
                from trainer.pairs.judge import judge_pairs

                verdicts = await judge_pairs(
                    engine,
                    records,
                    seed=config.seed,
                    concurrency=config.judge_concurrency,
                    max_context_chars=config.judge_max_context_chars,
                )
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
        with (
            partial.open("w", encoding="utf-8") as handle,
            rejected_path.open("w", encoding="utf-8") if engine else open(os.devnull, "w") as rejected,
        ):
            asyncio.run(run(handle, rejected))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    funnel.pairs_by_stage = {stage: funnel.pairs_by_stage[stage] for stage in STAGES if stage in funnel.pairs_by_stage}
