"""Image build and validation benchmark on real SWE-bench rows, measured side by side in one run (not a timed test).

1. The first image of a repository/version — its env layer (the dependencies, installed from the package index)
   plus its instance layer — against each further instance of the same repository/version, whose env layer is
   reused (target: a further instance ≤ 15% of the first's time). The Python base layer is shared by every
   repository of that Python version and is built before the clock starts.
2. Validation throughput (gold + empty patch per instance, the server's grading path) at `--jobs 1` and `--jobs 2`,
   in instances per minute, on the images just built.

The rows are the published SWE-bench Lite ones in ../shared, unmodified; the sources are ../shared's shallow clones.
The images it builds keep their usual tags (envserver/sweb.eval.<instance_id>), so a later `images build` of the
same rows finds them up to date.

    python benchmarks/bench_images.py [--group pallets/flask@2.3 --group pytest-dev/pytest@5.4] [--instances 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker.errors

from envserver.config import ServerConfig
from envserver.image_names import local_image_name
from envserver.sandbox.docker_backend import DockerBackend
from envserver.specs import SpecTable
from envserver.tasks import TaskInstance, load_tasks
from envserver.validate import run_validation
from images.docker_util import connect
from images.official import build_official, plan_official
from images.python_base import ensure_python_base

SHARED = ROOT.parent / "shared"


def _quiet(_: str) -> None:
    pass


def _remove(client: docker.DockerClient, tags: list[str]) -> None:
    """Untag `tags` (layers shared with other images stay): the next build of them starts from its parent."""
    for tag in tags:
        try:
            client.images.remove(tag, noprune=False)
        except docker.errors.ImageNotFound:
            pass


def _timed_build(client, tasks, table, sources, force: bool) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    results = build_official(client, tasks, table, sources, ca_bundle=_ca(), force=force, log=_quiet)
    elapsed = time.monotonic() - started
    failed = [r for r in results if r.action == "failed"]
    if failed:
        raise SystemExit(f"build failed: {failed[0].instance_ids}: {failed[0].error}")
    return elapsed


def _ca() -> Path | None:
    from images.cli import _host_pip_ca

    return _host_pip_ca()


def _validate(tasks: list[TaskInstance], jobs: int) -> tuple[float, dict[str, int]]:
    async def run():  # type: ignore[no-untyped-def]
        backend = DockerBackend()
        try:
            return await run_validation(
                ServerConfig(server_name=f"bench-images-{jobs}"),
                backend,
                tasks,
                jobs=jobs,
            )
        finally:
            await backend.close()

    started = time.monotonic()
    entries = asyncio.run(run())
    elapsed = time.monotonic() - started
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    return elapsed, counts


def _group(value: str) -> tuple[str, str]:
    repo, sep, version = value.rpartition("@")
    if not sep or not repo or not version:
        raise argparse.ArgumentTypeError(f"expected owner/name@version, got {value!r}")
    return repo, version


def _build_group(client, table, rows, repo: str, version: str, count: int, tmp: str) -> dict:  # type: ignore[no-untyped-def]
    """First instance of repo@version (env layer rebuilt without cache) and each further one (env reused)."""
    tasks = [t for t in rows if t.repo == repo and t.version == version][:count]
    if len(tasks) < 2:
        raise SystemExit(f"need ≥ 2 rows of {repo} {version}, found {len(tasks)}")
    archive = SHARED / "data" / "repos" / f"{repo.replace('/', '__')}.git.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    sources = {repo: str(Path(tmp) / archive.name.removesuffix(".tar.gz"))}
    groups, refused = plan_official(tasks, table, lambda name: sources[name], python_fallback=False)
    if refused or len({id(g.env) for g in groups}) != 1:
        raise SystemExit(f"the rows of {repo} {version} do not share one env layer: refused {refused}")
    python = groups[0].env.python
    print(f"{repo} {version}: {len(tasks)} instances, Python {python.version}", flush=True)
    ensure_python_base(client, python, log=_quiet)  # shared by every repository of this Python: not timed
    _remove(client, [local_image_name(t.instance_id) for t in tasks])
    first = _timed_build(client, tasks[:1], table, sources, force=True)  # env layer rebuilt, no layer cache
    print(
        f"  first instance {tasks[0].instance_id} (env + instance layer): {first:.1f} s",
        flush=True,
    )
    further = []
    for task in tasks[1:]:
        further.append(_timed_build(client, [task], table, sources, force=False))
        print(f"  further instance {task.instance_id}: {further[-1]:.1f} s", flush=True)
    return {
        "repo": repo,
        "version": version,
        "python": python.version,
        "tasks": tasks,
        "first_s": first,
        "further_s": further,
        "further_over_first": sum(further) / len(further) / first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tasks",
        type=Path,
        default=SHARED / "data" / "tasks" / "swe-bench-lite-test.json",
    )
    parser.add_argument(
        "--group",
        type=_group,
        action="append",
        help="owner/name@version whose instances are "
        "built (repeatable; default: pallets/flask@2.3 and pytest-dev/pytest@5.4)",
    )
    parser.add_argument("--instances", type=int, default=4, help="instances built per group")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "bench_images.json",
    )
    args = parser.parse_args()

    table = SpecTable.bundled()
    rows = load_tasks(args.tasks, table)
    client = connect()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        for repo, version in args.group or [
            ("pallets/flask", "2.3"),
            ("pytest-dev/pytest", "5.4"),
        ]:
            results.append(_build_group(client, table, rows, repo, version, args.instances, tmp))

    built = [task for result in results for task in result["tasks"]]
    validation = {}
    for jobs in (1, 2):
        elapsed, counts = _validate(built, jobs)
        validation[jobs] = {
            "seconds": elapsed,
            "per_min": len(built) / elapsed * 60,
            "counts": counts,
        }
        print(
            f"validate --jobs {jobs}: {elapsed:.1f} s, {validation[jobs]['per_min']:.2f} instances/min {counts}",
            flush=True,
        )

    print()
    print(f"{'image build':40}{'first s':>9}{'further s':>11}{'further/first':>15}")
    for result in results:
        mean = sum(result["further_s"]) / len(result["further_s"])
        name = f"{result['repo']} {result['version']} (×{len(result['further_s'])} further)"
        print(f"{name:40}{result['first_s']:>9.1f}{mean:>11.1f}{result['further_over_first']:>15.2f}   (target ≤ 0.15)")
    print(f"{'validation (' + str(len(built)) + ' instances)':40}{'inst/min':>9}{'vs jobs 1':>11}")
    for jobs in (1, 2):
        rate = validation[jobs]["per_min"]
        print(f"{'  --jobs ' + str(jobs):40}{rate:>9.2f}{rate / validation[1]['per_min']:>11.2f}")
    for result in results:
        result["instances"] = [t.instance_id for t in result.pop("tasks")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"groups": results, "validation": validation}, indent=2) + "\n")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
