"""Readers of third-party trajectory sets: the 15 real sample trajectories (5 per set), streaming, format variants
the samples do not show, and bad input. Expected counts are computed here from the raw JSON, never by the readers."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.readers import FORMATS, ReaderError, convert_record, read_trajectories, sniff_format
from agent.readers.common import checked_patch, iter_records, parse_fenced_action
from agent.readers.swe_smith import parse_xml_action, tools_from_prompt
from agent.trajectory import Trajectory, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SMITH, OPENHANDS, NEBIUS = (
    "swe-smith.json",
    "swe-gym_openhands_sampled_trajectories.json",
    "nebius_SWE-agent-trajectories.json",
)
SOURCES = {SMITH: "swe-smith", OPENHANDS: "swe-gym-openhands", NEBIUS: "swe-agent"}


def _samples_dir() -> Path | None:
    candidates = [
        os.environ.get("TRAJECTORY_SAMPLES", ""),
        ROOT / "shared/data/trajectories",
        ROOT.parent / "shared/data/trajectories",
    ]
    return next((Path(c) for c in candidates if c and (Path(c) / SMITH).is_file()), None)


@pytest.fixture(scope="module")
def samples() -> Path:
    found = _samples_dir()
    if found is None:
        pytest.skip("sample trajectories not found (set TRAJECTORY_SAMPLES to their folder)")
    return found


def raw(samples: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((samples / name).read_text())


def read(samples: Path, name: str, fmt: str | None = None) -> list[Trajectory]:
    return list(read_trajectories(samples / name, format=fmt))


# ------------------------------------------------------------------------------------------------ all sample files


@pytest.mark.parametrize("name", [SMITH, OPENHANDS, NEBIUS])
def test_every_sample_loads_sniffed_and_named(samples: Path, name: str) -> None:
    sniffed = read(samples, name)
    named = read(samples, name, SOURCES[name])
    assert len(sniffed) == 5
    assert [t.model_dump() for t in sniffed] == [t.model_dump() for t in named]
    for trajectory, record in zip(sniffed, raw(samples, name)):
        assert trajectory.source == SOURCES[name]
        assert trajectory.sequences == [] and not trajectory.trainable
        assert trajectory.task_id and trajectory.episode_id
        assert record["instance_id"].startswith(trajectory.task_id)
        # every tool message answers a call made by the assistant message right before it (or its siblings)
        open_calls: set[str] = set()
        for message in trajectory.messages:
            assert message["role"] in ("system", "user", "assistant", "tool")
            if message["role"] == "assistant":
                open_calls = {call["id"] for call in message.get("tool_calls", [])}
                for call in message.get("tool_calls", []):
                    assert call["type"] == "function"
                    assert isinstance(json.loads(call["function"]["arguments"]), dict)
            elif message["role"] == "tool":
                assert message["tool_call_id"] in open_calls
                open_calls.discard(message["tool_call_id"])
    assert len({t.episode_id for t in sniffed}) == 5


@pytest.mark.parametrize("name", [SMITH, OPENHANDS, NEBIUS])
def test_records_survive_our_jsonl(samples: Path, name: str, tmp_path: Path) -> None:
    trajectories = read(samples, name)
    write_jsonl(tmp_path / "out.jsonl", trajectories, append=False)
    back = list(read_jsonl(tmp_path / "out.jsonl"))
    assert [t.model_dump() for t in back] == [t.model_dump() for t in trajectories]
    assert back[0].model_extra  # the extra keys (action_format, run_id, exit_status, …) are kept


# --------------------------------------------------------------------------------------------------------- SWE-smith


def test_swe_smith_counts_match_the_raw_messages(samples: Path) -> None:
    for trajectory, record in zip(read(samples, SMITH), raw(samples, SMITH)):
        assistant = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        observations = [m for m in record["messages"][2:] if m["role"] == "user"]
        assert trajectory.num_turns == len(assistant)
        assert trajectory.num_tool_calls == sum(text.count("<function=") for text in assistant)
        assert trajectory.malformed_tool_calls == 0
        assert sum(m["role"] == "tool" for m in trajectory.messages) == len(observations)
        assert len(trajectory.messages) == len(record["messages"])
        assert {"action_format": "xml", "traj_id": record["traj_id"]}.items() <= trajectory.model_extra.items()


def test_swe_smith_spot_values(samples: Path) -> None:
    trajectories = read(samples, SMITH)
    first = trajectories[0]
    assert first.task_id == "arrow-py__arrow.1d70d009.lm_rewrite__nuzjfyur"
    assert first.episode_id == "arrow-py__arrow.1d70d009.lm_rewrite__nuzjfyur.l13ggwmx_1"
    assert first.model == "claude-3-7-sonnet-20250219"
    assert first.messages[1]["content"].startswith(
        "<uploaded_files>\n/testbed\n</uploaded_files>\nI've uploaded a "
        "python code repository in the directory /testbed."
    )
    call = first.messages[2]["tool_calls"][0]["function"]
    assert call["name"] == "bash"
    assert json.loads(call["arguments"]) == {
        "command": 'find /testbed -type f -name "*.py" | grep -v "__pycache__" | sort'
    }
    assert first.messages[2]["content"].endswith("locate the Arrow class implementation:")
    assert first.messages[3] == {
        "role": "tool",
        "tool_call_id": first.messages[2]["tool_calls"][0]["id"],
        "name": "bash",
        "content": record_content(samples, 0, 3),
    }
    assert first.messages[-1]["tool_calls"][0]["function"]["name"] == "submit"
    assert [t["function"]["name"] for t in first.tools] == ["bash", "submit", "str_replace_editor"]
    editor = first.tools[2]["function"]["parameters"]
    assert editor["properties"]["command"]["enum"] == ["view", "create", "str_replace", "insert", "undo_edit"]
    assert editor["properties"]["insert_line"]["type"] == "integer"
    assert editor["required"] == ["command", "path"]
    assert [t.resolved for t in trajectories] == [True] * 5 and [t.reward for t in trajectories] == [1.0] * 5
    # the set's `patch` column does not belong to these runs: three are diffs of other repositories (kept aside as
    # mismatched_patch), two are empty although the runs resolved (one shows its diff in the submit review)
    assert [t.patch for t in trajectories] == [None] * 5
    foreign = [(t.model_extra or {}).get("mismatched_patch", "").split(" b/")[0] for t in trajectories]
    assert foreign == [
        "diff --git a/autograd/numpy/numpy_jvps.py",
        "diff --git a/deepdiff/diff.py",
        "diff --git a/astroid/decorators.py",
        "",
        "",
    ]
    assert (
        [t.model_extra["mismatched_patch"] for t in trajectories[:3]]
        == [  # type: ignore[index]
            r["patch"] for r in raw(samples, SMITH)[:3]
        ]
    )
    # a typed parameter (array in the system prompt) is decoded
    ranges = [
        json.loads(c["function"]["arguments"])["view_range"]
        for t in trajectories
        for m in t.messages
        for c in m.get("tool_calls", [])
        if "view_range" in c["function"]["arguments"]
    ]
    assert ranges and all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r) for r in ranges)


def record_content(samples: Path, record: int, message: int) -> str:
    return raw(samples, SMITH)[record]["messages"][message]["content"]


def _openhands_text(content: str, call: dict[str, Any]) -> str:
    """OpenHands' encoder of a tool call as text (fn_call_converter), to check the parse is its exact inverse."""
    text = f"<function={call['name']}>\n"
    for key, value in json.loads(call["arguments"]).items():
        multiline = isinstance(value, str) and "\n" in value
        shown = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        text += f"<parameter={key}>" + ("\n" if multiline else "") + shown + ("\n" if multiline else "")
        text += "</parameter>\n"
    return (content + "\n\n" + text + "</function>").lstrip()


def test_swe_smith_xml_actions_are_parsed_losslessly(samples: Path) -> None:
    checked = 0
    for trajectory, record in zip(read(samples, SMITH), raw(samples, SMITH)):
        originals = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        parsed = [m for m in trajectory.messages if m["role"] == "assistant"]
        for original, message in zip(originals, parsed, strict=True):
            assert _openhands_text(message["content"], message["tool_calls"][0]["function"]) == original
            checked += 1
    assert checked == 116


# -------------------------------------------------------------------------------------------------------- OpenHands


def test_openhands_counts_match_the_raw_messages(samples: Path) -> None:
    for trajectory, record in zip(read(samples, OPENHANDS), raw(samples, OPENHANDS)):
        assert trajectory.num_turns == sum(m["role"] == "assistant" for m in record["messages"])
        assert trajectory.num_tool_calls == sum(len(m["tool_calls"] or []) for m in record["messages"])
        assert [m["role"] for m in trajectory.messages] == [m["role"] for m in record["messages"]]
        assert trajectory.malformed_tool_calls == 0


def test_openhands_spot_values(samples: Path) -> None:
    trajectories = read(samples, OPENHANDS)
    first = trajectories[0]
    assert (first.task_id, first.group) == ("python__mypy-15976", 0)
    assert first.episode_id == "python__mypy-15976/gpt-4o-2024-08-06_maxiter_50_N_v2.1-no-hint-train-t0-run_1"
    assert first.model == "gpt-4o-2024-08-06" and first.model_extra["max_iterations"] == 50  # type: ignore[index]
    assert first.model_extra["source_instance_id"] == "python__mypy-15976_0"  # type: ignore[index]
    assert first.messages[1]["content"].startswith("<uploaded_files>\n/workspace/python__mypy__1.6\n</uploaded_files>")
    assert first.messages[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_wmUMCvkWsBrXZdFlTSwE3sy6",
                "type": "function",
                "function": {
                    "name": "str_replace_editor",
                    "arguments": '{"command":"view","path":"/workspace/python__mypy__1.6","view_range":[0,-1]}',
                },
            }
        ],
    }
    assert first.messages[3] == {
        "role": "tool",
        "tool_call_id": "call_wmUMCvkWsBrXZdFlTSwE3sy6",
        "name": "str_replace_editor",
        "content": "OBSERVATION:\nERROR:\nThe `view_range` parameter is not allowed when `path` points to a directory.",
    }
    assert first.messages[-1]["tool_calls"][0]["function"]["name"] == "finish"
    names = [t["function"]["name"] for t in first.tools]
    assert names == ["execute_bash", "finish", "str_replace_editor"]
    bash = first.tools[0]["function"]["parameters"]
    assert list(bash["properties"]) == ["command"] and "enum" not in bash["properties"]["command"]  # nulls dropped
    assert first.tools[1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert [t.group for t in trajectories] == [0, 4, 1, 0, 4]
    assert [t.resolved for t in trajectories] == [True] * 5
    assert all(t.patch and t.patch.startswith("diff --git") for t in trajectories)
    assert first.test_report and first.test_report["report"]["resolved"] is True
    # the last one used all 30 iterations and never called finish
    assert [t.truncation for t in trajectories] == [None, None, None, None, "max_turns"]


# ------------------------------------------------------------------------------------------- nebius SWE-agent (ai)


def test_swe_agent_counts_match_the_raw_trajectory(samples: Path) -> None:
    for trajectory, record in zip(read(samples, NEBIUS), raw(samples, NEBIUS)):
        ai = [step["text"] for step in record["trajectory"] if step["role"] == "ai"]
        assert trajectory.num_turns == len(ai)
        assert trajectory.num_tool_calls == sum(text.count("```") // 2 for text in ai)
        roles = [step["role"] for step in record["trajectory"]]
        assert [m["role"] for m in trajectory.messages] == [
            "assistant" if r == "ai" else "tool" if r == "user" and i > 1 else r for i, r in enumerate(roles)
        ]


def test_swe_agent_spot_values(samples: Path) -> None:
    trajectories = read(samples, NEBIUS)
    first = trajectories[0]
    assert (first.task_id, first.group) == ("tomerfiliba__plumbum-366", 17)
    assert first.model == "swe-agent-llama-70b" and first.model_extra["exit_status"] == "submitted"  # type: ignore
    assert first.messages[0]["content"].startswith("SETTING: You are an autonomous programmer")
    assert first.messages[1]["content"].startswith(
        "We're currently solving the following issue within our "
        "repository. Here's the issue text:\nISSUE:\nSyntaxError in plumbum"
    )
    commands = [
        json.loads(m["tool_calls"][0]["function"]["arguments"])["command"]
        for m in first.messages
        if m["role"] == "assistant"
    ]
    assert commands[0] == "ls -F" and commands[-1] == "submit"
    assert commands[3] == "edit 5:5\nimport plumbum.cli as cli\nend_of_edit"
    assert first.messages[2]["content"].startswith("To start addressing the issue")
    assert "```" not in first.messages[2]["content"]
    assert first.messages[3]["content"].endswith("(Open file: n/a)\n(Current directory: /plumbum)\nbash-$")
    assert [t["function"]["name"] for t in first.tools] == ["bash"]
    assert [t.resolved for t in trajectories] == [True] * 5
    assert first.patch and "+import plumbum.cli as cli" in first.patch
    assert first.test_report and "All tests passed." in first.test_report["eval_logs"]
    assert trajectories[3].model == "swe-agent-llama-405b"


def test_swe_agent_actions_are_parsed_losslessly(samples: Path) -> None:
    for trajectory, record in zip(read(samples, NEBIUS), raw(samples, NEBIUS)):
        originals = [step["text"] for step in record["trajectory"] if step["role"] == "ai"]
        parsed = [m for m in trajectory.messages if m["role"] == "assistant"]
        for original, message in zip(originals, parsed, strict=True):
            command = json.loads(message["tool_calls"][0]["function"]["arguments"])["command"]
            # only the whitespace between the thought and the block is not kept
            assert original in (f"{message['content']}{sep}```\n{command}\n```" for sep in ("\n", "\n\n"))


# ------------------------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("name", [SMITH, OPENHANDS, NEBIUS])
def test_streaming_in_tiny_chunks_equals_json_load(samples: Path, name: str) -> None:
    records = [value for _, value in iter_records(samples / name, chunk_chars=97)]
    assert records == raw(samples, name)


def test_jsonl_and_gzip_read_like_the_json_list(samples: Path, tmp_path: Path) -> None:
    records = raw(samples, NEBIUS)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "set.jsonl").write_text(lines)
    with gzip.open(tmp_path / "set.jsonl.gz", "wt") as handle:
        handle.write(lines)
    expected = [t.model_dump() for t in read(samples, NEBIUS)]
    assert [t.model_dump() for t in read_trajectories(tmp_path / "set.jsonl")] == expected
    assert [t.model_dump() for t in read_trajectories(tmp_path / "set.jsonl.gz")] == expected


def test_iter_records_shapes(tmp_path: Path) -> None:
    cases = {
        "empty": ("", []),
        "empty list": (" [ ] ", []),
        "one object": ('{"a": [1, "x]"]}', [{"a": [1, "x]"]}]),
        "list": ('[{"a": 1},\n {"b": "\\u00e9"}]', [{"a": 1}, {"b": "é"}]),
        "jsonl": ('{"a": 1}\n\n{"b": 2}\n', [{"a": 1}, {"b": 2}]),
    }
    for label, (text, expected) in cases.items():
        (tmp_path / "f").write_text(text)
        for chunk in (1, 3, 1 << 20):
            assert [v for _, v in iter_records(tmp_path / "f", chunk_chars=chunk)] == expected, (label, chunk)


# ------------------------------------------------------------------------------------------------------- bad input


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "fmt,record",
    [
        ("swe-smith", {"instance_id": "a__b-1", "resolved": True}),
        ("swe-gym-openhands", {"run_id": "r", "messages": []}),
        ("swe-agent", {"instance_id": "a__b-1", "model_name": "m", "target": False}),
    ],
)
def test_missing_field_names_file_and_record(tmp_path: Path, fmt: str, record: dict[str, Any]) -> None:
    good = {
        "swe-smith": {"instance_id": "a__b-1", "messages": [], "traj_id": "t"},
        "swe-gym-openhands": {"instance_id": "a__b-1", "run_id": "r", "messages": []},
        "swe-agent": {"instance_id": "a__b-1", "trajectory": []},
    }[fmt]
    path = _write(tmp_path, json.dumps([good, good, record]))
    reader = read_trajectories(path, format=fmt)
    assert len([next(reader), next(reader)]) == 2  # the good records before it stream out first
    with pytest.raises(ReaderError, match=r"bad\.json: record 2\b.*missing required field") as info:
        next(reader)
    assert str(path) in str(info.value)


def test_bad_message_and_bad_json_name_the_record(tmp_path: Path) -> None:
    step = {"role": "robot", "text": "hi"}
    path = _write(tmp_path, json.dumps([{"instance_id": "x__y-1_0", "trajectory": [step]}]))
    with pytest.raises(ReaderError, match=r"record 0 \(x__y-1_0\): trajectory step 0: unknown role 'robot'"):
        list(read_trajectories(path))
    path = _write(tmp_path, '[{"instance_id": "a", "messages": [], "traj_id": "t"}, {"instance_id": "b" "x"}]')
    with pytest.raises(ReaderError, match=r"bad\.json: record 1: invalid JSON"):
        list(read_trajectories(path))
    path = _write(tmp_path, '[{"instance_id": "a", "messages": [], "traj_id": "t"}, {"instance_id": "b", "mess')
    with pytest.raises(ReaderError, match=r"record 1: invalid JSON \(the file ends inside this record\)"):
        list(read_trajectories(path, format="swe-smith"))
    path = _write(tmp_path, '[{"instance_id": "a", "messages": [], "traj_id": "t"}')
    with pytest.raises(ReaderError, match=r"record 1: unexpected end of file"):
        list(read_trajectories(path))
    path = _write(tmp_path, '[{"id": 1}]')
    with pytest.raises(ReaderError, match=r"record 0: cannot tell the trajectory format"):
        list(read_trajectories(path))
    with pytest.raises(ValueError, match="unknown trajectory format"):
        read_trajectories(path, format="sharegpt")


# --------------------------------------------------------------------------------- variants the samples do not show


def test_swe_smith_tool_split_with_string_messages() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": "fix it"},
        {
            "role": "assistant",
            "content": "Look first.",
            "thought": "Look first.",
            "action": "ls",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "bash", "arguments": {"command": "ls"}}}
            ],
        },
        {"role": "tool", "content": "OBSERVATION:\na.py", "tool_call_ids": ["toolu_1"]},
        [
            {
                "role": "assistant",
                "content": "Done.",
                "tool_calls": [
                    {"id": "toolu_2", "type": "function", "function": {"name": "submit", "arguments": "{}"}}
                ],
            }
        ],
    ]
    record = {
        "instance_id": "o__r.1.x",
        "messages": json.dumps(messages),
        "resolved": False,
        "model": "m",
        "traj_id": "o__r.1.x.abc",
        "patch": "",
    }
    assert sniff_format(record) == "swe-smith"
    trajectory = convert_record(record)
    assert trajectory.model_extra == {"action_format": "tool"}
    assert trajectory.episode_id == "o__r.1.x.abc"
    assert (trajectory.num_turns, trajectory.num_tool_calls, trajectory.malformed_tool_calls) == (2, 2, 0)
    assert trajectory.messages[0]["content"] == "You are a helpful assistant."
    assert trajectory.messages[2]["tool_calls"][0]["function"]["arguments"] == '{"command": "ls"}'
    assert "thought" not in trajectory.messages[2]
    assert trajectory.messages[3] == {"role": "tool", "content": "OBSERVATION:\na.py", "tool_call_id": "toolu_1"}
    assert (trajectory.resolved, trajectory.reward, trajectory.patch) == (False, 0.0, None)


def test_swe_smith_ticks_split_and_a_turn_without_action() -> None:
    record = {
        "instance_id": "o__r.1.x",
        "resolved": True,
        "traj_id": "t",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "task"},
            {"role": "assistant", "content": "Let me look.\n\n```\nls -a\n```"},
            {"role": "user", "content": "OBSERVATION:\n."},
            {"role": "assistant", "content": "I think I am done."},
            {"role": "user", "content": "Your output was not formatted correctly."},
            {"role": "assistant", "content": "Submitting.\n```bash\nsubmit\n```\n"},
        ],
    }
    trajectory = convert_record(record, format="swe_smith")
    assert trajectory.model_extra["action_format"] == "ticks"  # type: ignore[index]
    assert [m["role"] for m in trajectory.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert (trajectory.num_turns, trajectory.num_tool_calls, trajectory.malformed_tool_calls) == (3, 2, 1)
    assert trajectory.messages[4] == {"role": "assistant", "content": "I think I am done."}
    assert trajectory.tools[0]["function"]["name"] == "bash"


def test_xml_parser_rules() -> None:
    text = (
        "I'll call <function=x> later.\n\n<function=str_replace_editor>\n<parameter=command>str_replace</parameter>"
        "\n<parameter=old_str>\n    a = '</parameter>'\n</parameter>\n<parameter=new_str>b</parameter>\n"
        "<parameter=view_range>[1, 5]</parameter>\n</function>\n"
    )
    content, name, arguments = parse_xml_action(text, {"str_replace_editor": {"view_range": "array"}})  # type: ignore
    assert content == "I'll call <function=x> later."
    assert name == "str_replace_editor"
    assert arguments == {
        "command": "str_replace",
        "old_str": "    a = '</parameter>'",
        "new_str": "b",
        "view_range": [1, 5],
    }
    assert parse_xml_action("<function=submit>\n</function>") == ("", "submit", {})
    assert parse_xml_action("<function=bash>\n<parameter=command>ls</parameter>\n</function>\nand more") is None
    assert parse_xml_action("<function=bash>\n<parameter=command>ls</parameter>") is None
    assert parse_xml_action("no call") is None
    assert tools_from_prompt("no functions here") == []


def test_fenced_action_rules() -> None:
    nested = "Write the doc.\n```\ncreate README.md\n```md\n# t\n```\nend\n```"
    assert parse_fenced_action(nested) == (
        "Write the doc.",
        "bash",
        {"command": "create README.md\n```md\n# t\n```\nend"},
    )
    two = "Example:\n```python\nprint(1)\n```\nNow run:\n```\npython a.py\n```"
    assert parse_fenced_action(two) == (
        "Example:\n```python\nprint(1)\n```\nNow run:",
        "bash",
        {"command": "python a.py"},
    )
    assert parse_fenced_action("no block") is None
    assert parse_fenced_action("open block\n```\nls\n") is None


def test_patch_check() -> None:
    patch = "diff --git a/pkg/mod.py b/pkg/mod.py\n--- a/pkg/mod.py\n+++ b/pkg/mod.py\n@@ -1 +1 @@\n-a\n+b\n"
    edit = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "str_replace_editor", "arguments": '{"path": "/testbed/pkg/mod.py"}'},
                }
            ],
        }
    ]
    assert checked_patch(patch, edit) == (patch, {})
    assert checked_patch(patch, [{"role": "user", "content": "other/file.py"}]) == (None, {"mismatched_patch": patch})
    by_name = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"command": "cd pkg && sed -i s/a/b/ mod.py"}'},
                }
            ],
        }
    ]
    assert checked_patch(patch, by_name) == (patch, {})
    assert checked_patch(patch, [{"role": "user", "content": "see pkg/mod.pyc and old_mod.py"}])[0] is None
    assert checked_patch("", edit) == (None, {}) and checked_patch(None, edit) == (None, {})
    assert checked_patch("not a diff", edit) == ("not a diff", {})


def test_formats_registry() -> None:
    assert set(FORMATS) == {"swe-smith", "swe-gym-openhands", "swe-agent", "mini-swe-agent"}
