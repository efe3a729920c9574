"""What an environment installs, read offline from the repository source at the row's environment-setup commit.

SWE-bench's harness downloads `requirements.txt` / `environment.yml` from the forge at `environment_setup_commit`;
here they are read with `git show` from the same local source the instance is built from (shallow clones hold that
commit; `../shared/data/repos/` tags them `env-<sha>`). The harness's rules are kept: the first of the repository's
paths that exists wins, `-r other.txt` lines are expanded (relative to the file's folder), `-e .`, comments and
`.[test…` lines are dropped, and yanked packages are replaced.

conda cannot be installed offline here, so an `environment.yml` (and a spec's conda package list) becomes pip
requirements: channel prefixes and build strings are dropped, conda's fuzzy `=1.2` becomes `==1.2.*`, known
conda-only packages (compilers, system libraries) are left out and listed, and a few packages whose conda name
differs from their PyPI name are renamed. What could not be converted is reported, never silently dropped.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPLACE_PACKAGES = {"types-pkg_resources": "types-setuptools"}
"""Packages yanked from PyPI → their replacement (the harness's REPLACE_REQ_PACKAGES)."""

CONDA_TO_PIP = {
    "pytables": "tables",
    "pytorch": "torch",
    "matplotlib-base": "matplotlib",
    "msgpack-python": "msgpack",
    "dask-core": "dask",
    "pyqt": "PyQt5",
    "python-graphviz": "graphviz",
    "python-snappy": "python-snappy",
    "tbb": "tbb",
    "pyyaml": "PyYAML",
    "setuptools-scm": "setuptools-scm",
    "numpy-base": "numpy",
    "py-lief": "lief",
}
"""conda package names whose PyPI name differs."""

CONDA_ONLY = {
    "python",
    "pip",
    "c-compiler",
    "cxx-compiler",
    "fortran-compiler",
    "compilers",
    "make",
    "cmake",
    "pkg-config",
    "ffmpeg",
    "graphviz",
    "git",
    "nodejs",
    "openblas",
    "blas",
    "mkl",
    "mkl-service",
    "qt",
    "tk",
    "xz",
    "zlib",
    "hdf5",
    "gdal",
    "geos",
    "proj",
    "sqlite",
    "openssl",
    "icu",
    "gcc",
    "gxx",
    "ninja",
    "cython-blis",
    "conda",
    "anaconda",
    "nomkl",
    "krb5",
    "boto3-stubs",
}
"""conda packages with no PyPI equivalent that an environment needs (system libraries, tools, conda itself)."""


class RequirementsError(RuntimeError):
    """The environment's requirements could not be read from the source."""


def git_show(source: str | Path, commit: str, path: str) -> str | None:
    """The text of `path` at `commit` in the git repository `source`, or None when it is not there."""
    proc = subprocess.run(
        ["git", "-C", str(source), "show", f"{commit}:{path}"],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    return proc.stdout if proc.returncode == 0 else None


def has_commit(source: str | Path, commit: str) -> bool:
    proc = subprocess.run(
        ["git", "-C", str(source), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, check=False
    )
    return proc.returncode == 0


def _excluded(line: str) -> bool:
    return any(line.strip().startswith(prefix) for prefix in ("-e .", "#", ".[test"))


def _clean(text: str) -> str:
    for old, new in REPLACE_PACKAGES.items():
        text = re.sub(rf"^{re.escape(old)}([<>=!~]=?.*|$)", new, text, flags=re.MULTILINE)
    return text


def requirements_text(source: str | Path, commit: str, paths: list[str]) -> str:
    """The requirements the harness would install, as one text (its ordering: included files first)."""
    for path in paths:
        text = git_show(source, commit, path)
        if text is not None:
            break
    else:
        raise RequirementsError(f"none of {paths} exists at {commit[:12]} in {source}")
    folder = "/".join(path.split("/")[:-1])
    included: list[str] = []
    own: list[str] = []
    for line in text.split("\n"):
        if line.strip().startswith("-r"):
            name = line[len("-r") :].strip()
            other = git_show(source, commit, f"{folder}/{name}" if folder else name)
            if other is not None:
                included += [extra for extra in other.split("\n") if not _excluded(extra)]
        elif not _excluded(line):
            own.append(line)
    included.append("\n".join(own))
    return _clean("\n".join(included))


def environment_yml_text(source: str | Path, commit: str, paths: list[str]) -> str:
    """The repository's environment.yml at `commit` (the first of `paths` that exists)."""
    for path in paths:
        text = git_show(source, commit, path)
        if text is not None:
            return text
    raise RequirementsError(f"none of {paths} exists at {commit[:12]} in {source}")


@dataclass
class PipRequirements:
    """Requirements converted from conda's vocabulary to pip's."""

    requirements: list[str] = field(default_factory=list)
    """pip requirement specifiers, in the order given."""
    skipped: list[str] = field(default_factory=list)
    """conda entries left out (conda-only packages), as written."""
    python: str | None = None
    """The Python version an environment.yml pins (`python=3.9` → `3.9`), if any."""


_CONDA_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)\s*(?P<op>==|>=|<=|!=|~=|=|>|<)?\s*(?P<rest>.*)$")


def conda_to_pip(spec: str, out: PipRequirements) -> None:
    """Add one conda package spec (`numpy=1.21`, `conda-forge::pytest>=7`, `python=3.9`) to `out`."""
    text = spec.strip().strip("'\"")
    if not text:
        return
    text = text.split("::", 1)[-1]
    match = _CONDA_SPEC.match(text)
    if match is None:
        out.skipped.append(spec)
        return
    name, op, rest = match.group("name"), match.group("op"), match.group("rest").strip()
    lowered = name.lower()
    if lowered == "python":
        if op in ("=", "==") and rest:
            out.python = ".".join(rest.split("=")[0].rstrip(".*").split(".")[:2])
        return
    if lowered == "pip":  # every environment has pip
        return
    if lowered in CONDA_ONLY or lowered.startswith("lib"):
        out.skipped.append(spec)
        return
    name = CONDA_TO_PIP.get(lowered, name)
    if not op:
        version = rest.split()[0] if rest else ""  # `numpy 1.21` (space form)
        out.requirements.append(f"{name}=={version}.*" if version and version[0].isdigit() else name)
        return
    version = rest.split("=")[0].split()[0] if rest else ""  # drop a build string (`=1.2=py39_0`)
    if op == "=":
        version = version.rstrip("*").rstrip(".")
        out.requirements.append(f"{name}=={version}.*" if version else name)
    else:
        out.requirements.append(f"{name}{op}{rest.split()[0] if rest else ''}")


def conda_packages_to_pip(packages: str) -> PipRequirements:
    """A spec's `packages` string (conda package specs, shell-quoted) as pip requirements."""
    out = PipRequirements()
    for spec in shlex.split(packages):
        conda_to_pip(spec, out)
    return out


def environment_yml_to_pip(text: str) -> PipRequirements:
    """An environment.yml's conda dependencies and its `pip:` section as pip requirements."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RequirementsError(f"environment.yml is not valid YAML: {exc}") from None
    out = PipRequirements()
    for entry in data.get("dependencies") or []:
        if isinstance(entry, dict):
            for pip_spec in entry.get("pip") or []:
                pip_spec = str(pip_spec).strip()
                if pip_spec and not _excluded(pip_spec) and not pip_spec.startswith("-e"):
                    out.requirements.append(pip_spec)
        else:
            conda_to_pip(str(entry), out)
    return out
