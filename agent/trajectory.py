"""The trajectory record (JSONL, one episode per line) — the contract between the agent loop, the trainer, the pair
miner and the readers of third-party trajectory sets (DESIGN.md, "Contracts").

Version 1. Token fields are exact: `token_ids` is what the engine read and wrote, never a re-tokenization of text.
Records read from third-party sets have text fields only (`sequences` empty, `source` says where they came from).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RECORD_VERSION = 1

TruncationReason = Literal["max_turns", "max_tokens", "wall_time", "env_max_steps", "context_full"]


class TokenSequence(BaseModel):
    """One training sequence: ids, a loss mask (1 on sampled tokens) and the sampled tokens' logprobs."""

    token_ids: list[int]
    loss_mask: list[int]
    """1 where the token was sampled by the policy in this sequence, 0 for prompt / tool output / earlier turns."""
    logprobs: list[float]
    """Sampling logprob per token; 0.0 where loss_mask is 0."""

    @model_validator(mode="after")
    def _same_length(self) -> TokenSequence:
        if not (len(self.token_ids) == len(self.loss_mask) == len(self.logprobs)):
            raise ValueError(
                f"token_ids ({len(self.token_ids)}), loss_mask ({len(self.loss_mask)}) and logprobs "
                f"({len(self.logprobs)}) must have the same length"
            )
        return self


class Timings(BaseModel):
    """Where an episode's wall time went (seconds)."""

    total_s: float = 0.0
    engine_s: float = 0.0
    """Waiting for the engine to sample."""
    env_s: float = 0.0
    """Waiting for the env server (reset, steps, grading)."""
    agent_s: float = 0.0
    """The agent's own work: rendering, tokenizing, parsing (total - engine - env)."""


class Trajectory(BaseModel):
    """One episode."""

    model_config = ConfigDict(extra="allow")

    version: int = RECORD_VERSION
    task_id: str
    """instance_id of the task."""
    group: int = 0
    """Rollout index within the task's group (GRPO groups rollouts of the same task)."""
    episode_id: str = ""
    """Unique id (`task_id/group` for collected episodes), the key resumed collections skip on."""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    """The conversation in OpenAI chat format (assistant turns with `tool_calls`, tool results as `tool`)."""
    tools: list[dict[str, Any]] = Field(default_factory=list)
    """Tool schemas the model was given (OpenAI function format)."""
    sequences: list[TokenSequence] = Field(default_factory=list)
    """Training sequences: one when reasoning is kept in context, one per turn when it is dropped; empty for
    text-only records (engines without token ids, third-party sets)."""
    reward: float | None = None
    """1.0 resolved, 0.0 not; None when there is no grade (infra failure, reading a set without rewards)."""
    resolved: bool | None = None
    test_report: dict[str, Any] | None = None
    """The env server's grade (per-test report, patch, …)."""
    infra_failure: bool = False
    """The env server or engine failed: the trainer masks this episode rather than scoring it 0."""
    infra_reason: str | None = None
    truncation: TruncationReason | None = None
    """Why the episode stopped before the agent finished; None when it called `finish`."""
    num_turns: int = 0
    """Assistant turns."""
    num_tool_calls: int = 0
    malformed_tool_calls: int = 0
    """Turns whose tool call could not be parsed or was refused by the server (the model saw an error)."""
    timings: Timings = Field(default_factory=Timings)
    model: str = ""
    weights_version: int | None = None
    """Weights version of the engine that sampled (None: unknown / third-party)."""
    source: str = "collected"
    """`collected`, or the third-party set a reader took it from (`swe-smith`, `swe-gym-openhands`, `swe-agent`)."""
    patch: str | None = None
    """The agent's final diff, when known."""
    error: str | None = None
    """An unexpected error that ended the episode (recorded, never raised out of a collection)."""

    @property
    def trainable(self) -> bool:
        """Has exact token ids and a real (non-infra) outcome."""
        return bool(self.sequences) and not self.infra_failure and self.reward is not None


def write_jsonl(path: str | Path, records: Iterable[Trajectory], append: bool = True) -> None:
    with open(path, "a" if append else "w", encoding="utf-8") as handle:
        handle.writelines(record.model_dump_json() + "\n" for record in records)


def read_jsonl(path: str | Path) -> Iterator[Trajectory]:
    """Stream records; a truncated last line (an interrupted writer) is skipped, any other bad line raises."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield Trajectory.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValueError) as exc:
            if lineno == len(lines) and not line.endswith("\n"):
                return  # the writer was killed mid-line: that episode is simply not done
            raise ValueError(f"{path}: line {lineno}: not a trajectory record: {exc}") from None
