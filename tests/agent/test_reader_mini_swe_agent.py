"""mini-swe-agent's run folders read natively: the real run in ../shared (271 files under trajs/, two of which are
not trajectories, and the run's results table), and hand-made folders for the cases it does not hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.readers import ReaderError, read_trajectories, sniff_format
from agent.readers.mini_swe_agent import parse_bash_action, read_results, scan_run
from tests.conftest import MINI_SWE_AGENT_RUN


@pytest.fixture(scope="module")
def run_folder() -> Path:
    if not MINI_SWE_AGENT_RUN.is_dir():
        pytest.skip(f"no mini-swe-agent run at {MINI_SWE_AGENT_RUN}")
    return MINI_SWE_AGENT_RUN


def test_the_shared_run_reads_as_published(run_folder: Path) -> None:
    run = scan_run(run_folder)
    assert len(run.files) == 269
    assert sorted(run.skipped) == [
        "trajs/sb-cli-reports/sb-cli-reports.traj.json (report)",
        "trajs/trajs/trajs.traj.json (predictions)",
    ]
    trajectories = list(read_trajectories(run_folder))
    assert len(trajectories) == 269 and len({t.episode_id for t in trajectories}) == 269
    resolved = [t.resolved for t in trajectories]
    assert resolved.count(True) == 192 and resolved.count(False) == 77  # results_summary.csv, as published
    first = next(t for t in trajectories if t.task_id == "astropy__astropy-12907")
    assert first.source == "mini-swe-agent" and first.model == "google/gemini-3-pro-preview"
    assert first.patch and first.patch.startswith("diff --git a/astropy/modeling/separable.py")
    call = first.messages[2]["tool_calls"][0]["function"]
    assert call["name"] == "bash" and json.loads(call["arguments"]) == {"command": "ls -R"}
    assert first.messages[2]["content"].startswith("THOUGHT:") and "```" not in first.messages[2]["content"]
    assert first.messages[3]["role"] == "tool" and first.messages[3]["content"].startswith("<returncode>0</returncode>")
    assert first.num_tool_calls == first.num_turns - first.malformed_tool_calls
    assert "extra" not in first.messages[2]  # the raw API responses are dropped
    assert (
        sniff_format(json.loads((run_folder / "trajs" / first.task_id / f"{first.task_id}.traj.json").read_text()))
        == "mini-swe-agent"
    )


def test_results_come_from_any_report_the_run_has(run_folder: Path, tmp_path: Path) -> None:
    # without the CSV the sb-cli report inside trajs/ gives the same flags
    copy = tmp_path / "run"
    shutil.copytree(run_folder / "trajs", copy / "trajs")
    flags = {t.task_id: t.resolved for t in read_trajectories(copy)}
    assert flags == {t.task_id: t.resolved for t in read_trajectories(run_folder)}
    # an explicit results file wins; an instance it does not name is unknown, not failed
    (tmp_path / "one.json").write_text(json.dumps({"astropy__astropy-12907": {"resolved": False}}))
    explicit = {t.task_id: t.resolved for t in read_trajectories(copy, results=tmp_path / "one.json")}
    assert explicit["astropy__astropy-12907"] is False and explicit["astropy__astropy-13033"] is None
    (tmp_path / "bad.csv").write_text("id,ok\nx,True\n")
    with pytest.raises(ReaderError, match="instance_id and resolved columns"):
        read_results(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ReaderError, match="not a results file"):
        read_results(tmp_path / "bad.json")


def record(instance: str, replies: list[str], submission: str = "") -> dict:  # type: ignore[type-arg]
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": "<pr_description>\nConsider the following PR description:\nIt breaks.\n</pr_description>",
        },
    ]
    for reply in replies:
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "<returncode>0</returncode>"}]
    return {
        "instance_id": instance,
        "trajectory_format": "mini-swe-agent-1",
        "messages": messages,
        "info": {"exit_status": "Submitted", "submission": submission, "config": {"model": {"model_name": "m"}}},
    }


def test_format_errors_stay_text_and_a_single_file_reads(tmp_path: Path) -> None:
    replies = [
        "THOUGHT: look\n\n```bash\nls\n```",
        "THOUGHT: two blocks\n\n```bash\nls\n```\n\n```bash\npwd\n```",  # rejected by the agent
        "no block at all",
    ]
    path = tmp_path / "a__b-1" / "a__b-1.traj.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record("a__b-1", replies)))
    [trajectory] = list(read_trajectories(path))
    assert trajectory.num_turns == 3 and trajectory.num_tool_calls == 1 and trajectory.malformed_tool_calls == 2
    assert [m["role"] for m in trajectory.messages[2:]] == [
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert trajectory.patch is None and trajectory.resolved is None
    assert parse_bash_action("```bash\nmake test\n```") == ("", "bash", {"command": "make test"})


def test_a_broken_file_is_named(tmp_path: Path) -> None:
    good = tmp_path / "run" / "a__b-1" / "a__b-1.traj.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps(record("a__b-1", ["```bash\nls\n```"])))
    broken = tmp_path / "run" / "a__b-2" / "a__b-2.traj.json"
    broken.parent.mkdir()
    broken.write_text('{"instance_id": "a__b-2", "messages": [')
    with pytest.raises(ReaderError, match=r"a__b-2\.traj\.json: cannot read"):
        list(read_trajectories(tmp_path / "run"))
    with pytest.raises(ReaderError, match="not a directory"):
        scan_run(good)
