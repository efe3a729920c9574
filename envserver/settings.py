"""Settings files and `--set` overrides: one loader and one override rule for every command of the project (the env
server's `serve` and `validate`, the trainer, the miner, the probe).

Defaults < the config file (YAML; JSON is YAML too) < each `--set KEY=VALUE` in order (a dotted key reaches into a
section, `sandbox.memory=4g`; the value is read as YAML: `0.5`, `true`, `[a, b]`, `null`) < the command's own flags.
Whatever is wrong comes back as one `SettingsError` line naming the file or the override and the field, never a
traceback. Hand-written because it is small: pydantic-settings reads environment variables and dotenv files, not a
config file plus ordered dotted overrides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class SettingsError(ValueError):
    """A config file or an override that cannot be used: the message names it and what is wrong."""


def read_settings_file(path: str | Path, model_name: str = "settings") -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SettingsError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of {model_name} fields, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`data` with each `KEY=VALUE` applied in order (in place; returned for convenience)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects KEY=VALUE, got {item!r}")
        *sections, leaf = key.strip().split(".")
        target = data
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise SettingsError(f"--set {item!r}: {section!r} is not a section")
        try:
            target[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SettingsError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
    return data


def validation_problems(exc: ValidationError) -> str:
    """pydantic's errors as one line: `field.sub: message; ...`."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}" for err in exc.errors())


def load_settings(
    model: type[M],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> M:
    """`model` from `base` (what the command fills in before the file, e.g. an environment variable), the file,
    the overrides and the flags (None values are flags not given) — each later one wins."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(read_settings_file(path, model.__name__))
    apply_overrides(data, overrides)
    data.update({key: value for key, value in (flags or {}).items() if value is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        sources = [str(path)] if path is not None else []
        sources += ["--set"] if overrides else []
        sources += ["the flags"] if any(value is not None for value in (flags or {}).values()) else []
        source = " / ".join(sources) or "the defaults"
        raise SettingsError(f"{model.__name__} from {source}: {validation_problems(exc)}") from None
