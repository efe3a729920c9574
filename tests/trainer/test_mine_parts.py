"""The miner's parts: patch → edited files and functions (the written rule, case by case), patch lines, the answer
text, masking of every kind of edit the brief names, the line scrubber against a naive substring check, issue text
extraction, repository / commit from instance ids, and the problem-statement similarity."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from agent.trajectory import Trajectory
from trainer.pairs.diffs import describe, patch_lines, summarize_patch
from trainer.pairs.masking import (
    ISSUE_PLACEHOLDER,
    LINE_PLACEHOLDER,
    PLACEHOLDER,
    issue_span,
    mask_diff_blocks,
    mask_messages,
    mask_shell,
    problem_statement,
    render,
)
from trainer.pairs.mine import repo_and_commit, signature, similarity
from trainer.pairs.scrub import LineScrubber, leaked_lines


def diff(path: str, header: str, body: list[str], status: str = "modified") -> str:
    minus = "/dev/null" if status == "added" else f"a/{path}"
    plus = "/dev/null" if status == "removed" else f"b/{path}"
    mode = {"added": "new file mode 100644\n", "removed": "deleted file mode 100644\n"}.get(status, "")
    old = sum(1 for line in body if line[:1] in " -")
    new = sum(1 for line in body if line[:1] in " +")
    start = "0,0" if status == "added" else f"1,{old}"
    end = "0,0" if status == "removed" else f"1,{new}"
    return (
        f"diff --git a/{path} b/{path}\n{mode}--- {minus}\n+++ {plus}\n@@ -{start} +{end} @@ {header}\n"
        + "\n".join(body)
        + "\n"
    )


# ------------------------------------------------------------------------------------------------------------ diffs


@pytest.mark.parametrize(
    "header, body, functions",
    [
        # the header names the function (git's python driver, or a top-level def under git's default rule)
        ("def foo(a, b):", ["     x = a", "-    return x", "+    return x + b"], ["foo"]),
        # a class header and a visible def: Class.method
        (
            "class Parser:",
            ["     def parse(self, tokens):", "-        return tokens[0]", "+        return tokens[:1]"],
            ["Parser.parse"],
        ),
        # a method whose def is outside the hunk: reported as the class (a class scope, not a function: see below)
        ("class Parser:", ["         x = 1", "-        return x", "+        return x + 1"], ["Parser"]),
        # a class attribute edited in the class body: a class scope as well
        ("", [" class Config:", "-    debug = False", "+    debug = True"], ["Config"]),
        # nested functions
        ("def outer():", ["     def inner():", "-        return 1", "+        return 2"], ["outer.inner"]),
        # a changed def line belongs to the scope it opens; the dedent closes the first scope
        (
            "",
            [
                "-def old_name(x):",
                "+def new_name(x):",
                "     return x",
                " ",
                " def other():",
                "-    pass",
                "+    return None",
            ],
            ["old_name", "new_name", "other"],
        ),
        # module-level change: the file is edited, no function is
        ("", [" import os", "-import sys", "+import re"], []),
        # a line opening with a closing bracket ends a signature and closes nothing
        (
            "class Conv:",
            [
                "     def __init__(",
                "         self,",
                "-        version: str,",
                "+        version: int,",
                "     ) -> None:",
                "-        self.v = version",
                "+        self.v = int(version)",
            ],
            ["Conv.__init__"],
        ),
        # async def, decorated
        ("", [" @app.get('/')", " async def index():", "-    return 1", "+    return 2"], ["index"]),
    ],
)
def test_python_functions_follow_the_written_rule(header: str, body: list[str], functions: list[str]) -> None:
    summary = summarize_patch(diff("pkg/mod.py", header, body))
    assert summary.error is None
    assert summary.paths == ["pkg/mod.py"]
    assert summary.files[0].functions == functions
    # same_function compares functions and methods only: a class body is not one
    classes = {"Parser", "Config"}
    assert summary.files[0].class_scopes == [name for name in functions if name in classes]
    assert summary.scopes == [f"pkg/mod.py::{name}" for name in functions if name not in classes]


def test_other_languages_use_the_hunk_header() -> None:
    summary = summarize_patch(
        diff("src/main.c", "int parse_args(int argc, char **argv)", ["-  x = 1;", "+  x = 2;"])
        + diff("README.md", "", ["-old text here", "+new text here"])
    )
    assert summary.scopes == ["src/main.c::parse_args"]
    assert summary.paths == ["src/main.c", "README.md"]


def test_scratch_files_and_file_status() -> None:
    patch = (
        diff("reproduce_error.py", "", ["+print('repro')"], status="added")
        + diff("pkg/new_module.py", "", ["+def made():", "+    return 1"], status="added")
        + diff("pkg/gone.py", "", ["-def gone():", "-    return 1"], status="removed")
    )
    summary = summarize_patch(patch)
    assert [(f.path, f.status) for f in summary.files] == [("pkg/new_module.py", "added"), ("pkg/gone.py", "removed")]
    assert summary.scopes == ["pkg/new_module.py::made", "pkg/gone.py::gone"]
    assert summarize_patch(patch, drop_top_level_new_files=False).paths[0] == "reproduce_error.py"
    text = describe(summary)
    assert "creates `pkg/new_module.py` (2 lines)" in text and "deletes `pkg/gone.py` (2 lines)" in text


def test_crlf_leading_newline_and_garbage() -> None:
    patch = "\n" + diff("a/b.py", "def f():", ["-    return 1", "+    return 2"]).replace("\n", "\r\n")
    assert summarize_patch(patch).scopes == ["a/b.py::f"]
    assert summarize_patch(None).files == [] and summarize_patch("  ").files == []
    broken = summarize_patch("diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n-a\n")
    assert broken.error and broken.error.startswith("unparseable patch") and broken.files == []
    # patch lines still come out of an unparseable patch (masking must not depend on a clean diff)
    assert patch_lines("--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n-value = compute(1)\n", 10) == ["value = compute(1)"]


def test_patch_lines_definition() -> None:
    patch = diff(
        "m.py",
        "def f():",
        [
            "     unchanged_context_line = 1",
            "-    else:",
            "-    total  =  a +   b",
            "+    total = a + b",
            "+    )))))))))))",
            "+    return   None",
            "+    x = 1",
        ],
    )
    # +/- lines only, whitespace collapsed, >= 10 characters, at least one word character, unique
    assert patch_lines(patch, 10) == ["total = a + b", "return None"]
    assert patch_lines(patch, 5) == ["else:", "total = a + b", "return None", "x = 1"]


def test_answer_has_no_diff_lines_and_names_what_changed() -> None:
    patch = diff(
        "pkg/mod.py",
        "class Parser:",
        [
            "     def parse(self, tokens):",
            "-        first = tokens[0]  # crash on empty",
            "+        if not tokens:  # 'quoted text' stays out",
            "+            return self.empty()",
            "+        first = tokens[0]",
        ],
    )
    text = describe(summarize_patch(patch))
    assert text == (
        "The fix edits 1 file.\n- It changes `pkg/mod.py` in `Parser.parse`: replaces 1 line with 3 "
        "lines; the new code uses `self.empty`."
    )
    assert not any(line in text for line in patch_lines(patch, 5))


# ---------------------------------------------------------------------------------------------------------- masking


def call(name: str, arguments: dict[str, Any], output: str, call_id: str = "c1") -> list[dict[str, Any]]:
    return [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "name": name, "content": output},
    ]


@pytest.mark.parametrize(
    "arguments",
    [
        {"command": "create", "path": "/r/new.py", "file_text": "SECRET_LINE = 1\n"},
        {"command": "str_replace", "path": "/r/m.py", "old_str": "SECRET_OLD", "new_str": "SECRET_LINE"},
        {"command": "insert", "path": "/r/m.py", "insert_line": 3, "new_str": "SECRET_LINE"},
    ],
)
def test_editor_arguments_and_outputs_are_masked(arguments: dict[str, Any]) -> None:
    masked = mask_messages(call("str_replace_editor", arguments, "edited: SECRET_LINE shown in snippet"))
    text = render(masked)
    assert "SECRET" not in text
    assert PLACEHOLDER in text and f"path: {arguments['path']}" in text


def test_views_and_plain_commands_are_kept() -> None:
    masked = mask_messages(
        call("str_replace_editor", {"command": "view", "path": "/r/m.py"}, "1\tVISIBLE = 1")
        + call("execute_bash", {"command": "python -m pytest -q"}, "VISIBLE_OUTPUT", "c2")
    )
    text = render(masked)
    assert "VISIBLE = 1" in text and "VISIBLE_OUTPUT" in text and "python -m pytest -q" in text


@pytest.mark.parametrize(
    "command, hidden, kept, edits",
    [
        ("cat > /r/fix.py <<'EOF'\nSECRET = 1\nEOF\npython /r/fix.py", "SECRET", "python /r/fix.py", True),
        ("cat <<EOF >> /r/fix.py\nSECRET = 1\nEOF", "SECRET", "EOF", True),
        ("tee /r/x.py <<-END\n\tSECRET = 1\n\tEND", "SECRET", "tee /r/x.py", True),
        ("git apply <<'PATCH'\nSECRET\nPATCH", "SECRET", "git apply", True),
        ("python3 - <<'EOF'\nopen('m.py', 'w').write(SECRET)\nEOF", "SECRET", "python3 -", True),
        ("python3 - <<'EOF' 2>&1\nprint('KEPT_SCRIPT')\nEOF", "", "KEPT_SCRIPT", False),
        ("sed -i 's/old/SECRET/' m.py && cat m.py", "SECRET", "", True),
        ("echo 'SECRET = 1' > m.py", "SECRET", "", True),
        ("edit 10:12\n    SECRET = 1\nend_of_edit", "SECRET", "edit 10:12", True),
        ("insert 5\nSECRET = 2\nend_of_insert", "SECRET", "end_of_insert", True),
        ("grep -n 'a > b' file.py 2>/dev/null", "", "grep -n", False),
    ],
)
def test_shell_edits_are_masked(command: str, hidden: str, kept: str, edits: bool) -> None:
    masked, edited = mask_shell(command)
    assert edited is edits
    if hidden:
        assert hidden not in masked and PLACEHOLDER in masked
    assert kept in masked


def test_outputs_of_edits_and_diff_commands_are_masked() -> None:
    messages = (
        call("execute_bash", {"command": "sed -i 's/a/b/' m.py && cat m.py"}, "SECRET after sed", "c1")
        + call("execute_bash", {"command": "git diff HEAD"}, "index 1..2\nSECRET in diff", "c2")
        + call("bash", {"command": "edit 1:1\nx\nend_of_edit"}, "[File: m.py]\n1:SECRET", "c3")
    )
    text = render(mask_messages(messages))
    assert "SECRET" not in text and text.count(PLACEHOLDER) >= 3


def test_diff_blocks_anywhere_are_masked() -> None:
    thought = (
        "I will apply this:\n```diff\ndiff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n"
        " keep = 1\n-SECRET_OLD\n+SECRET_NEW\n\n unchanged = 2\n```\nThen run the tests."
    )
    masked = mask_diff_blocks(thought)
    assert "SECRET" not in masked and "unchanged" not in masked
    assert masked.startswith("I will apply this:\n```diff\n" + PLACEHOLDER + "\n```") and "Then run" in masked
    bare_hunk = "output:\n@@ -3,1 +3,1 @@\n-SECRET\n+SECRET2\nlast line"
    assert mask_diff_blocks(bare_hunk) == f"output:\n{PLACEHOLDER}\nlast line"
    assert mask_diff_blocks("--- a title line\nnot a diff") == "--- a title line\nnot a diff"


ISSUE = "The widget crashes\nwhen empty."


@pytest.mark.parametrize(
    "prompt",
    [
        f"<uploaded_files>\n/testbed\n</uploaded_files>\nConsider the following PR description:\n\n<pr_description>\n"
        f"{ISSUE}\n</pr_description>\n\nFix it.",
        f"Consider the following issue description:\n\n<issue_description>\n{ISSUE}\n</issue_description>\n\nGo.",
        f"We're currently solving the following issue within our repository. Here's the issue text:\nISSUE:\n{ISSUE}\n\n"
        "INSTRUCTIONS:\nNow, you're going to solve this issue on your own.",
    ],
)
def test_issue_text_is_found_and_omitted(prompt: str) -> None:
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": prompt}]
    assert problem_statement(messages) == ISSUE
    assert problem_statement(messages, given="  Given text \r\n") == "Given text"
    text = render(mask_messages(messages))
    assert ISSUE not in text and ISSUE_PLACEHOLDER in text and "sys" not in text
    assert ISSUE in render(mask_messages(messages, omit_issue=False))
    assert issue_span("no frame here") is None
    assert problem_statement([{"role": "user", "content": "just a request"}]) == "just a request"


def test_long_outputs_keep_head_and_tail() -> None:
    text = render(
        mask_messages(call("execute_bash", {"command": "yes"}, "HEAD" + "y" * 10000 + "TAIL")), max_output_chars=100
    )
    assert "HEAD" in text and "TAIL" in text and len(text) < 400


# ---------------------------------------------------------------------------------------------------- line scrubber


def test_scrubber_agrees_with_a_naive_substring_check() -> None:
    rng = random.Random(0)
    words = ["self", "x", "tokens", "return", "None", "a.b", "(", ")", "[0]", "=", "+", "if", "not", ":", "foo_bar"]

    def line() -> str:
        gap = rng.choice([" ", "  ", "\t"])
        return " " * rng.randrange(8) + gap.join(rng.choice(words) for _ in range(rng.randrange(1, 9)))

    patterns = [" ".join(line().split()) for _ in range(60)]
    patterns = [p for p in patterns if len(p) >= 3]
    texts = [line() + rng.choice(["", "  # note", "\t"]) for _ in range(3000)]
    scrubber = LineScrubber(patterns)
    expected = {}
    for number, text in enumerate(texts):
        norm = " ".join(text.split())
        found = sorted(p for p in dict.fromkeys(patterns) if p in norm)
        assert sorted(scrubber.matches(text)) == found, text
        if found:
            expected[number] = found
    whole = "\n".join(texts)
    spans = scrubber.hits(whole)
    assert {whole[:start].count("\n"): sorted(found) for (start, _), found in spans.items()} == expected
    assert all(whole[start:end] == texts[whole[:start].count("\n")] for start, end in spans)
    scrubbed, count = scrubber.scrub("\n".join(texts))
    assert count == sum(1 for t in texts if any(p in " ".join(t.split()) for p in patterns))
    assert leaked_lines(scrubbed, patterns) == []
    assert scrubbed.count(LINE_PLACEHOLDER) == count


def test_scrubber_catches_numbered_views_and_quotes() -> None:
    scrubber = LineScrubber(["first = tokens[0]"])
    text = "    12\t        first  =  tokens[0]\nprint('first = tokens[0]')\nfirst = tokens[1]"
    assert scrubber.scrub(text) == (f"{LINE_PLACEHOLDER}\n{LINE_PLACEHOLDER}\nfirst = tokens[1]", 2)
    assert leaked_lines(text, ["first = tokens[0]", "absent line here"]) == ["first = tokens[0]"]


# ------------------------------------------------------------------------------------------------ ids, similarity


@pytest.mark.parametrize(
    "task_id, extra, expected",
    [
        ("pudo__dataset.5c2dc8d3.func_pm_op_change__fq79104s", {}, ("pudo/dataset", "5c2dc8d3")),
        ("pyutils__line_profiler.a646bf0f.100", {}, ("pyutils/line_profiler", "a646bf0f")),
        ("Project-MONAI__MONAI-5686", {}, ("Project-MONAI/MONAI", None)),
        ("getmoto__moto-6387", {"base_commit": "abc123"}, ("getmoto/moto", "abc123")),
        (
            "contextrl-samples__minicalc-1",
            {"repo": "samples/minicalc", "base_commit": "f00"},
            ("samples/minicalc", "f00"),
        ),
        ("local-task", {}, (None, None)),
    ],
)
def test_repo_and_commit(task_id: str, extra: dict[str, str], expected: tuple[str | None, str | None]) -> None:
    assert repo_and_commit(Trajectory(task_id=task_id, **extra)) == expected


def test_similarity_is_exact_for_small_sets_and_bounded() -> None:
    a = "alpha beta gamma delta epsilon zeta"
    b = "alpha beta gamma theta iota kappa"
    assert similarity(signature(a, 128), signature(b, 128), 128) == pytest.approx(3 / 9)
    assert similarity(signature(a, 128), signature(a.upper(), 128), 128) == 1.0
    assert similarity(signature("the and for", 128), signature(a, 128), 128) == 0.0  # stopwords only: empty
    big = " ".join(f"word{i}" for i in range(5000))
    other = " ".join(f"word{i}" for i in range(2500, 7500))
    assert len(signature(big, 64)) == 64
    # true Jaccard 2500 / 7500 = 0.333; a bottom-64 estimate is within a few standard errors (~0.06)
    assert abs(similarity(signature(big, 64), signature(other, 64), 64) - 1 / 3) < 0.2
