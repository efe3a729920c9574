"""`python -m trainer.compare RUN_DIR... [--out compare.png]`: runs side by side — e.g. the embedded default (λ = 1)
and its λ = 0 control — as one table of start vs end and one PNG with each run's curves overlaid.

Reads each run's metrics.jsonl and summary.json (written by trainer.run); a run still in progress is shown up to its
last metrics row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from trainer.summary import start_end_summary

CURVES = [
    ("success_rate", "success rate (sample tasks)"),
    ("heldout_ca_accuracy", "context-selection accuracy (held-out pairs)"),
    ("ca/ca_loss", "L_CA"),
    ("grpo/kl", "KL to reference"),
]


def load_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run_dir}: no metrics.jsonl (not a trainer.run output folder?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def label(run_dir: Path) -> str:
    config_path = run_dir / "config.json"
    saved = json.loads(config_path.read_text()) if config_path.is_file() else {}
    weight = (saved.get("ca") or {}).get("weight", saved.get("ca_weight"))  # `ca_weight`: a run from before `ca:`
    return f"{run_dir.name} (λ = {weight:g})" if weight is not None else run_dir.name


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        f"{'run':<36} {'steps':>5}  {'success (evaluation)':>20}  {'success (rollouts)':>20}  {'held-out accuracy':>18}"
    ]
    for name, rows in runs.items():
        summary = start_end_summary(rows)
        cells = [
            f"{c['start']:.2f} → {c['end']:.2f}" if c else "-"
            for c in (summary.get("success_eval"), summary.get("success_rate"), summary.get("heldout_ca_accuracy"))
        ]
        lines.append(f"{name:<36} {summary['steps']:>5}  {cells[0]:>20}  {cells[1]:>20}  {cells[2]:>18}")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict[str, Any]]], out_path: Path, smooth: int = 5) -> Path:
    """One panel per curve, one line per run; the success rate as a trailing mean over `smooth` steps (one step's
    8 episodes are noisy), with the raw points faint behind it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4), squeeze=False)
    for axis, (key, title) in zip(axes[0], CURVES):
        for index, (name, rows) in enumerate(runs.items()):
            points = [(row["step"], row[key]) for row in rows if key in row and row[key] == row[key]]
            if not points:
                continue
            color = f"C{index}"
            steps, values = zip(*points)
            if key == "success_rate" and len(values) > 1:
                axis.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                means = [
                    sum(values[max(0, i - smooth + 1) : i + 1]) / len(values[max(0, i - smooth + 1) : i + 1])
                    for i in range(len(values))
                ]
                axis.plot(steps, means, color=color, label=name)
            else:
                axis.plot(steps, values, color=color, marker="o", markersize=3, label=name)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return out_path


app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="trainer.run output folders")],
    out: Annotated[Path, typer.Option(help="PNG to write")] = Path("compare.png"),
) -> None:
    """Runs side by side: the start → end table, and their curves overlaid in one PNG."""
    rows = {label(run_dir): load_rows(run_dir) for run_dir in runs}
    print(table(rows))
    print(f"plot: {plot(rows, out)}")


def main(argv: list[str] | None = None) -> int:
    """The command line, for callers in Python."""
    app(args=argv, standalone_mode=False)
    return 0


if __name__ == "__main__":
    app()
