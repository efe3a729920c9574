"""agent: the loop that plays env-server episodes with an LLM engine and records token-exact trajectories."""

from agent.loop import AgentConfig, run_episode

__all__ = ["AgentConfig", "run_episode"]
