"""A forgiving INI reader and writer.

Supported syntax:

* ``[section]`` headers; keys before the first header go to the ``DEFAULT`` section
* ``key = value`` and ``key: value`` pairs; keys are case-insensitive, values keep their case
* full-line comments starting with ``#`` or ``;``
* inline comments: `` ;`` or `` #`` preceded by whitespace ends the value
* values can be wrapped in double quotes to keep leading/trailing spaces or comment characters

Lookups fall back to the ``DEFAULT`` section, like :mod:`configparser`.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

DEFAULT_SECTION = "DEFAULT"

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


class IniError(ValueError):
    """Raised for a line the parser cannot understand; carries the 1-based line number."""

    def __init__(self, lineno: int, message: str) -> None:
        super().__init__(f"line {lineno}: {message}")
        self.lineno = lineno


class IniFile:
    """Parsed INI data: an ordered mapping of section name to ordered key/value pairs."""

    def __init__(self) -> None:
        self._sections: Dict[str, Dict[str, str]] = {DEFAULT_SECTION: {}}

    def sections(self) -> List[str]:
        """Section names in file order, without ``DEFAULT``."""
        return [name for name in self._sections if name != DEFAULT_SECTION]

    def has_section(self, section: str) -> bool:
        return section in self._sections

    def add_section(self, section: str) -> None:
        self._sections.setdefault(section, {})

    def set(self, section: str, key: str, value: str) -> None:
        self.add_section(section)
        self._sections[section][key.lower()] = value

    def items(self, section: str) -> List[Tuple[str, str]]:
        """Key/value pairs of a section, with ``DEFAULT`` keys it does not override."""
        merged = dict(self._sections[DEFAULT_SECTION])
        merged.update(self._sections.get(section, {}))
        return list(merged.items())

    def get(self, section: str, key: str, default: Optional[str] = None) -> Optional[str]:
        key = key.lower()
        for name in (section, DEFAULT_SECTION):
            values = self._sections.get(name, {})
            if key in values:
                return values[key]
        return default

    def getint(self, section: str, key: str, default: Optional[int] = None) -> Optional[int]:
        value = self.get(section, key)
        return default if value is None else int(value)

    def getboolean(self, section: str, key: str, default: Optional[bool] = None) -> Optional[bool]:
        value = self.get(section, key)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"not a boolean: {value!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.sections())


def _strip_inline_comment(value: str) -> str:
    for index, char in enumerate(value):
        if char in "#;" and index > 0 and value[index - 1].isspace():
            return value[:index].rstrip()
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return _strip_inline_comment(value)


def parse_ini(text: str) -> IniFile:
    """Parse INI text into an :class:`IniFile`."""
    ini = IniFile()
    section = DEFAULT_SECTION
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise IniError(lineno, f"bad section header {line!r}")
            section = line[1:-1].strip()
            ini.add_section(section)
            continue
        separator = "=" if "=" in line else ":"
        parts = line.split(separator)
        if len(parts) < 2 or not parts[0].strip():
            raise IniError(lineno, f"expected 'key = value', got {line!r}")
        key, value = parts[0].strip(), parts[1].strip()
        ini.set(section, key, _unquote(value))
    return ini


def _needs_quotes(value: str) -> bool:
    return value != value.strip() or " #" in value or " ;" in value


def dump_ini(ini: IniFile) -> str:
    """Serialise an :class:`IniFile` back to text; ``parse_ini(dump_ini(x))`` round-trips."""
    lines: List[str] = []
    blocks = [(DEFAULT_SECTION, ini._sections[DEFAULT_SECTION])]
    blocks += [(name, ini._sections[name]) for name in ini.sections()]
    for name, values in blocks:
        if name == DEFAULT_SECTION and not values:
            continue
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for key, value in values.items():
            shown = f'"{value}"' if _needs_quotes(value) else value
            lines.append(f"{key} = {shown}")
    return "\n".join(lines) + "\n"
