"""The miner on real trajectories as they are published: the 271 mini-swe-agent runs on SWE-bench Verified in
../shared, read natively from that agent's run folder, at default settings (issue 17's acceptance).

The leak check here is independent of the miner: it reads each trajectory's final patch straight from the
`.traj.json` files (`info.submission`) with its own diff parsing, and looks for the patch's lines and for any
40-character stretch of added code in both contexts of every pair.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import MINI_SWE_AGENT_RUN, MinedSet
from trainer.pairs.record import load_pairs

WIDTH = 40
MIN_LINE_CHARS = 10


def squash(text: str) -> str:
    return " ".join(text.split())


def raw_patch_lines(instance: str) -> tuple[list[str], list[str]]:
    """(added, removed) lines of an instance's submission, whitespace collapsed, read from the file directly."""
    data = json.loads((MINI_SWE_AGENT_RUN / "trajs" / instance / f"{instance}.traj.json").read_text())
    added, removed = [], []
    for line in (data["info"].get("submission") or "").replace("\r\n", "\n").split("\n"):
        if line.startswith("+") and not line.startswith("+++"):
            added.append(squash(line[1:]))
        elif line.startswith("-") and not line.startswith("---"):
            removed.append(squash(line[1:]))
    return added, removed


def test_default_settings_pass_the_acceptance(mined_real_pairs: MinedSet) -> None:
    pairs = load_pairs(mined_real_pairs.pairs)
    groups = {pair.provenance["group"] for pair in pairs}
    assert len(pairs) >= 20 and len(groups) >= 20, (len(pairs), len(groups))
    audit = json.loads((mined_real_pairs.report / "audit.json").read_text())
    assert audit["pairs"] == len(pairs) and audit["passes"] and audit["best"]["accuracy"] <= 0.60, audit["best"]
    assert all(row["accuracy"] is not None for row in audit["rows"])  # the classifiers ran (enough groups)
    funnel = json.loads((mined_real_pairs.report / "funnel.json").read_text())
    counts = {row["stage"]: row["count"] for row in funnel["funnel"]}
    assert counts["written"] == len(pairs) and all(counts[stage] > 0 for stage in counts)
    assert funnel["related_issue"]["from"].startswith("quantile 0.5 of ")  # the threshold came from the data
    assert 0 < funnel["related_issue"]["threshold"] < 1
    assert funnel["inputs"][0]["format"] == "mini-swe-agent" and funnel["inputs"][0]["records"] == 269
    assert funnel["audit"]["passes"] and funnel["selection"]["stopped"].startswith("every baseline within")


def test_no_patch_line_and_no_added_stretch_survives(mined_real_pairs: MinedSet) -> None:
    for pair in load_pairs(mined_real_pairs.pairs):
        sources = [raw_patch_lines(pair.provenance[side]["task_id"]) for side in ("positive", "negative")]
        whole = [
            line
            for added, removed in sources
            for line in added + removed
            if len(line) >= MIN_LINE_CHARS and any(c.isalnum() or c == "_" for c in line)
        ]
        stretches = {
            line[i : i + WIDTH] for added, _ in sources for line in added for i in range(len(line) - WIDTH + 1)
        }
        for side in ("positive", "negative"):
            for number, line in enumerate(getattr(pair, side).split("\n")):
                norm = squash(line)
                leaked = [patch_line for patch_line in whole if patch_line in norm]
                assert not leaked, (pair.pair_id, side, number, leaked[:2])
                hit = next(
                    (norm[i : i + WIDTH] for i in range(len(norm) - WIDTH + 1) if norm[i : i + WIDTH] in stretches),
                    None,
                )
                assert hit is None, (pair.pair_id, side, number, hit)


def test_each_pair_records_where_the_evidence_is(mined_real_pairs: MinedSet) -> None:
    for pair in load_pairs(mined_real_pairs.pairs):
        lines = pair.positive.split("\n")
        evidence = pair.provenance["evidence"]
        assert evidence, pair.pair_id
        for item in evidence:
            for mention in item["mentions"]:
                path, _, function = mention.partition("::")
                named = function.rsplit(".", 1)[-1] if function else None
                text = lines[item["line"]]
                assert (named and named in text) or path in text or path.rsplit("/", 1)[-1] in text, (item, text)
                assert f"`{path}`" in pair.answer  # what it points at is the answer's change


def test_reruns_are_byte_identical(mined_real_pairs: MinedSet, tmp_path: Path) -> None:
    from trainer.pairs.mine import mine

    mine([MINI_SWE_AGENT_RUN], tmp_path / "pairs.jsonl", report_dir=tmp_path / "report")
    assert (tmp_path / "pairs.jsonl").read_bytes() == mined_real_pairs.pairs.read_bytes()
    for name in ("funnel.json", "audit.json"):
        assert (tmp_path / "report" / name).read_bytes() == (mined_real_pairs.report / name).read_bytes(), name


def test_mirrored_pairs_share_a_group_and_the_audit_cli_agrees(mined_real_pairs: MinedSet, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainer.pairs.__main__ import app
    from trainer.pairs.split import pair_group, split_by_group

    pairs = load_pairs(mined_real_pairs.pairs)
    for pair in pairs:
        tasks = sorted(pair.provenance[side]["task_id"] for side in ("positive", "negative"))
        assert pair_group(pair) == pair.provenance["group"] == "issues:" + "|".join(tasks)
    train, heldout = split_by_group(pairs, 0.3, seed=0)
    assert train and heldout and not {pair_group(p) for p in train} & {pair_group(p) for p in heldout}
    result = CliRunner().invoke(
        app, ["audit", "--pairs", str(mined_real_pairs.pairs), "--out", str(tmp_path), "--fail-above", "0.6"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "audit.json").read_bytes() == (mined_real_pairs.report / "audit.json").read_bytes()


@pytest.mark.slow  # ~15 s CPU: left out of scripts/test.sh --fast
def test_without_the_construction_the_set_is_a_shortcut_set(tmp_path: Path) -> None:
    """The construction is what passes the audit: the same cascade without issue-term masking, balanced selection
    and filtering gives pairs that word matching solves, on the same data."""
    from trainer.pairs.mine import MinerConfig, mine

    if not MINI_SWE_AGENT_RUN.is_dir():
        pytest.skip("no shared mini-swe-agent run")
    plain = MinerConfig(issue_term_max_df=None, balance_bound=1.0, audit_target=None)
    result = mine([MINI_SWE_AGENT_RUN], tmp_path / "pairs.jsonl", plain, report_dir=tmp_path / "report")
    assert result.funnel.audit is not None and not result.funnel.audit["passes"], result.funnel.audit
    assert result.funnel.audit["accuracy"] > 0.8 and result.funnel.stages["written"] >= 40
