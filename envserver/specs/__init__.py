"""Spec tables: what the SWE-bench harness knows about each repository and version, as data.

A classic SWE-bench / SWE-Gym row carries no test command and no install steps; the harness looked them up in its
per-repository tables. swebench 5 no longer ships those tables, so the server carries them as data:

- `swebench.yaml`: the 18 Python repositories of SWE-bench (test and dev splits), from swebench 4.1.0;
- `swegym.yaml`: SWE-Gym's 11 repositories (and hypothesis), from SWE-Gym's fork of the harness;

both written by `scripts/export_spec_tables.py`. Users add or override entries with files given to `--specs`
(YAML or JSON, the same format). Files are read in order, bundled ones first; a later file's entry for a
repository overrides the fields it sets, and a later entry for a version replaces that version whole. Repository
names match case-insensitively (SWE-Gym spells `Project-MONAI/MONAI`, its fork `project-monai/monai`).

A user adds a repository with one entry; version `"*"` serves every version the table does not list:

```yaml
repos:
  octo/widgets:
    parser: parse_log_pytest          # a swebench log parser (or one of envserver/log_parsers.py)
    versions:
      "*":
        python: "3.11"
        install: python -m pip install -e .
        test_cmd: pytest -rA          # the test files of the row's test_patch are appended
```

The version keys are the harness's own (`python`, `packages`, `install`, `pre_install`, `pip_packages`,
`eval_commands`, `test_cmd`, `no_use_env`, ...); `envserver.eval_script` writes the harness's eval script from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPECS_DIR = Path(__file__).parent
BUNDLED_SPEC_FILES = (SPECS_DIR / "swebench.yaml", SPECS_DIR / "swegym.yaml")
"""The tables that ship with the server, read before any user file."""
ANY_VERSION = "*"
"""Version key that serves every version a repository's table does not list."""


class VersionSpec(BaseModel):
    """How one version of a repository is installed and tested (one entry of the harness's SPECS_* tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    test_cmd: str
    """Command that runs the tests; the test directives of the row's test_patch are appended to it."""
    python: str | None = None
    """Python version of the environment (`3.9`); absent when `packages: environment.yml` pins it."""
    packages: str | None = None
    """`requirements.txt`, `environment.yml`, or conda packages to create the environment with."""
    install: str | None = None
    """Shell command that installs the repository; the eval script runs it again before the tests."""
    pre_install: list[str] = Field(default_factory=list)
    """Shell commands run in the repository before `install` when the image is built."""
    pip_packages: list[str] = Field(default_factory=list)
    """Packages pip-installs into the environment after it is created."""
    eval_commands: list[str] = Field(default_factory=list)
    """Shell commands the eval script runs first in the repository (environment variables, locales, ...)."""
    no_use_env: bool = False
    """With `packages: environment.yml`: create the env with `conda create` then `conda env update` the file."""
    env_patches: list[str] = Field(default_factory=list)
    """Shell commands that edit the fetched requirements / environment.yml before it is installed (SWE-Gym)."""
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Environment variables the eval script exports before `eval_commands` (not in the harness tables)."""
    execute_test_as_nonroot: bool = False
    """The harness runs this version's tests as a non-root user."""
    nano_cpus: int | None = None
    """CPU quota (in 1e-9 CPUs) the harness gives this version's containers."""


class RepoSpec(BaseModel):
    """What holds for every version of one repository, and its versions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parser: str | None = None
    """Log parser name: a key of swebench's PARSER_REGISTRY (`parse_log_django`) or of envserver/log_parsers.py."""
    directives: Literal["paths", "django_modules", "mypy_cases"] = "paths"
    """How the test_patch becomes test-command arguments: its test files as paths; as django's dotted test modules;
    mypy's `[case NAME]` keys as one quoted `-k` expression."""
    requirements_paths: list[str] = Field(default_factory=list)
    """Repository paths tried in order for `packages: requirements.txt`."""
    environment_yml_paths: list[str] = Field(default_factory=list)
    """Repository paths tried in order for `packages: environment.yml`."""
    install: str | None = None
    """Shell command run in the repository before any version's pre_install (the harness's MAP_REPO_TO_INSTALL)."""
    versions: dict[str, VersionSpec] = Field(default_factory=dict)
    """Per version (as the dataset's `version` field spells it; `*` for any other version)."""


class SpecFile(BaseModel):
    """One spec file: repositories by `owner/name`."""

    model_config = ConfigDict(extra="forbid")

    repos: dict[str, RepoSpec]
    """Entries by repository name (`owner/name`)."""


class ResolvedSpec(BaseModel):
    """The spec a (repo, version) resolves to."""

    model_config = ConfigDict(frozen=True)

    repo: str
    """Repository name as the table spells it."""
    version: str
    """Version key that matched (the row's version, or `*`)."""
    repo_spec: RepoSpec = Field(repr=False)
    """The repository's entry (parser, directive style, requirements paths, ...)."""
    version_spec: VersionSpec
    """The version's entry (python, install, test_cmd, ...)."""


class SpecFileError(ValueError):
    """A spec file could not be read or does not fit the format; the message names the file and the key."""


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecFileError(f"{path}: cannot read spec file: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except json.JSONDecodeError as exc:
        raise SpecFileError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except yaml.YAMLError as exc:
        raise SpecFileError(f"{path}: invalid YAML: {exc}") from None


def _parse(path: Path) -> SpecFile:
    data = _read(path)
    try:
        return SpecFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"key '{'.'.join(str(p) for p in err['loc']) or '<file>'}': {err['msg']}" for err in exc.errors()
        )
        raise SpecFileError(f"{path}: {problems}") from None


def _merge(earlier: RepoSpec, later: RepoSpec) -> RepoSpec:
    # Fields the later entry sets override; its versions replace the earlier ones of the same key, whole.
    fields = {name: getattr(later, name) for name in later.model_fields_set if name != "versions"}
    return earlier.model_copy(update={**fields, "versions": {**earlier.versions, **later.versions}})


class SpecTable:
    """Repository/version specs from the bundled tables plus user files; see the module docstring."""

    def __init__(self, repos: dict[str, RepoSpec] | None = None):
        self._repos: dict[str, tuple[str, RepoSpec]] = {}
        """Lower-cased name → (name as first spelled, spec)."""
        for name, spec in (repos or {}).items():
            self.add(name, spec)

    @classmethod
    def load(cls, extra: Sequence[str | Path] = ()) -> SpecTable:
        """The bundled tables, then each file of `extra` in order; a bad file raises SpecFileError naming it."""
        table = cls()
        for path in (*BUNDLED_SPEC_FILES, *(Path(p) for p in extra)):
            entries = _parse(path).repos
            for name, spec in entries.items():
                table.add(name, spec)
            table._check(path, entries)
        return table

    @staticmethod
    @cache
    def bundled() -> SpecTable:
        """The bundled tables alone, read once per process."""
        return SpecTable.load()

    def add(self, name: str, spec: RepoSpec) -> None:
        """Add a repository entry, merged over an earlier one of the same name (case-insensitive)."""
        key = name.lower()
        if key in self._repos:
            first_name, earlier = self._repos[key]
            self._repos[key] = (first_name, _merge(earlier, spec))
        else:
            self._repos[key] = (name, spec)

    def _check(self, path: Path, names: Iterable[str]) -> None:
        """Every repository a file touched has a known log parser once merged."""
        from envserver.log_parsers import known_parsers  # swebench's registry: imported only when a file is read

        known = known_parsers()
        for name in names:
            spec = self._repos[name.lower()][1]
            if spec.parser is None:
                raise SpecFileError(f"{path}: key 'repos.{name}.parser': the repository has no log parser")
            if spec.parser not in known:
                raise SpecFileError(
                    f"{path}: key 'repos.{name}.parser': unknown log parser {spec.parser!r}; known: "
                    + ", ".join(sorted(known))
                )

    def repo(self, repo: str) -> RepoSpec | None:
        """The entry of a repository (case-insensitive), or None."""
        found = self._repos.get(repo.lower())
        return found[1] if found else None

    def repos(self) -> list[str]:
        """Repository names, as first spelled."""
        return [name for name, _ in self._repos.values()]

    def lookup(self, repo: str, version: str | None) -> ResolvedSpec | None:
        """The spec of `repo` at `version` (its own entry, else `*`), or None when the table has neither."""
        found = self._repos.get(repo.lower())
        if found is None:
            return None
        name, spec = found
        key = version if version is not None and version in spec.versions else ANY_VERSION
        if key not in spec.versions:
            return None
        return ResolvedSpec(repo=name, version=key, repo_spec=spec, version_spec=spec.versions[key])

    def __iter__(self) -> Iterator[ResolvedSpec]:
        for name, spec in self._repos.values():
            for version, version_spec in spec.versions.items():
                yield ResolvedSpec(repo=name, version=version, repo_spec=spec, version_spec=version_spec)


__all__ = [
    "ANY_VERSION",
    "BUNDLED_SPEC_FILES",
    "RepoSpec",
    "ResolvedSpec",
    "SpecFile",
    "SpecFileError",
    "SpecTable",
    "VersionSpec",
]
