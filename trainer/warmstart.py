"""Warm start: successful demonstration trajectories played through the real env server, and SFT on them.

Why: a randomly initialised (tiny) policy never solves a task, so GRPO has no reward variance to learn from. A few
supervised steps on successful trajectories put it where sampling at temperature 1 sometimes succeeds; RL takes it
from there. The demonstrations are made by the real agent loop (`agent.loop.run_episode`) with a ReplayEngine that
"samples" a scripted solution, so their token ids are exactly the ones the policy would produce and read — the
tokenization of the prompt, the tool results and the turn boundaries are the loop's own (DESIGN.md, decision 6).

The scripted solution is short on purpose: the policy later has to sample it token by token, and at a per-token
probability p a solution of n tokens comes out whole with probability pⁿ. So instead of the gold patch (300–600
tokens as a here-document) each task is solved by one `sed -i` command with line-addressed edits derived from the
gold patch (`compact_command`, ~20–60 tokens for a one-line fix), then a `finish` call. A task whose compact command
does not earn reward 1 falls back to applying the gold patch with `git apply`.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from agent.engines.replay import ReplayEngine, tool_call_text
from agent.loop import AgentConfig, run_episode
from agent.trajectory import Trajectory
from envserver.client import AsyncEnvClient
from trainer.logprobs import masked_model_token_logprobs

SolutionStyle = Literal["sed", "patch"]

# ------------------------------------------------------------------------------------------ scripted solutions

_FILE = re.compile(r"^diff --git a/(\S+) b/(\S+)$")
_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")
_WORD = re.compile(r"\w")


@dataclass
class _Run:
    """One run of changed lines: removed (old line number, text) and added texts, anchored at old line `at`."""

    at: int
    removed: list[tuple[int, str]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


def _runs(patch: str) -> dict[str, list[_Run]]:
    """Changed-line runs per file (new files and deletions are not supported: None of the sample tasks has one)."""
    files: dict[str, list[_Run]] = {}
    path: str | None = None
    old_line = 0
    run: _Run | None = None
    for line in patch.splitlines():
        match = _FILE.match(line)
        if match:
            path, run = match.group(2), None
            files[path] = []
            continue
        if line.startswith(("new file mode", "deleted file mode", "rename ", "Binary files")):
            raise ValueError(f"compact_command supports in-place edits only, not: {line}")
        hunk = _HUNK.match(line)
        if hunk:
            old_line, run = int(hunk.group(1)), None
            continue
        if path is None or line.startswith(("---", "+++", "index ", "\\")):
            continue
        tag, text = line[:1], line[1:]
        if tag == "-" or tag == "+":
            if run is None:
                run = _Run(at=old_line)
                files[path].append(run)
            if tag == "-":
                run.removed.append((old_line, text))
                old_line += 1
            else:
                run.added.append(text)
        else:  # context (or an empty line standing for an empty context line)
            run = None
            old_line += 1
    return files


def _span(old: str, new: str) -> tuple[str, str]:
    """The smallest (old part, new part) that turns `old` into `new` with one first-occurrence substitution, widened
    to whole words (it reads like an edit a person would type, and tokenizes into common pieces)."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end_old, end_new = len(old), len(new)
    while end_old > start and end_new > start and old[end_old - 1] == new[end_new - 1]:
        end_old, end_new = end_old - 1, end_new - 1

    def word(i: int) -> bool:
        return 0 <= i < len(old) and bool(_WORD.match(old[i]))

    while word(start - 1):  # widen to whole words
        start -= 1
    while word(end_old):
        end_old, end_new = end_old + 1, end_new + 1
    if end_old == start:  # a pure insertion: take the word (or character) before it along, else the one after
        if start > 0:
            start -= 1
            while word(start - 1) and word(start):
                start -= 1
        else:
            end_old, end_new = end_old + 1, end_new + 1
    while old.find(old[start:end_old]) != start:  # the first occurrence must be the one to change
        start -= 1
    return old[start:end_old], new[start:end_new]


def _delimiter(*texts: str) -> str:
    for candidate in "|#%,@!~":
        if not any(candidate in text for text in texts):
            return candidate
    raise ValueError("no sed delimiter free in the edit")


def _bre(text: str, delimiter: str) -> str:
    return re.sub(r"([\\.*\[\]^$])", r"\\\1", text).replace(delimiter, "\\" + delimiter)


def _replacement(text: str, delimiter: str) -> str:
    return text.replace("\\", "\\\\").replace("&", "\\&").replace(delimiter, "\\" + delimiter)


def _text_block(command: str, lines: list[str]) -> list[str]:
    """`Na\\` / `Ni\\` with its text lines as separate -e fragments (GNU sed joins them with newlines)."""
    escaped = [line.replace("\\", "\\\\") for line in lines]
    return [command + "\\" + escaped[0] + ("\\" if len(escaped) > 1 else "")] + [
        line + ("\\" if i < len(escaped) - 2 else "") for i, line in enumerate(escaped[1:])
    ]


def _run_commands(run: _Run) -> list[str]:
    """sed commands (each one -e fragment list) for one run, all addressed by the ORIGINAL line numbers."""
    if not run.removed:  # pure insertion before old line `at`
        return _text_block(f"{run.at - 1}a" if run.at > 1 else "1i", run.added)
    # Pair each removed line with its most similar added line, in order; the rest are inserted or deleted.
    matcher = difflib.SequenceMatcher(a=[t for _, t in run.removed], b=run.added, autojunk=False)
    pairs: list[tuple[int, int]] = []
    j_from = 0
    for i, (_, text) in enumerate(run.removed):
        best, best_j = 0.3, None
        for j in range(j_from, len(run.added)):
            ratio = difflib.SequenceMatcher(a=text, b=run.added[j], autojunk=False).ratio()
            if ratio > best:
                best, best_j = ratio, j
        if best_j is not None:
            pairs.append((i, best_j))
            j_from = best_j + 1
    del matcher
    fragments: list[str] = []
    paired_i = {i for i, _ in pairs}
    j_done = 0
    for i, j in pairs:
        number, text = run.removed[i]
        if j > j_done:
            fragments += _text_block(f"{number}i", run.added[j_done:j])
        old, new = _span(text, run.added[j])
        delim = _delimiter(old, new)
        fragments.append(f"{number}s{delim}{_bre(old, delim)}{delim}{_replacement(new, delim)}{delim}")
        j_done = j + 1
    last_number = run.removed[-1][0]
    if j_done < len(run.added):
        fragments += _text_block(f"{last_number}a", run.added[j_done:])
    fragments += [f"{number}d" for i, (number, _) in enumerate(run.removed) if i not in paired_i]
    return fragments


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'" if not text or re.search(r"[^\w@%+=:,./-]", text) else text


def compact_command(patch: str) -> str:
    """One shell command that makes the gold patch's edits with `sed -i`, line-addressed (run in the repository
    root). E.g. `sed -i -e '11s|EVEN|UP|' -e '33s|EVEN|UP|' minicalc/money.py`."""
    commands = []
    for path, runs in _runs(patch).items():
        fragments = [fragment for run in runs for fragment in _run_commands(run)]
        if not fragments:
            continue
        if len(fragments) == 1:
            commands.append(f"sed -i {_shell_quote(fragments[0])} {path}")
        else:
            commands.append("sed -i " + " ".join(f"-e {_shell_quote(f)}" for f in fragments) + f" {path}")
    return " && ".join(commands)


def patch_command(patch: str, workdir: str) -> str:
    """The long form: write the gold patch with a here-document and `git apply` it."""
    return (
        f"cd {workdir} && cat > /tmp/gold.patch <<'ENVSERVER_PATCH_EOF'\n{patch}ENVSERVER_PATCH_EOF\n"
        "git apply /tmp/gold.patch"
    )


def solution_turns(task: Any, style: SolutionStyle = "sed") -> list[str]:
    """The scripted assistant turns that solve `task` (a TaskInstance): one execute_bash call, then `finish`."""
    command = compact_command(task.patch) if style == "sed" else patch_command(task.patch, task.workdir)
    return [tool_call_text("execute_bash", command=command), tool_call_text("finish")]


# ------------------------------------------------------------------------------------------------ demonstrations


async def demonstrations(
    env_url: str,
    tasks: Sequence[Any],
    tokenizer: Any,
    agent_config: AgentConfig | None = None,
    style: SolutionStyle = "sed",
    copies: int = 1,
    concurrency: int = 4,
    log: Callable[[str], Any] = lambda _: None,
    token: str | None = None,
) -> list[Trajectory]:
    """Successful, token-exact trajectories: each task (TaskInstance with `patch`) played through the env server at
    `env_url` by the agent loop with a ReplayEngine scripting `solution_turns(task, style)`; a task whose short
    solution is not rewarded 1.0 is played again with the gold patch (`patch` style). Tasks that fail both ways are
    logged and left out. `copies` > 1 plays each task that many times (groups 0..copies-1; the ids are the same).

    agent_config: the loop's settings (the RL run's, so the prompt is the same; its max_turns must allow 2 turns
        and max_tokens_per_turn must fit the scripted turn — the default here allows both).
    token: the env server's bearer token.
    """
    config = agent_config or AgentConfig(max_turns=2, max_tokens_per_turn=4096)
    semaphore = asyncio.Semaphore(concurrency)
    client = AsyncEnvClient(env_url, token=token)

    async def play(task: Any, group: int) -> Trajectory | None:
        styles: list[SolutionStyle] = [style] + (["patch"] if style != "patch" else [])
        for attempt in styles:
            engine = ReplayEngine(tokenizer, solution_turns(task, attempt), model_name=f"replay-{attempt}")
            async with semaphore:
                trajectory = await run_episode(
                    engine, client, task.instance_id, config, tokenizer=tokenizer, group=group
                )
            if trajectory.reward == 1.0 and trajectory.sequences:
                return trajectory
            log(
                f"demonstration {task.instance_id} ({attempt}): reward {trajectory.reward}, "
                f"infra {trajectory.infra_reason}, truncation {trajectory.truncation}"
            )
        return None

    try:
        played = await asyncio.gather(*(play(task, g) for task in tasks for g in range(copies)))
    finally:
        await client.aclose()
    return [trajectory for trajectory in played if trajectory is not None]


# ------------------------------------------------------------------------------------------------------------ SFT


def _sequences(trajectories: Sequence[Trajectory]) -> list[tuple[list[int], list[int]]]:
    return [(list(s.token_ids), list(s.loss_mask)) for t in trajectories for s in t.sequences if any(s.loss_mask)]


def sft_loss(model: Any, sequences: Sequence[tuple[list[int], list[int]]], chunk_size: int = 1024) -> torch.Tensor:
    """−mean logprob of the loss-mask-1 tokens of (token_ids, loss_mask) sequences, one mean over all their tokens.

    The same numbers as `model_token_logprobs` at the masked positions, but the output head runs only on the
    positions that predict a masked token (a demonstration's prompt is ~90 % of its tokens)."""
    length = max(len(ids) for ids, _ in sequences)
    pad = getattr(model.config, "pad_token_id", None) or 0
    input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, (ids, loss_mask) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        mask[row, : len(ids)] = torch.tensor(loss_mask, dtype=torch.bool)
    logprobs = masked_model_token_logprobs(model, input_ids, attention, mask, chunk_size=chunk_size)
    mask[:, 0] = False  # nothing predicts the first token
    return -logprobs[mask].mean()


def sft_steps(
    model: Any,
    trajectories: Sequence[Trajectory],
    steps: int,
    lr: float = 1e-3,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    chunk_size: int = 1024,
    optimizer: torch.optim.Optimizer | None = None,
    log: Callable[[str], Any] = lambda _: None,
    log_every: int = 1,
) -> list[float]:
    """`steps` AdamW steps on −mean logprob of the demonstrations' sampled (loss-mask-1) tokens; returns the loss of
    each step (before its update).

    batch_size: sequences per step (None: all of them every step), drawn in a fixed shuffled order by `seed`.
    optimizer: an optimizer over the model's parameters to use instead (e.g. to continue across calls).
    log_every: log the first step, every `log_every`-th and the last."""
    sequences = _sequences(trajectories)
    if not sequences:
        raise ValueError("no demonstration has sampled tokens to train on")
    if steps <= 0:
        return []
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    size = batch_size or len(sequences)
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        for step in range(steps):
            if len(order) < size:
                order += torch.randperm(len(sequences), generator=generator).tolist()
            chosen, order = order[:size], order[size:]
            loss = sft_loss(model, [sequences[i] for i in chosen], chunk_size=chunk_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            if step == 0 or (step + 1) % log_every == 0 or step + 1 == steps:
                log(f"warm-start step {step + 1}/{steps}: loss {losses[-1]:.4f}")
    finally:
        model.train(was_training)
    return losses


# ------------------------------------------------------------------------------------ the optimizer state RL inherits

SECOND_MOMENTS_FILE = "adam-second-moments.pt"
MOMENTS_WEIGHTS_FILE = "adam-second-moments.weights.json"
"""Beside SECOND_MOMENTS_FILE: the fingerprint of the weights the moments were taken with (`weights_fingerprint`)."""


def weights_fingerprint(model: Any) -> dict[str, float]:
    """Each parameter's sum (float64), by name: cheap to take from weights in memory (a second for 8B parameters),
    and enough to tell the weights the moments belong to from weights saved over them later."""
    with torch.no_grad():  # accumulate in float64 without a float64 copy of each parameter
        return {name: float(parameter.sum(dtype=torch.float64)) for name, parameter in model.named_parameters()}


def same_weights(fingerprint: dict[str, float], model: Any, rel_tol: float = 1e-6) -> bool:
    """Whether `model` holds the weights `fingerprint` was taken of (up to the rounding of a save/load round trip)."""
    current = weights_fingerprint(model)
    return set(current) == set(fingerprint) and all(
        math.isclose(current[name], fingerprint[name], rel_tol=rel_tol, abs_tol=1e-6) for name in current
    )


def second_moments(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """The AdamW second-moment estimates (and step counts) `optimizer` holds for `model`, by parameter name: what RL's
    optimizer starts from (`adopt_second_moments`), and what `warm-start-model/` keeps for runs started from it."""
    moments = {}
    for name, parameter in model.named_parameters():
        state = optimizer.state.get(parameter, {})
        if "exp_avg_sq" in state:
            moments[name] = {
                "step": torch.as_tensor(state["step"]).detach().clone(),
                "exp_avg_sq": state["exp_avg_sq"].detach().clone(),
            }
    return moments


def adopt_second_moments(
    model: Any, optimizer: torch.optim.Optimizer, moments: dict[str, dict[str, torch.Tensor]]
) -> int:
    """Start a fresh Adam-family `optimizer` over `model`'s parameters from `moments` (`second_moments` of another
    optimizer over a model of the same shapes): second moments and step counts copied, first moments zero. Returns
    how many parameters took them.

    Why: a fresh Adam's first updates are sign steps — every parameter moves by ~lr, whatever its gradient — and on
    the warm-started tiny model one such update at the RL learning rate lowers even the policy's own successes'
    logprob. Dividing RL's gradients by the warm start's running scale instead makes a noisy GRPO gradient take a
    small step and a consistent one a large step. The first moments start at zero, so the warm start's direction
    does not carry on into RL."""
    if any(optimizer.state.values()):
        raise ValueError("adopt_second_moments: the optimizer has already stepped")
    parameters = dict(model.named_parameters())
    unknown = sorted(set(moments) - set(parameters))
    if unknown:
        raise ValueError(f"second moments for parameters the model does not have: {unknown[:3]}")
    for name, moment in moments.items():
        parameter = parameters[name]
        if moment["exp_avg_sq"].shape != parameter.shape:
            raise ValueError(
                f"second moments of {name} have shape {tuple(moment['exp_avg_sq'].shape)}, "
                f"the parameter {tuple(parameter.shape)}"
            )
        optimizer.state[parameter] = {
            "step": moment["step"].detach().clone().to(torch.float32),
            "exp_avg": torch.zeros_like(parameter, memory_format=torch.preserve_format),
            "exp_avg_sq": moment["exp_avg_sq"].detach().clone().to(parameter.device, parameter.dtype),
        }
    return len(moments)
