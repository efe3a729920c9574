"""The sample tasks that ship with the project: two small repositories we wrote, with real bugs in them.

Sources live as plain files:

    images/samples/repos/<name>/              the repository at its base commit (every sample bug present)
    images/samples/instances/<instance_id>/   patch.diff (gold fix), test_patch.diff (hidden tests),
                                              problem_statement.md (the issue), meta.json (test lists, dates)

The git repository is made at build time, deterministically (fixed identity, dates, message, file modes,
sorted files, no filters), so its commit hash — the tasks' `base_commit` — is the same on every machine.
`render_tasks` turns all of that into envserver/samples/tasks.jsonl; `verify_instance` checks an instance's
test lists by running its tests on the host.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from envserver.tasks import TaskInstance, patch_paths

SAMPLES_DIR = Path(__file__).parent / "samples"
"""Root of the sample sources."""
REPOS_DIR = SAMPLES_DIR / "repos"
"""One folder per sample repository, holding its files at the base commit."""
INSTANCES_DIR = SAMPLES_DIR / "instances"
"""One folder per sample instance."""

SAMPLE_OWNER = "contextrl-samples"
"""`owner` part of the sample tasks' `repo` (`contextrl-samples/<name>`)."""
SAMPLE_VERSION = "0.1"
"""`version` of every sample task."""
SAMPLE_EVAL = {"test_cmd": "python3 -m pytest -rA -p no:cacheprovider", "log_parser": "pytest"}
"""How the sample tasks run their tests (`EvalSpec`)."""

GIT_NAME = "ContextRL Samples"
"""Author and committer name of the deterministic base commit."""
GIT_EMAIL = "samples@contextrl.invalid"
"""Author and committer email of the deterministic base commit."""
GIT_DATE = "2024-01-01T00:00:00+00:00"
"""Author and committer date of the deterministic base commit."""
GIT_BRANCH = "main"
"""Branch that points at the base commit."""

_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".tox", ".venv"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")


class SampleError(RuntimeError):
    """The sample sources are inconsistent (bad layout, stale tasks file, wrong test lists)."""


def git_env() -> dict[str, str]:
    """Environment for git calls that must not depend on the user's or the system's git configuration."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME=GIT_NAME,
        GIT_AUTHOR_EMAIL=GIT_EMAIL,
        GIT_AUTHOR_DATE=GIT_DATE,
        GIT_COMMITTER_NAME=GIT_NAME,
        GIT_COMMITTER_EMAIL=GIT_EMAIL,
        GIT_COMMITTER_DATE=GIT_DATE,
        LC_ALL="C",
    )
    return env


def git(args: Sequence[str], cwd: Path, input: str | None = None) -> str:
    """Run one git command with the isolated environment; raise SampleError with its stderr on failure."""
    cmd = ["git", "-c", "core.autocrlf=false", "-c", "core.fileMode=true", "-c", "commit.gpgSign=false", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=git_env(), input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SampleError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout


def repo_names() -> list[str]:
    """Names of the sample repositories."""
    return sorted(p.name for p in REPOS_DIR.iterdir() if p.is_dir())


def repo_files(src: Path) -> list[str]:
    """Repo-relative paths (POSIX, sorted) of the files that make up a sample repository; caches are skipped."""
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(_SKIP_SUFFIXES)]
        for name in filenames:
            path = Path(dirpath, name)
            if name.endswith(_SKIP_SUFFIXES):
                continue
            if path.is_symlink() or not path.is_file():
                raise SampleError(f"{path}: sample repositories may only hold plain files")
            files.append(path.relative_to(src).as_posix())
    return sorted(files)


def init_repo(name: str, dest: Path) -> str:
    """Create the sample repository `name` as a git work tree at `dest` (new or empty); return its commit hash.

    Every file gets mode 100644 and its exact bytes (no end-of-line filters), files are added in sorted order,
    and identity, dates and message are fixed, so the hash is the same on every machine.
    """
    src = REPOS_DIR / name
    if not src.is_dir():
        raise SampleError(f"no sample repository {name!r} under {REPOS_DIR}")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise SampleError(f"{dest} is not empty")
    files = repo_files(src)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
        target.chmod(0o644)
    git(["init", "-q", "--template=", "."], dest)
    blobs = git(["hash-object", "-w", "--no-filters", "--stdin-paths"], dest, input="".join(f"{r}\n" for r in files))
    index_info = "".join(f"100644 {sha}\t{rel}\n" for sha, rel in zip(blobs.split(), files, strict=True))
    git(["update-index", "--add", "--index-info"], dest, input=index_info)
    tree = git(["write-tree"], dest).strip()
    commit = git(["commit-tree", tree, "-m", f"Import {name} sources"], dest).strip()
    git(["update-ref", f"refs/heads/{GIT_BRANCH}", commit], dest)
    git(["symbolic-ref", "HEAD", f"refs/heads/{GIT_BRANCH}"], dest)
    git(["update-index", "-q", "--refresh"], dest)
    return commit


@contextmanager
def sample_repo(name: str) -> Iterator[tuple[Path, str]]:
    """A temporary git work tree of sample repository `name`, with its commit hash; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"sample-{name}-") as tmp:
        path = Path(tmp) / name
        commit = init_repo(name, path)
        yield path, commit


def base_commits() -> dict[str, str]:
    """Commit hash of every sample repository, by name."""
    commits = {}
    for name in repo_names():
        with sample_repo(name) as (_, commit):
            commits[name] = commit
    return commits


@dataclass
class SampleInstance:
    """One sample instance as stored under instances/<instance_id>/."""

    instance_id: str
    repo_name: str
    patch: str
    test_patch: str
    problem_statement: str
    meta: dict = field(default_factory=dict)

    @property
    def repo(self) -> str:
        return f"{SAMPLE_OWNER}/{self.repo_name}"

    def to_record(self, base_commit: str) -> dict:
        """The tasks.jsonl record (a `TaskInstance`)."""
        return {
            "instance_id": self.instance_id,
            "repo": self.repo,
            "base_commit": base_commit,
            "patch": self.patch,
            "test_patch": self.test_patch,
            "problem_statement": self.problem_statement,
            "hints_text": self.meta.get("hints_text", ""),
            "created_at": self.meta["created_at"],
            "version": SAMPLE_VERSION,
            "environment_setup_commit": base_commit,
            "FAIL_TO_PASS": list(self.meta["FAIL_TO_PASS"]),
            "PASS_TO_PASS": list(self.meta["PASS_TO_PASS"]),
            "workdir": "/testbed",
            "eval": dict(SAMPLE_EVAL),
        }


def _is_test_path(path: str) -> bool:
    parts = path.split("/")
    return parts[0] in ("tests", "test") or parts[-1].startswith("test_") or parts[-1] == "conftest.py"


def load_instance(directory: Path) -> SampleInstance:
    """Read and sanity-check one instance folder."""
    instance_id = directory.name
    owner, sep, rest = instance_id.partition("__")
    repo_name = rest.rpartition("-")[0]
    if owner != SAMPLE_OWNER or not sep or not repo_name:
        raise SampleError(f"{directory}: folder name must be {SAMPLE_OWNER}__<repo>-<number>")
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        instance = SampleInstance(
            instance_id=instance_id,
            repo_name=repo_name,
            patch=(directory / "patch.diff").read_text(encoding="utf-8"),
            test_patch=(directory / "test_patch.diff").read_text(encoding="utf-8"),
            problem_statement=(directory / "problem_statement.md").read_text(encoding="utf-8"),
            meta=meta,
        )
    except (OSError, json.JSONDecodeError) as exc:
        raise SampleError(f"{directory}: {exc}") from None
    for key, expected in (("instance_id", instance_id), ("repo", instance.repo)):
        if meta.get(key) != expected:
            raise SampleError(f"{directory}/meta.json: {key} is {meta.get(key)!r}, expected {expected!r}")
    for key in ("FAIL_TO_PASS", "PASS_TO_PASS", "created_at"):
        if key not in meta:
            raise SampleError(f"{directory}/meta.json: missing {key}")
    if not (REPOS_DIR / repo_name).is_dir():
        raise SampleError(f"{directory}: no sample repository {repo_name!r}")
    if not patch_paths(instance.patch) or any(_is_test_path(p) for p in patch_paths(instance.patch)):
        raise SampleError(f"{directory}/patch.diff must change non-test files only")
    if not patch_paths(instance.test_patch) or not all(_is_test_path(p) for p in patch_paths(instance.test_patch)):
        raise SampleError(f"{directory}/test_patch.diff must change test files only")
    return instance


def load_instances() -> list[SampleInstance]:
    """Every sample instance, sorted by instance_id."""
    return [load_instance(d) for d in sorted(INSTANCES_DIR.iterdir()) if d.is_dir()]


def render_tasks(instances: Sequence[SampleInstance], commits: dict[str, str]) -> str:
    """tasks.jsonl text for `instances`, given each repository's commit hash; every record is validated."""
    lines = []
    for instance in instances:
        record = instance.to_record(commits[instance.repo_name])
        TaskInstance.model_validate(record)
        lines.append(json.dumps(record, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def expected_tasks_text() -> str:
    """What envserver/samples/tasks.jsonl must hold for the current sample sources."""
    return render_tasks(load_instances(), base_commits())


# --- host verification -------------------------------------------------------------------------------------


@dataclass
class Verification:
    """Test outcomes of one instance before (test patch only) and after (test patch + gold patch)."""

    instance_id: str
    before: dict[str, str]
    after: dict[str, str]
    fail_to_pass: list[str]
    pass_to_pass: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _passed(status: str | None) -> bool:
    return status in ("PASSED", "XFAIL")


def run_tests(repo_dir: Path, test_cmd: str, test_files: Sequence[str], python: str = sys.executable) -> str:
    """Run an instance's test command (with the test files appended) on the host; return the combined log.

    A leading `python`/`python3` in the command is replaced by `python`, and pytest plugins are not
    auto-loaded, so the host's test plugins do not change the output.
    """
    argv = shlex.split(test_cmd)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = python
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [*argv, *test_files], cwd=repo_dir, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return proc.stdout + proc.stderr


def _apply(repo_dir: Path, patch: str, what: str) -> None:
    proc = subprocess.run(
        ["git", "apply", "--whitespace=nowarn", "-"],
        cwd=repo_dir,
        input=patch,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SampleError(f"{what} does not apply: {proc.stderr.strip()}")


def test_status(repo_dir: Path, test_patch: str, patch: str = "", python: str = sys.executable) -> dict[str, str]:
    """Test outcomes (swebench's `parse_log_pytest` of the `-rA` log) of the files `test_patch` touches, in a
    throw-away copy of `repo_dir` with `test_patch` and then `patch` (may be empty) applied — as the grader runs them.
    """
    from swebench.harness.log_parsers import parse_log_pytest

    with tempfile.TemporaryDirectory(prefix="sample-tests-") as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(repo_dir, work, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        _apply(work, test_patch, "test_patch")
        if patch:
            _apply(work, patch, "patch")
        log = run_tests(work, SAMPLE_EVAL["test_cmd"], patch_paths(test_patch), python)
    return parse_log_pytest(log, None)


def verify_instance(instance: SampleInstance, repo_dir: Path, python: str = sys.executable) -> Verification:
    """Check an instance against its repository work tree `repo_dir` (at base_commit; left unchanged).

    Before: base + test_patch; after: base + test_patch + gold patch. Every FAIL_TO_PASS test must fail
    before and pass after, every PASS_TO_PASS test must pass in both, and every test must pass after.
    """
    try:
        before = test_status(repo_dir, instance.test_patch, "", python)
        after = test_status(repo_dir, instance.test_patch, instance.patch, python)
    except SampleError as exc:
        return Verification(instance.instance_id, {}, {}, [], [], [f"{instance.instance_id}: {exc}"])
    fail_to_pass = sorted(t for t, s in after.items() if _passed(s) and not _passed(before.get(t)))
    pass_to_pass = sorted(t for t, s in after.items() if _passed(s) and _passed(before.get(t)))
    problems = [f"{t} does not pass with the gold patch ({s})" for t, s in sorted(after.items()) if not _passed(s)]
    if not fail_to_pass:
        problems.append("no test fails before the gold patch and passes after it")
    if sorted(instance.meta["FAIL_TO_PASS"]) != fail_to_pass:
        problems.append(f"FAIL_TO_PASS is {sorted(instance.meta['FAIL_TO_PASS'])}, measured {fail_to_pass}")
    if sorted(instance.meta["PASS_TO_PASS"]) != pass_to_pass:
        problems.append(f"PASS_TO_PASS is {sorted(instance.meta['PASS_TO_PASS'])}, measured {pass_to_pass}")
    return Verification(instance.instance_id, before, after, fail_to_pass, pass_to_pass, problems)


def verify_all(instance_ids: Sequence[str] = (), python: str = sys.executable) -> list[Verification]:
    """Verify the given sample instances (all when empty), building each repository once."""
    instances = [i for i in load_instances() if not instance_ids or i.instance_id in instance_ids]
    unknown = set(instance_ids) - {i.instance_id for i in instances}
    if unknown:
        raise SampleError(f"unknown sample instance(s): {', '.join(sorted(unknown))}")
    results = []
    for name in sorted({i.repo_name for i in instances}):
        with sample_repo(name) as (path, _):
            results += [verify_instance(i, path, python) for i in instances if i.repo_name == name]
    return results


def update_meta(result: Verification) -> None:
    """Write the measured test lists into the instance's meta.json (for authoring new instances)."""
    path = INSTANCES_DIR / result.instance_id / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["FAIL_TO_PASS"] = result.fail_to_pass
    meta["PASS_TO_PASS"] = result.pass_to_pass
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
