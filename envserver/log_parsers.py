"""Log parsers the spec tables name that swebench 5 does not ship, registered next to swebench's own.

SWE-Gym's fork of the harness grades pydantic/pydantic with `parse_log_pytest_pydantic`; swebench 5's
PARSER_REGISTRY has no such parser. swebench's `get_logs_eval` looks a TestSpec's `log_parser` up in that
registry by name, so ours are added to it (once, at import) rather than grading through a second path.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from swebench.harness.constants import TestStatus
from swebench.harness.log_parsers import PARSER_REGISTRY
from swebench.types import TestSpec

_COLOR_CODE = re.compile(r"\[(\d+)m")
_CONTROL_CHARS = str.maketrans("", "", "".join(chr(code) for code in range(1, 32)))
_FAILED_PROGRESS = re.compile(r"FAILED\s*\[.*?\]")
_STATUSES = tuple(status.value for status in TestStatus)


def parse_log_pytest_pydantic(log: str, test_spec: TestSpec) -> dict[str, str]:
    """pytest's `-rA` summary lines (`STATUS name`) and `-vv` progress lines (`name STATUS`), colour codes and
    control characters removed, `FAILED [ 12%]` read as `FAILED` (the rules of SWE-Gym's parser for pydantic)."""
    statuses: dict[str, str] = {}
    for raw in log.split("\n"):
        line = _FAILED_PROGRESS.sub("FAILED", _COLOR_CODE.sub("", raw).translate(_CONTROL_CHARS))
        if line.startswith(_STATUSES):
            if line.startswith(TestStatus.FAILED.value):
                line = line.replace(" - ", " ")
            parts = line.split()
            if len(parts) > 1:
                statuses[parts[1]] = parts[0]
        elif line.endswith(_STATUSES):
            parts = line.split()
            if len(parts) > 1:
                statuses[parts[0]] = parts[1]
    return statuses


EXTRA_PARSERS: dict[str, Callable[[str, TestSpec], dict[str, str]]] = {
    "parse_log_pytest_pydantic": parse_log_pytest_pydantic,
}
"""Our parsers by the name spec tables use."""

for _name, _parser in EXTRA_PARSERS.items():
    PARSER_REGISTRY.setdefault(_name, _parser)


def known_parsers() -> set[str]:
    """Every log parser name grading can resolve: swebench's registry (ours included)."""
    return set(PARSER_REGISTRY)
