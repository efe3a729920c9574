"""The pytest sections of setup.cfg and pyproject.toml: what pytest (and a reinstall's entry points) would read from
them, reverting them to the base commit's, and what of such a file's change is graded.

The patch policy (envserver/patch_policy.py, whose docstring says why) reverts only these sections of the two files;
the rest of their change is graded. A revert is checked by parsing (tomllib / configparser); when it cannot be
checked, the whole file's change is left out.
"""

from __future__ import annotations

import configparser
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envserver.git_diff import FilePatch, file_diff, git_lines

SECTION_FILES = frozenset({"setup.cfg", "pyproject.toml"})
"""Files of which only the pytest sections are reverted (the rest of their change is graded)."""


@dataclass(frozen=True)
class FileVersions:
    """A file's content at the base commit and in the agent's change (None: the file does not exist there)."""

    base: str | None
    new: str | None


_INI_HEADER = re.compile(r"^\[(?P<name>[^\]\n]*)\]")
_TOML_HEADER = re.compile(r"^[ \t]*\[\[?(?P<name>[^\]\n]*)\]\]?[ \t]*(#.*)?$")


def _toml_key(raw: str) -> str:
    """`tool . "pytest".ini_options` → `tool.pytest.ini_options` (good enough: the parse check catches the rest)."""
    parts = re.findall(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[^.]+', raw)
    return ".".join(part.strip().strip("\"'").strip() for part in parts if part.strip())


def _is_pytest_section(kind: str, name: str) -> bool:
    if kind == "pyproject.toml":
        return name.startswith("tool.pytest") or name in (
            "project.entry-points.pytest11",
            "tool.poetry.plugins.pytest11",
        )
    return name.strip() == "pytest" or name.strip().startswith("tool:pytest")


def _blocks(kind: str, text: str) -> list[tuple[bool, list[str]]]:
    """The file as consecutive blocks (is a pytest section, lines); the first block is the part before any header."""
    header = _TOML_HEADER if kind == "pyproject.toml" else _INI_HEADER
    blocks: list[tuple[bool, list[str]]] = [(False, [])]
    for line in git_lines(text):
        match = header.match(line.rstrip("\r\n"))
        if match:
            name = _toml_key(match.group("name")) if kind == "pyproject.toml" else match.group("name")
            blocks.append((_is_pytest_section(kind, name), []))
        blocks[-1][1].append(line)
    return blocks


class _CaseKeepingParser(configparser.ConfigParser):
    """Keys as written (configparser lower-cases them by default)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


class _Unparsable(ValueError):
    pass


def pytest_data(kind: str, text: str | None) -> Any:
    """What pytest (and a reinstall's entry points) would read from the file's pytest sections, for comparison."""
    text = text or ""  # an absent file has no pytest sections
    if kind == "pyproject.toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _Unparsable(str(exc)) from None
        tool = data.get("tool", {}) if isinstance(data.get("tool"), dict) else {}
        project = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
        poetry = tool.get("poetry", {}) if isinstance(tool.get("poetry"), dict) else {}
        return (
            {key: value for key, value in tool.items() if key.startswith("pytest")},
            (project.get("entry-points") or {}).get("pytest11")
            if isinstance(project.get("entry-points"), dict)
            else None,
            (poetry.get("plugins") or {}).get("pytest11") if isinstance(poetry.get("plugins"), dict) else None,
        )
    # pytest reads setup.cfg with iniconfig, setuptools with configparser; configparser (stdlib: the env server does
    # not depend on pytest) sees every section header iniconfig sees (a "[" in column 0), and only a change matters.
    parser = _CaseKeepingParser(interpolation=None, strict=False, allow_no_value=True)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise _Unparsable(str(exc)) from None
    sections = {name: dict(parser.items(name, raw=True)) for name in parser.sections()}
    pytest_sections = {name: items for name, items in sections.items() if _is_pytest_section("setup.cfg", name)}
    return pytest_sections, sections.get("options.entry_points", {}).get("pytest11")


def revert_pytest_sections(kind: str, base: str | None, new: str) -> str | None:
    """`new` with its pytest sections replaced by `base`'s; None when that cannot be done and checked (the caller
    then leaves the whole file's change out)."""
    base_blocks = [list(lines) for is_pytest, lines in _blocks(kind, base or "") if is_pytest]
    if base_blocks and base_blocks[-1] and not base_blocks[-1][-1].endswith("\n"):
        base_blocks[-1][-1] += "\n"  # the base's last line may now be followed by other sections
    out: list[str] = []
    placed = False
    for is_pytest, lines in _blocks(kind, new):
        if is_pytest:
            if not placed:
                out += [line for block in base_blocks for line in block]
                placed = True
            continue
        out += lines
    if not placed and base_blocks:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out += [line for block in base_blocks for line in block]
    result = "".join(out)
    try:
        if pytest_data(kind, result) != pytest_data(kind, base):
            return None
    except _Unparsable:
        return None
    return result


def graded_section_file(fp: FilePatch, kind: str, versions: Mapping[str, FileVersions]) -> tuple[str, bool | None]:
    """(the part to grade instead of `fp` — empty for none, whether the change touches pytest sections: None when
    that is unknown because the file's versions could not be read)."""
    if fp.old_path != fp.new_path and fp.old_path is not None and fp.new_path is not None:
        return "", True  # a rename or copy of a config file: nothing a real fix needs, and no clean revert
    found = versions.get(fp.path)
    if found is None:
        return "", None  # cannot be checked: leave the whole change out, but blame nobody
    try:
        if pytest_data(kind, found.new) == pytest_data(kind, found.base):
            return fp.text, False
    except _Unparsable:
        pass
    if found.new is None:
        # Deleted: put back a file with the base's pytest sections only when the base had any.
        reverted = revert_pytest_sections(kind, found.base, "")
    else:
        reverted = revert_pytest_sections(kind, found.base, found.new)
    if reverted is None or reverted == found.base or (found.base is None and not reverted.strip()):
        return "", True
    return file_diff(fp.path, found.base, reverted, fp), True
