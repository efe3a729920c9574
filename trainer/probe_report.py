"""The context-selection probe's numbers (accuracy, its interval, position bias, per-source accuracy, how much of
each context the prompt showed) and its chart.

Confidence intervals are a percentile bootstrap over pairs: a pair's two presentations (the positive as option 1, then
as option 2) are resampled together, because they are not independent — same contexts, same query, and a model with a
position preference gets exactly one of them right. A Wilson interval over the 2N presentations would treat them as
2N independent trials and come out too narrow. Caveat: when every pair scores the same (e.g. accuracy 1.0), the
bootstrap interval collapses to that point; it says nothing about pairs unlike the ones probed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.pairs.record import PairRecord
from trainer.probe_scoring import Answer

CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 4000
CI_METHOD = (
    f"percentile bootstrap over pairs ({BOOTSTRAP_RESAMPLES} resamples; both orders of a pair resampled together)"
)


def bootstrap_ci(
    pair_scores: Sequence[float], level: float = CI_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of per-pair scores (a pair's share of its presentations
    answered correctly). Seeded: the same answers give the same interval. NaNs when there are no pairs."""
    import numpy as np

    scores = np.asarray(pair_scores, dtype=np.float64)
    if scores.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = []
    per_chunk = max(1, 4_000_000 // scores.size)  # bounds memory at a few tens of MB for any number of pairs
    for start in range(0, resamples, per_chunk):
        rows = min(per_chunk, resamples - start)
        means.append(scores[rng.integers(0, scores.size, size=(rows, scores.size))].mean(axis=1))
    alpha = (1.0 - level) / 2
    low, high = np.quantile(np.concatenate(means), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _share(count: int, total: int) -> float:
    return count / total if total else math.nan


def accuracy_summary(answers: Sequence[Answer]) -> dict[str, Any]:
    """Accuracy of a set of answers with its bootstrap interval (over the pairs they come from)."""
    by_pair: dict[str, list[bool]] = defaultdict(list)
    for answer in answers:
        by_pair[answer.pair_id].append(answer.correct)
    low, high = bootstrap_ci([sum(marks) / len(marks) for marks in by_pair.values()])
    correct = sum(answer.correct for answer in answers)
    return {
        "accuracy": _share(correct, len(answers)),
        "ci_low": low,
        "ci_high": high,
        "correct": correct,
        "presentations": len(answers),
        "pairs": len(by_pair),
    }


def _grouped(answers: Sequence[Answer], key_of: dict[str, str]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        groups[key_of[answer.pair_id]].append(answer)
    return {key: accuracy_summary(group) for key, group in sorted(groups.items())}


def shown_summary(fractions: Sequence[Mapping[str, float | int]]) -> dict[str, Any]:
    """Mean and min over pairs of how much of each context the prompt showed (`trainer.pairs.record.shown_fractions`
    per pair): `positive` / `negative` → `rest` (of the context after the opening both share) and `whole` (of the
    whole context) → {mean, min}; `pairs_with_shared_opening`. NaNs when there are no pairs."""

    def stats(key: str) -> dict[str, float]:
        values = [float(f[key]) for f in fractions]
        return (
            {"mean": sum(values) / len(values), "min": min(values)} if values else {"mean": math.nan, "min": math.nan}
        )

    return {
        **{side: {part: stats(f"{side}_{part}") for part in ("rest", "whole")} for side in ("positive", "negative")},
        "pairs_with_shared_opening": sum(bool(f["shared_opening_tokens"]) for f in fractions),
        "note": "share of each context's tokens the prompt shows: 'rest' of the context after the opening both "
        "contexts share (the whole context when they share none), 'whole' of the whole context",
    }


def build_report(
    answers: Sequence[Answer], pairs: Sequence[PairRecord], shown: Mapping[str, Mapping[str, float | int]] | None = None
) -> dict[str, Any]:
    """The probe's statistics (JSON-ready). Every answer with no option (`choice` None) counts as wrong.

    shown: pair_id → `shown_fractions` of the pair; when given, `report["shown"]` is their `shown_summary` over the
    pairs answered (how much of each context the model could read: a low share means the budget hid most of it).

    position.position_bias = accuracy with the positive as option 1 − accuracy with it as option 2, in [−1, 1]:
    1.0 for a model that always answers "1", −1.0 for "2", 0 for one whose accuracy does not depend on where the
    positive is (with every pair in both orders and all answers parsed it equals 2 · share_answer_1 − 1).
    """
    total = len(answers)
    overall = accuracy_summary(answers)
    first = [a for a in answers if a.positive_first]
    second = [a for a in answers if not a.positive_first]
    first_summary, second_summary = accuracy_summary(first), accuracy_summary(second)
    unanswered = sum(a.choice is None for a in answers)
    by_pair: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_pair[answer.pair_id].append(answer)
    complete = [group for group in by_pair.values() if len(group) == 2]
    report: dict[str, Any] = {
        "accuracy": overall["accuracy"],
        "ci": {"low": overall["ci_low"], "high": overall["ci_high"], "level": CI_LEVEL, "method": CI_METHOD},
        "num_pairs": overall["pairs"],
        "num_presentations": total,
        "num_correct": overall["correct"],
        "unanswered": {
            "count": unanswered,
            "share": _share(unanswered, total),
            "note": "answers naming neither option; counted as wrong",
        },
        "position": {
            "accuracy_positive_first": first_summary,
            "accuracy_positive_second": second_summary,
            "position_bias": first_summary["accuracy"] - second_summary["accuracy"],
            "share_answer_1": _share(sum(a.choice == 1 for a in answers), total),
            "share_answer_2": _share(sum(a.choice == 2 for a in answers), total),
        },
        "pairs": {  # per pair over its two orders: a position-follower answers the same option in both
            "both_orders_correct": _share(sum(all(a.correct for a in g) for g in complete), len(complete)),
            "one_order_correct": _share(sum(sum(a.correct for a in g) == 1 for g in complete), len(complete)),
            "neither_correct": _share(sum(not any(a.correct for a in g) for g in complete), len(complete)),
            "same_option_both_orders": _share(
                sum(g[0].choice is not None and g[0].choice == g[1].choice for g in complete), len(complete)
            ),
        },
        "by_source": _grouped(answers, {p.pair_id: str(p.provenance.get("source", "unknown")) for p in pairs}),
        "by_funnel_stage": _grouped(answers, {p.pair_id: p.funnel_stage for p in pairs}),
    }
    margins = [(a.option_margin, a.positive_first) for a in answers if a.option_margin is not None]
    if margins:
        report["margin"] = {
            "mean_positive_minus_negative": sum(m if first else -m for m, first in margins) / len(margins),
            "mean_option1_minus_option2": sum(m for m, _ in margins) / len(margins),
        }
    if shown is not None:
        report["shown"] = shown_summary([shown[pair_id] for pair_id in by_pair])
    return report


def write_chart(report: dict[str, Any], path: Path) -> Path:
    """A PNG bar chart: overall and by-position accuracy (with intervals) and the share answering "1"; accuracy by
    data source; accuracy by funnel stage. A dashed line marks chance (0.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    position = report["position"]
    panels: list[tuple[str, list[tuple[str, dict[str, Any] | float]]]] = [
        (
            "overall and by position",
            [
                (
                    "all",
                    {"accuracy": report["accuracy"], "ci_low": report["ci"]["low"], "ci_high": report["ci"]["high"]},
                ),
                ("positive = 1", position["accuracy_positive_first"]),
                ("positive = 2", position["accuracy_positive_second"]),
                ('answers "1"\n(share)', position["share_answer_1"]),
            ],
        ),
        ("by data source", list(report["by_source"].items())),
        ("by funnel stage", list(report["by_funnel_stage"].items())),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [4, 3, 3]})
    for axis, (title, bars) in zip(axes, panels):
        labels: list[str] = []
        heights: list[float] = []
        errors: list[list[float]] = [[], []]
        colors: list[str] = []
        for label, value in bars:
            labels.append(label)
            if isinstance(value, dict):
                height = value["accuracy"]
                low, high = value["ci_low"], value["ci_high"]
                errors[0].append(0.0 if math.isnan(low) else max(0.0, height - low))
                errors[1].append(0.0 if math.isnan(high) else max(0.0, high - height))
                colors.append("tab:blue")
            else:  # a share, not an accuracy: no interval, another colour
                height = value
                errors[0].append(0.0)
                errors[1].append(0.0)
                colors.append("tab:gray")
            heights.append(0.0 if math.isnan(height) else height)
        axis.bar(range(len(heights)), heights, yerr=errors, color=colors, capsize=4)
        for x, height in enumerate(heights):
            axis.text(x, min(height + 0.02, 1.02), f"{height:.2f}", ha="center", va="bottom", fontsize=8)
        axis.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
        axis.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20 if len(labels) > 3 else 0)
        axis.set_ylim(0, 1.1)
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"accuracy (whiskers: {int(CI_LEVEL * 100)}% bootstrap interval over pairs)", fontsize=9)
    meta = report.get("run", {})
    figure.suptitle(
        f"context-selection probe: {meta.get('model', '?')} ({meta.get('engine', '?')}, scored by "
        f"{meta.get('scoring', '?')}), {report['num_pairs']} pairs × 2 orders",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
