"""Train / held-out split of a pair file by group.

The miner writes each pair of two issues twice, mirrored (A's trajectory the positive and B's the negative, then the
other way round). Splitting pair by pair would put one mirror in training and the other in the held-out set: the
held-out accuracy would then measure remembering which of the two trajectories won, not reading the contexts. So the
split is by group (`pair_group`), and every member of a group lands on the same side.

A group's side depends only on the seed and the group's name (a stable hash, not Python's salted `hash`): the same
file splits the same way in every process, and a file grown by more mining keeps its old held-out groups held out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from trainer.pairs.record import PairRecord


def _task_id(side: Any) -> str | None:
    """The `task_id` of a provenance side (`provenance["positive"]` / `["negative"]`), when it is a non-empty string."""
    if isinstance(side, dict) and isinstance(side.get("task_id"), str) and side["task_id"]:
        return side["task_id"]
    return None


def issue_group(task_a: str, task_b: str) -> str:
    """The group of the pairs of two issues: the same for A/B and B/A (the miner writes it as `provenance.group`)."""
    return "issues:" + "|".join(sorted((task_a, task_b)))


def pair_group(record: PairRecord) -> str:
    """The group `record` is split with: `provenance["group"]` (the miner's, shared by the mirrored pairs of two
    issues) when it is a non-empty string; else the two issues themselves, `issues:A|B` sorted so that the mirror
    gets the same name; else the pair alone (its pair_id)."""
    group = record.provenance.get("group")
    if isinstance(group, str) and group:
        return group
    positive, negative = (_task_id(record.provenance.get(side)) for side in ("positive", "negative"))
    if positive and negative:
        return issue_group(positive, negative)
    return record.pair_id


def _draw(seed: int, group: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, group)."""
    digest = hashlib.blake2b(f"{seed}\0{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def heldout_groups(groups: Sequence[str], heldout_fraction: float, seed: int) -> set[str]:
    """The groups held out: each one whose draw falls under `heldout_fraction`. At least one group always trains (the
    highest draw: a file is there to be trained on), and with a positive fraction and two or more groups at least one
    is held out (the lowest draw), so that neither side of a small file comes out empty by chance."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    draws = {group: _draw(seed, group) for group in groups}
    held = {group for group, draw in draws.items() if draw < heldout_fraction}
    if draws and len(held) == len(draws):
        held.discard(max(draws, key=draws.__getitem__))
    if heldout_fraction > 0 and len(draws) >= 2 and not held:
        held = {min(draws, key=draws.__getitem__)}
    return held


def split_by_group(
    pairs: Sequence[PairRecord],
    heldout_fraction: float,
    seed: int,
) -> tuple[list[PairRecord], list[PairRecord]]:
    """(train, held-out): about `heldout_fraction` of the pairs' groups held out (`heldout_groups`), every member of a
    group on the same side, each side in the input's order. Deterministic in (pairs, heldout_fraction, seed)."""
    held = heldout_groups(list(dict.fromkeys(pair_group(pair) for pair in pairs)), heldout_fraction, seed)
    train = [pair for pair in pairs if pair_group(pair) not in held]
    heldout = [pair for pair in pairs if pair_group(pair) in held]
    return train, heldout
