"""Trainer configuration: one typed model, loaded from YAML (`--config`), every field documented."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class GRPOSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    advantage: Literal["grpo", "rloo", "batch"] = "batch"
    """Baseline: the group mean (GRPO), the leave-one-out mean (RLOO) or the whole batch's mean (REINFORCE++). The
    embedded default's `batch` keeps training the tasks the policy already solves in every episode (a group
    baseline gives them advantage 0, and the other tasks' updates unlearn them: see compute_advantages)."""
    malformed_call_penalty: float = 1.0
    """Subtracted from the reward of an episode with a malformed tool call, for the advantages only (success and the
    logged rewards stay the tests'). Without it successes that also wrote garbage calls are reinforced and the
    garbage spreads (trainer/batch.py training_reward); the paper config sets 0."""
    scale_by_std: bool = True
    """Divide advantages by the reward std (the group's; the batch's in `batch` mode)."""
    negative_advantage_scale: float = Field(default=0.0, ge=0.0, le=1.0)
    """Weight of negative advantages (1: standard GRPO; below 1 leans on the sampled successes, asymmetric
    REINFORCE — see trainer/losses/grpo.py compute_advantages). The embedded default's 0 trains the tiny model on its
    own successes only: the push on its failures reaches the tokens the 8 tasks' commands share and unlearns the
    tasks it already solves (README)."""
    clip_low: float = 0.2
    """Lower ratio clip ε_low."""
    clip_high: float = 0.28
    """Upper ratio clip ε_high (clip-higher)."""
    aggregation: Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"] = "token_mean"
    """How token losses become the batch loss."""
    kl_coef: float = 0.05
    """Weight of the k3 KL to a frozen reference, the policy RL starts from (0: no reference model is kept)."""
    kl_clamp: float | None = 10.0
    """Upper bound on each token's k3 KL, no gradient beyond (verl's low_var_kl; None: off, as TRL). Without it one
    sampled token the policy has come to find far less likely than the reference (e^-11 vs e^-1) weighs e^10 and
    its gradient is the whole update."""
    tis_cap: float | None = 2.0
    """Truncated importance sampling cap for the engine/trainer logprob mismatch (None: off)."""
    mask_truncated: bool = False
    """Leave episodes that hit a limit out of the loss (they are counted either way)."""
    updates_per_step: int = 1
    """Optimizer updates on each step's rollouts (TRL's num_iterations, the GRPO paper's μ). Beyond the first, the
    ratio to the sampling policy (recomputed by the trainer before the first) is what the clips bound: a trust
    region that lets several small updates use one batch of rollouts. With `ca_updates_per_step: 0` each update
    draws its own pair batch."""
    minibatches: int = Field(default=1, ge=1)
    """Mini-batches each pass over a step's rollouts is split into, one optimizer update each (verl's
    ppo_mini_batch_size, TRL's steps_per_generation): `updates_per_step` × `minibatches` updates per step, each rollout
    trained on `updates_per_step` times. Rows go to mini-batches balanced by length; advantages are the whole
    batch's. With `ca_updates_per_step: 0` every update draws its own pair batch. The embedded default's 1: six
    GRPO updates a step on ~3 rollouts each collapsed its λ = 0 control (README)."""
    drop_zero_variance: bool = False
    """Leave groups with equal rewards out of the loss (DAPO); False keeps them with advantage 0 (TRL), so that the
    KL term anchors their tokens too (see trainer/batch.py build_batch)."""


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
    `<output_dir>/warm-start-model`). Off by default: GRPO's steps are then scaled by its gradient over the SFT's
    (~1/20 on the tiny model) and, while the first moments build up, by ~1/10 more, so GRPO barely moves the
    policy (README, "the trainer")."""
    steps: int = 48
    """Optimizer steps."""
    tasks_per_step: int = 8
    """B: tasks per step."""
    group_size: int = 2
    """G: rollouts per task."""
    pairs_per_step: int = 8
    """Pairs per L_CA update (each presented in both orders): `ca_updates_per_step` batches a step, or one with each
    GRPO update (`grpo.updates_per_step` × `grpo.minibatches`) when that is 0."""
    concurrency: int = 8
    """Episodes in flight while collecting."""
    replay_lost_episodes: bool = True
    """Replay an episode lost with its env server (same seed, a live server) so its group keeps G rollouts."""
    announce_next_step: bool = True
    """Once a step's rollouts are in, tell the env servers the next step's B × G resets (`POST /v1/prefetch`), so
    their containers start while the step trains."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_eps: float = 1e-8
    """AdamW ε (added to √v). Adam moves every parameter by ~lr whatever the size of its gradient; a larger ε keeps
    parameters whose gradients are tiny noise (the output-head rows of tokens the policy never samples) still."""
    warmup_steps: int = 5
    """Linear learning-rate warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    ca_weight: float = 1.0
    """λ: weight of L_CA. With L_CA's own updates (`ca_updates_per_step` > 0, the default) it scales their learning
    rate, λ·lr. With one AdamW for both losses it is L_CA's weight in the loss, which sets its share of each update,
    not its step size (Adam divides by the gradient's scale)."""
    ca_updates_per_step: int = Field(default=6, ge=0)
    """0: L_CA joins the loss of every GRPO update, one AdamW for L = L_GRPO + λ·L_CA (the paper's; the paper config
    runs so). N > 0: L_CA takes N updates a step of its own, each on its own pair batch, after the step's GRPO updates
    (which then carry no pairs), with its own AdamW at learning rate λ·lr: λ weighs L_CA's steps against GRPO's. In
    one Adam, L_CA's gradient (norm ~1, GRPO's ~0.05–0.1) fills the shared second moments and shrinks GRPO's steps
    about tenfold, and L_CA needs ~100 updates where GRPO is best served by one a step (README, "the trainer"). The
    embedded default's 6 give L_CA 288 updates in 48 steps next to GRPO's one full-batch update a step."""
    ca_trains_embeddings: bool = False
    """With `ca_updates_per_step` > 0: whether L_CA's own updates also move the token embeddings and the output head.
    False (the decoder layers only) keeps the tiny default's solutions: every run that also trained the embeddings
    lost minicalc-3 as L_CA learned (`sed -i -e '222i…` for `'22i…`: P('2' after `'22`) 0.09 → 0.94), where the
    layers-only runs kept it (README)."""
    ca_clip: float = 5.0
    """c: L_CA's margin clip."""
    ca_clip_mode: Literal["symmetric", "upper"] = "upper"
    """`symmetric`: −log σ(clip(Δ, −c, c)), the paper's; `upper`: −log σ(min(Δ, c)), which keeps a gradient on
    confidently wrong pairs (see trainer/losses/context_awareness.py)."""
    grpo: GRPOSettings = Field(default_factory=GRPOSettings)
    """GRPO settings."""
    agent_tools: list[str] | None = Field(default_factory=lambda: ["execute_bash", "finish"])
    """The env server's tools offered to the policy, by name (None: all). The default bash-only agent has a prompt
    ~3× shorter than with the file editor's long schema, which is most of a tiny CPU run's cost."""
    max_turns: int = 2
    """Agent turns per episode."""
    max_tokens_per_turn: int = 192
    """Tokens sampled per turn."""
    max_context_tokens: int = 4096
    """Episode context limit."""
    temperature: float = 0.7
    """Sampling temperature; the GRPO loss trains softmax(logits / temperature), the policy that sampled."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p (1: off)."""
    top_k: int = -1
    """Sample from the k most likely tokens only (-1: off)."""
    logprob_chunk_size: int = 1024
    """Tokens per chunk of the memory-lean logprob computation."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward."""
    success_eval_episodes: int = Field(default=8, ge=0)
    """Episodes per task of the success evaluation before the first step and after the last: every task of the pool,
    with the same sampling seeds at both ends, so that the two are a paired comparison (a task whose policy did not
    change scores the same, up to the sampler's rounding) instead of two draws a pass's noise apart. Written to
    `eval-rollouts.jsonl`; the printed start vs end success rate is theirs. 0: none, and start vs end averages the
    first and the last pass of training rollouts."""
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
    def _renamed_fields(cls, data: Any) -> Any:
        # An older config's `pairs:` would otherwise fail as an unknown field, with no hint that it was renamed, nor
        # that the synthetic pairs now train beside the file (`synthetic_pairs: false` for the file alone).
        if isinstance(data, dict) and "pairs" in data:
            raise ValueError(
                "`pairs` is now `pairs_file`; with `synthetic_pairs` on (the default) the synthetic "
                "pairs train beside it"
            )
        return data

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: Sequence[str] = ()) -> TrainerConfig:
        """The YAML file's fields (None: the embedded default), then each `key=value` override in order: a dotted key
        reaches into a section (`grpo.kl_coef=0`), the value is read as YAML (`0.5`, `true`, `[a, b]`, `null`).
        A malformed override raises ValueError; invalid fields raise pydantic's ValidationError."""
        data: dict[str, Any] = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
            *sections, leaf = key.strip().split(".")
            target = data
            for section in sections:
                target = target.setdefault(section, {})
                if not isinstance(target, dict):
                    raise ValueError(f"--set {item!r}: {section!r} is not a section")
            target[leaf] = yaml.safe_load(raw)
        return cls.model_validate(data)
