"""Warm start against a real env server: scripted short solutions earn reward 1 on every sample task and come back
as token-exact trajectories; SFT on them lowers the loss. Also the compact solution commands and synthetic pairs."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.conftest import start_server, stop_server
from trainer.warmstart import compact_command, demonstrations, sft_steps

pytestmark = pytest.mark.docker

PATCH = """diff --git a/pkg/mod.py b/pkg/mod.py
index 1111111..2222222 100644
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -3,4 +3,6 @@ def f():
 import os
-x = compute(1)
+x = compute(1, 2)
 y = 2
+# added
+z = 3
"""


def test_compact_command_is_line_addressed_sed():
    assert compact_command(PATCH) == "sed -i -e '4s|1|1, 2|' -e '5a\\# added\\' -e 'z = 3' pkg/mod.py"


def test_synthetic_pairs_split_tests_and_need_the_answer(sample_tasks):  # type: ignore[no-untyped-def]
    from trainer.pairs.synthetic import synthetic_pairs

    train, heldout = synthetic_pairs(sample_tasks)
    assert len(train) > 40 and len(heldout) > 10
    train_tests = {p.provenance["test"] for p in train}
    assert not train_tests & {p.provenance["test"] for p in heldout}
    # Each context is the positive of one pair and the negative of another: no context alone gives the label.
    positives = {p.positive for p in train}
    assert positives == {p.negative for p in train}


def test_demonstrations_are_rewarded_token_exact_and_sft_lowers_the_loss(sample_images, sample_tasks, tmp_path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.tiny import build_tiny_model

    path = build_tiny_model(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    server = start_server(tmp_path, "--max-sessions", "8")
    try:
        demos = asyncio.run(demonstrations(server.url, sample_tasks, tokenizer))
    finally:
        stop_server(server)
        for container in server.containers():
            container.remove(force=True)
    assert sorted(d.task_id for d in demos) == sorted(t.instance_id for t in sample_tasks)
    for demo in demos:
        assert demo.reward == 1.0 and demo.resolved and not demo.infra_failure
        assert demo.model == "replay-sed" and demo.num_turns == 2
        (sequence,) = demo.sequences
        assert len(sequence.token_ids) == len(sequence.loss_mask) > sum(sequence.loss_mask) > 0
        # The scripted command is short: what the policy must later sample (turn 1) is well under 300 tokens.
        assert sum(sequence.loss_mask) < 300

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    short = sorted(demos, key=lambda d: len(d.sequences[0].token_ids))[:2]
    losses = sft_steps(model, short, steps=4, lr=3e-3)
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5
