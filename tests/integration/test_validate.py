"""`python -m envserver validate` and `serve --validated` against real Docker, the sample images and real grading.

One validation run (module fixture) covers every status a deterministic sample row can produce: two real sample
rows (valid), a copy whose FAIL_TO_PASS names a test that does not exist (gold_fails), a copy with no FAIL_TO_PASS
(empty_passes), a copy whose eval never starts the tests (env_broken), a row with no image (no_image). A server
then serves that report.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import httpx
import pytest

from envserver.config import ServerConfig
from envserver.image_names import local_image_name
from envserver.sandbox.docker_backend import DockerBackend
from envserver.tasks import SAMPLE_TASKS_PATH, TaskInstance, load_tasks
from envserver.validate import load_validation, run_validation, write_report
from tests.conftest import ROOT, start_server, stop_server
from tests.patchops import bash_apply_command

pytestmark = pytest.mark.docker

VALID = ["contextrl-samples__minicalc-1", "contextrl-samples__textkit-1"]
GHOST_TEST = "tests/test_allocate.py::test_that_does_not_exist"
GOLD_FAILS = "contextrl-samples__minicalc-2-ghost-test"
EMPTY_PASSES = "contextrl-samples__minicalc-4-no-f2p"
ENV_BROKEN = "contextrl-samples__textkit-4-no-tests"
NO_IMAGE = "contextrl-samples__nowhere-1"
UNVALIDATED = "contextrl-samples__minicalc-3"


def _rows() -> list[dict]:  # type: ignore[type-arg]
    samples = {task.instance_id: task for task in load_tasks(SAMPLE_TASKS_PATH)}

    def copy(source: str, new_id: str, **changes: object) -> dict:  # type: ignore[type-arg]
        # The copy runs in its source's image: the image name is derived from the instance id otherwise.
        row = samples[source].model_dump(exclude_none=True)
        return {**row, "instance_id": new_id, "image": local_image_name(source), **changes}

    textkit4 = samples["contextrl-samples__textkit-4"]
    assert textkit4.eval is not None
    rows = [samples[task_id].model_dump(exclude_none=True) for task_id in [*VALID, UNVALIDATED]]
    rows += [
        copy(
            "contextrl-samples__minicalc-2",
            GOLD_FAILS,
            FAIL_TO_PASS=[*samples["contextrl-samples__minicalc-2"].FAIL_TO_PASS, GHOST_TEST],
        ),
        copy("contextrl-samples__minicalc-4", EMPTY_PASSES, FAIL_TO_PASS=[]),
        copy(
            "contextrl-samples__textkit-4",
            ENV_BROKEN,
            eval={**textkit4.eval.model_dump(), "pre_test": ["echo 'environment is gone' >&2; exit 3"]},
        ),
        {**samples["contextrl-samples__textkit-1"].model_dump(exclude_none=True), "instance_id": NO_IMAGE},
    ]
    return rows


@pytest.fixture(scope="module")
def validated(sample_images, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The task file, the validation run's CLI result and its JSON report."""
    work = tmp_path_factory.mktemp("validate")
    tasks_file = work / "tasks.jsonl"
    rows = _rows()
    tasks_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = work / "validated.json"
    selected = [row["instance_id"] for row in rows if row["instance_id"] != UNVALIDATED]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "envserver",
            "validate",
            "--tasks",
            str(tasks_file),
            "--jobs",
            "2",
            "--out",
            str(out),
            "--no-progress",
            *(arg for task_id in selected for arg in ("--instance", task_id)),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, tasks_file, proc, load_validation(out)


def test_validate_classifies_each_instance(validated):  # type: ignore[no-untyped-def]
    _, _, proc, report = validated
    entries = {entry.instance_id: entry for entry in report.instances}
    assert UNVALIDATED not in entries, "--instance limits the run"
    assert report.complete and report.repeat == 1 and report.format_version == 1
    assert {task_id: entry.status for task_id, entry in entries.items()} == {
        **dict.fromkeys(VALID, "valid"),
        GOLD_FAILS: "gold_fails",
        EMPTY_PASSES: "empty_passes",
        ENV_BROKEN: "env_broken",
        NO_IMAGE: "no_image",
    }
    assert report.counts == {"valid": 2, "gold_fails": 1, "empty_passes": 1, "env_broken": 1, "no_image": 1}
    for task_id in VALID:
        entry = entries[task_id]
        assert entry.gold.resolved == [True] and entry.empty.resolved == [False], entry
        assert entry.reason is None and entry.image == local_image_name(task_id)
        assert entry.gold.failed_tests == [] and entry.empty.failed_tests  # the empty patch fails its F2P tests
        assert entry.python_version and entry.python_version.startswith("3.")

    ghost = entries[GOLD_FAILS]
    assert ghost.gold.resolved == [False] and ghost.gold.failed_tests == [GHOST_TEST]
    assert GHOST_TEST in ghost.reason and "FAIL_TO_PASS" in ghost.reason
    assert entries[EMPTY_PASSES].gold.resolved == [True] and entries[EMPTY_PASSES].empty.resolved == [True]
    assert "lists no FAIL_TO_PASS" in entries[EMPTY_PASSES].reason
    broken = entries[ENV_BROKEN]
    assert broken.reason.startswith("gold patch: no_test_output") and broken.empty is None  # stopped after one run
    assert broken.reason.endswith("last output: environment is gone")  # the line that says why
    assert broken.gold.infra_reason.startswith("no_test_output")
    no_image = entries[NO_IMAGE]
    assert no_image.gold is None and local_image_name(NO_IMAGE) in no_image.reason

    # The table: counts per repository and status, and one line per instance that is not valid.
    assert "contextrl-samples/minicalc" in proc.stdout and "Not valid" in proc.stdout
    for task_id in (GOLD_FAILS, EMPTY_PASSES, ENV_BROKEN, NO_IMAGE):
        assert task_id in proc.stdout
    assert VALID[0] not in proc.stdout


def test_repeats_in_process_and_no_container_left(sample_images):  # type: ignore[no-untyped-def]
    task = next(t for t in load_tasks(SAMPLE_TASKS_PATH) if t.instance_id == "contextrl-samples__textkit-2")
    config = ServerConfig(server_name=f"test-validate-{uuid.uuid4().hex[:8]}")

    async def run() -> tuple[list, int]:  # type: ignore[type-arg]
        backend = DockerBackend()
        try:
            entries = await run_validation(config, backend, [task], jobs=1, repeat=2)
            return entries, await backend.count_labelled({"envserver.server": config.server_name})
        finally:
            await backend.close()

    entries, left = asyncio.run(run())
    assert left == 0
    (entry,) = entries
    assert entry.status == "valid" and entry.gold.resolved == [True, True] and entry.empty.resolved == [False, False]
    assert len(entry.gold.durations_s) == 2


def _assert_refused(http: httpx.Client, task_id: str, *words: str) -> None:
    response = http.post("/v1/sessions", json={"task_id": task_id})
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["type"] == "instance_not_valid"
    for word in (task_id, *words):
        assert word in error["message"], error["message"]


def test_serve_validated(validated, tmp_path):  # type: ignore[no-untyped-def]
    _, tasks_file, _, report = validated
    # Serve every row but the image-less one: the report then names an instance the task files lack.
    rows = [json.loads(line) for line in tasks_file.read_text().splitlines()]
    served = tmp_path / "served.jsonl"
    served.write_text("".join(json.dumps(row) + "\n" for row in rows if row["instance_id"] != NO_IMAGE))
    # And say the second valid task was validated on another image: a grade proves something about one image only.
    other_image = "envserver/some-other-build:latest"
    report_file = tmp_path / "validated.json"
    write_report(
        report.model_copy(
            update={
                "instances": [
                    entry.model_copy(update={"image": other_image}) if entry.instance_id == VALID[1] else entry
                    for entry in report.instances
                ]
            }
        ),
        report_file,
    )
    server = start_server(tmp_path, "--tasks", str(served), "--validated", str(report_file))
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            listed = {task["instance_id"]: task for task in http.get("/v1/tasks").json()["tasks"]}
            assert {task_id: (t["status"], t["playable"]) for task_id, t in listed.items()} == {
                VALID[0]: ("valid", True),
                VALID[1]: ("unvalidated", False),
                GOLD_FAILS: ("gold_fails", False),
                EMPTY_PASSES: ("empty_passes", False),
                ENV_BROKEN: ("env_broken", False),
                UNVALIDATED: ("unvalidated", False),
            }
            assert GHOST_TEST in listed[GOLD_FAILS]["reason"]
            assert other_image in listed[VALID[1]]["reason"] and listed[VALID[0]]["reason"] is None

            _assert_refused(http, GOLD_FAILS, "gold_fails", GHOST_TEST)
            _assert_refused(http, ENV_BROKEN, "env_broken", "no_test_output")
            _assert_refused(http, UNVALIDATED, "unvalidated", "not in the validation file")
            _assert_refused(http, VALID[1], "unvalidated", other_image)

            # A valid task plays, and its gold patch earns 1.0.
            task = TaskInstance.model_validate(next(row for row in rows if row["instance_id"] == VALID[0]))
            session = http.post("/v1/sessions", json={"task_id": task.instance_id})
            assert session.status_code == 201, session.text
            sid = session.json()["session_id"]
            step = http.post(
                f"/v1/sessions/{sid}/step",
                json={"name": "execute_bash", "arguments": {"command": bash_apply_command(task.patch, task.workdir)}},
            )
            assert "APPLIED" in step.json()["observation"]
            done = http.post(f"/v1/sessions/{sid}/step", json={"name": "finish", "arguments": {}}).json()
            assert done["reward"] == 1.0 and done["terminated"]

            # The refusal is part of the documented API.
            responses = http.get("/openapi.json").json()["paths"]["/v1/sessions"]["post"]["responses"]
            assert "instance_not_valid" in responses["409"]["description"]
            assert responses["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    finally:
        stop_server(server)
    assert NO_IMAGE in server.log() and "not in the task files" in server.log()
