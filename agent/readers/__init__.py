"""Readers of third-party trajectory sets: each turns one set's records into our `Trajectory` (text fields only:
`sequences` stays empty, `source` names the set).

    for trajectory in read_trajectories("swe-smith.json"):            # format sniffed from the first record
        ...
    read_trajectories("nebius.jsonl", format="swe-agent")

Files are streamed (a JSON list, JSONL or concatenated JSON, optionally `.gz`), one record in memory at a time; a
record that cannot be read raises `ReaderError` naming the file and the record's index. A directory is a
mini-swe-agent run folder (`<id>/<id>.traj.json` files; `mini_swe_agent`). Mapping rules per format are in each
module's docstring.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.readers import mini_swe_agent, openhands, swe_agent, swe_smith
from agent.readers.common import ReaderError, iter_records, read_with
from agent.trajectory import Trajectory

__all__ = ["FORMATS", "ReaderError", "convert_record", "read_trajectories", "sniff_format"]

FORMATS: dict[str, Callable[[dict[str, Any]], Trajectory]] = {
    swe_smith.SOURCE: swe_smith.convert,  # "swe-smith"
    openhands.SOURCE: openhands.convert,  # "swe-gym-openhands"
    swe_agent.SOURCE: swe_agent.convert,  # "swe-agent" (nebius/SWE-agent-trajectories)
    mini_swe_agent.SOURCE: mini_swe_agent.convert,  # "mini-swe-agent" (its run folders' .traj.json files)
}
"""Format name (= the `source` it writes) -> record converter."""

ALIASES = {
    "smith": swe_smith.SOURCE,
    "openhands": openhands.SOURCE,
    "swe-gym": openhands.SOURCE,
    "nebius": swe_agent.SOURCE,
    "nebius-swe-agent": swe_agent.SOURCE,
    "mini": mini_swe_agent.SOURCE,
    "mini-swe": mini_swe_agent.SOURCE,
}


def _format_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown trajectory format {name!r}; known: {sorted(FORMATS)} (aliases {sorted(ALIASES)})")
    return key


def sniff_format(record: dict[str, Any]) -> str | None:
    """The format a record looks like, by its keys; None when it matches none."""
    keys = set(record) if isinstance(record, dict) else set()
    if mini_swe_agent.is_trajectory(record):
        return mini_swe_agent.SOURCE
    if "trajectory" in keys:
        return swe_agent.SOURCE
    if "messages" in keys and keys & {"run_id", "test_result", "tools"}:
        return openhands.SOURCE
    if "messages" in keys and keys & {"traj_id", "patch", "resolved", "model"}:
        return swe_smith.SOURCE
    return None


def convert_record(record: dict[str, Any], format: str | None = None) -> Trajectory:
    """One record (already parsed) to a Trajectory."""
    name = _format_name(format) if format else sniff_format(record)
    if name is None:
        raise ValueError(f"cannot tell the trajectory format from the keys {sorted(record)}")
    return FORMATS[name](record)


def read_trajectories(
    path: str | Path, format: str | None = None, results: str | Path | None = None
) -> Iterator[Trajectory]:
    """Stream the trajectories of a third-party set; `format` is a name in FORMATS (or an alias), else the first
    record decides. A directory (or a `.traj.json` file) is read as a mini-swe-agent run, with resolved flags from
    `results` or from the run folder's own results files."""
    if Path(path).is_dir() or str(path).endswith(mini_swe_agent.TRAJ_SUFFIX):
        return mini_swe_agent.read(path, results)
    if format:
        return read_with(path, FORMATS[_format_name(format)])
    return _read_sniffed(path)


def _read_sniffed(path: str | Path) -> Iterator[Trajectory]:
    records = iter_records(path)
    first = next(records, None)
    if first is None:
        return
    name = sniff_format(first[1])
    if name is None:
        keys = sorted(first[1]) if isinstance(first[1], dict) else type(first[1]).__name__
        raise ReaderError(
            f"{path}: record 0: cannot tell the trajectory format from its keys {keys}; "
            f"pass format= one of {sorted(FORMATS)}"
        )
    yield from read_with(path, FORMATS[name], itertools.chain([first], records))
