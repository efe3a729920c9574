"""One episode: the engine proposes tool calls, the env server runs them, until `finish`, a limit, or a failure.

`run_episode` never raises for what can go wrong inside an episode: a malformed tool call becomes an error
observation the model sees (and a counter); an env-server or engine failure ends the episode as `infra_failure`
(masked by the trainer, never scored 0); limits end it with a recorded `truncation` reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import Field

from agent.engines.base import ChatEngine, Engine, EngineError, SamplingConfig, SamplingParams
from agent.trajectory import Timings, Trajectory, TruncationReason
from envserver.client import AsyncEnvClient, EnvServerError
from envserver.wire import StepResponse

SYSTEM_PROMPT = (
    "You are a helpful assistant that can interact with a computer to solve tasks.\n"
    "<IMPORTANT>\n"
    "* If user provides a path, you should NOT assume it's relative to the current working directory. Instead, you "
    "should explore the file system to find the file before working on it.\n"
    "* Call exactly one tool per turn when you can; call `finish` when the task is done.\n"
    "</IMPORTANT>"
)
CONTINUE_PROMPT = (
    "Please continue working on the task on whatever approach you think is suitable. Use the tools to act; when you "
    "have solved the task, call the `finish` tool.\nIMPORTANT: YOU SHOULD NEVER ASK FOR HUMAN HELP."
)


class AgentConfig(SamplingConfig):
    """How the agent plays an episode; its sampling settings (temperature, top_p, top_k) are `SamplingConfig`'s."""

    system_prompt: str = SYSTEM_PROMPT
    """System message of every episode."""
    max_turns: int = Field(default=30, ge=1)
    """Assistant turns before the episode is truncated (`max_turns`)."""
    max_context_tokens: int = 8192
    """Sequence length limit: a turn that cannot fit `min_turn_tokens` more is not sampled (`max_tokens`)."""
    max_tokens_per_turn: int = 1024
    """Most tokens sampled in one turn."""
    min_turn_tokens: int = 16
    """Below this much room left in the context, the episode stops rather than sample a stub."""
    wall_time_s: float = 1800.0
    """Episode wall-clock limit (`wall_time`)."""
    think_mode: Literal["keep", "drop"] = "keep"
    """Earlier turns' <think> blocks: kept in context (one training sequence) or dropped (one sequence per turn)."""
    enable_thinking: bool = True
    """Let the model open a <think> block (False appends an empty one to each generation prompt, like Qwen3)."""
    grade_on_truncation: bool = True
    """Grade the repository state when the agent ran out of turns/tokens/time (the trainer decides whether to
    mask truncated episodes); else the session is just closed and reward is None."""
    env_max_steps: int | None = None
    """Step limit asked of the env server (its default when None)."""
    seed: int | None = None
    """Base sampling seed; turn t of the episode uses seed + t (None: random)."""
    tools: tuple[str, ...] | None = None
    """Offer the model only these of the env server's tools, by name (None: all of them). A bash-only agent
    (`("execute_bash", "finish")`) has a ~3× shorter prompt; a call to a tool not offered is refused by the loop
    like any unknown tool."""


@dataclass
class _Clock:
    started: float = field(default_factory=time.perf_counter)
    engine_s: float = 0.0
    env_s: float = 0.0

    def timings(self) -> Timings:
        total = time.perf_counter() - self.started
        return Timings(
            total_s=total,
            engine_s=self.engine_s,
            env_s=self.env_s,
            agent_s=max(0.0, total - self.engine_s - self.env_s),
        )


class _Episode:
    """State of one running episode (kept out of the public function to keep it short)."""

    def __init__(self, env: AsyncEnvClient, trajectory: Trajectory, clock: _Clock):
        self.env = env
        self.trajectory = trajectory
        self.clock = clock
        self.session_id: str | None = None
        self.ended = False
        self.withheld_tools: set[str] = set()

    async def env_call(self, coroutine: Any) -> Any:
        started = time.perf_counter()
        try:
            return await coroutine
        finally:
            self.clock.env_s += time.perf_counter() - started

    async def step(self, name: str, arguments: dict[str, Any] | str) -> tuple[str, StepResponse | None]:
        """Run one tool call; (observation, response). A call the server refuses is an error observation."""
        assert self.session_id is not None
        self.trajectory.num_tool_calls += 1
        if name in self.withheld_tools:  # a server tool this agent was not offered (AgentConfig.tools)
            self.trajectory.malformed_tool_calls += 1
            offered = ", ".join(tool["function"].get("name") for tool in self.trajectory.tools)
            return f"ERROR: unknown tool {name!r}; the tools are: {offered}", None
        try:
            response = await self.env_call(self.env.step(self.session_id, name, arguments))
        except EnvServerError as exc:
            if exc.status == 422:
                self.trajectory.malformed_tool_calls += 1
                return f"ERROR: {exc.message}", None
            raise
        if response.terminated or response.truncated:
            await self.record_end(response)
        return response.observation, response

    async def record_end(self, response: StepResponse) -> None:
        self.ended = True
        grade = response.info.grade
        if response.truncated and self.trajectory.truncation is None:
            self.trajectory.truncation = "env_max_steps"
        if grade is None:
            return
        self.trajectory.test_report = grade.model_dump(exclude={"model_patch", "test_output_tail"})
        self.trajectory.patch = grade.model_patch
        if grade.model_patch_truncated and self.session_id is not None:
            # The finish answer carries only the head of a large patch: the trajectory keeps the whole one.
            whole = await self.env_call(self.env.patch(self.session_id))
            self.trajectory.patch = whole.patch
        if grade.infra_failure:
            self.trajectory.infra_failure = True
            self.trajectory.infra_reason = f"env: {grade.infra_reason}"
        else:
            self.trajectory.reward = grade.reward
            self.trajectory.resolved = grade.resolved

    async def finish(self, grade: bool) -> None:
        """End a session the agent did not finish itself: grade it or just close it."""
        if self.session_id is None or self.ended:
            return
        if grade:
            _, response = await self.step("finish", {})
            self.trajectory.num_tool_calls -= 1  # not the agent's call
            if response is not None:
                await self.record_end(response)

    async def close(self) -> None:
        if self.session_id is not None:
            try:
                await self.env_call(self.env.close_session(self.session_id))
            except (EnvServerError, httpx.HTTPError):
                pass  # the server's TTL removes what we could not


def _params(config: AgentConfig, max_tokens: int, turn: int, stop: list[int]) -> SamplingParams:
    """This turn's request: the config's sampling settings as they are, and the turn's length, stops and seed."""
    return SamplingParams(
        **{name: getattr(config, name) for name in SamplingConfig.model_fields},
        max_tokens=max_tokens,
        stop_token_ids=stop,
        seed=None if config.seed is None else config.seed + turn,
    )


async def run_episode(
    engine: Engine | ChatEngine,
    env: AsyncEnvClient,
    task_id: str,
    config: AgentConfig | None = None,
    tokenizer: Any = None,
    group: int = 0,
) -> Trajectory:
    """Play one episode of `task_id` on the env server behind `env` and return its trajectory.

    Token engines need the `tokenizer` (with the chat template); chat engines (`openai`) do not."""
    config = config or AgentConfig()
    clock = _Clock()
    trajectory = Trajectory(
        task_id=task_id,
        group=group,
        episode_id=f"{task_id}/{group}",
        model=engine.model_name,
        weights_version=engine.weights_version,
    )
    episode = _Episode(env, trajectory, clock)
    try:
        reset = await episode.env_call(env.reset(task_id, max_steps=config.env_max_steps))
        episode.session_id = reset.session_id
        offered = [tool.model_dump() for tool in reset.info.tools]
        if config.tools is not None:
            unknown = set(config.tools) - {tool["function"].get("name") for tool in offered}
            if unknown:
                raise ValueError(f"AgentConfig.tools names tools the env server does not have: {sorted(unknown)}")
            episode.withheld_tools = {tool["function"].get("name") for tool in offered} - set(config.tools)
            offered = [tool for tool in offered if tool["function"].get("name") in config.tools]
        trajectory.tools = offered
        messages = [{"role": "system", "content": config.system_prompt}, {"role": "user", "content": reset.observation}]
        if isinstance(engine, ChatEngine):
            await _play_chat(engine, episode, messages, config)
        else:
            if tokenizer is None:
                raise ValueError("a token engine needs the tokenizer that owns the chat template")
            await _play_tokens(engine, tokenizer, episode, messages, config)
        await episode.finish(grade=config.grade_on_truncation)
    except (EnvServerError, httpx.HTTPError) as exc:
        trajectory.infra_failure = True
        trajectory.infra_reason = f"env: {exc}"
    except EngineError as exc:
        trajectory.infra_failure = True
        trajectory.infra_reason = f"engine: {exc}"
    except Exception as exc:  # noqa: BLE001 - an episode never takes a collection down; the record says why
        trajectory.error = f"{type(exc).__name__}: {exc}"
        trajectory.infra_failure = True
        trajectory.infra_reason = "agent: unexpected error"
    finally:
        await episode.close()
        trajectory.timings = clock.timings()
        # an engine may learn its model's name only with its first request (vLLM asks /v1/models)
        trajectory.model = trajectory.model or engine.model_name
    if trajectory.infra_failure:
        trajectory.reward = None
    return trajectory


def _limit_reached(episode: _Episode, config: AgentConfig, context_room: int | None) -> TruncationReason | None:
    """The limit that stops the episode before its next turn, if any (`context_room`: None for chat engines)."""
    if episode.trajectory.num_turns >= config.max_turns:
        return "max_turns"
    if time.perf_counter() - episode.clock.started > config.wall_time_s:
        return "wall_time"
    if context_room is not None and context_room < config.min_turn_tokens:
        return "max_tokens"
    return None


async def _play_tokens(
    engine: Engine, tokenizer: Any, episode: _Episode, messages: list[dict[str, Any]], config: AgentConfig
) -> None:
    from agent.chat import TokenConversation

    trajectory = episode.trajectory
    conversation = TokenConversation(
        tokenizer, messages, trajectory.tools, think_mode=config.think_mode, enable_thinking=config.enable_thinking
    )
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    try:
        while not episode.ended:
            room = config.max_context_tokens - conversation.num_tokens
            trajectory.truncation = _limit_reached(episode, config, room)
            if trajectory.truncation:
                break
            params = _params(config, min(config.max_tokens_per_turn, room), trajectory.num_turns, stop)
            started = time.perf_counter()
            generation = await engine.generate(conversation.engine_input(), params)
            episode.clock.engine_s += time.perf_counter() - started
            trajectory.num_turns += 1
            parsed = conversation.add_assistant(generation.token_ids, generation.logprobs)
            results = await _run_calls(episode, parsed.tool_calls, parsed.errors)
            if episode.ended:
                break
            if results:
                conversation.add_tool_results(results)
            else:
                conversation.add_user(CONTINUE_PROMPT)
    finally:
        trajectory.messages = conversation.messages
        trajectory.sequences = conversation.sequences()


async def _play_chat(
    engine: ChatEngine, episode: _Episode, messages: list[dict[str, Any]], config: AgentConfig
) -> None:
    from agent.toolcalls import from_openai_tool_calls

    trajectory = episode.trajectory
    try:
        while not episode.ended:
            trajectory.truncation = _limit_reached(episode, config, None)
            if trajectory.truncation:
                break
            params = _params(config, config.max_tokens_per_turn, trajectory.num_turns, [])
            message, engine_s = await engine.chat(messages, trajectory.tools, params)
            episode.clock.engine_s += engine_s
            trajectory.num_turns += 1
            message = {key: value for key, value in message.items() if value is not None}
            messages.append({"role": "assistant", **{k: v for k, v in message.items() if k != "role"}})
            calls, errors = from_openai_tool_calls(message.get("tool_calls") or [])
            results = await _run_calls(episode, calls, errors)
            if episode.ended:
                break
            if results:
                messages.extend({"role": "tool", **result} for result in results)
            else:
                messages.append({"role": "user", "content": CONTINUE_PROMPT})
    finally:
        trajectory.messages = messages


async def _run_calls(episode: _Episode, calls: list[Any], errors: list[str]) -> list[dict[str, Any]]:
    """Run parsed tool calls in order; malformed ones become error results. Stops once the episode ended."""
    results: list[dict[str, Any]] = []
    if errors:
        episode.trajectory.malformed_tool_calls += len(errors)
    for call in calls:
        observation, _ = await episode.step(call.name, call.arguments)
        results.append({"tool_call_id": call.id, "name": call.name, "content": observation})
        if episode.ended:
            return results
    for index, error in enumerate(errors):
        results.append(
            {
                "tool_call_id": f"invalid_{index}",
                "name": "invalid_tool_call",
                "content": f"ERROR: your tool call could not be parsed: {error}. Call a tool as "
                '<tool_call>{"name": ..., "arguments": {...}}</tool_call>.',
            }
        )
    return results


def episode_summary(trajectory: Trajectory) -> str:
    """One line per episode for logs."""
    outcome = (
        ("infra:" + (trajectory.infra_reason or "?"))
        if trajectory.infra_failure
        else (f"reward={trajectory.reward}" if trajectory.reward is not None else "ungraded")
    )
    return json.dumps(
        {
            "episode": trajectory.episode_id,
            "outcome": outcome,
            "turns": trajectory.num_turns,
            "truncation": trajectory.truncation,
            "malformed": trajectory.malformed_tool_calls,
        }
    )
