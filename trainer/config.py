"""Trainer configuration: one typed model, loaded from YAML (`--config`), every field documented.

Settings are defined once (DESIGN.md decision 13): the trainer's own here, GRPO's in `grpo:` (trainer/losses/grpo.py
GRPOConfig), L_CA's in `ca:` (trainer/losses/context_awareness.py ContextAwarenessConfig), the agent loop's and its
sampling's in `agent:` (agent/loop.py AgentConfig, whose sampling fields are agent/engines/base.py SamplingConfig's).
Each section is handed as it is to the code it configures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.loop import AgentConfig
from envserver.settings import apply_overrides, read_settings_file
from trainer.losses import ContextAwarenessConfig, GRPOConfig

EMBEDDED_AGENT: dict[str, Any] = {
    "max_turns": 2,
    "max_tokens_per_turn": 192,
    "max_context_tokens": 4096,
    "tools": ("execute_bash", "finish"),
}
"""The embedded default's agent, where it differs from AgentConfig's defaults (those of the agent CLIs): two short
turns, bash only (a prompt ~3× shorter than with the file editor's schema, most of a tiny CPU run's cost)."""

RENAMED = {
    "pairs": "pairs_file (with `synthetic_pairs` on, the default, the synthetic pairs train beside it)",
    "ca_weight": "ca.weight",
    "ca_clip": "ca.clip",
    "ca_clip_mode": "ca.clip_mode",
    "ca_updates_per_step": "ca.separate_updates",
    "ca_trains_embeddings": "ca.trains_embeddings",
    "pairs_per_step": "ca.pairs_per_update",
    "max_turns": "agent.max_turns",
    "max_tokens_per_turn": "agent.max_tokens_per_turn",
    "max_context_tokens": "agent.max_context_tokens",
    "temperature": "agent.temperature",
    "top_p": "agent.top_p",
    "top_k": "agent.top_k",
    "agent_tools": "agent.tools",
}
"""Keys of older configs → where the setting lives now (an old key is an error that names the new one)."""


class TrainerConfig(BaseModel):
    """Everything `python -m trainer.run` can be told. The defaults are the embedded default's (the tiny model on a
    CPU machine, a local env server on the sample tasks); a config for a real model sets its own (learning rate, KL,
    batch sizes: see configs/paper-qwen3-8b-swegym.yaml)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "tiny"
    """A local model directory, or `tiny` to build the tiny Qwen3-architecture model offline."""
    tiny_tokenizer: Literal["qwen3", "code-bpe"] = "code-bpe"
    """With `model: tiny`: `code-bpe`, an 8k byte-level BPE trained offline on Python source (a twentieth of the
    output head's cost, agent/code_tokenizer.py), or `qwen3`, the real 151,669-token Qwen3 vocabulary."""
    tiny_hidden_size: int = 64
    """With `model: tiny`: the model width."""
    tiny_layers: int = 2
    """With `model: tiny`: decoder layers."""
    tokenizer: str | None = None
    """Tokenizer directory (default: the model's own)."""
    engine: Literal["hf", "vllm"] = "hf"
    """Sampler: the in-process policy (`hf`) or a vLLM server reloaded from a checkpoint after each step."""
    engine_url: str | None = None
    """vLLM server URL when engine is `vllm`. Start it with `--logprobs-mode processed_logprobs` when sampling with a
    temperature ≠ 1 or top-k / top-p, so that the logprobs it reports are the sampling distribution's."""
    engine_reload_method: str = "reload_weights"
    """The vLLM worker method that loads new weights (`reload_weights_repacked` for a CPU server started by
    agent/engines/vllm_server.py, which also refreshes a tied LM head)."""
    env_urls: list[str] = Field(default_factory=list)
    """Env servers; empty starts a local one on the sample tasks."""
    env_token: str | None = Field(default=None, repr=False, exclude=True)
    """The env servers' bearer token (None: ENVSERVER_AUTH_TOKEN when set); never written to `config.json`."""
    tasks: list[str] | Literal["all"] = "all"
    """Task ids to train on."""
    pairs_file: Path | None = None
    """A mined or hand-made contrastive pair file (JSONL) for L_CA, trained besides the synthetic pairs when
    `synthetic_pairs` is on and a task file is available; None: the synthetic pairs alone (neither: no L_CA)."""
    heldout_pairs: Path | None = None
    """Pairs never trained on, for the context-selection accuracy curve; given, the whole pair file trains."""
    heldout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Share of the pair file's groups held out for the accuracy curve without `heldout_pairs` (mirrors: one group)."""
    synthetic_pairs: bool = True
    """Generate the synthetic test-outcome pairs (train + held-out) from the task file, with or without a pair file:
    their train half joins the file's train split, their held-out half the held-out pairs."""
    task_file: Path | None = None
    """Task instances (with gold patches and test lists) for the warm start and synthetic pairs; None: the sample
    tasks when the env server is local, else neither is made."""
    warm_start_steps: int = 50
    """SFT steps on scripted successful demonstrations before RL (0: none); needs the task file."""
    warm_start_lr: float = 3e-3
    """AdamW learning rate of the warm start (its own optimizer)."""
    inherit_warm_start_moments: bool = False
    """RL's AdamW starts from the warm start's second-moment estimates (first moments zero) instead of fresh
    (trainer/warmstart.py adopt_second_moments; also read from a `model` directory that a warm start saved,
    `<output_dir>/warm-start-model`). Off by default: it shrinks GRPO's steps (README, findings)."""
    steps: int = 48
    """Optimizer steps."""
    tasks_per_step: int = 8
    """B: tasks per step."""
    group_size: int = 2
    """G: rollouts per task."""
    concurrency: int = 8
    """Episodes in flight while collecting."""
    replay_lost_episodes: bool = True
    """Replay an episode lost with its env server (same seed, a live server) so its group keeps G rollouts."""
    announce_next_step: bool = True
    """Once a step's rollouts are in, tell the live env servers the next step's B × G resets (`POST /v1/prefetch`),
    so their containers start while the step trains."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_eps: float = 1e-8
    """AdamW ε (added to √v): a larger ε keeps parameters whose gradients are tiny noise still."""
    warmup_steps: int = 5
    """Linear learning-rate warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    """GRPO: advantages, the clipped loss, KL, updates a step (trainer/losses/grpo.py)."""
    ca: ContextAwarenessConfig = Field(default_factory=ContextAwarenessConfig)
    """L_CA: λ, the margin clip, its own updates and pair batches (trainer/losses/context_awareness.py)."""
    agent: AgentConfig = Field(default_factory=lambda: AgentConfig(**EMBEDDED_AGENT))
    """The agent loop and its sampling (agent/loop.py AgentConfig): the embedded default's (`EMBEDDED_AGENT` over
    AgentConfig's defaults), and the fields a config gives (YAML, or an AgentConfig's set fields) over those. Its
    `seed` stays unset: the trainer seeds each episode from `seed`."""
    logprob_chunk_size: int = 1024
    """Tokens per chunk of the memory-lean logprob computation."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward."""
    success_eval_episodes: int = Field(default=8, ge=0)
    """Episodes per task of the success evaluation before the first step and after the last, with the same sampling
    seeds at both ends (a paired comparison); written to `eval-rollouts.jsonl`. 0: none, and start vs end averages
    the first and the last pass of training rollouts."""
    success_eval_tasks: int | None = Field(default=None, ge=1)
    """At most this many tasks in the success evaluation: a fixed sample of the pool (drawn with `seed`, the same at
    both ends); None: every task."""
    eval_every: int = 5
    """Steps between held-out context-selection accuracy measurements (also before the first step and after the
    last)."""
    tensorboard: bool = True
    """Also write the metrics as TensorBoard scalars (needs the `tensorboard` package)."""
    weights_dir: Path | None = None
    """Where the trainer writes the weights a vLLM engine reloads after each step (a path the server can read);
    None: `<output_dir>/weights`."""
    checkpoint_every: int = 10
    """Steps between checkpoints (and always at the end)."""
    output_dir: Path = Path("runs/default")
    """Metrics, plots and checkpoints go here."""
    seed: int = 0
    """Seeds task order, pair order, sampling and initialisation."""

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        """Old flat keys fail naming their new place (they would otherwise fail as unknown fields, with no hint); a
        given `agent:` section applies over the embedded default's agent."""
        if not isinstance(data, dict):
            return data
        moved = [f"`{key}` is now `{RENAMED[key]}`" for key in data if key in RENAMED]
        if moved:
            raise ValueError("; ".join(moved))
        agent = data.get("agent")
        if isinstance(agent, AgentConfig):  # the fields it was given, as for a section of a YAML file
            agent = agent.model_dump(include=agent.model_fields_set)
        if isinstance(agent, dict):
            data = {**data, "agent": {**EMBEDDED_AGENT, **agent}}
        return data

    @model_validator(mode="after")
    def _episode_seeds(self) -> TrainerConfig:
        if self.agent.seed is not None:
            raise ValueError("`agent.seed` must stay unset: the trainer seeds each episode from `seed`")
        return self

    def env_server_token(self) -> str | None:
        """The bearer token sent to the env servers: `env_token`, else the ENVSERVER_AUTH_TOKEN environment variable
        (what `python -m agent.collect` and the env server itself read)."""
        return self.env_token or os.environ.get("ENVSERVER_AUTH_TOKEN") or None

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: Sequence[str] = ()) -> TrainerConfig:
        """The YAML file's fields (None: the embedded default), then each `key=value` override in order, by the
        project's one rule (envserver/settings.py: a dotted key reaches into a section, `grpo.kl_coef=0`; the value
        is read as YAML). A bad file or override raises SettingsError (a ValueError); invalid fields raise pydantic's
        ValidationError."""
        data = read_settings_file(path, cls.__name__) if path else {}
        apply_overrides(data, overrides)
        return cls.model_validate(data)
