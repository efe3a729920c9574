"""The probe's statistics and reply parsing on hand-made answers: the bootstrap resamples pairs (not presentations),
position bias has the sign and size its definition says, groups are by provenance source and funnel stage, and
replies are read for the first standalone option."""

from __future__ import annotations

import math

import pytest

from trainer.pairs.record import PairRecord
from trainer.probe_report import accuracy_summary, bootstrap_ci, build_report, shown_summary, write_chart
from trainer.probe_scoring import Answer, parse_choice


def pair(index: int, source: str | None = "swe-gym", stage: str = "same_file") -> PairRecord:
    return PairRecord(
        pair_id=f"p{index}",
        query="q",
        answer="a",
        positive=f"pos {index}",
        negative=f"neg {index}",
        provenance={"source": source} if source else {},
        funnel_stage=stage,
    )  # type: ignore[arg-type]


def both_orders(pair_id: str, first: int | None, second: int | None, margin: float | None = None) -> list[Answer]:
    """The answers (choices) given with the positive as option 1, then as option 2."""
    return [Answer(pair_id, True, first, option_margin=margin), Answer(pair_id, False, second, option_margin=margin)]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("1", 1),
        ("2", 2),
        ("Option 2.", 2),
        ("**1**", 1),
        ("The answer is 2, not 1.", 2),
        (" 2\n", 2),
        ("12", None),
        ("option 3", None),
        ("", None),
        (None, None),
        ("I cannot tell.", None),
        ("<think>option 1 or 2? 2 fits</think>\n\n1", 1),  # thoughts are skipped: the answer follows them
        ("<think>option 1 looks", None),  # thinking cut off by the token limit: no answer
    ],
)
def test_parse_choice(reply: str | None, expected: int | None) -> None:
    assert parse_choice(reply) == expected


def test_bootstrap_resamples_pairs_and_is_reproducible() -> None:
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)  # every pair alike: no spread to resample
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    scores = [1.0] * 14 + [0.0] * 6
    low, high = bootstrap_ci(scores)
    assert (low, high) == bootstrap_ci(scores) and low < 0.7 < high and 0.0 <= low and high <= 1.0
    wide, narrow = bootstrap_ci(scores), bootstrap_ci(scores * 10)  # same accuracy, 10× the pairs
    assert narrow[1] - narrow[0] < 0.5 * (wide[1] - wide[0])
    # a summary's interval is over its pairs: 10 pairs each right in exactly one order -> exactly 0.5
    answers = [a for i in range(10) for a in both_orders(f"p{i}", 1, 1)]
    summary = accuracy_summary(answers)
    assert summary["accuracy"] == 0.5 and (summary["ci_low"], summary["ci_high"]) == (0.5, 0.5)
    assert (summary["pairs"], summary["presentations"], summary["correct"]) == (10, 20, 10)


def test_report_position_bias_sources_and_unanswered(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pairs = [
        pair(0, "swe-gym", "same_file"),
        pair(1, "swe-gym", "same_function"),
        pair(2, None, "same_file"),
        pair(3, "swe-smith", "related_issue"),
    ]
    answers = (
        both_orders("p0", 2, 2, margin=-1.0)  # always "2": right only when the positive is option 2
        + both_orders("p1", 2, 2, margin=-3.0)
        + both_orders("p2", 1, 2)  # right in both orders
        + both_orders("p3", None, 2)
    )  # no option named when the positive was first
    report = build_report(answers, pairs)
    assert report["num_pairs"] == 4 and report["num_presentations"] == 8 and report["num_correct"] == 5
    assert report["accuracy"] == 5 / 8
    position = report["position"]
    assert position["accuracy_positive_first"]["accuracy"] == 1 / 4  # only p2
    assert position["accuracy_positive_second"]["accuracy"] == 1.0
    assert position["position_bias"] == 1 / 4 - 1.0  # negative: leans to option 2
    assert position["share_answer_1"] == 1 / 8 and position["share_answer_2"] == 6 / 8
    assert report["unanswered"] == {"count": 1, "share": 1 / 8, "note": report["unanswered"]["note"]}
    assert report["pairs"] == {
        "both_orders_correct": 1 / 4,
        "one_order_correct": 3 / 4,
        "neither_correct": 0.0,
        "same_option_both_orders": 2 / 4,
    }
    assert {k: (v["pairs"], v["accuracy"]) for k, v in report["by_source"].items()} == {
        "swe-gym": (2, 0.5),
        "swe-smith": (1, 0.5),
        "unknown": (1, 1.0),
    }
    assert {k: v["pairs"] for k, v in report["by_funnel_stage"].items()} == {
        "related_issue": 1,
        "same_file": 2,
        "same_function": 1,
    }
    # margins: only answers that have one (ℓ1 − ℓ2 of -1 and -3, twice each); ℓ+ − ℓ− flips the second order
    assert report["margin"] == {"mean_option1_minus_option2": -2.0, "mean_positive_minus_negative": 0.0}
    report["run"] = {"model": "m", "engine": "hf", "scoring": "option_logits"}
    path = write_chart(report, tmp_path / "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_always_two_is_total_bias_the_other_way() -> None:
    answers = [a for i in range(3) for a in both_orders(f"p{i}", 2, 2)]
    report = build_report(answers, [pair(i) for i in range(3)])
    assert report["accuracy"] == 0.5 and report["position"]["position_bias"] == -1.0
    assert report["position"]["share_answer_1"] == 0.0 and "margin" not in report


def test_shown_is_summarized_per_side_over_the_pairs_answered() -> None:
    def fractions(pos_rest: float, pos_whole: float, neg_rest: float, neg_whole: float, shared: int) -> dict:
        return {
            "positive_rest": pos_rest,
            "positive_whole": pos_whole,
            "negative_rest": neg_rest,
            "negative_whole": neg_whole,
            "shared_opening_tokens": shared,
        }

    shown = {
        "p0": fractions(1.0, 0.25, 1.0, 0.5, 900),
        "p1": fractions(0.5, 0.5, 0.75, 0.75, 0),
        "p9": fractions(0.0, 0.0, 0.0, 0.0, 5),
    }  # p9 was not answered: left out
    answers = both_orders("p0", 1, 2) + both_orders("p1", 2, 2)
    report = build_report(answers, [pair(0), pair(1)], shown)
    assert report["shown"]["positive"] == {"rest": {"mean": 0.75, "min": 0.5}, "whole": {"mean": 0.375, "min": 0.25}}
    assert report["shown"]["negative"] == {"rest": {"mean": 0.875, "min": 0.75}, "whole": {"mean": 0.625, "min": 0.5}}
    assert report["shown"]["pairs_with_shared_opening"] == 1
    assert "shown" not in build_report(answers, [pair(0), pair(1)])
    empty = shown_summary([])
    assert math.isnan(empty["positive"]["rest"]["mean"]) and empty["pairs_with_shared_opening"] == 0
