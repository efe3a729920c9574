"""Full episodes through the agent loop against a real env server on the sample tasks.

Two engines: the real `hf` engine on a tiny random Qwen3 model (it samples noise, so its episodes end by limits),
and the replay engine (agent/engines/replay.py) that "samples" scripted assistant texts tokenized with the real
tokenizer. The replay engine is the one stand-in here: a random tiny model cannot be made to emit a correct patch or a chosen malformed call on
cue, and these tests are about what the loop does with such turns. Everything else — tokenizer, chat template,
conversation, env server, containers, grading — is real.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.collect import collect, done_episode_ids
from agent.engines.base import Engine, Generation, SamplingParams
from agent.engines.hf import HFEngine
from agent.engines.replay import ReplayEngine, tool_call_text
from agent.loop import AgentConfig, run_episode
from agent.trajectory import Trajectory, read_jsonl
from envserver.client import AsyncEnvClient
from tests.patchops import bash_apply_command

pytestmark = pytest.mark.docker


class Recording(Engine):
    """Wraps an engine and records every prompt it was given (for the token-exact invariant)."""

    def __init__(self, inner: Engine):
        self.inner = inner
        self.name = inner.name
        self.model_name = inner.model_name
        self.prompts: list[list[int]] = []
        self.outputs: list[list[int]] = []

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        self.prompts.append(list(prompt_ids))
        generation = await self.inner.generate(prompt_ids, params)
        self.outputs.append(generation.token_ids)
        return generation


call = tool_call_text
Replay = ReplayEngine


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from agent.tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    from agent.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def play(server, engine, task_id, config, tokenizer):  # type: ignore[no-untyped-def]
    async def run() -> Trajectory:
        async with AsyncEnvClient(server.url) as env:
            return await run_episode(engine, env, task_id, config, tokenizer=tokenizer)

    return asyncio.run(run())


def assert_token_exact(trajectory: Trajectory, engine: Recording) -> None:
    """At every turn the engine's input is a prefix of the recorded sequence, followed by exactly its output."""
    assert trajectory.sequences
    for turn, (prompt, output) in enumerate(zip(engine.prompts, engine.outputs)):
        sequence = trajectory.sequences[0] if len(trajectory.sequences) == 1 else trajectory.sequences[turn]
        ids = sequence.token_ids
        assert ids[: len(prompt)] == prompt, f"turn {turn}: the engine read something the record does not hold"
        assert ids[len(prompt) : len(prompt) + len(output)] == output, f"turn {turn}: sampled ids differ"
        mask = sequence.loss_mask[len(prompt) : len(prompt) + len(output)]
        assert mask == [1] * len(output)
    for sequence in trajectory.sequences:
        sampled = sum(sequence.loss_mask)
        assert sampled == sum(1 for lp, m in zip(sequence.logprobs, sequence.loss_mask) if m)
        assert all(lp == 0.0 for lp, m in zip(sequence.logprobs, sequence.loss_mask) if not m)


@pytest.mark.parametrize("think_mode", ["keep", "drop"])
def test_gold_episode_is_token_exact_and_resolved(server, sample_tasks, tokenizer, think_mode):  # type: ignore[no-untyped-def]
    task = sample_tasks[1]
    texts = [
        "<think>\nLet me look at the repository first.\n</think>\n\n" + call("execute_bash", command="ls"),
        "<think>\nI will apply the fix.\n</think>\n\n"
        + call("execute_bash", command=bash_apply_command(task.patch, task.workdir)),
        "Done.\n" + call("finish"),
    ]
    engine = Recording(Replay(tokenizer, texts))
    trajectory = play(server, engine, task.instance_id, AgentConfig(think_mode=think_mode), tokenizer)
    assert trajectory.error is None and not trajectory.infra_failure, trajectory
    assert trajectory.reward == 1.0 and trajectory.resolved and trajectory.truncation is None
    assert trajectory.num_turns == 3 and trajectory.num_tool_calls == 3 and trajectory.malformed_tool_calls == 0
    assert len(trajectory.sequences) == (1 if think_mode == "keep" else 3)
    assert_token_exact(trajectory, engine)
    if think_mode == "drop":
        # Turn 3's input no longer holds turn 1's reasoning, but still holds its tool call.
        later = tokenizer.decode(engine.prompts[2])
        assert "Let me look at the repository first." not in later and '"command": "ls"' in later
    tool_messages = [m for m in trajectory.messages if m["role"] == "tool"]
    assert len(tool_messages) == 2 and "APPLIED" in tool_messages[1]["content"]
    assert trajectory.timings.env_s > 0 and trajectory.timings.total_s >= trajectory.timings.env_s


def test_a_large_patch_is_kept_whole_in_the_trajectory(server, sample_tasks, tokenizer):  # type: ignore[no-untyped-def]
    """The finish answer carries only the head of a patch over the server's inline limit (64 KiB); the trajectory
    fetches the whole graded patch (`GET /v1/sessions/{id}/patch`) before the session closes."""
    task = sample_tasks[1]
    texts = [
        call("execute_bash", command=bash_apply_command(task.patch, task.workdir)),
        call("execute_bash", command=f"cd {task.workdir} && seq 1 60000 > numbers_by_agent.txt"),
        call("finish"),
    ]
    trajectory = play(server, Replay(tokenizer, texts), task.instance_id, AgentConfig(), tokenizer)
    assert trajectory.reward == 1.0 and trajectory.test_report is not None, trajectory
    assert trajectory.test_report["model_patch_truncated"], "the grade itself carries only the head"
    assert trajectory.patch is not None and len(trajectory.patch.encode()) == trajectory.test_report["patch_bytes"]
    assert "+60000\n" in trajectory.patch and "numbers_by_agent.txt" in trajectory.patch


def test_malformed_tool_calls_are_observations(server, sample_tasks, tokenizer):  # type: ignore[no-untyped-def]
    texts = [
        "<tool_call>\n{not json at all\n</tool_call>",
        call("no_such_tool", x=1),
        call("execute_bash"),  # missing the required command
        "I think I am done but forgot the tool.",
        call("finish"),
    ]
    engine = Recording(Replay(tokenizer, texts))
    trajectory = play(server, engine, sample_tasks[0].instance_id, AgentConfig(), tokenizer)
    assert trajectory.error is None and not trajectory.infra_failure
    assert trajectory.malformed_tool_calls == 3
    assert trajectory.reward == 0.0 and trajectory.num_turns == 5
    contents = [m["content"] for m in trajectory.messages if m["role"] in ("tool", "user")][1:]
    assert any("could not be parsed" in c for c in contents)
    assert any("unknown tool" in c for c in contents)
    assert any("finish" in c and "continue" in c.lower() for c in contents)  # the no-tool turn is nudged
    assert_token_exact(trajectory, engine)


def test_truncation_by_turns_and_by_tokens(server, sample_tasks, tokenizer):  # type: ignore[no-untyped-def]
    task_id = sample_tasks[0].instance_id
    looping = Replay(tokenizer, [call("execute_bash", command="echo again")])
    by_turns = play(server, looping, task_id, AgentConfig(max_turns=3), tokenizer)
    assert by_turns.truncation == "max_turns" and by_turns.num_turns == 3
    assert by_turns.reward == 0.0  # graded on truncation by default; the trainer may mask it
    chatty = Replay(tokenizer, [call("execute_bash", command="seq 1 400")])
    by_tokens = play(server, chatty, task_id, AgentConfig(max_context_tokens=2600, max_turns=50), tokenizer)
    assert by_tokens.truncation == "max_tokens"
    assert len(by_tokens.sequences[0].token_ids) <= 2600
    ungraded = play(
        server,
        Replay(tokenizer, [call("execute_bash", command="true")]),
        task_id,
        AgentConfig(max_turns=1, grade_on_truncation=False),
        tokenizer,
    )
    assert ungraded.truncation == "max_turns" and ungraded.reward is None and not ungraded.infra_failure


def test_hf_engine_episode_on_tiny_model(server, sample_tasks, tokenizer, tiny_model_dir):  # type: ignore[no-untyped-def]
    engine = Recording(HFEngine.from_pretrained(tiny_model_dir))
    config = AgentConfig(max_turns=3, max_tokens_per_turn=24, seed=1, think_mode="keep")
    trajectory = play(server, engine, sample_tasks[0].instance_id, config, tokenizer)
    assert trajectory.error is None and not trajectory.infra_failure, trajectory.error
    assert trajectory.num_turns == 3 and trajectory.truncation == "max_turns"
    assert_token_exact(trajectory, engine)
    sampled = [lp for lp, m in zip(trajectory.sequences[0].logprobs, trajectory.sequences[0].loss_mask) if m]
    assert sampled and all(lp < 0 for lp in sampled)  # real logprobs from the model
    assert trajectory.malformed_tool_calls + trajectory.num_tool_calls <= 3


def test_collection_resumes_after_interruption(server, sample_tasks, tokenizer, tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "trajectories.jsonl"
    task_ids = [sample_tasks[0].instance_id, sample_tasks[1].instance_id]
    engine = Replay(tokenizer, [call("finish")])
    first = asyncio.run(collect(engine, [server.url], task_ids[:1], 2, out, AgentConfig(), tokenizer, 4))
    assert first.episodes == 2
    with open(out, "a") as handle:  # a writer killed mid-line
        handle.write('{"task_id": "' + task_ids[1] + '", "group": 0, "epis')
    second = asyncio.run(collect(engine, [server.url], task_ids, 2, out, AgentConfig(), tokenizer, 4))
    assert second.skipped == 2 and second.episodes == 2
    episodes = list(read_jsonl(out))
    assert sorted(e.episode_id for e in episodes) == sorted(f"{t}/{g}" for t in task_ids for g in range(2))
    assert done_episode_ids(out) == {e.episode_id for e in episodes}


def test_env_infra_failure_is_carried_not_scored(server, sample_tasks, tokenizer, tmp_path):  # type: ignore[no-untyped-def]
    """A task the server cannot start (its image is missing) ends as infra_failure with reward None."""
    from tests.conftest import start_server, stop_server

    broken = sample_tasks[0].model_copy(update={"instance_id": "broken__image-1", "image": "envserver/missing:1"})
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text(broken.model_dump_json() + "\n")
    other = start_server(tmp_path, "--tasks", str(tasks_file))
    try:
        trajectory = play(other, Replay(tokenizer, [call("finish")]), "broken__image-1", AgentConfig(), tokenizer)
    finally:
        stop_server(other)
    assert trajectory.infra_failure and trajectory.reward is None
    assert "image" in (trajectory.infra_reason or "")
