"""Split and join single CSV lines without the ceremony of the :mod:`csv` module.

The dialect is RFC 4180's: fields are separated by ``delimiter`` (default ``,``); a field
that contains the delimiter, a double quote or a line break is wrapped in double quotes,
and a double quote inside a quoted field is written twice (``""``).
"""

from __future__ import annotations

from typing import Iterable, List, Optional


class CsvLineError(ValueError):
    """Raised for a line that is not valid CSV (for instance an unterminated quote)."""


def split_line(line: str, delimiter: str = ",", strip: bool = False) -> List[str]:
    """Split one CSV line into its fields.

    ``strip=True`` removes whitespace around unquoted fields (quoted fields keep theirs).
    """
    if len(delimiter) != 1:
        raise ValueError("delimiter must be a single character")
    line = line.rstrip("\r\n")
    fields: List[str] = []
    field: List[str] = []
    quoted = False  # inside a quoted field
    was_quoted = False  # the current field started with a quote
    i = 0
    while i < len(line):
        char = line[i]
        if quoted:
            if char == '"':
                quoted = False
            else:
                field.append(char)
        elif char == '"' and not "".join(field).strip():
            quoted = True
            was_quoted = True
            field = []
        elif char == delimiter:
            fields.append(_finish(field, was_quoted, strip))
            field, was_quoted = [], False
        else:
            field.append(char)
        i += 1
    if quoted:
        raise CsvLineError(f"unterminated quoted field in {line!r}")
    fields.append(_finish(field, was_quoted, strip))
    return fields


def _finish(field: List[str], was_quoted: bool, strip: bool) -> str:
    text = "".join(field)
    if strip and not was_quoted:
        return text.strip()
    return text


def _quote(value: str, delimiter: str) -> str:
    if any(c in value for c in (delimiter, '"', "\n", "\r")) or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


def join_line(values: Iterable[Optional[object]], delimiter: str = ",") -> str:
    """Join values into one CSV line; ``None`` becomes an empty field, other values go through ``str``."""
    if len(delimiter) != 1:
        raise ValueError("delimiter must be a single character")
    return delimiter.join(_quote("" if v is None else str(v), delimiter) for v in values)
