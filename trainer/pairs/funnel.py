"""The miner's funnel report: how many candidates survive each stage of the cascade, masking and the judge — as a
JSON file, a table printed with rich, and a PNG bar chart (matplotlib, Agg backend).

Counts are ordered candidate pairs (anchor, confounder) up to `capped`; from `selected` on they are pairs. The JSON
holds counts and the configuration only (no timings), so a re-run on the same input writes the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROWS: list[tuple[str, str]] = [
    ("same_repo_commit", "same repository (and commit, when both are known)"),
    ("same_file", "… and an edited file in common"),
    ("capped", "… at most max_candidates_per_anchor per anchor"),
    ("same_function", "… and an edited function in common"),
    ("related_issue", "… and related issues (problem-statement similarity ≥ the threshold below)"),
    ("pooled", "candidates scored (stage ≥ min_stage, ≤ pool_per_anchor per anchor, best first)"),
    ("masked", "pool pairs whose masked contexts pass the masking check and show evidence"),
    ("selected", "pairs chosen with every label-blind baseline balanced (≤ pairs_per_anchor per anchor)"),
    ("filtered", "pairs left after adversarial filtering against the audit"),
    ("judged", "pairs the judge accepted (all filtered pairs when no judge)"),
    ("written", "pairs written"),
]
"""(key, description) of the funnel rows, in order."""


@dataclass
class Funnel:
    """Everything the report says; `stages` holds a count per ROWS key."""

    inputs: list[dict[str, Any]] = field(default_factory=list)
    """Per input file: path (as given), format, records read."""
    trajectories: int = 0
    duplicates: int = 0
    """Trajectories skipped because an earlier one had the same episode_id."""
    unknown_repo: int = 0
    """Trajectories whose repository could not be told (they take part in nothing)."""
    with_edits: int = 0
    """Trajectories whose final patch edits at least one (non-scratch) file."""
    ineligible: dict[str, int] = field(default_factory=dict)
    """Why trajectories could not be anchors (reason -> count); a trajectory counts once, under its first reason."""
    eligible_anchors: int = 0
    anchors: int = 0
    """Eligible anchors left after max_anchors_per_instance."""
    stages: dict[str, int] = field(default_factory=lambda: {key: 0 for key, _ in ROWS})
    pairs_by_stage: dict[str, int] = field(default_factory=dict)
    """Written pairs by their funnel_stage (the deepest stage the confounder passed)."""
    masking_failures: dict[str, int] = field(default_factory=dict)
    judge: dict[str, Any] | None = None
    """model, accepted, rejected, reasons of rejection (first words) when a judge ran."""
    related_issue: dict[str, Any] = field(default_factory=dict)
    """The related_issue threshold and where it came from (a fixed setting or a quantile of the data)."""
    selection: dict[str, Any] | None = None
    """What the balanced selection and the adversarial filtering did (`select.SelectionLog`)."""
    audit: dict[str, Any] | None = None
    """The written pairs' audit: best baseline, its accuracy, the bound, whether it passes."""
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {
            "inputs": self.inputs,
            "trajectories": self.trajectories,
            "duplicates": self.duplicates,
            "unknown_repo": self.unknown_repo,
            "with_edits": self.with_edits,
            "ineligible": self.ineligible,
            "eligible_anchors": self.eligible_anchors,
            "anchors": self.anchors,
            "funnel": [{"stage": key, "count": self.stages[key], "meaning": meaning} for key, meaning in ROWS],
            "related_issue": self.related_issue,
            "pairs_by_stage": self.pairs_by_stage,
            "masking_failures": self.masking_failures,
            "judge": self.judge,
            "selection": self.selection,
            "audit": self.audit,
            "config": self.config,
        }
        return json.dumps(body, indent=2, sort_keys=False, ensure_ascii=False) + "\n"

    def table(self) -> Any:
        """A rich Table of the funnel rows."""
        from rich.table import Table

        table = Table(title=f"pair-mining funnel: {self.trajectories} trajectories, {self.anchors} anchors")
        table.add_column("stage")
        table.add_column("count", justify="right")
        table.add_column("meaning", style="dim")
        for key, meaning in ROWS:
            if key == "related_issue" and self.related_issue:
                meaning += f" {self.related_issue['threshold']} ({self.related_issue['from']})"
            table.add_row(key, f"{self.stages[key]:,}", meaning)
        return table

    def plot(self, path: Path) -> Path:
        """A horizontal bar chart of the funnel rows (log scale when counts span more than 100×)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [key for key, _ in ROWS]
        counts = [self.stages[key] for key in keys]
        figure, axis = plt.subplots(figsize=(8, 0.45 * len(keys) + 1.2), layout="constrained")
        bars = axis.barh(range(len(keys)), counts, color="#4c72b0")
        axis.set_yticks(range(len(keys)), keys)
        axis.invert_yaxis()
        positive = [c for c in counts if c > 0]
        if positive and max(positive) > 100 * min(positive):
            axis.set_xscale("log")
        else:
            axis.set_xlim(0, max(counts + [1]) * 1.2)  # room for the labels; an all-zero funnel still has an axis
        for bar, count in zip(bars, counts):
            axis.text(
                max(bar.get_width(), 1), bar.get_y() + bar.get_height() / 2, f" {count:,}", va="center", fontsize=8
            )
        axis.set_title(
            f"pair-mining funnel ({self.trajectories:,} trajectories, {self.anchors:,} anchors)", fontsize=10
        )
        axis.set_xlabel("candidates / pairs")
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path

    def write(self, report_dir: Path) -> dict[str, Path]:
        """funnel.json and funnel.png in report_dir (created)."""
        report_dir.mkdir(parents=True, exist_ok=True)
        json_path = report_dir / "funnel.json"
        json_path.write_text(self.to_json(), encoding="utf-8")
        return {"json": json_path, "png": self.plot(report_dir / "funnel.png")}
