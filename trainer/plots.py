"""PNG plots of a run's metrics (one panel per curve), from the metrics JSONL."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = [
    ("reward", "reward (mean of rollouts)"),
    ("success_rate", "success rate"),
    ("grpo/loss", "L_GRPO"),
    ("ca/ca_loss", "L_CA"),
    ("heldout_ca_accuracy", "context-selection accuracy (held-out pairs)"),
    ("grpo/kl", "KL to reference"),
    ("grpo/entropy", "entropy"),
    ("grpo/clip_frac_low", "clip fraction (low)"),
    ("grpo/clip_frac_high", "clip fraction (high)"),
    ("malformed_episodes", "episodes with a malformed tool call"),
]

OVERLAYS = {"success_rate": [("success_eval", "evaluation (fixed seeds)")]}
"""Sparser curves drawn on a panel's axis, with a legend: the success evaluation (before the first step and after
the last) beside the per-step success rate of the rollouts trained on."""


def plot_metrics(metrics_path: Path, out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    panels = [(key, title) for key, title in PANELS if any(key in row for row in rows)]
    columns = 3
    figure, axes = plt.subplots(
        -(-len(panels) // columns), columns, figsize=(12, 3 * -(-len(panels) // columns)), squeeze=False
    )
    for axis, (key, title) in zip(axes.flat, panels):
        points = [(row["step"], row[key]) for row in rows if key in row and row[key] == row[key]]
        if points:
            axis.plot(*zip(*points), marker="o", markersize=3, label="training rollouts")
        overlays = [
            (label, [(row["step"], row[k]) for row in rows if k in row and row[k] == row[k]])
            for k, label in OVERLAYS.get(key, [])
        ]
        overlays = [(label, points) for label, points in overlays if points]
        for label, overlay in overlays:
            axis.plot(*zip(*overlay), marker="s", markersize=6, linestyle="--", label=label)
        if overlays:
            axis.legend(fontsize=7)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return out_path
