"""The miner's settings (`MinerConfig`: every choice the paper leaves open), its user error and how a config file is
read; the construction they steer is in mine.py's docstring."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from envserver.settings import SettingsError, load_settings

MINER_VERSION = 1
Stage = Literal["same_repo_commit", "same_file", "same_function", "related_issue"]
STAGES: tuple[Stage, ...] = ("same_repo_commit", "same_file", "same_function", "related_issue")
OWN_FORMAT = "contextrl"
"""Our own trajectory JSONL (`agent.trajectory`), told apart from third-party sets by its `task_id` key."""


class MinerError(ValueError):
    """A user error (missing file, unreadable record, bad setting); the CLI prints it without a traceback."""


HARNESS_PATHS = (
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "tox.ini",
    "MANIFEST.in",
    "requirements*.txt",
    "*/requirements*.txt",
    "Makefile",
    "*.cfg",
    "*.ini",
    "*.toml",
    "*.lock",
    "*.md",
    "*.rst",
    "*.txt",
    "AUTHORS*",
    "CHANGES*",
    "CHANGELOG*",
    "HISTORY*",
    "NEWS*",
    "doc/*",
    "docs/*",
    ".github/*",
    ".gitignore",
    "conftest.py",
    "*/conftest.py",
    "tests/*",
    "test/*",
    "testing/*",
    "*/tests/*",
    "*/test/*",
    "test_*.py",
    "*/test_*.py",
    "*_test.py",
    "*/_pytest/*/test_*.py",
)
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
    similarity_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """related_issue: a fixed threshold on the estimated Jaccard similarity of the problem statements' word sets;
    None: `similarity_quantile` of the observed same_function similarities (the funnel reports the value)."""
    similarity_quantile: float = Field(default=0.5, ge=0.0, le=1.0)
    """related_issue, when no fixed threshold: the quantile of the same_function candidates' similarities that a
    candidate must reach (0.5: the more related half)."""
    ignored_paths: list[str] = Field(default_factory=lambda: list(HARNESS_PATHS))
    """fnmatch patterns (`*` spans `/`) of files that never make two trajectories `same_file` and do not count as
    edits: packaging, harness and test configuration, docs, tests (what the test harness or a release touches,
    not the fix)."""
    pool_per_anchor: int = Field(default=4, ge=1)
    """Candidates per anchor (distinct confounder instances, best first) whose records are built and scored, from
    which the balanced selection picks `pairs_per_anchor`."""
    balance_bound: float = Field(default=0.55, gt=0.5, le=1.0)
    """Selection: each label-blind baseline may pick the positive in at most this share of the pairs (and at least
    1 − this): `audit_report.SHORTCUT_BOUND` minus room for the cross-validated classifiers' noise."""
    audit_target: float | None = Field(default=0.6, gt=0.5, le=1.0)
    """Adversarial filtering: pairs a baseline solves are swapped or dropped until the audit's best baseline is ≤
    this (the audit's bound; its accuracies are deterministic in the pairs file); None: no filtering (the audit
    still runs and is reported)."""
    max_pairs: int = Field(default=1000, ge=1)
    """Pairs kept at most (the paper's set is 1k): anchors are visited in a seeded order and records are built only
    until this many are chosen, so the cost of a large input is bounded by what is kept."""
    min_pairs: int = Field(default=20, ge=2)
    """Adversarial filtering stops rather than leave fewer distinct issue pairs than this (the report then shows the
    bound missed)."""
    signature_size: int = Field(default=128, ge=8)
    """Words kept in a problem statement's signature (bottom-k MinHash: exact for fewer than k distinct words)."""
    anchor_outcome: Literal["resolved", "not_failed", "any"] = "not_failed"
    """Which trajectories may be positives: only resolved ones, any the data does not mark failed, or any."""
    max_anchors_per_instance: int = Field(default=1, ge=1)
    """Anchors per task instance (several resolved runs of one instance would repeat the same query)."""
    pairs_per_anchor: int = Field(default=1, ge=1)
    """Pairs per anchor, each with a confounder from a different instance (at most `pool_per_anchor`)."""
    max_candidates_per_anchor: int = Field(default=1000, ge=1)
    """File-sharing candidates examined per anchor (a seeded sample beyond this): bounds the work in huge repos."""
    drop_top_level_new_files: bool = True
    """A file the patch creates at the repository's top level is a scratch script, not part of the fix."""
    min_patch_line_chars: int = Field(default=10, ge=1)
    """A patch line shorter than this (collapsed, stripped) is trivial (`else:`, `pass`, `)`) and not masked."""
    issue_term_max_df: float | None = Field(default=0.1, gt=0.0, le=1.0)
    """Words of either pair's issue that are in at most this share of the pooled trajectories' issues (the issue's
    own vocabulary: names, error text, example values) are masked in both contexts, except the names of the
    patches' files and functions; None: off. An agent restates, greps and reproduces its issue, so without this the
    positive is the context that shares the query's rare words (README, findings)."""
    omit_issue_in_context: bool = True
    """Replace the issue text inside the contexts (the query quoted verbatim would give the positive away)."""
    include_system: bool = False
    """Render the system prompt into the contexts (boilerplate of the agent framework)."""
    max_output_chars: int = Field(default=4000, ge=0)
    """A tool output or user message longer than this keeps its head and tail (0: no limit)."""
    judge_url: str | None = None
    """OpenAI-compatible endpoint of the judge (e.g. http://127.0.0.1:8001/v1); None: no judge."""
    judge_model: str | None = None
    """Model name the judge endpoint serves."""
    judge_concurrency: int = Field(default=8, ge=1)
    """Judge requests in flight."""
    judge_max_context_chars: int = Field(default=12000, ge=200)
    """Each context is cut to its head and tail at this many characters for the judge."""
    judge_batch: int = Field(default=64, ge=1)
    """Pairs judged per batch (bounds the records held in memory)."""


def load_config(
    path: str | Path | None, overrides: Sequence[str] = (), flags: dict[str, Any] | None = None
) -> MinerConfig:
    """A MinerConfig: defaults < the file (YAML or JSON) < each `--set KEY=VALUE` < the flags (None: not given), the
    project's one settings rule (envserver/settings.py)."""
    try:
        return load_settings(MinerConfig, path, overrides, flags)
    except SettingsError as exc:
        raise MinerError(str(exc)) from None
