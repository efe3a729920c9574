"""The shortcut audit (trainer/pairs/audit.py): a set built with a planted cue fails on the baseline that reads the
cue, a set whose contexts are independent of the label passes, mirrored pairs share a fold, runs are reproducible,
and the CLI writes the report or says what is wrong."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.pairs.__main__ import app
from trainer.pairs.audit import AuditError, assign_folds, audit_pairs, baseline_outcomes
from trainer.pairs.audit_features import QuoteFinder, answer_identifiers
from trainer.pairs.audit_report import SHORTCUT_BOUND, AuditReport, write_report
from trainer.pairs.record import PairRecord, write_pairs
from trainer.pairs.split import pair_group

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "de", "pa", "gu", "zi", "be", "ho", "fa", "yu"]


def vocabulary(rng: random.Random, size: int, syllables: int = 3) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(syllables)))
    return sorted(words)


COMMON = vocabulary(random.Random(1), 300)
"""Words every issue and trajectory draws from (the shared vocabulary of a repository)."""


def salad(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(COMMON) for _ in range(words))


@pytest.fixture(scope="module")
def issues() -> list[dict[str, str]]:
    """40 issues of one repository: a title, a body with identifiers only this issue names, an answer that names the
    edited file and function."""
    rng = random.Random(7)
    rare = vocabulary(random.Random(2), 40 * 4, syllables=5)
    out = []
    for index in range(40):
        own = rare[4 * index : 4 * index + 4]
        module, function, klass = own[0] + "_utils", own[1] + "_value", own[2].capitalize() + "Parser"
        title = f"{klass}.{function} raises KeyError when the {own[3]} option is empty"
        query = (
            f"### {title}\n\nCalling `{klass}().{function}()` after setting `{own[3]}=''` fails with a "
            f"KeyError instead of falling back to the default. {salad(rng, 60)}\n\nTo reproduce:\n\n```python\n"
            f"from pkg.{module} import {klass}\n{klass}({own[3]}='').{function}()\n```\n\n{salad(rng, 40)}\n"
        )
        answer = (
            f"Edits `src/pkg/{module}.py`: in `{klass}.{function}` the lookup of `{own[3]}` now goes "
            f"through `options.get` with a default; adds `_{own[3]}_default`."
        )
        out.append(
            {
                "title": title,
                "query": query,
                "answer": answer,
                "module": module,
                "klass": klass,
                "function": function,
                "word": own[3],
            }
        )
    return out


def trajectory(rng: random.Random, issue: dict[str, str] | None, steps: int = 8, quote: bool = False) -> str:
    """An agent trajectory rendered the way masking.render does, issue text omitted and edits masked. With `issue`, the
    agent greps for that issue's identifiers; with `quote`, its reproduction script prints the issue's title."""
    lines = [
        "[system]\nYou are a helpful assistant that can interact with a computer to solve tasks.",
        "[user]\n<uploaded_files>\n/repo\n</uploaded_files>\n[issue text omitted]",
    ]
    for step in range(steps):
        lines.append(f"[assistant]\nI should look at how {salad(rng, 12)} is handled.")
        if issue and step == 1:
            lines.append(
                f'[assistant → execute_bash]\ncommand: grep -rn "{issue["function"]}" src/pkg\n'
                f"[execute_bash output]\nsrc/pkg/{issue['module']}.py:41:    def {issue['function']}(self):\n"
                f'src/pkg/{issue["module"]}.py:57:        return self.options["{issue["word"]}"]'
            )
        elif issue and quote and step == 3:
            lines.append(
                f"[assistant → execute_bash]\ncommand: python reproduce.py\n[execute_bash output]\n"
                f"reproducing: {issue['title']}\nKeyError: '{issue['word']}'"
            )
        elif step % 3 == 2:
            lines.append(
                f"[assistant → str_replace_editor]\ncommand: str_replace\npath: /repo/src/pkg/"
                f"{rng.choice(COMMON)}.py\nold_str: [patch content masked]\nnew_str: [patch content masked]"
            )
        else:
            lines.append(
                f"[assistant → execute_bash]\ncommand: ls src/pkg/{rng.choice(COMMON)}\n"
                f"[execute_bash output]\n{salad(rng, 25)}"
            )
    lines.append("[assistant → submit]\n[submit output]\nsubmitted")
    return "\n".join(lines)


def mirrored(issues: list[dict[str, str]], contexts: list[str]) -> list[PairRecord]:
    """Pairs of neighbouring issues in both directions (A/B and B/A), one group per two issues."""
    pairs = []
    for first in range(0, len(issues) - 1, 2):
        for positive, negative in ((first, first + 1), (first + 1, first)):
            pairs.append(
                PairRecord(
                    pair_id=f"pair-{positive}-{negative}",
                    query=issues[positive]["query"],
                    answer=issues[positive]["answer"],
                    positive=contexts[positive],
                    negative=contexts[negative],
                    provenance={
                        "group": f"group-{first}",
                        "positive": {"task_id": f"pkg-{positive}"},
                        "negative": {"task_id": f"pkg-{negative}"},
                    },
                    funnel_stage="same_file",
                )
            )
    return pairs


def independent(
    count: int, seed: int, positive_words: tuple[int, int] = (150, 400), negative_words: tuple[int, int] = (150, 400)
) -> list[PairRecord]:
    """Pairs whose contexts are word salad from the one vocabulary, drawn independently of the label."""
    rng = random.Random(seed)

    def context(words: tuple[int, int]) -> str:
        chunks = [salad(rng, rng.randint(20, 40)) for _ in range(rng.randint(*words) // 30)]
        for _ in range(rng.randint(0, 3)):
            chunks.insert(rng.randrange(len(chunks) + 1), rng.choice(["[patch content masked]", "[line masked]"]))
        return "\n".join(chunks)

    def answer() -> str:
        return f"Edits `{rng.choice(COMMON)}.py`: in `{rng.choice(COMMON)}` uses `{rng.choice(COMMON)}`."

    return [
        PairRecord(
            pair_id=f"salad-{index}",
            query=f"{salad(rng, 6)}\n\n{salad(rng, 80)}",
            answer=answer(),
            positive=context(positive_words),
            negative=context(negative_words),
            funnel_stage="synthetic",
        )
        for index in range(count)
    ]


def rows(report: AuditReport) -> dict[str, object]:
    return {row.name: row for row in report.rows}


# -------------------------------------------------------------------------------------------------------- baselines


def test_a_set_whose_positive_quotes_the_issue_is_a_shortcut_set(issues: list[dict[str, str]]) -> None:
    rng = random.Random(3)
    pairs = mirrored(issues, [trajectory(rng, issue, quote=True) for issue in issues])
    report = audit_pairs(pairs)
    by_name = rows(report)
    assert by_name["issue_quote"].accuracy >= 0.9 and by_name["issue_tfidf"].accuracy >= 0.9
    assert by_name["issue_rare_words"].accuracy >= 0.9 and by_name["answer_identifiers"].accuracy >= 0.9
    assert by_name["issue_quote"].ci_low > SHORTCUT_BOUND and by_name["issue_quote"].shortcut
    assert not report.passes and report.best.accuracy >= 0.9
    assert report.pairs == 40 and report.groups == 20 and report.folds == 5
    # the per-pair outcomes (what the miner's selection acts on) average to the report's accuracies
    outcomes = baseline_outcomes(pairs)
    assert list(outcomes) == [row.name for row in report.rows]
    for row in report.rows:
        assert len(outcomes[row.name]) == 40 and round(float(outcomes[row.name].mean()), 4) == row.accuracy


def test_without_a_quote_the_quote_rule_ties_and_the_overlap_rules_still_fire(issues: list[dict[str, str]]) -> None:
    # the counterpart of the test above: every trajectory greps for its issue's identifiers, but none prints the
    # issue's title, so the quote rule ties everywhere while the overlap rules still find the grep
    rng = random.Random(3)
    report = audit_pairs(mirrored(issues, [trajectory(rng, issue, quote=False) for issue in issues]))
    by_name = rows(report)
    assert by_name["issue_quote"].accuracy == 0.5 and by_name["issue_quote"].ties == 1.0
    assert by_name["answer_identifiers"].accuracy >= 0.9


def test_contexts_independent_of_the_label_pass() -> None:
    # a rule at chance still spreads by about ±0.1 over seeds at this size (the grouped-CV classifiers most); the seed
    # is fixed, so this checks the rules carry no label, not luck
    report = audit_pairs(independent(160, seed=107))
    for row in report.rows:
        assert row.skipped is None
        assert row.ci_low <= 0.5 <= row.ci_high or abs(row.accuracy - 0.5) <= 0.15, row
    assert report.passes and report.best.accuracy <= SHORTCUT_BOUND


def test_a_length_cue_is_found_in_one_direction() -> None:
    report = audit_pairs(independent(60, seed=5, positive_words=(400, 600), negative_words=(100, 250)))
    by_name = rows(report)
    assert by_name["longer"].accuracy == 1.0 and by_name["shorter"].accuracy == 0.0
    assert by_name["longer"].ties == 0.0
    assert by_name["feature_classifier"].accuracy >= 0.9  # it learns the direction from the training folds
    assert not report.passes and report.best.accuracy == 1.0


def test_ties_score_half() -> None:
    # the same mask count in both contexts everywhere: the mask rules cannot choose and sit exactly at chance
    pairs = independent(10, seed=2)
    pairs = [
        pair.model_copy(
            update={
                "positive": pair.positive.replace("[line masked]", "").replace("[patch content masked]", ""),
                "negative": pair.negative.replace("[line masked]", "").replace("[patch content masked]", ""),
            }
        )
        for pair in pairs
    ]
    by_name = rows(audit_pairs(pairs))
    for name in ("more_masks", "fewer_masks"):
        assert by_name[name].accuracy == 0.5 and by_name[name].ties == 1.0
        assert by_name[name].ci_low == by_name[name].ci_high == 0.5


# ------------------------------------------------------------------------------------------------------- the helpers


def test_answer_identifiers_reads_backticks_and_code_like_tokens() -> None:
    names = answer_identifiers(
        "Edits `src/_pytest/unittest.py`: in `TestCaseFunction.runtest` the call to "
        "`self._testcase(result=self)` now checks skip_marker via CallInfo.from_call."
    )
    for expected in (
        "src/_pytest/unittest.py",
        "unittest.py",
        "_pytest",
        "TestCaseFunction.runtest",
        "TestCaseFunction",
        "runtest",
        "_testcase",
        "skip_marker",
        "CallInfo.from_call",
        "CallInfo",
        "from_call",
    ):
        assert expected in names, expected
    assert "Edits" not in names and "src" not in names and "self" not in names and "the" not in names


def test_quote_finder_finds_any_forty_character_stretch() -> None:
    query = "Short title\n\n" + " ".join(f"word{index}" for index in range(60))
    find = QuoteFinder(query)
    assert find.title is None  # "Short title" is under 12 characters: too likely by chance
    flat = " ".join(query.split())
    for start in [*range(0, len(flat) - 40, 7), len(flat) - 40]:  # every alignment to the probes, the end too
        stretch = flat[start : start + 40]
        assert find(f"prefix#{stretch}#suffix") and not find(f"prefix#{stretch[:39]}#suffix"), start
    assert not find(f"{stretch[:20]}#{stretch[20:]}")  # two stretches of 20 are no quote
    assert find("xx\n" + stretch.replace(" ", "\n   ") + "\nyy")  # whitespace collapsed
    assert QuoteFinder("# Parser drops the last row\nbody")("log: Parser drops the last row!")


def test_mirrored_pairs_share_a_fold(issues: list[dict[str, str]]) -> None:
    rng = random.Random(4)
    pairs = mirrored(issues[:24], [trajectory(rng, issue) for issue in issues[:24]])
    # the same two issues without a group key: the mirror is still found by its task ids
    pairs += [
        pair.model_copy(
            update={
                "pair_id": pair.pair_id + "-nogroup",
                "provenance": {"positive": pair.provenance["positive"], "negative": pair.provenance["negative"]},
            }
        )
        for pair in pairs[:4]
    ]
    groups = [pair_group(pair) for pair in pairs]
    folds = assign_folds(groups)
    assert len(set(folds)) == 5
    by_group: dict[str, set[int]] = {}
    for group, fold in zip(groups, folds):
        by_group.setdefault(group, set()).add(fold)
    assert all(len(seen) == 1 for seen in by_group.values())
    assert len(by_group) == 14  # 12 groups of the mirrored pairs, 2 of the ungrouped mirrors
    assert folds[24] == folds[25] and folds[26] == folds[27]
    assert assign_folds(["a", "b", "b", "a"]) in ([0, 1, 1, 0], [1, 0, 0, 1])  # fewer groups than folds: 2 folds
    with pytest.raises(AuditError, match="at least 2 groups"):
        assign_folds(["a", "a"])


def test_one_group_skips_the_classifiers_with_a_reason(issues: list[dict[str, str]], tmp_path: Path) -> None:
    rng = random.Random(5)
    pairs = mirrored(issues[:2], [trajectory(rng, issue, quote=True) for issue in issues[:2]])
    report = audit_pairs(pairs)
    by_name = rows(report)
    for name in ("bow_classifier", "feature_classifier"):
        assert by_name[name].accuracy is None and "groups" in by_name[name].skipped
        assert baseline_outcomes(pairs)[name] == by_name[name].skipped
    assert report.groups == 1 and report.folds == 0 and report.best.accuracy == 1.0
    # a mirrored pair's two contexts swap roles, so a rule that reads only the contexts is exactly at chance
    assert by_name["longer"].accuracy == by_name["shorter"].accuracy == 0.5
    written = json.loads(write_report(report, tmp_path)["json"].read_text())
    assert written["rows"][-1]["accuracy"] is None and (tmp_path / "audit.png").exists()
    with pytest.raises(AuditError, match="at least 2 pairs"):
        audit_pairs(independent(1, seed=0))


def test_the_report_is_reproducible(issues: list[dict[str, str]], tmp_path: Path) -> None:
    pairs = independent(40, seed=9)
    first = write_report(audit_pairs(pairs, seed=3), tmp_path / "one")
    second = write_report(audit_pairs(pairs, seed=3), tmp_path / "two")
    assert first["json"].read_bytes() == second["json"].read_bytes()
    assert first["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = json.loads(audit_pairs(pairs, seed=4).to_json())
    assert other["rows"][0]["accuracy"] == json.loads(first["json"].read_text())["rows"][0]["accuracy"]
    assert AuditReport.model_validate_json(first["json"].read_text()).seed == 3


# ------------------------------------------------------------------------------------------------------------- CLI


def test_cli_writes_the_report_beside_the_pairs(issues: list[dict[str, str]], tmp_path: Path) -> None:
    rng = random.Random(6)
    path = tmp_path / "mined.jsonl"
    write_pairs(path, mirrored(issues[:12], [trajectory(rng, issue, quote=True) for issue in issues[:12]]))
    result = CliRunner().invoke(app, ["audit", "--pairs", str(path)])
    assert result.exit_code == 0, result.output
    assert "issue_quote" in result.output and "shortcut set" in result.output
    report = json.loads((tmp_path / "mined.audit" / "audit.json").read_text())
    assert report["pairs"] == 12 and not report["passes"]
    assert (tmp_path / "mined.audit" / "audit.png").stat().st_size > 0
    failing = CliRunner().invoke(app, ["audit", "-p", str(path), "--out", str(tmp_path / "r"), "--fail-above", "0.6"])
    assert failing.exit_code == 1 and "shortcut:" in failing.output and (tmp_path / "r" / "audit.json").exists()


@pytest.mark.parametrize("case", ["empty", "missing", "bad_record"])
def test_cli_user_errors_exit_2_with_a_message(case: str, tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    if case == "empty":
        path.write_text("\n")
        expected = "pairs.jsonl: no pair records (empty file)"
    elif case == "missing":
        expected = "pairs.jsonl: no such file"
    else:
        path.write_text(json.dumps({"pair_id": "p", "query": "q"}) + "\n")
        expected = "line 1: field 'answer'"
    result = CliRunner().invoke(app, ["audit", "--pairs", str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and expected in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "pairs.audit").exists()
