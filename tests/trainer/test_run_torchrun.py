"""`torchrun --nproc_per_node 2 -m trainer.run` on CPU (gloo) against the same local env server setup as one process:
rank 0 samples the rollouts and broadcasts them, each rank trains on its shard with global normalizers, so the run
draws the same tasks, samples the same episodes and reports the same losses as `python -m trainer.run` on one
process. (trainer/distributed.py's own test checks GRPO and L_CA weights after a step to 1e-5 with real torchrun
processes; this one checks the trainer's wiring — a tiny model after 2 warm-start steps earns no reward, so here the
loss is mostly L_CA. The warm start runs on rank 0 only; every rank's RL optimizer must start from its second
moments, or the ranks' weights part after the first update and the second step's loss differs.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.docker


def _run(tmp_path, name: str, launcher: list[str]) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    out = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "steps": 2,
                "warm_start_steps": 2,
                "tasks_per_step": 2,
                "group_size": 2,
                "agent": {"max_turns": 1, "max_tokens_per_turn": 16},
                "ca": {"pairs_per_update": 3},
                "eval_every": 1,
                "tensorboard": False,
                "output_dir": str(out),
                "success_eval_episodes": 1,
                "inherit_warm_start_moments": True,
            }
        )
    )
    proc = subprocess.run(
        [*launcher, "-m", "trainer.run", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "held-out context-selection accuracy" in proc.stdout  # printed once, by rank 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_ranks_equal_one_process(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    single = _run(tmp_path, "single", [sys.executable])
    ranks = _run(
        tmp_path, "torchrun", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    )
    assert [r["step"] for r in ranks] == [0, 1, 2]
    assert [r.get("world_size") for r in ranks[1:]] == [2, 2] and single[1]["world_size"] == 1
    for one, two in zip(single[1:], ranks[1:]):
        assert one["tasks"] == two["tasks"]
        assert one["reward"] == two["reward"] or (one["reward"] != one["reward"] and two["reward"] != two["reward"])
        assert one["batch/sequences"] == two["batch/sequences"]
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4, abs=1e-6)
        assert two["ca/ca_loss"] == pytest.approx(one["ca/ca_loss"], rel=1e-4, abs=1e-6)
        assert two["heldout_ca_accuracy"] == one["heldout_ca_accuracy"]
