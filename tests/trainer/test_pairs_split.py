"""The pair file's train / held-out split by group (trainer/pairs/split.py): mirrored pairs stay together, the split
is deterministic in the seed, about the asked share of groups is held out, and pairs without a group fall back to
their two issues, then to themselves."""

from __future__ import annotations

from itertools import pairwise

import pytest

from trainer.pairs import PairRecord, pair_group, split_by_group


def mined(positive_task: str, negative_task: str, group: str | None = "", index: int = 0) -> PairRecord:
    """A pair shaped like the miner's: provenance with both sides' task ids and (unless None) the group of its two
    issues ('' : the miner's name for the group, `A|B` sorted)."""
    provenance: dict = {
        "repo": "acme/widgets",
        "commit": "abc123",
        "positive": {"episode_id": f"{positive_task}-ep", "task_id": positive_task},
        "negative": {"episode_id": f"{negative_task}-ep", "task_id": negative_task},
    }
    if group is not None:
        provenance["group"] = group or "group-" + "|".join(sorted((positive_task, negative_task)))
    return PairRecord(
        pair_id=f"pair-{positive_task}-{negative_task}-{index}",
        query=f"issue of {positive_task}",
        answer=f"fix for {positive_task}",
        positive=f"trajectory of {positive_task}",
        negative=f"trajectory of {negative_task}",
        provenance=provenance,
        funnel_stage="same_function",
    )


def mirrored(issues: int, group: str | None = "") -> list[PairRecord]:
    """The mirror pairs (A/B then B/A) of `issues` // 2 pairs of issues."""
    pairs = []
    for i in range(0, issues - 1, 2):
        a, b = f"task-{i}", f"task-{i + 1}"
        pairs += [mined(a, b, group), mined(b, a, group)]
    return pairs


def test_pair_group_uses_the_miners_group_then_the_two_issues_then_the_pair() -> None:
    assert pair_group(mined("a", "b", group="g-1")) == "g-1"
    # no group, or a group that is not a non-empty string: the two issues, in the same order for both mirrors
    assert pair_group(mined("b", "a", group=None)) == pair_group(mined("a", "b", group=None)) == "issues:a|b"
    record = mined("b", "a", group=None)
    for bad in ("", 7, None):
        record.provenance["group"] = bad
        assert pair_group(record) == "issues:a|b"
    # without both task ids: the pair alone
    record.provenance["negative"] = {"episode_id": "x"}
    assert pair_group(record) == record.pair_id
    hand_made = PairRecord(pair_id="h1", query="q", answer="a", positive="p", negative="n", funnel_stage="synthetic")
    assert pair_group(hand_made) == "h1"


@pytest.mark.parametrize("group", ["", None])  # the miner's group, or none (the fallback to the two issues)
def test_mirrors_land_on_the_same_side(group: str | None) -> None:
    pairs = mirrored(200, group)
    for seed in range(5):
        train, heldout = split_by_group(pairs, 0.3, seed)
        assert len(train) + len(heldout) == len(pairs) and heldout and train
        train_groups, heldout_groups = ({pair_group(p) for p in side} for side in (train, heldout))
        assert not train_groups & heldout_groups
        assert len(heldout) == 2 * len(heldout_groups)  # both mirrors of every held-out group
        # input order kept within each side
        order = {p.pair_id: i for i, p in enumerate(pairs)}
        assert all(order[a.pair_id] < order[b.pair_id] for side in (train, heldout) for a, b in pairwise(side))


def test_deterministic_per_seed_and_seeds_differ() -> None:
    def ids(side: list[PairRecord]) -> list[str]:
        return [p.pair_id for p in side]

    pairs = mirrored(200)
    first = split_by_group(pairs, 0.2, seed=3)
    again = split_by_group(list(pairs), 0.2, seed=3)
    assert ids(first[0]) == ids(again[0]) and ids(first[1]) == ids(again[1])
    assert ids(split_by_group(pairs, 0.2, seed=4)[1]) != ids(first[1])
    # a group's side depends on the seed and its name only: more pairs in the file do not move the old ones
    grown = split_by_group(pairs + mirrored(400)[200:], 0.2, seed=3)
    assert set(ids(first[1])) <= set(ids(grown[1]))


def test_fraction_is_respected_roughly() -> None:
    pairs = mirrored(2000)  # 1000 groups
    for fraction in (0.1, 0.2, 0.5):
        _, heldout = split_by_group(pairs, fraction, seed=0)
        assert abs(len(heldout) / len(pairs) - fraction) < 0.05
    train, heldout = split_by_group(pairs, 0.0, seed=0)
    assert len(train) == len(pairs) and not heldout


def test_small_files_keep_both_sides_and_fraction_is_checked() -> None:
    two_groups = mirrored(4)
    for seed in range(20):  # a low fraction still holds one group out, a high one still trains one
        for fraction in (0.01, 0.99):
            train, heldout = split_by_group(two_groups, fraction, seed)
            assert len(train) == len(heldout) == 2
    one_group = mirrored(2)
    assert split_by_group(one_group, 0.5, seed=0) == (one_group, [])
    assert split_by_group([], 0.5, seed=0) == ([], [])
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            split_by_group(two_groups, bad, seed=0)
