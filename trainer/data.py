"""The run's data: the task and pair streams in a fixed per-epoch order (a checkpoint's position redraws the same
next batches), the pair files and synthetic pairs, and each update's pair batch."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainerConfig
from trainer.pairs import balanced_presentations, collate_presentations, load_pairs, present

PAIR_CONTEXT_TOKENS = 1024
"""Both contexts' token budget in one presentation of a pair (each context gets half)."""


def epoch_order(items: list[Any], seed: int, epoch: int) -> list[Any]:
    """A fixed permutation per epoch: the data position is just (epoch, cursor), no RNG state needed."""
    order = list(items)
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def take(items: list[Any], count: int, seed: int, position: dict[str, int], key: str) -> list[Any]:
    """The next `count` items in epoch order, advancing position[key + '_epoch'/'_cursor']."""
    taken: list[Any] = []
    while len(taken) < count and items:
        epoch, cursor = position.get(f"{key}_epoch", 0), position.get(f"{key}_cursor", 0)
        order = epoch_order(items, seed, epoch)
        chunk = order[cursor : cursor + count - len(taken)]
        taken += chunk
        cursor += len(chunk)
        if cursor >= len(order):
            epoch, cursor = epoch + 1, 0
        position[f"{key}_epoch"], position[f"{key}_cursor"] = epoch, cursor
    return taken


def task_instances(config: TrainerConfig, local: bool) -> list[Any]:
    """The task file's instances (gold patches, test lists): the configured file, or the sample tasks that a local
    env server serves; none for remote servers without a task file."""
    from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks

    path = config.task_file or (SAMPLE_TASKS_PATH if local else None)
    return load_tasks(path) if path else []


def success_eval_tasks(task_pool: list[str], config: TrainerConfig) -> list[str]:
    """The success evaluation's tasks: the pool, or a sample of `success_eval_tasks` of it fixed by the seed (in the
    pool's order)."""
    if config.success_eval_tasks is None or config.success_eval_tasks >= len(task_pool):
        return list(task_pool)
    chosen = set(random.Random(config.seed).sample(range(len(task_pool)), config.success_eval_tasks))
    return [task_id for index, task_id in enumerate(task_pool) if index in chosen]


def training_pairs(
    config: TrainerConfig, tasks: list[Any], output_dir: Path | None, log: Any = print
) -> tuple[list[Any], list[Any]]:
    """(train pairs, held-out pairs): the pair file's (`file_pairs`) and, with `synthetic_pairs` and tasks, the
    synthetic test-outcome pairs of the task file besides them; written to `output_dir` (when given) as
    `pairs.train.jsonl` and `pairs.heldout.jsonl`, so the run's data can be read back."""
    train, heldout = file_pairs(config, log)
    if config.synthetic_pairs and tasks:
        from trainer.pairs.synthetic import synthetic_pairs

        made_train, made_heldout = synthetic_pairs(tasks, seed=config.seed)
        log(
            f"pairs: {len(made_train)} train / {len(made_heldout)} held-out synthetic test-outcome pairs from "
            f"{len(tasks)} tasks"
        )
        train, heldout = train + made_train, heldout + made_heldout
    if not train and not heldout:
        return train, heldout
    log(f"pairs: {len(train)} train, {len(heldout)} held out in all")
    if output_dir is not None:
        from trainer.pairs import write_pairs

        write_pairs(output_dir / "pairs.train.jsonl", train)
        write_pairs(output_dir / "pairs.heldout.jsonl", heldout)
    return train, heldout


def file_pairs(config: TrainerConfig, log: Any = print) -> tuple[list[Any], list[Any]]:
    """(train, held-out) from the configured files: `pairs_file` whole and `heldout_pairs` when that is given, else
    `pairs_file` split by group (`heldout_fraction` of its groups held out: a mined pair and its mirror never sit on
    both sides, trainer/pairs/split.py)."""
    from trainer.pairs import pair_group, split_by_group

    pairs = load_pairs(config.pairs_file) if config.pairs_file else []
    if config.heldout_pairs:
        train, heldout = pairs, load_pairs(config.heldout_pairs)
    else:
        train, heldout = split_by_group(pairs, config.heldout_fraction, config.seed)
    train_groups, heldout_groups = ({pair_group(pair) for pair in side} for side in (train, heldout))
    if pairs and config.heldout_pairs:
        log(f"pairs: {config.pairs_file}: {len(train)} train ({len(train_groups)} groups): the whole file")
    elif pairs:
        log(
            f"pairs: {config.pairs_file}: {len(train)} train ({len(train_groups)} groups), {len(heldout)} held out "
            f"({len(heldout_groups)} groups, heldout_fraction {config.heldout_fraction:g})"
        )
    if config.heldout_pairs:
        log(f"pairs: {config.heldout_pairs}: {len(heldout)} held out ({len(heldout_groups)} groups)")
    if train_groups & heldout_groups:  # only a separate heldout_pairs file can share groups with the pair file
        log(
            f"pairs: warning: {len(train_groups & heldout_groups)} groups of {config.heldout_pairs} are also in "
            f"{config.pairs_file}: the held-out accuracy is partly on pairs trained on"
        )
    return train, heldout


def pair_batch(
    pairs: list[Any], tokenizer: Any, config: TrainerConfig, position: dict[str, int], step: int, update: int = 0
) -> dict[str, Any] | None:
    """The next `ca.pairs_per_update` pairs of the stream (advancing `position`), each in both orders, collated;
    None without pairs or with λ = 0."""
    if not pairs or config.ca.weight <= 0:
        return None
    chosen = take(pairs, config.ca.pairs_per_update, config.seed + 1, position, "pair")
    presentations = [
        present(p, tokenizer, first, max_context_tokens=PAIR_CONTEXT_TOKENS)
        for p, first in balanced_presentations(chosen, random.Random(step if not update else f"{step}:{update}"))
    ]
    batch = collate_presentations(presentations, tokenizer.pad_token_id)
    batch["positive_is_first"] = torch.tensor([p.positive_is_first for p in presentations])
    return batch
