"""The shortcut audit's report (audit.json, audit.png): each label-blind baseline's accuracy with its 95% bootstrap
interval, the best of them and the verdict against `SHORTCUT_BOUND`, as a JSON model, a rich table and a bar chart
(`audit.audit_pairs` computes it; audit.py's docstring says what the baselines are)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict

AUDIT_VERSION: Final = 1
SHORTCUT_BOUND = 0.60
"""A set passes when no baseline's accuracy exceeds this. Chance is 0.5; with a few hundred pairs the bootstrap
interval of a chance-level rule is about ±0.05, so 0.60 is beyond noise but loose enough for real sets to meet."""


class BaselineRow(BaseModel):
    """One baseline's result. `accuracy` and the interval are None when the baseline was skipped (`skipped` says
    why)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    ties: float | None
    """Fraction of (pair, order) decisions that were ties (scored 0.5)."""
    shortcut: bool
    """accuracy > the bound."""
    description: str
    skipped: str | None = None


class BestBaseline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    accuracy: float


class AuditReport(BaseModel):
    """The audit of one pair set (audit.json)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = AUDIT_VERSION
    pairs: int
    groups: int
    folds: int
    """Cross-validation folds of the classifiers (0 when they were skipped)."""
    seed: int
    resamples: int
    bound: float = SHORTCUT_BOUND
    best: BestBaseline
    passes: bool
    """best.accuracy ≤ bound."""
    rows: list[BaselineRow]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"

    def table(self) -> Any:
        """A rich Table of the rows; accuracies over the bound in red, the best in bold."""
        from rich.table import Table

        verdict = "[green]passes[/green]" if self.passes else "[red]shortcut set[/red]"
        table = Table(
            title=f"shortcut audit: {self.pairs} pairs, {self.groups} groups — best {self.best.name} "
            f"{self.best.accuracy:.3f} vs bound {self.bound:.2f}: {verdict}"
        )
        table.add_column("baseline")
        table.add_column("accuracy", justify="right")
        table.add_column("95% CI", justify="right")
        table.add_column("ties", justify="right")
        table.add_column("what it does", style="dim")
        for row in self.rows:
            if row.accuracy is None:
                table.add_row(row.name, "skipped", "", "", f"{row.description} ({row.skipped})")
                continue
            style = "red" if row.shortcut else "green"
            weight = "bold " if row.name == self.best.name else ""
            table.add_row(
                row.name,
                f"[{weight}{style}]{row.accuracy:.3f}[/{weight}{style}]",
                f"{row.ci_low:.3f}–{row.ci_high:.3f}",
                f"{row.ties:.2f}",
                row.description,
            )
        return table

    def plot(self, path: Path) -> Path:
        """Horizontal bars of the accuracies with their 95% intervals, chance (0.5) and the bound (dashed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [row.name for row in self.rows]
        accuracies = [row.accuracy if row.accuracy is not None else 0.0 for row in self.rows]
        # a percentile interval need not contain the point estimate (a skewed resample distribution, rounding), and
        # matplotlib refuses negative whiskers
        low = [
            max(0.0, row.accuracy - row.ci_low) if row.accuracy is not None and row.ci_low is not None else 0.0
            for row in self.rows
        ]
        high = [
            max(0.0, row.ci_high - row.accuracy) if row.accuracy is not None and row.ci_high is not None else 0.0
            for row in self.rows
        ]
        colors = ["#c44e52" if row.shortcut else "#4c72b0" for row in self.rows]
        figure, axis = plt.subplots(figsize=(8, 0.42 * len(names) + 1.4), layout="constrained")
        axis.barh(
            range(len(names)),
            accuracies,
            xerr=[low, high],
            color=colors,
            capsize=3,
            error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        for index, row in enumerate(self.rows):
            label = " skipped" if row.accuracy is None else f" {row.accuracy:.2f}"
            axis.text(row.ci_high if row.ci_high is not None else 0.0, index, label, va="center", fontsize=8)
        axis.axvline(0.5, color="black", linewidth=1, label="chance (0.5)")
        axis.axvline(self.bound, color="#c44e52", linestyle="--", linewidth=1, label=f"bound ({self.bound:.2f})")
        axis.set_yticks(range(len(names)), names)
        axis.invert_yaxis()
        axis.set_xlim(0, 1.1)
        axis.set_xlabel("accuracy over both option orders (95% bootstrap CI)")
        axis.set_title(
            f"shortcut audit ({self.pairs:,} pairs, {self.groups:,} groups): "
            f"{'passes' if self.passes else 'shortcut set'}",
            fontsize=10,
        )
        figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)  # clear of the bars
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path


def write_report(report: AuditReport, out_dir: str | Path) -> dict[str, Path]:
    """audit.json and audit.png in out_dir (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "audit.json"
    json_path.write_text(report.to_json(), encoding="utf-8")
    return {"json": json_path, "png": report.plot(out_dir / "audit.png")}
