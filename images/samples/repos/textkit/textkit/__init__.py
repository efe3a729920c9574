"""textkit: small, dependency-free helpers for INI files, CSV lines and strings."""

from textkit.csvline import join_line, split_line
from textkit.ini import IniFile, IniError, dump_ini, parse_ini
from textkit.strings import normalize_whitespace, slugify, truncate, wrap

__version__ = "0.4.1"

__all__ = [
    "IniError",
    "IniFile",
    "dump_ini",
    "join_line",
    "normalize_whitespace",
    "parse_ini",
    "slugify",
    "split_line",
    "truncate",
    "wrap",
]
