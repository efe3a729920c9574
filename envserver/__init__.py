"""envserver: SWE tasks in Docker containers as multi-turn tool environments over HTTP."""
