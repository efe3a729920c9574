"""The pair miner end to end on synthetic trajectories built to hit each stage of the cascade: exact funnel counts,
the masking guarantee (checked here independently of the miner's own check), stable ids, byte-identical reruns,
the judge against a real HTTP server on loopback, and the CLI's errors.

The fixture set (repo acme/widgets at commit c0ffee12 unless said otherwise; one trajectory per instance except t1):

| traj | instance | edits | issue | outcome |
|---|---|---|---|---|
| t1, t1b | bug1 | core.py `Parser.parse` | empty stream → IndexError | resolved |
| t2 | bug2 | core.py `Parser.parse` | related to bug1 | resolved |
| t3 | bug3 | core.py `Parser.parse` | unrelated | resolved |
| t4 | bug4 | core.py `render` | unrelated | resolved |
| t5 | bug5 | util.py `helper` | unrelated | resolved |
| t6 | bug6 | core.py `Parser.parse` | related to bug1 | failed (never a positive) |
| t7 | bug7 | — (no patch) | unrelated | resolved |
| t8 | acme/widgets @ deadbeef | core.py `Parser.parse` | related | resolved (other commit) |
| t9 | other/lib @ 0123abcd | core.py `Parser.parse` | related | resolved (other repo) |

t1…t5 are in our own JSONL, the rest in a SWE-smith-format JSON list, so both readers and both passes are exercised.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from agent.trajectory import Trajectory
from trainer.pairs.__main__ import app
from trainer.pairs.mine import MinerConfig, MinerError, mine, pair_id, signature, similarity
from trainer.pairs.record import load_pairs

CASCADE_ONLY = {
    "min_stage": "related_issue",
    "similarity_threshold": 0.2,
    "balance_bound": 1.0,
    "audit_target": None,
    "issue_term_max_df": None,
}
"""The cascade as the paper runs it, without the real-data construction (issue-term masking, balanced selection,
adversarial filtering; tested in test_mine_real.py): this file's fixture set is built to hit each stage exactly."""


def cascade_config(**fields: Any) -> MinerConfig:
    """CASCADE_ONLY with `fields` on top; the pool holds exactly the pairs a plain cascade would choose."""
    merged = {**CASCADE_ONLY, **fields}
    merged.setdefault("pool_per_anchor", merged.get("pairs_per_anchor", 1))
    return MinerConfig(**merged)


ROOT = Path(__file__).resolve().parents[2]
ISSUES = {
    "bug1": "Parser.parse raises IndexError when the token stream is empty. Calling parse on an empty token stream "
    "should return an empty tree, but the parser indexes the first token unconditionally and crashes.",
    "bug2": "Parser.parse crashes with IndexError on a token stream that holds only a comment: the parser drops the "
    "comment, then indexes the first token of the empty stream instead of returning an empty tree.",
    "bug3": "Nested brackets come out with the wrong indentation in pretty printer output; expected four spaces per "
    "level, got two.",
    "bug4": "render() drops trailing whitespace inside preformatted blocks, so code samples lose their alignment.",
    "bug5": "helper() rounds negative numbers toward zero instead of down.",
    "bug6": "IndexError from Parser.parse when the token stream ends early: the parser indexes the next token of an "
    "empty stream and crashes instead of returning an empty tree.",
    "bug7": "Typo in the README installation section.",
}


@dataclass
class Edit:
    path: str
    header: str
    """The hunk header's section (`def parse(self, tokens):` as git prints it)."""
    before: list[str]
    old: list[str]
    new: list[str]
    after: list[str]

    def patch(self) -> str:
        body = (
            [f" {line}" for line in self.before]
            + [f"-{line}" for line in self.old]
            + [f"+{line}" for line in self.new]
            + [f" {line}" for line in self.after]
        )
        n_old = len(self.before) + len(self.old) + len(self.after)
        n_new = len(self.before) + len(self.new) + len(self.after)
        return (
            f"diff --git a/{self.path} b/{self.path}\nindex 1111111..2222222 100644\n--- a/{self.path}\n"
            f"+++ b/{self.path}\n@@ -10,{n_old} +10,{n_new} @@ {self.header}\n" + "\n".join(body) + "\n"
            # a scratch script at the top level: not an edited file, but its lines are masked too
            "diff --git a/reproduce.py b/reproduce.py\nnew file mode 100644\nindex 0000000..3333333\n"
            "--- /dev/null\n+++ b/reproduce.py\n@@ -0,0 +1,2 @@\n+from widgets import core\n"
            f"+print(core.Parser().parse([]))  # {self.new[-1].strip()[:12]}\n"
        )


def parse_edit(n: int) -> Edit:
    return Edit(
        "widgets/core.py",
        "class Parser:",
        ["    def parse(self, tokens):", '        """Parse a token stream into a tree."""'],
        [f"        first = tokens[{n - 1}]  # bug {n}"],
        [
            "        if not tokens:",
            f"            return self.empty_tree(marker={n})",
            f"        first = tokens[0] if len(tokens) > {n} else None",
        ],
        ["        return self.build(first, tokens[1:])"],
    )


EDITS = {
    "bug1": parse_edit(1),
    "bug2": parse_edit(2),
    "bug3": parse_edit(3),
    "bug6": parse_edit(6),
    "bug4": Edit(
        "widgets/core.py",
        "def render(node):",
        ["    text = node.text"],
        ["    text = text.rstrip()  # strips preformatted blocks"],
        ["    if not node.preformatted:", "        text = text.rstrip()  # keep code alignment"],
        ["    return text"],
    ),
    "bug5": Edit(
        "widgets/util.py",
        "def helper(x):",
        ["    y = float(x)"],
        ["    return int(y)  # rounds to zero"],
        ["    return math.floor(y)  # rounds down always"],
        [],
    ),
}


def messages(
    issue: str, edit: Edit | None, extra_thought: str = "", test_name: str = "test_core"
) -> list[dict[str, Any]]:
    """An OpenHands-style episode: view, str_replace, a heredoc-written script, sed -i, git diff, finish."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful software engineer."},
        {
            "role": "user",
            "content": "<uploaded_files>\n/repo\n</uploaded_files>\nConsider the following issue "
            f"description:\n\n<issue_description>\n{issue}\n</issue_description>\n\nFix it.",
        },
    ]
    calls = 0

    def call(name: str, arguments: dict[str, Any], output: str, thought: str = "") -> None:
        nonlocal calls
        calls += 1
        msgs.append(
            {
                "role": "assistant",
                "content": thought,
                "tool_calls": [
                    {
                        "id": f"c{calls}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                ],
            }
        )
        msgs.append({"role": "tool", "tool_call_id": f"c{calls}", "name": name, "content": output})

    call(
        "execute_bash",
        {"command": "ls /repo/widgets"},
        "core.py\nutil.py\n__init__.py",
        "Let me look around." + extra_thought,
    )
    if edit is None:
        call("execute_bash", {"command": "grep -rn install README.md"}, "README.md:3: pip instal widgets")
        call("finish", {}, "done")
        return msgs
    shown = edit.before + edit.old + edit.after
    view = "\n".join(f"{10 + i:6d}\t{line}" for i, line in enumerate(shown))
    call(
        "str_replace_editor",
        {"command": "view", "path": f"/repo/{edit.path}"},
        f"Here's the result of running `cat -n` on /repo/{edit.path}:\n{view}",
    )
    new_view = "\n".join(f"{10 + i:6d}\t{line}" for i, line in enumerate(edit.before + edit.new + edit.after))
    call(
        "str_replace_editor",
        {
            "command": "str_replace",
            "path": f"/repo/{edit.path}",
            "old_str": "\n".join(edit.old),
            "new_str": "\n".join(edit.new),
        },
        f"The file /repo/{edit.path} has been edited. Here's the result of running `cat -n` on a snippet:\n"
        f"{new_view}\nReview the changes.",
        thought="I will change it to:\n```python\n" + "\n".join(edit.new) + "\n```",
    )
    call(
        "execute_bash",
        {
            "command": "cat > /repo/reproduce.py <<'EOF'\nfrom widgets import core\n"
            "print(core.Parser().parse([]))\nEOF\npython /repo/reproduce.py"
        },
        "[]",
    )
    call("execute_bash", {"command": f"sed -i 's/{edit.new[-1].strip()[:8]}/x/' /repo/{edit.path}"}, "")
    call("execute_bash", {"command": "cd /repo && git diff"}, edit.patch())
    call("execute_bash", {"command": f"python -m pytest -q tests -k {test_name}"}, "3 passed in 0.2s")
    call("finish", {}, "done")
    return msgs


@dataclass
class Spec:
    episode: str
    instance: str
    task_id: str
    resolved: bool
    extra_thought: str = ""

    @property
    def edit(self) -> Edit | None:
        return EDITS.get(self.instance)

    @property
    def issue(self) -> str:
        return ISSUES.get(self.instance, ISSUES["bug2"])


def smith_id(instance: str, repo: str = "acme__widgets", commit: str = "c0ffee12") -> str:
    return f"{repo}.{commit}.func_pm_{instance}"


SPECS = [
    Spec("t1", "bug1", smith_id("bug1"), True),
    Spec("t2", "bug2", smith_id("bug2"), True, extra_thought=" MAGIC_CUE"),
    Spec("t3", "bug3", smith_id("bug3"), True),
    Spec("t4", "bug4", smith_id("bug4"), True),
    Spec("t5", "bug5", smith_id("bug5"), True),
    Spec("t1b", "bug1", smith_id("bug1"), True),
    Spec("t6", "bug6", smith_id("bug6"), False),
    Spec("t7", "bug7", smith_id("bug7"), True),
    Spec("t8", "bug2", smith_id("bug8", commit="deadbeef"), True),
    Spec("t9", "bug2", smith_id("bug9", repo="other__lib", commit="0123abcd"), True),
]
EDITS["bug8"] = EDITS["bug9"] = parse_edit(8)


def spec_patch(spec: Spec) -> str | None:
    edit = EDITS.get(spec.task_id.rsplit("_", 1)[-1]) if spec.episode in ("t8", "t9") else spec.edit
    return edit.patch() if edit else None


def write_inputs(folder: Path) -> list[Path]:
    own, smith = folder / "own.jsonl", folder / "smith.json"
    with own.open("w") as handle:
        for spec in SPECS[:5]:
            trajectory = Trajectory(
                task_id=spec.task_id,
                episode_id=spec.episode,
                resolved=spec.resolved,
                reward=float(spec.resolved),
                patch=spec_patch(spec),
                messages=messages(spec.issue, spec.edit, spec.extra_thought, f"test_{spec.instance}"),
            )
            handle.write(trajectory.model_dump_json() + "\n")
    records = []
    for spec in SPECS[5:]:
        edit = EDITS.get(spec.task_id.rsplit("_", 1)[-1]) if spec.episode in ("t8", "t9") else spec.edit
        records.append(
            {
                "instance_id": spec.task_id,
                "traj_id": spec.episode,
                "resolved": spec.resolved,
                "model": "m",
                "patch": spec_patch(spec) or "",
                "messages": messages(spec.issue, edit, spec.extra_thought, f"test_{spec.instance}"),
            }
        )
    smith.write_text(json.dumps(records))
    return [own, smith]


@pytest.fixture()
def inputs(tmp_path: Path) -> list[Path]:
    return write_inputs(tmp_path)


def counts(result: Any) -> dict[str, int]:
    return dict(result.funnel.stages)


# ------------------------------------------------------------------------------------------------------- the fixture


def test_fixture_issues_are_related_as_designed() -> None:
    sig = {name: signature(text, 128) for name, text in ISSUES.items()}
    for a, b in [("bug1", "bug2"), ("bug1", "bug6"), ("bug2", "bug6")]:
        assert similarity(sig[a], sig[b], 128) >= 0.2, (a, b)
    for other in ("bug1", "bug2", "bug6"):
        assert similarity(sig["bug3"], sig[other], 128) < 0.2


# ------------------------------------------------------------------------------------------------------- the cascade


def test_funnel_counts_paper_cascade(inputs: list[Path], tmp_path: Path) -> None:
    result = mine(inputs, tmp_path / "pairs.jsonl", cascade_config(seed=0))
    f = result.funnel
    assert f.trajectories == 10 and f.duplicates == 0 and f.unknown_repo == 0
    assert f.with_edits == 9
    assert f.ineligible == {"failed": 1, "no patch": 1}
    assert f.eligible_anchors == 8 and f.anchors == 7  # t1 / t1b: one anchor per instance
    # stage 1: block of 8 at c0ffee12 minus the anchor's own instance; t8, t9 have no partner
    # stage 2: core.py editors t1,t1b,t2,t3,t4,t6; stage 3: Parser.parse editors t1,t1b,t2,t3,t6;
    # stage 4: bug1/bug2/bug6 pairwise related
    assert counts(result) == {
        "same_repo_commit": 6 + 7 * 4,
        "same_file": 4 + 5 + 5 + 5,
        "capped": 19,
        "same_function": 3 + 4 + 4,
        "related_issue": 2 + 3,
        "pooled": 2,
        "masked": 2,
        "selected": 2,
        "filtered": 2,
        "judged": 2,
        "written": 2,
    }
    pairs = load_pairs(tmp_path / "pairs.jsonl")
    assert [p.funnel_stage for p in pairs] == ["related_issue", "related_issue"]
    by_anchor = {p.provenance["positive"]["task_id"]: p for p in pairs}
    assert set(by_anchor) == {smith_id("bug1"), smith_id("bug2")}
    for pair in pairs:
        assert pair.provenance["negative"]["task_id"] in {smith_id("bug1"), smith_id("bug2"), smith_id("bug6")}
        assert pair.provenance["negative"]["task_id"] != pair.provenance["positive"]["task_id"]
        assert pair.provenance["shared_functions"] == ["widgets/core.py::Parser.parse"]
        assert pair.provenance["similarity"] >= 0.2
        assert pair.judge is None
    assert f.pairs_by_stage == {"related_issue": 2}
    report = json.loads((tmp_path / "pairs.report" / "funnel.json").read_text())
    assert [row["count"] for row in report["funnel"]] == [34, 19, 19, 11, 5, 2, 2, 2, 2, 2, 2]
    assert (tmp_path / "pairs.report" / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_stage_yields_pairs_when_min_stage_is_the_first(inputs: list[Path], tmp_path: Path) -> None:
    result = mine(inputs, tmp_path / "pairs.jsonl", cascade_config(min_stage="same_repo_commit"))
    pairs = {p.provenance["positive"]["task_id"]: p for p in load_pairs(tmp_path / "pairs.jsonl")}
    assert result.funnel.stages["selected"] == 5  # t8 and t9 have no candidate at all
    assert {task: p.funnel_stage for task, p in pairs.items()} == {
        smith_id("bug1"): "related_issue",
        smith_id("bug2"): "related_issue",
        smith_id("bug3"): "same_function",
        smith_id("bug4"): "same_file",
        smith_id("bug5"): "same_repo_commit",
    }
    assert pairs[smith_id("bug4")].provenance["shared_files"] == ["widgets/core.py"]
    assert pairs[smith_id("bug4")].provenance["shared_functions"] == []


def test_pairs_per_anchor_takes_distinct_instances(inputs: list[Path], tmp_path: Path) -> None:
    result = mine(inputs, tmp_path / "pairs.jsonl", cascade_config(min_stage="same_function", pairs_per_anchor=2))
    pairs = load_pairs(tmp_path / "pairs.jsonl")
    assert result.funnel.stages["selected"] == 6 == len(pairs)  # bug1, bug2, bug3: two each
    per_anchor: dict[str, list[str]] = {}
    for pair in pairs:
        per_anchor.setdefault(pair.provenance["positive"]["task_id"], []).append(pair.provenance["negative"]["task_id"])
    assert all(len(set(negatives)) == 2 for negatives in per_anchor.values())
    # the related confounders come before the merely same-function ones
    assert set(per_anchor[smith_id("bug1")]) == {smith_id("bug2"), smith_id("bug6")}


def test_resolved_only_anchors_and_unbounded_instances(inputs: list[Path], tmp_path: Path) -> None:
    result = mine(inputs, tmp_path / "a.jsonl", cascade_config(anchor_outcome="any", max_anchors_per_instance=5))
    assert result.funnel.eligible_anchors == 9 and result.funnel.anchors == 9  # t6 (failed) and t1b join
    # t6 as anchor: related to t1/t1b (one instance) and t2 -> 1 pair; t1b too
    assert result.funnel.stages["selected"] == 4
    strict = mine(inputs, tmp_path / "b.jsonl", cascade_config(anchor_outcome="resolved"))
    assert strict.funnel.ineligible == {"not marked resolved": 1, "no patch": 1}


def test_candidate_cap_is_seeded_and_counted(inputs: list[Path], tmp_path: Path) -> None:
    first = mine(inputs, tmp_path / "a.jsonl", cascade_config(max_candidates_per_anchor=2, min_stage="same_file"))
    again = mine(inputs, tmp_path / "b.jsonl", cascade_config(max_candidates_per_anchor=2, min_stage="same_file"))
    assert first.funnel.stages["same_file"] == 19
    assert first.funnel.stages["capped"] == 2 * 4  # four anchors share core.py with > 2 others
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert again.funnel.stages == first.funnel.stages


# ------------------------------------------------------------------------------------------------------- masking


def naive_patch_lines(patch: str, min_chars: int = 10) -> list[str]:
    """Independent of trainer.pairs.diffs: every +/- line of the patch body, marker off, whitespace collapsed."""
    lines = []
    for line in patch.splitlines():
        if line.startswith(("+++", "---")) or line[:1] not in "+-":
            continue
        text = " ".join(line[1:].split())
        if len(text) >= min_chars and re.search(r"\w", text):
            lines.append(text)
    return lines


def assert_no_patch_line(context: str, patch: str) -> None:
    collapsed = [" ".join(line.split()) for line in context.split("\n")]
    for patch_line in naive_patch_lines(patch):
        offenders = [line for line in collapsed if patch_line in line]
        assert not offenders, f"patch line {patch_line!r} left in context: {offenders[:2]}"


def test_masked_contexts_hold_no_line_of_the_answer_patch(inputs: list[Path], tmp_path: Path) -> None:
    mine(inputs, tmp_path / "pairs.jsonl", cascade_config(min_stage="same_repo_commit", pairs_per_anchor=3))
    pairs = load_pairs(tmp_path / "pairs.jsonl")
    assert len(pairs) >= 10
    patches = {spec.task_id: spec_patch(spec) for spec in SPECS}
    for pair in pairs:
        patch = patches[pair.provenance["positive"]["task_id"]]
        assert patch
        assert_no_patch_line(pair.positive, patch)
        assert_no_patch_line(pair.negative, patch)
        # the unmasked trajectory did hold those lines (the check is not vacuous)
        assert any(
            line in json.dumps(messages(ISSUES["bug1"], EDITS["bug1"]))
            for line in naive_patch_lines(EDITS["bug1"].patch())
        )
        # the answer describes the change without diff lines
        assert not any(line in pair.answer for line in naive_patch_lines(patch))
        assert "[issue text omitted]" in pair.positive and pair.query not in pair.positive
        assert "[patch content masked]" in pair.positive


def test_answer_names_files_and_functions(inputs: list[Path], tmp_path: Path) -> None:
    mine(inputs, tmp_path / "pairs.jsonl", cascade_config())
    pair = next(
        p for p in load_pairs(tmp_path / "pairs.jsonl") if p.provenance["positive"]["task_id"] == smith_id("bug1")
    )
    assert pair.answer == (
        "The fix edits 1 file.\n- It changes `widgets/core.py` in `Parser.parse`: replaces 1 line "
        "with 3 lines; the new code uses `self.empty_tree`, `marker`, `len`."
    )
    assert pair.query == ISSUES["bug1"]


# ------------------------------------------------------------------------------------------------ determinism


def test_same_input_and_seed_give_the_same_bytes_and_ids(inputs: list[Path], tmp_path: Path) -> None:
    config = cascade_config(min_stage="same_repo_commit", pairs_per_anchor=2, seed=7)
    mine(inputs, tmp_path / "a.jsonl", config, report_dir=tmp_path / "ra")
    mine(inputs, tmp_path / "b.jsonl", config, report_dir=tmp_path / "rb")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "ra" / "funnel.json").read_bytes() == (tmp_path / "rb" / "funnel.json").read_bytes()
    pairs = load_pairs(tmp_path / "a.jsonl")
    for pair in pairs:
        assert pair.pair_id == pair_id(
            pair.provenance["positive"]["episode_id"], pair.provenance["negative"]["episode_id"]
        )
    # another seed may choose other confounders, but a pair of the same two trajectories keeps its id
    mine(inputs, tmp_path / "c.jsonl", config.model_copy(update={"seed": 8}))
    ids_a = {(p.provenance["positive"]["episode_id"], p.provenance["negative"]["episode_id"]): p.pair_id for p in pairs}
    for pair in load_pairs(tmp_path / "c.jsonl"):
        key = (pair.provenance["positive"]["episode_id"], pair.provenance["negative"]["episode_id"])
        if key in ids_a:
            assert ids_a[key] == pair.pair_id


def test_pairs_whose_contexts_differ_only_in_masked_content_are_dropped(tmp_path: Path) -> None:
    # two instances of one function whose trajectories differ only in the issue (omitted) and the edit (masked)
    with (tmp_path / "twins.jsonl").open("w") as handle:
        for n in (1, 2):
            handle.write(
                Trajectory(
                    task_id=smith_id(f"bug{n}"),
                    episode_id=f"twin{n}",
                    resolved=True,
                    patch=parse_edit(n).patch(),
                    messages=messages(ISSUES[f"bug{n}"], parse_edit(n)),
                ).model_dump_json()
                + "\n"
            )
    result = mine([tmp_path / "twins.jsonl"], tmp_path / "pairs.jsonl", cascade_config())
    assert result.funnel.stages["pooled"] == 2 and result.funnel.stages["masked"] == 0
    assert result.funnel.masking_failures == {"contexts identical after masking": 2}
    assert load_pairs(tmp_path / "pairs.jsonl") == []


def test_why_trajectories_cannot_be_anchors(tmp_path: Path) -> None:
    scratch_only = (
        "diff --git a/reproduce.py b/reproduce.py\nnew file mode 100644\n--- /dev/null\n"
        "+++ b/reproduce.py\n@@ -0,0 +1 @@\n+print('repro')\n"
    )
    cases = [
        Trajectory(
            task_id=smith_id("s1"),
            episode_id="scratch",
            resolved=True,
            patch=scratch_only,
            messages=messages(ISSUES["bug1"], None),
        ),
        Trajectory(
            task_id="local-task",
            episode_id="norepo",
            resolved=True,
            patch=parse_edit(1).patch(),
            messages=messages(ISSUES["bug1"], parse_edit(1)),
        ),
        Trajectory(
            task_id=smith_id("s3"),
            episode_id="noissue",
            resolved=None,
            patch=parse_edit(2).patch(),
            messages=[{"role": "user", "content": "  "}],
        ),
        Trajectory(
            task_id=smith_id("s4"),
            episode_id="garbled",
            resolved=True,
            patch="diff --git a/x b/x\n@@ -1 +1 @@",
            messages=messages(ISSUES["bug2"], None),
        ),
    ]
    with (tmp_path / "odd.jsonl").open("w") as handle:
        handle.writelines(t.model_dump_json() + "\n" for t in cases)
    result = mine([tmp_path / "odd.jsonl"], tmp_path / "pairs.jsonl", cascade_config(min_stage="same_repo_commit"))
    assert result.funnel.ineligible == {
        "no issue text": 1,
        "patch edits only scratch or ignored files": 1,
        "unknown repository": 1,
        "unparseable patch": 1,
    }
    assert result.funnel.unknown_repo == 1 and result.funnel.anchors == 0
    assert result.funnel.stages["same_repo_commit"] == 0


def test_duplicate_episodes_are_skipped(inputs: list[Path], tmp_path: Path) -> None:
    result = mine(inputs + [inputs[0]], tmp_path / "pairs.jsonl", cascade_config())
    assert result.funnel.duplicates == 5 and result.funnel.trajectories == 10
    assert result.funnel.stages["selected"] == 2


# ------------------------------------------------------------------------------------------------------- the judge


class JudgeHandler(BaseHTTPRequestHandler):
    """An OpenAI-style /v1/chat/completions that judges by rule: a positive context that holds MAGIC_CUE is a
    shortcut (reject); a pair whose negative holds MAGIC_CUE gets an unreadable reply; anything else is accepted."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        prompt = body["messages"][-1]["content"]
        positive = prompt.split("<positive_context>", 1)[1].split("</positive_context>", 1)[0]
        negative = prompt.split("<negative_context>", 1)[1].split("</negative_context>", 1)[0]
        if "MAGIC_CUE" in positive:
            content = json.dumps(
                {"accept": False, "shortcut": True, "ambiguous": False, "reason": "only the positive says MAGIC_CUE"}
            )
        elif "MAGIC_CUE" in negative:
            content = "I think this one is fine."
        else:
            content = 'Verdict: {"accept": true, "shortcut": false, "ambiguous": false, "reason": "clean"}'
        data = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def judge_server() -> Iterator[str]:
    JudgeHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_verdicts_are_stored_and_rejections_kept_apart(
    inputs: list[Path], tmp_path: Path, judge_server: str
) -> None:
    """A real HTTP server on loopback speaks the chat-completions protocol; the verdicts come from a fixed rule
    because no real LLM can run in the tests (the only stand-in here)."""
    config = cascade_config(
        min_stage="same_function", pairs_per_anchor=2, judge_url=judge_server, judge_model="judge-1", seed=3
    )
    result = mine(inputs, tmp_path / "pairs.jsonl", config)
    pairs = load_pairs(tmp_path / "pairs.jsonl")
    rejected = [json.loads(line) for line in (tmp_path / "pairs.report" / "rejected.jsonl").read_text().splitlines()]
    assert len(JudgeHandler.requests) == 6 == len(pairs) + len(rejected)
    assert all(r["model"] == "judge-1" and r["temperature"] == 0.0 and r["seed"] == 3 for r in JudgeHandler.requests)
    # anchor bug2 (its trajectory says MAGIC_CUE): both its pairs are shortcut rejections
    shortcut = [r for r in rejected if r["judge"]["shortcut"]]
    assert {r["provenance"]["positive"]["task_id"] for r in shortcut} == {smith_id("bug2")} and len(shortcut) == 2
    assert all(r["judge"]["reason"] == "only the positive says MAGIC_CUE" for r in shortcut)
    # pairs with bug2 as the confounder got an unreadable reply: rejected, the reply quoted
    unreadable = [r for r in rejected if r["judge"]["shortcut"] is None]
    assert unreadable and all(r["provenance"]["negative"]["task_id"] == smith_id("bug2") for r in unreadable)
    assert all(r["judge"]["reason"].startswith("unreadable judge reply: 'I think") for r in unreadable)
    assert pairs and all(
        p.judge
        == {
            "accepted": True,
            "reason": "clean",
            "shortcut": False,
            "ambiguous": False,
            "model": "judge-1",
            "prompt_version": 2,
        }
        for p in pairs
    )
    assert result.funnel.judge == {
        "model": "judge-1",
        "accepted": len(pairs),
        "rejected": len(rejected),
        "shortcut": 2,
        "ambiguous": 0,
    }
    assert result.funnel.stages["judged"] == result.funnel.stages["written"] == len(pairs)
    assert result.funnel.stages["masked"] == 6


def test_unreachable_judge_is_a_clear_error(inputs: list[Path], tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = cascade_config(judge_url=f"http://127.0.0.1:{port}/v1", judge_model="j")
    from agent.engines.base import EngineError

    with pytest.raises(EngineError, match="unreachable"):
        mine(inputs, tmp_path / "pairs.jsonl", config)
    assert not (tmp_path / "pairs.jsonl").exists() and not (tmp_path / "pairs.jsonl.partial").exists()


# ------------------------------------------------------------------------------------------------------------ CLI


def test_cli_mines_and_prints_the_funnel(inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "mine",
            "-t",
            str(inputs[0]),
            "-t",
            str(inputs[1]),
            "--out",
            str(out),
            "--seed",
            "1",
            "--report-dir",
            str(tmp_path / "rep"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "related_issue" in result.output and "pairs written" in result.output
    # the CLI's defaults are the library's: the same bytes as mine() with MinerConfig(seed=1)
    mine(inputs, tmp_path / "library.jsonl", MinerConfig(seed=1), report_dir=tmp_path / "library")
    assert out.read_bytes() == (tmp_path / "library.jsonl").read_bytes() and len(load_pairs(out)) >= 2
    assert "audit: best label-blind baseline" in result.output
    assert (tmp_path / "rep" / "audit.json").is_file() and (tmp_path / "rep" / "audit.png").is_file()
    assert json.loads((tmp_path / "rep" / "funnel.json").read_text())["config"]["seed"] == 1


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "bad_json",
        "bad_record",
        "unknown_format",
        "half_judge",
        "bad_stage",
        "empty",
        "empty_folder",
        "truncated_gz",
    ],
)
def test_cli_user_errors_have_messages_not_tracebacks(case: str, inputs: list[Path], tmp_path: Path) -> None:
    args = ["mine", "-t", str(inputs[0]), "--out", str(tmp_path / "p.jsonl")]
    expected = ""
    if case == "missing":
        args[2], expected = str(tmp_path / "nope.json"), "nope.json: no such file"
    elif case == "bad_json":
        bad = tmp_path / "bad.jsonl"
        bad.write_text(inputs[0].read_text().splitlines()[0] + "\n{not json\n")
        args[2], expected = str(bad), "bad.jsonl: record 1: invalid JSON"
    elif case == "bad_record":
        bad = tmp_path / "bad.json"
        bad.write_text(
            json.dumps(
                [
                    {"instance_id": "a__b-1", "messages": [{"role": "user", "content": "x"}], "resolved": True},
                    {"instance_id": "a__b-2", "messages": 5},
                ]
            )
        )
        args[2], expected = str(bad), "bad.json: record 1 (a__b-2): not a readable trajectory"
    elif case == "unknown_format":
        bad = tmp_path / "odd.json"
        bad.write_text(json.dumps([{"hello": 1}]))
        args[2], expected = str(bad), "not a trajectory of any known format"
    elif case == "half_judge":
        args += ["--judge-url", "http://127.0.0.1:9/v1"]
        expected = "needs both --judge-url and --judge-model"
    elif case == "empty":
        (tmp_path / "empty.jsonl").write_text("")
        args[2], expected = str(tmp_path / "empty.jsonl"), "no trajectories in"
    elif case == "empty_folder":
        (tmp_path / "run").mkdir()
        args[2], expected = str(tmp_path / "run"), "(pass --allow-empty to write an empty pairs file)"
    elif case == "truncated_gz":
        data = gzip.compress(inputs[0].read_bytes())
        (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
        args[2], expected = str(tmp_path / "cut.jsonl.gz"), "cut.jsonl.gz: the compressed file is truncated or corrupt"
    else:
        args += ["--min-stage", "same_planet"]
        expected = "MinerConfig from the flags: min_stage"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert "Traceback" not in result.output and "Aborted" not in result.output


def test_allow_empty_writes_an_empty_pairs_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["mine", "-t", str(tmp_path / "empty.jsonl"), "--out", str(out), "--allow-empty"])
    assert result.exit_code == 0, result.output
    assert out.read_text() == ""
    assert json.loads((tmp_path / "pairs.report" / "funnel.json").read_text())["trajectories"] == 0


def test_python_dash_m_entry_point(inputs: list[Path], tmp_path: Path) -> None:
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.pairs",
            "mine",
            "-t",
            str(tmp_path / "x.json"),
            "--out",
            str(tmp_path / "p.jsonl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2
    assert "x.json: no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_library_errors_are_miner_errors(tmp_path: Path) -> None:
    with pytest.raises(MinerError, match="no trajectory files"):
        mine([], tmp_path / "p.jsonl")
