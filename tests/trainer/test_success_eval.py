"""The success evaluation's pure parts: which tasks it plays, and how the start vs end summary reads its rows.
(The evaluation against a real env server and its seeds: tests/trainer/test_run.py.)"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainer.config import TrainerConfig
from trainer.data import success_eval_tasks
from trainer.summary import print_summary, start_end_summary

POOL = [f"repo__task-{i}" for i in range(20)]


def test_every_task_unless_capped_then_a_fixed_sample_in_pool_order() -> None:
    assert success_eval_tasks(POOL, TrainerConfig()) == POOL
    assert success_eval_tasks(POOL, TrainerConfig(success_eval_tasks=50)) == POOL
    five = success_eval_tasks(POOL, TrainerConfig(success_eval_tasks=5))
    assert len(five) == 5 and len(set(five)) == 5 and five == [t for t in POOL if t in five]
    assert success_eval_tasks(POOL, TrainerConfig(success_eval_tasks=5)) == five  # the same at both ends
    assert success_eval_tasks(POOL, TrainerConfig(success_eval_tasks=5, seed=1)) != five
    with pytest.raises(ValidationError):
        TrainerConfig(success_eval_tasks=0)
    with pytest.raises(ValidationError):
        TrainerConfig(success_eval_episodes=-1)


def _rows(with_eval: bool) -> list[dict]:
    start = {"step": 0, "heldout_ca_accuracy": 0.5}
    steps = [
        {"step": s, "success_rate": rate, "tasks": [f"t{(2 * s) % 4}", f"t{(2 * s + 1) % 4}"]}
        for s, rate in enumerate([0.25, 0.5, 0.5, 0.75], start=1)
    ]
    if with_eval:
        start |= {
            "success_eval": 0.5,
            "success_eval_infra_failures": 0,
            "success_eval_by_task/a": 0.25,
            "success_eval_by_task/b": 0.75,
        }
        steps[-1] |= {
            "success_eval": 0.625,
            "success_eval_infra_failures": 1,
            "success_eval_by_task/a": 0.5,
            "success_eval_by_task/b": 0.75,
        }
    return [start, *steps]


def test_summary_takes_the_evaluations_start_and_end_and_keeps_the_training_window(capsys) -> None:  # type: ignore[no-untyped-def]
    summary = start_end_summary(_rows(with_eval=True))
    assert summary["success_eval"] == {
        "start": 0.5,
        "end": 0.625,
        "start_by_task": {"a": 0.25, "b": 0.75},
        "end_by_task": {"a": 0.5, "b": 0.75},
    }
    # the training rollouts' passes (2 steps cover the 4 tasks) are still reported beside it
    assert summary["success_rate"] == {"start": 0.375, "end": 0.625, "window_steps": 2}
    print_summary(summary, __import__("pathlib").Path("out"))
    printed = capsys.readouterr().out
    assert "success rate (evaluation of 2 tasks, fixed seeds): start 0.50 -> end 0.62" in printed
    assert "    a: 0.25 -> 0.50" in printed and "    b: 0.75 -> 0.75" in printed
    assert "success rate (training rollouts, mean of 2 steps): start 0.38 -> end 0.62" in printed


def test_summary_without_evaluations_has_no_success_eval() -> None:
    summary = start_end_summary(_rows(with_eval=False))
    assert "success_eval" not in summary and summary["success_rate"]["window_steps"] == 2
    # an end-of-run evaluation alone (a resumed run whose start row predates the feature) is no comparison
    rows = _rows(with_eval=True)
    for key in [k for k in rows[0] if k.startswith("success_eval")]:
        del rows[0][key]
    assert "success_eval" not in start_end_summary(rows)
