"""The miner on the 15 real sample trajectories (SWE-smith, SWE-Gym OpenHands, SWE-agent; shared/data/trajectories).

What the samples hold (counted from the raw files in this test, not by the miner): every SWE-smith row's `patch`
belongs to another repository or is empty, so those five trajectories edit nothing; the other ten are resolved, with
patches. Three SWE-Gym trajectories are Project-MONAI/MONAI instances (commit unknown: SWE-Gym ids carry none) and
one is getmoto/moto, like a SWE-smith row (commit 694ce1f4). No two share an edited file, so the paper's cascade
yields nothing here; from the first stage on the funnel is 3·2 (MONAI) + 1 (moto, SWE-Gym anchor → SWE-smith
confounder) = 7 candidates and 4 pairs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from trainer.pairs.mine import MinerConfig, mine
from trainer.pairs.record import load_pairs

ROOT = Path(__file__).resolve().parents[2]
FILES = ("swe-smith.json", "swe-gym_openhands_sampled_trajectories.json", "nebius_SWE-agent-trajectories.json")


@pytest.fixture(scope="module")
def samples() -> list[Path]:
    candidates = [
        os.environ.get("TRAJECTORY_SAMPLES", ""),
        ROOT / "shared/data/trajectories",
        ROOT.parent / "shared/data/trajectories",
    ]
    found = next((Path(c) for c in candidates if c and all((Path(c) / name).is_file() for name in FILES)), None)
    if found is None:
        pytest.skip("sample trajectories not found (set TRAJECTORY_SAMPLES to their folder)")
    return [found / name for name in FILES]


def raw_patches(samples: list[Path]) -> dict[str, str]:
    """instance_id (without the export's `_<n>`) -> the raw patch, from the JSON files directly."""
    out = {}
    for record in json.loads(samples[1].read_text()):
        out[re.sub(r"_\d+$", "", record["instance_id"])] = record["test_result"]["git_patch"]
    for record in json.loads(samples[2].read_text()):
        out[re.sub(r"_\d+$", "", record["instance_id"])] = record["generated_patch"]
    return out


def test_paper_cascade_on_the_samples(samples: list[Path], tmp_path: Path) -> None:
    result = mine(samples, tmp_path / "pairs.jsonl", MinerConfig())
    f = result.funnel
    assert [i["records"] for i in f.inputs] == [5, 5, 5]
    assert [i["format"] for i in f.inputs] == ["swe-smith", "swe-gym-openhands", "swe-agent"]
    assert f.trajectories == 15 and f.unknown_repo == 0 and f.with_edits == 10
    assert f.ineligible == {"no patch": 5} and f.anchors == 10
    assert f.stages == {
        "same_repo_commit": 7,
        "same_file": 0,
        "capped": 0,
        "same_function": 0,
        "related_issue": 0,
        "pooled": 0,
        "masked": 0,
        "selected": 0,
        "filtered": 0,
        "judged": 0,
        "written": 0,
    }
    assert (tmp_path / "pairs.jsonl").read_text() == ""


def test_first_stage_pairs_on_the_samples(samples: list[Path], tmp_path: Path) -> None:
    config = MinerConfig(min_stage="same_repo_commit")
    result = mine(samples, tmp_path / "a.jsonl", config, report_dir=tmp_path / "ra")
    assert result.funnel.stages["selected"] == result.funnel.stages["written"] == 4
    pairs = load_pairs(tmp_path / "a.jsonl")
    assert sorted(p.provenance["repo"] for p in pairs) == ["Project-MONAI/MONAI"] * 3 + ["getmoto/moto"]
    moto = next(p for p in pairs if p.provenance["repo"] == "getmoto/moto")
    assert moto.provenance["positive"]["format"] == "swe-gym-openhands"
    assert moto.provenance["negative"]["format"] == "swe-smith"  # pass 2 re-read the other file by record index
    patches = raw_patches(samples)
    for pair in pairs:
        assert pair.funnel_stage == "same_repo_commit"
        patch = patches[pair.provenance["positive"]["task_id"]]
        lines = {
            " ".join(line[1:].split())
            for line in patch.replace("\r\n", "\n").split("\n")
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        }
        lines = {line for line in lines if len(line) >= 10 and re.search(r"\w", line)}
        assert lines
        for context in (pair.positive, pair.negative):
            collapsed = [" ".join(line.split()) for line in context.split("\n")]
            assert not [line for line in lines if any(line in text for text in collapsed)]
        assert pair.query.strip() and pair.query not in pair.positive
        assert pair.answer.startswith("The fix edits 1 file.")
        assert ("`monai/" in pair.answer) != ("`moto/" in pair.answer)
    # same input, same config: the same bytes
    mine(samples, tmp_path / "b.jsonl", config, report_dir=tmp_path / "rb")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "ra" / "funnel.json").read_bytes() == (tmp_path / "rb" / "funnel.json").read_bytes()
