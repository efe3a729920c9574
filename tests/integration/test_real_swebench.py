"""Real SWE-bench Lite rows, exactly as published, end to end: built offline from ../shared's shallow sources
(`real_swebench` in tests/conftest.py), validated with `python -m envserver validate`, served with `--validated`,
and played through the HTTP API with the gold fix and with no change — on a real Docker engine, with the harness's
own eval scripts and swebench's grading code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from envserver.client import EnvClient
from envserver.git_diff import split_patch
from envserver.image_names import local_image_name
from envserver.validate import load_validation
from tests.conftest import (
    LITE_TASKS,
    ROOT,
    RealSet,
    ServerProcess,
    docker_client,
    start_server,
    stop_server,
)
from tests.patchops import bash_apply_command

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def validated(real_swebench: RealSet, tmp_path_factory):  # type: ignore[no-untyped-def]
    """`validate --jobs 2` on the real rows: the CLI's result and its JSON report."""
    out = tmp_path_factory.mktemp("real-validate") / "validated.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "envserver",
            "validate",
            "--tasks",
            str(real_swebench.rows_file),
            "--jobs",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, load_validation(out)


def _listed(row: dict, field: str) -> list[str]:  # type: ignore[type-arg]
    """A test list of a published row: SWE-bench publishes FAIL_TO_PASS / PASS_TO_PASS as JSON strings."""
    value = row[field]
    return json.loads(value) if isinstance(value, str) else list(value)


def test_real_rows_validate(real_swebench: RealSet, validated) -> None:  # type: ignore[no-untyped-def]
    _, proc, report = validated
    entries = {entry.instance_id: entry for entry in report.instances}
    assert report.counts == {"valid": len(real_swebench.rows)}, proc.stdout[-3000:]
    for row in real_swebench.rows:
        entry = entries[row["instance_id"]]
        assert entry.status == "valid" and entry.image == local_image_name(row["instance_id"]), entry
        assert entry.gold.resolved == [True] and entry.gold.env_error is None
        assert entry.empty.resolved == [False] and entry.empty.env_error is None
        # With no fix, the failing tests are FAIL_TO_PASS ones (swebench counts a test missing from the log as failed).
        assert set(entry.empty.failed_tests) <= set(_listed(row, "FAIL_TO_PASS")) and entry.empty.failed_tests


def test_real_images_are_in_the_official_layout(real_swebench: RealSet) -> None:
    """The harness's eval script runs unchanged in them: `conda activate testbed`, /testbed on base_commit under one
    setup commit that holds no mode change (else every agent diff against base_commit would carry hundreds)."""
    for row in real_swebench.rows:
        package = row["repo"].split("/")[1]
        script = (
            "source /opt/miniconda3/bin/activate && conda activate testbed && cd /testbed && "
            "git rev-parse HEAD^ && git log -1 --format=%s && git diff --summary HEAD^ HEAD | grep -c 'mode change'; "
            f"python -c 'import {package}, sys; print(sys.version_info[:2])'"
        )
        output = (
            docker_client()
            .containers.run(
                local_image_name(row["instance_id"]),
                ["bash", "-c", script],
                remove=True,
                network_disabled=True,
            )
            .decode()
        )
        parent, subject, mode_changes, version = output.split("\n")[:4]
        assert parent == row["base_commit"] and subject == "SWE-bench"
        assert mode_changes == "0", f"{row['instance_id']}: the setup commit changes file modes"
        assert version == "(3, 9)"


@pytest.fixture(scope="module")
def served(real_swebench: RealSet, validated, tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    out = validated[0]
    server = start_server(
        tmp_path_factory.mktemp("real-serve"),
        "--tasks",
        str(real_swebench.rows_file),
        "--validated",
        str(out),
    )
    yield server
    stop_server(server)
    leftover = server.containers()
    for container in leftover:
        container.remove(force=True)
    assert not leftover, f"server {server.name} left containers behind: {[c.name for c in leftover]}"


def _finish(server: ServerProcess, session_id: str) -> dict:  # type: ignore[type-arg]
    answer = httpx.post(
        f"{server.url}/v1/sessions/{session_id}/step",
        json={"name": "finish", "arguments": {}},
        timeout=900,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_served_real_episodes_grade_the_fix_and_only_the_fix(real_swebench: RealSet, served: ServerProcess) -> None:
    tasks = {task["instance_id"]: task for task in httpx.get(f"{served.url}/v1/tasks").json()["tasks"]}
    for row in real_swebench.rows:
        assert tasks[row["instance_id"]]["status"] == "valid" and tasks[row["instance_id"]]["playable"]
        with EnvClient(served.url) as client:
            reset = client.reset(row["instance_id"])
            step = client.step(
                reset.session_id,
                "execute_bash",
                {
                    "command": bash_apply_command(row["patch"], "/testbed"),
                    "timeout": 120,
                },
            )
            assert step.info.exit_code == 0, step.observation
            empty = client.reset(row["instance_id"])
        grade = _finish(served, reset.session_id)["info"]["grade"]
        assert grade["reward"] == 1.0 and not grade["infra_failure"] and grade["environment_verified"], grade
        # The agent's diff is taken against the commit the episode started from: exactly the gold patch's files.
        gold_paths = {path for part in split_patch(row["patch"])[1] for path in part.paths}
        graded_paths = {path for part in split_patch(grade["model_patch"])[1] for path in part.paths}
        assert graded_paths == gold_paths and "old mode" not in grade["model_patch"]
        nothing = _finish(served, empty.session_id)["info"]["grade"]
        assert nothing["reward"] == 0.0 and not nothing["infra_failure"] and nothing["model_patch"] == ""
        assert set(nothing["tests"]["FAIL_TO_PASS"]["failure"]), nothing


def test_the_real_rows_load_with_no_field_added(real_swebench: RealSet) -> None:
    """The task file is the published rows, byte for byte per record: no eval, install or image field."""
    published = {row["instance_id"]: row for row in json.loads(LITE_TASKS.read_text())}
    for line in real_swebench.rows_file.read_text().splitlines():
        row = json.loads(line)
        assert row == published[row["instance_id"]] and "eval" not in row and "eval_script" not in row
