"""envserver: SWE tasks in Docker containers, served over HTTP as multi-turn Gymnasium-style tool environments."""

try:  # the Gymnasium env is optional (the `client` extra)
    import gymnasium as _gymnasium
except ImportError:  # pragma: no cover
    pass
else:
    if "envserver/SWE-v0" not in _gymnasium.registry:
        _gymnasium.register(id="envserver/SWE-v0", entry_point="envserver.gym_env:SWEEnv")
