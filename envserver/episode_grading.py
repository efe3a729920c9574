"""The end of an episode: the agent's change read out of its container, then graded the way every change is
(size cap, patch policy, grade cache, the instance's own tests), and the observation that tells the agent.

Reading: every process the agent left running is stopped first (nothing changes the files while they are read),
then `git diff` against the commit the episode started from (envserver/submission.py). Grading: the size cap, the
patch policy (envserver/patch_policy.py), then the grade cache keyed by the patch that is graded
(envserver/grade_cache.py) around `grading.grade`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from envserver import grading, patch_policy, submission
from envserver.config import ServerConfig
from envserver.grade_cache import GradeCache, grade_key
from envserver.metrics import Metrics
from envserver.patch_policy import FileVersions
from envserver.runtime_client import RUNTIME_SLACK_S, EpisodeContainer
from envserver.sandbox.base import SandboxBackend, SandboxError, SandboxSpec
from envserver.submission import Submission
from envserver.tasks import TaskInstance
from envserver.wire import GradeReport

log = logging.getLogger(__name__)

PATCH_TIMEOUT_S = 120.0
"""Limit of reading the change (and the files the patch policy needs) out of the container."""

STOP_PROCESSES_SCRIPT = (
    'for d in /proc/[0-9]*; do p=${d#/proc/}; case "$p" in 1|$$|$PPID) ;; *) kill -9 "$p" 2>/dev/null;; esac; done;'
    " echo stopped"
)
"""Kills every process of the container but its init (PID 1) and this script (and the `timeout` wrapping it)."""


class PatchError(RuntimeError):
    """The agent's change could not be read out of its container (e.g. it deleted git or the repository)."""


def container_exec(container: EpisodeContainer) -> submission.Exec:
    """Runs a host command in the episode container (the runtime's `exec`, else `docker exec`)."""
    return submission.session_exec(container.runtime, container.live_sandbox(), RUNTIME_SLACK_S)


async def stop_processes(container: EpisodeContainer, session_id: str) -> None:
    """Before the diff is taken: stop every process the agent left running (background jobs, a fork bomb), so
    nothing changes the files while they are read and the read can start processes of its own. Killed from a
    one-shot exec (the runtime goes too); a container too full of processes for that is restarted (its files
    stay)."""
    sandbox = container.live_sandbox()
    if container.runtime is not None:
        await container.runtime.close()
        container.runtime = None
    try:
        result = await sandbox.exec(["sh", "-c", STOP_PROCESSES_SCRIPT], timeout=30)
        why = (
            ""
            if result.exit_code == 0 and "stopped" in result.output
            else (result.output.strip()[-200:] or f"exit {result.exit_code}")
        )
    except Exception as exc:  # noqa: BLE001 - the engine refuses an exec in a container at its pids limit
        why = f"{type(exc).__name__}: {exc}"
    if why:
        log.info("session %s: could not stop its processes (%s); restarting its container", session_id, why)
        try:
            await sandbox.restart()
        except SandboxError as exc:
            # e.g. `rm -rf /` took the container's own init: nothing can run in it any more.
            raise PatchError(f"the sandbox could not run a command ({why}) nor be restarted ({exc})") from None


@dataclass
class Episode:
    """What grading needs of an ended episode."""

    session_id: str
    container: EpisodeContainer
    task: TaskInstance
    image: str
    start_head: str | None
    """The commit the episode started from: the agent's change is the diff against it."""


@dataclass
class EpisodeGrade:
    report: GradeReport
    submission: Submission | None = None
    """The change as read from the container (before the patch policy); None when it could not be read."""
    graded_patch: str | None = None
    """The patch that was graded, whole (the report carries only the head of a large one)."""


class SubmissionGrader:
    """Grades episodes' changes, and given patches (`validate`), one way."""

    def __init__(
        self,
        config: ServerConfig,
        backend: SandboxBackend,
        metrics: Metrics,
        spec: Callable[..., SandboxSpec],
        labels: Callable[..., dict[str, str]],
        is_verified: Callable[[str], bool],
    ):
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self.spec = spec
        """(image, role, task_id) → the sandbox spec of a grading container."""
        self.labels = labels
        """(role, task_id) → the labels of a grading container."""
        self.is_verified = is_verified
        """Whether a task's environment was validated (a broken test run is then the patch's doing)."""
        self.cache = GradeCache(config.grade_cache_size)

    async def grade_episode(self, episode: Episode) -> EpisodeGrade:
        """Stop the episode's processes, read its change, grade it; counted in the metrics."""
        started = time.monotonic()
        config = self.config
        container = episode.container
        try:
            await stop_processes(container, episode.session_id)
            change_read = await self._read(episode)
        except PatchError as exc:
            report = GradeReport(
                resolved=False,
                reward=0.0,
                infra_failure=False,
                patch_applied=False,
                no_patch=str(exc),
                test_output_tail=str(exc),
            )
            self.metrics.grades.labels(outcome="no_patch").inc()
            return EpisodeGrade(report)
        except SandboxError as exc:
            report = GradeReport(resolved=False, reward=0.0, infra_failure=True, infra_reason=f"{exc.reason}: {exc}")
            grade = EpisodeGrade(report)
        else:

            async def read_versions(paths: list[str]) -> dict[str, FileVersions]:
                return await submission.read_file_versions(
                    container_exec(container),
                    episode.task,
                    paths,
                    PATCH_TIMEOUT_S,
                    config.max_patch_bytes,
                    episode.start_head,
                )

            report, graded = await self.grade_submission(episode.task, episode.image, change_read, read_versions)
            grade = EpisodeGrade(report, change_read, graded)
            if report.cached:
                self.metrics.grade_cache_hits.inc()
        if report.infra_failure:
            self.metrics.infra(report.infra_reason or "unknown")
            outcome = "infra_failure"
        else:
            outcome = "resolved" if report.resolved else "unresolved"
        self.metrics.grades.labels(outcome=outcome).inc()
        self.metrics.grade_latency.observe(time.monotonic() - started)
        return grade

    async def _read(self, episode: Episode) -> Submission:
        """`git diff` of everything the agent changed against the commit it started from, minus the hidden tests'
        files, measured in the container first: over the server's `max_patch_bytes` it is not read
        (envserver/submission.py)."""
        try:
            return await submission.read_submission(
                container_exec(episode.container),
                episode.task,
                self.config.max_patch_bytes,
                PATCH_TIMEOUT_S,
                episode.start_head,
            )
        except submission.SubmissionError as exc:
            raise PatchError(str(exc)) from None

    async def grade_patch(self, task: TaskInstance, image: str | None, patch: str) -> GradeReport:
        """Grade `patch` for `task` on `image` the way every episode is graded (patch policy and size cap, limits,
        labels, grade cache); `python -m envserver validate` grades through here too, with the cache off."""
        return (await self.grade_submission(task, image, Submission.of(patch)))[0]

    async def grade_submission(
        self,
        task: TaskInstance,
        image: str | None,
        change: Submission,
        read_versions: Callable[[list[str]], Awaitable[dict[str, FileVersions]]] | None = None,
    ) -> tuple[GradeReport, str | None]:
        """(the grade, the whole graded patch) of a change: the size cap, then the patch policy
        (envserver/patch_policy.py), then the grade cache keyed by the patch that is graded.

        `read_versions`: base and new contents of files, from the episode container; without it (validation) a
        container of the task image is started when the policy needs them."""
        config = self.config
        # A validated task's environment is known to work: a broken test run is then the patch's doing.
        verified = self.is_verified(task.instance_id)
        policy = task.patch_policy or config.patch_policy  # a row's value was checked when the file was loaded
        if change.patch is None or change.size > config.max_patch_bytes:
            return GradeReport(
                resolved=False,
                reward=0.0,
                infra_failure=False,
                patch_too_large=True,
                patch_bytes=change.size,
                patch_sha256=change.sha256,
                patch_policy=policy,
                environment_verified=verified,
                test_output_tail=f"not graded: the patch is {change.size} bytes, over this server's max_patch_bytes "
                f"of {config.max_patch_bytes}",
            ), None
        raw = change.patch
        versions = await self._policy_versions(task, image, raw, read_versions)
        outcome = patch_policy.apply_policy(
            raw,
            policy,
            hidden_tests=task.test_files(),
            versions=versions,
            runner_files=grading.runner_files(task, image),
        )
        policy_fields: dict[str, Any] = {
            "excluded_paths": list(dict.fromkeys([*change.hidden_paths, *outcome.excluded_paths])),
            "hack_attempt": outcome.hack_attempt,
            "patch_policy": policy,
        }
        if outcome.rejected:
            return GradeReport(
                resolved=False,
                reward=0.0,
                infra_failure=False,
                environment_verified=verified,
                test_output_tail="not graded: the patch changes test infrastructure "
                f"({', '.join(outcome.excluded_paths)}) and the patch policy is `reject`",
                **policy_fields,
                **submission.patch_fields("", config.inline_patch_bytes),
            ), ""
        graded = outcome.patch

        async def run() -> GradeReport:
            report = await grading.grade(
                self.backend,
                task,
                image,
                graded,
                self.spec(image or "", "grade"),
                config.grade_timeout_s,
                self.labels("grade", task.instance_id),
                environment_verified=verified,
            )
            # What the cache keeps and the finish answer carries: never a multi-MB patch.
            return report.model_copy(update=submission.patch_fields(graded, config.inline_patch_bytes))

        report = await self.cache.get_or_grade(grade_key(task.instance_id, image, graded), run)
        return report.model_copy(update=policy_fields), graded

    async def _policy_versions(
        self,
        task: TaskInstance,
        image: str | None,
        raw: str,
        read_versions: Callable[[list[str]], Awaitable[dict[str, FileVersions]]] | None,
    ) -> dict[str, FileVersions]:
        """Base and new contents of the files the patch policy must see (setup.cfg, pyproject.toml, ...): from the
        episode container, else from a container of the task image; none when they cannot be read."""
        needed = patch_policy.needs_versions(raw)
        if not needed:
            return {}
        try:
            if read_versions is not None:
                return await read_versions(needed)
            if image is not None:
                return await submission.image_file_versions(
                    self.backend,
                    self.spec(image, "grade", task.instance_id),
                    task,
                    raw,
                    needed,
                    PATCH_TIMEOUT_S,
                    self.config.max_patch_bytes,
                )
        except (SandboxError, PatchError) as exc:
            # Unread files lose their whole change (the policy's safe side); the grade goes on.
            log.warning("could not read %s of task %s for the patch policy: %s", needed, task.instance_id, exc)
        return {}


def end_observation(report: GradeReport, max_patch_bytes: int) -> str:
    """What the agent is told when its episode ends and is graded."""
    if report.infra_failure:
        return f"Episode ended. Grading could not be completed ({report.infra_reason})."
    if report.no_patch:
        return f"Episode ended. The change could not be read from the sandbox: {report.no_patch}"
    if report.patch_too_large:
        return (
            f"Episode ended. The change was not graded: its diff is {report.patch_bytes} bytes, over "
            f"the limit of {max_patch_bytes}."
        )
    if report.hack_attempt and report.patch_policy == "reject":
        return (
            "Episode ended. The change was not graded: it modifies test infrastructure "
            f"({', '.join(report.excluded_paths)})."
        )
    return "Episode ended. " + ("The hidden tests pass." if report.resolved else "The hidden tests do not pass.")
