"""Contrastive trajectory pairs: the record and its presentation to the model (record.py; the contexts' token budget:
context_budget.py), the miner (mine.py, `python -m trainer.pairs mine`), its shortcut audit (audit.py) and the
synthetic pairs of the embedded default (synthetic.py)."""

from trainer.pairs.context_budget import truncate_middle
from trainer.pairs.record import (
    PairRecord,
    Presentation,
    balanced_presentations,
    collate_presentations,
    load_pairs,
    option_token_ids,
    present,
    prompt_text,
    write_pairs,
)
from trainer.pairs.split import pair_group, split_by_group

__all__ = [
    "PairRecord",
    "Presentation",
    "balanced_presentations",
    "collate_presentations",
    "load_pairs",
    "option_token_ids",
    "pair_group",
    "present",
    "prompt_text",
    "split_by_group",
    "truncate_middle",
    "write_pairs",
]
