"""`trainer.run` end to end on CPU: the tiny model against a real local env server on the sample tasks, with pairs;
metrics, plots and checkpoints are written, and a resumed run draws the same batches as an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from trainer.config import TrainerConfig
from trainer.pairs import PairRecord, write_pairs
from trainer.run import train

pytestmark = pytest.mark.docker


def _config(tmp_path, name: str, steps: int) -> TrainerConfig:  # type: ignore[no-untyped-def]
    pairs = tmp_path / "pairs.jsonl"
    if not pairs.exists():
        write_pairs(
            pairs,
            [
                PairRecord(
                    pair_id=f"p{i}",
                    query=f"q{i}",
                    answer=f"answer {i}",
                    positive=f"ctx {i}",
                    negative=f"other {i + 10}",
                    funnel_stage="synthetic",
                )
                for i in range(4)
            ],
        )
    config = TrainerConfig(
        steps=steps,
        tasks_per_step=2,
        group_size=2,
        agent={"max_turns": 1, "max_tokens_per_turn": 16},
        ca={"pairs_per_update": 2, "separate_updates": 0},  # L_CA in each GRPO update's loss unless a test says
        pairs_file=pairs,
        heldout_pairs=pairs,
        synthetic_pairs=False,
        checkpoint_every=1,
        output_dir=tmp_path / name,
        concurrency=4,
        warm_start_steps=0,
        eval_every=1,
        success_eval_episodes=1,
    )
    config.grpo.minibatches = 1  # one update per step unless a test asks for more
    return config


def test_short_run_then_resume_matches_uninterrupted(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    straight = train(_config(tmp_path, "straight", 3), log=lambda *_: None)
    assert straight["last"]["step"] == 3
    out = tmp_path / "straight"
    assert (out / "metrics.png").stat().st_size > 10_000 and (out / "checkpoints" / "latest").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # step 0: before any update
    assert 0.0 <= rows[0]["heldout_ca_accuracy"] <= 1.0 and "loss" not in rows[0]
    assert all("grpo/clip_frac_low" in r or r["batch/sequences_trained"] == 0 for r in rows[1:])
    assert all("ca/ca_loss" in r and 0.0 <= r["heldout_ca_accuracy"] <= 1.0 for r in rows[1:])
    assert [r["weights_version"] for r in rows[1:]] == [1, 2, 3]
    # Every rollout is kept, and step k sampled with the weights after step k-1 (2 tasks × 2 rollouts a step).
    versions = [json.loads(line)["weights_version"] for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert versions == [0] * 4 + [1] * 4 + [2] * 4
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and set(summary["heldout_ca_accuracy"]) == {"start", "end"}
    # The success evaluation: every task once before the first step and once after the last, kept apart from the
    # rollouts trained on; the summary's start and end are those rows'.
    evaluated = [json.loads(line) for line in (out / "eval-rollouts.jsonl").read_text().splitlines()]
    tasks = sorted({t["task_id"] for t in evaluated})
    assert len(tasks) == 8 and [t["weights_version"] for t in evaluated] == [0] * 8 + [3] * 8
    assert [t["task_id"] for t in evaluated[:8]] == [t["task_id"] for t in evaluated[8:]] == tasks
    assert [i for i, r in enumerate(rows) if "success_eval" in r] == [0, 3]
    assert (
        summary["success_eval"]["start"]
        == rows[0]["success_eval"]
        == sum(bool(t["resolved"]) for t in evaluated[:8]) / 8
    )
    assert set(summary["success_eval"]["end_by_task"]) == set(tasks)

    train(_config(tmp_path, "resumed", 2), log=lambda *_: None)
    resumed = train(_config(tmp_path, "resumed", 3), resume=True, log=lambda *_: None)
    assert resumed["last"]["step"] == 3
    assert resumed["last"]["tasks"] == straight["last"]["tasks"]
    assert resumed["last"]["loss"] == pytest.approx(straight["last"]["loss"], rel=1e-4, abs=1e-6)
    # The same reward, NaN (nothing graded) only where the uninterrupted run had NaN too.
    assert resumed["last"]["reward"] == pytest.approx(straight["last"]["reward"], rel=0, abs=0, nan_ok=True)
    # The rollout record holds each step once, as the uninterrupted run's does.
    versions = [
        json.loads(line)["weights_version"]
        for line in (tmp_path / "resumed" / "rollouts.jsonl").read_text().splitlines()
    ]
    assert versions == [0] * 4 + [1] * 4 + [2] * 4
    # The evaluations: the start's, the 2-step run's end, the extended run's end (after step 3).
    versions = [
        json.loads(line)["weights_version"]
        for line in (tmp_path / "resumed" / "eval-rollouts.jsonl").read_text().splitlines()
    ]
    assert versions == [0] * 8 + [2] * 8 + [3] * 8


def test_success_evaluation_samples_with_the_same_seeds_at_both_ends(server, tmp_path):  # type: ignore[no-untyped-def]
    """`evaluate_success` against a real env server: every task × `success_eval_episodes`, and the sampling seeds
    are the same each time it runs (a paired comparison of the policy before and after) and none of a training
    step's. The engine is the replay engine wrapped to record the seeds it was given: what is tested is which seeds
    the trainer asks for, not what a model samples with them."""
    import asyncio

    from agent.engines.replay import ReplayEngine, tool_call_text
    from agent.tokenizer import build_qwen3_tokenizer
    from trainer.rollout import collect_and_announce, evaluate_success

    tokenizer = build_qwen3_tokenizer()

    class SeedRecorder(ReplayEngine):
        def __init__(self) -> None:
            super().__init__(tokenizer, [tool_call_text("finish")])
            self.seeds: list[int | None] = []

        async def generate(self, prompt_ids, params):  # type: ignore[no-untyped-def]
            self.seeds.append(params.seed)
            return await super().generate(prompt_ids, params)

    config = TrainerConfig(
        output_dir=tmp_path, success_eval_episodes=3, group_size=3, agent={"max_turns": 1}, concurrency=8
    )
    task_ids = ["contextrl-samples__minicalc-1", "contextrl-samples__textkit-2"]
    lines: list[str] = []
    seen = []
    with asyncio.Runner() as runner:
        for version in (0, 7):
            engine = SeedRecorder()
            engine.weights_version = version
            row = evaluate_success(engine, [server.url], task_ids, config, tokenizer, runner, lines.append)
            assert row["success_eval"] == 0.0 and row["success_eval_infra_failures"] == 0
            assert {k for k in row if k.startswith("success_eval_by_task/")} == {
                f"success_eval_by_task/{t}" for t in task_ids
            }
            seen.append(sorted(engine.seeds))
        training = SeedRecorder()
        runner.run(collect_and_announce(training, [server.url], task_ids, config, tokenizer, step=0))
    assert len(seen[0]) == 6 and len(set(seen[0])) == 6 and seen[0] == seen[1]
    assert not set(training.seeds) & set(seen[0])
    assert "2 tasks × 3 episodes, fixed seeds): 0.00" in lines[0]
    evaluated = [json.loads(line) for line in (tmp_path / "eval-rollouts.jsonl").read_text().splitlines()]
    assert [t["weights_version"] for t in evaluated] == [0] * 6 + [7] * 6
    assert all(not t["resolved"] and t["num_tool_calls"] == 1 for t in evaluated)


def test_several_updates_per_step_measure_the_ratio_to_the_sampling_policy(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    """`grpo.updates_per_step: 3`: three optimizer updates on one step's rollouts, each with its own pair batch; the
    first is on-policy (ratio 1), the later ones see the policy moved away from the sampler's (the ratio the clips
    bound). With one update per step the ratio is exactly 1."""
    config = _config(tmp_path, "mu3", 1)
    config.grpo.updates_per_step = 3
    config.lr = 1e-2  # large enough that the pair updates visibly move the policy between updates
    train(config, log=lambda *_: None)
    step = [json.loads(line) for line in (tmp_path / "mu3" / "metrics.jsonl").read_text().splitlines()][-1]
    assert step["batch/sequences_trained"] > 0
    assert step["grpo/ratio_max"] > 1.0 + 1e-4  # the mean over updates of each update's max ratio
    import torch

    data = torch.load(tmp_path / "mu3" / "checkpoints" / "latest" / "trainer_state.pt", weights_only=False)["data"]
    assert (data["pair_epoch"], data["pair_cursor"]) == (1, 2)  # 2 pairs an update × 3 updates, 4 pairs in the file
    once = _config(tmp_path, "mu1", 1)
    once.lr, once.grpo.updates_per_step = 1e-2, 1
    train(once, log=lambda *_: None)
    row = [json.loads(line) for line in (tmp_path / "mu1" / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["grpo/ratio_max"] == pytest.approx(1.0, abs=1e-6)
    # `grpo.minibatches: 2`: one pass in two updates, each on half the rollouts with its own pair batch; the second
    # half is trained on after the first half's update, so its ratio to the sampler is no longer 1.
    halves = _config(tmp_path, "mb2", 1)
    halves.lr, halves.grpo.updates_per_step, halves.grpo.minibatches = 1e-2, 1, 2
    train(halves, log=lambda *_: None)
    row = [json.loads(line) for line in (tmp_path / "mb2" / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["batch/sequences_trained"] > 0 and row["grpo/ratio_max"] > 1.0 + 1e-4
    data = torch.load(tmp_path / "mb2" / "checkpoints" / "latest" / "trainer_state.pt", weights_only=False)["data"]
    assert (data["pair_epoch"], data["pair_cursor"]) == (1, 0)  # 2 pairs an update × 2 updates


def test_separate_ca_updates_take_their_own_optimizer_and_resume_exactly(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    """`ca.separate_updates: 3`: each step one GRPO update (no pairs in its loss) with the main AdamW, then three
    L_CA-only updates, each on its own pair batch, with L_CA's own AdamW at λ·lr on the decoder layers; both
    optimizers' states are checkpointed, so a run resumed after step 1 ends on the same metrics and optimizer state as
    an uninterrupted one."""
    import torch

    def separate(name: str, steps: int) -> TrainerConfig:
        config = _config(tmp_path, name, steps)
        config.ca.separate_updates, config.ca.weight, config.lr = 3, 0.5, 1e-2
        return config

    straight = train(separate("ca3", 2), log=lambda *_: None)
    state = torch.load(tmp_path / "ca3" / "checkpoints" / "latest" / "trainer_state.pt", weights_only=False)
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} <= {2.0}  # one GRPO update a step
    assert {float(s["step"]) for s in state["ca_optimizer"]["state"].values()} == {6.0}
    # λ·lr after the warm-up's two steps of five; the pairs cursor moved 2 pairs × 3 updates × 2 steps (4 pairs).
    assert state["ca_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.5 * 1e-2 * 3 / 5)
    assert (state["data"]["pair_epoch"], state["data"]["pair_cursor"]) == (3, 0)
    row = straight["last"]
    assert row["ca/ca_num_pairs"] == 4 and row["ca/grad_norm"] > 0
    assert row["loss"] == pytest.approx(row.get("grpo/loss", 0.0) + 0.5 * row["ca/ca_loss"], rel=1e-6)

    train(separate("ca3-resumed", 1), log=lambda *_: None)
    resumed = train(separate("ca3-resumed", 2), resume=True, log=lambda *_: None)
    assert resumed["last"]["loss"] == pytest.approx(row["loss"], rel=1e-5, abs=1e-7)
    weights = [
        torch.load(tmp_path / name / "checkpoints" / "latest" / "trainer_state.pt", weights_only=False)
        for name in ("ca3", "ca3-resumed")
    ]
    for a, b in zip(weights[0]["ca_optimizer"]["state"].values(), weights[1]["ca_optimizer"]["state"].values()):
        assert torch.allclose(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-4, atol=1e-12)
    # L_CA's optimizer holds every parameter but the (tied) token embeddings.
    assert (
        len(state["ca_optimizer"]["param_groups"][0]["params"])
        == len(state["optimizer"]["param_groups"][0]["params"]) - 1
    )
    # With GRPO silent (no reward varies, no KL), only L_CA's updates move the weights: the decoder layers do, the
    # token embeddings do not — and with `ca.trains_embeddings` they do.
    from safetensors.torch import load_file

    for name, trains in (("ca-only", False), ("ca-only-embeddings", True)):
        config = separate(name, 1)
        config.grpo.kl_coef, config.grpo.malformed_call_penalty, config.ca.trains_embeddings = 0.0, 0.0, trains
        train(config, log=lambda *_: None)
        base = load_file(tmp_path / name / "base-model" / "model.safetensors")
        after = load_file(tmp_path / name / "checkpoints" / "latest" / "model" / "model.safetensors")
        assert not torch.equal(
            base["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"]
        )
        assert torch.equal(base["model.embed_tokens.weight"], after["model.embed_tokens.weight"]) is not trains
    # A checkpoint of a shared-optimizer run cannot be resumed as a separate one: said, not silently mixed.
    train(_config(tmp_path, "shared", 1), log=lambda *_: None)
    with pytest.raises(ValueError, match="no L_CA optimizer state"):
        train(separate("shared", 2), resume=True, log=lambda *_: None)


def _mined_pairs(groups: int) -> list[PairRecord]:
    """Pairs shaped like the miner's: for each two issues of one repository the mirror pairs A/B and B/A, with
    trajectory-long contexts and the provenance the miner writes (both sides' task ids, the group of the two)."""

    def trajectory(task: str, number: int) -> str:
        turns = [f"[user] {task}: render_{number}() drops the last widget of a row."]
        for turn in range(12):
            turns += [
                f"[assistant] execute_bash: grep -n 'render_{number}' widgets/render.py  # look {turn}",
                f"[tool] widgets/render.py:{40 + turn}:    for widget in row[:-1]:  # {task} pass {turn}",
            ]
        return "\n".join(turns)

    def side(task: str) -> dict[str, object]:
        return {
            "episode_id": f"{task}-ep",
            "task_id": task,
            "resolved": True,
            "file": "swe-smith.json",
            "format": "swe-smith",
            "record": 0,
        }

    records = []
    for number in range(groups):
        issues = (f"acme__widgets-{2 * number}", f"acme__widgets-{2 * number + 1}")
        for positive, negative in (issues, issues[::-1]):
            records.append(
                PairRecord(
                    pair_id=f"pair-{positive}-{negative}",
                    query=f"{positive}: a row of widgets renders one short",
                    answer=f"Edit widgets/render.py, function render_{number} (1 line changed)",
                    positive=trajectory(positive, number),
                    negative=trajectory(negative, number),
                    funnel_stage="same_function",
                    provenance={
                        "miner_version": 1,
                        "seed": 0,
                        "repo": "acme/widgets",
                        "commit": "c0ffee",
                        "positive": side(positive),
                        "negative": side(negative),
                        "shared_files": ["widgets/render.py"],
                        "shared_functions": [f"render_{number}"],
                        "group": "issues:" + "|".join(issues),
                    },
                )
            )
    return records


def test_pair_file_is_split_by_group_and_trained_besides_the_synthetic_pairs(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    """`pairs_file` without `heldout_pairs`: the file's groups are split (a pair and its mirror on one side), the
    synthetic pairs of the sample tasks join both sides, both splits are written to the output folder, and L_CA
    trains on them."""
    from envserver.tasks import SAMPLE_TASKS_PATH, load_tasks
    from trainer.pairs import load_pairs
    from trainer.pairs.synthetic import synthetic_pairs

    mined = _mined_pairs(6)
    write_pairs(tmp_path / "mined.jsonl", mined)
    config = _config(tmp_path, "mined", 1)
    config.pairs_file, config.heldout_pairs, config.synthetic_pairs = tmp_path / "mined.jsonl", None, True
    config.heldout_fraction, config.success_eval_episodes = 0.34, 0
    lines: list[str] = []
    assert train(config, log=lines.append)["last"]["step"] == 1
    out = tmp_path / "mined"
    written = {name: load_pairs(out / f"pairs.{name}.jsonl") for name in ("train", "heldout")}
    from_file = {name: [p for p in pairs if "group" in p.provenance] for name, pairs in written.items()}
    groups = {name: {p.provenance["group"] for p in pairs} for name, pairs in from_file.items()}
    assert groups["train"] and groups["heldout"] and not groups["train"] & groups["heldout"]
    assert sorted(p.pair_id for side in from_file.values() for p in side) == sorted(p.pair_id for p in mined)
    made = synthetic_pairs(load_tasks(SAMPLE_TASKS_PATH), seed=config.seed)
    for pairs, expected in zip(written.values(), made):  # each side also holds its synthetic half, in order
        assert [p.pair_id for p in pairs if "group" not in p.provenance] == [p.pair_id for p in expected]
    assert any(f"{len(from_file['train'])} train ({len(groups['train'])} groups)" in line for line in lines), lines
    assert any(f"{len(made[0])} train / {len(made[1])} held-out synthetic" in line for line in lines), lines
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["heldout_ca_accuracy"] <= 1.0 for r in rows)
    assert rows[1]["ca/ca_num_pairs"] == 2 * config.ca.pairs_per_update and rows[1]["ca/ca_loss"] > 0


def test_pairs_mined_from_real_trajectories_train(sample_images, mined_real_pairs, tmp_path):  # type: ignore[no-untyped-def]
    """`pairs_file` = the miner's output on the shared mini-swe-agent run, as written: a short run trains L_CA on
    them (their trajectory-long contexts cut to the L_CA budget), holds out whole groups and scores them."""
    from trainer.pairs import load_pairs
    from trainer.pairs.split import pair_group

    mined = load_pairs(mined_real_pairs.pairs)
    config = _config(tmp_path, "real", 1)
    config.pairs_file, config.heldout_pairs, config.synthetic_pairs = mined_real_pairs.pairs, None, False
    config.heldout_fraction, config.success_eval_episodes = 0.25, 0
    assert train(config, log=lambda *_: None)["last"]["step"] == 1
    out = tmp_path / "real"
    train_side, heldout = (load_pairs(out / f"pairs.{name}.jsonl") for name in ("train", "heldout"))
    assert sorted(p.pair_id for p in train_side + heldout) == sorted(p.pair_id for p in mined)
    assert heldout and not {pair_group(p) for p in train_side} & {pair_group(p) for p in heldout}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["heldout_ca_accuracy"] <= 1.0 for r in rows)
    assert rows[1]["ca/ca_num_pairs"] == 2 * config.ca.pairs_per_update and rows[1]["ca/ca_loss"] > 0


def test_merge_step_outputs_reports_each_losss_updates() -> None:
    from trainer.step import StepOutput, merge_step_outputs

    grpo = [
        StepOutput(0.2, {"grpo/loss": 0.2, "grpo/entropy": 1.0, "loss": 0.2}, 0.1),
        StepOutput(0.4, {"grpo/loss": 0.4, "grpo/entropy": 3.0, "loss": 0.4}, 0.3),
    ]
    ca = [
        StepOutput(0.6, {"ca/ca_loss": 0.6, "loss": 0.6}, 1.0),
        StepOutput(0.8, {"ca/ca_loss": 0.8, "loss": 0.8}, 2.0),
    ]
    out = merge_step_outputs(grpo, ca, ca_weight=0.5)
    assert out.metrics["grpo/entropy"] == pytest.approx(2.0) and out.metrics["ca/ca_loss"] == pytest.approx(0.7)
    assert out.loss == out.metrics["loss"] == pytest.approx(0.3 + 0.5 * 0.7)
    assert out.grad_norm == pytest.approx(0.2) and out.metrics["ca/grad_norm"] == pytest.approx(1.5)
    shared = merge_step_outputs(grpo, [], ca_weight=0.5)
    assert shared.loss == pytest.approx(0.3) and "ca/grad_norm" not in shared.metrics


def test_minibatches_partition_the_rows_balanced_by_length() -> None:
    import torch

    from trainer.batch import RolloutBatch
    from trainer.step import minibatch_indices

    lengths = [9, 1, 8, 2, 7, 3, 6, 4]
    mask = torch.tensor([[1] * n + [0] * (10 - n) for n in lengths])
    zeros = torch.zeros(8, 10)
    batch = RolloutBatch(mask.clone(), mask, zeros, zeros, torch.zeros(8), {})
    parts = minibatch_indices(batch, 2)
    assert sorted(i for part in parts for i in part) == list(range(8)) and all(len(p) == 4 for p in parts)
    assert [sum(lengths[i] for i in part) for part in parts] == [20, 20]
    assert minibatch_indices(batch, 1) == [list(range(8))]
    assert len(minibatch_indices(batch, 20)) == 8  # never an empty mini-batch


def test_resume_keeps_each_steps_rollouts_once(tmp_path):  # type: ignore[no-untyped-def]
    """The rollouts of the steps a resumed run redoes (weights version ≥ the checkpoint's step) leave the record, and
    so does a last line cut short by the kill; those before stay, in order."""
    from agent.trajectory import Trajectory, write_jsonl
    from trainer.setup import keep_rollouts_before

    path = tmp_path / "rollouts.jsonl"
    write_jsonl(path, [Trajectory(task_id=f"t{i}", group=i % 2, weights_version=i // 2, reward=1.0) for i in range(8)])
    with open(path, "a") as handle:
        handle.write('{"version": 1, "task_id": "cut sh')
    keep_rollouts_before(path, 2)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["task_id"], r["weights_version"]) for r in kept] == [("t0", 0), ("t1", 0), ("t2", 1), ("t3", 1)]
    assert not path.with_name("rollouts.jsonl.partial").exists()
    keep_rollouts_before(tmp_path / "absent.jsonl", 2)  # a run killed before its first rollout: nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_kill_9_then_resume_finishes(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    """SIGKILL the trainer (and its local env server) mid-run; `--resume` continues from the last checkpoint and
    finishes with one metrics row per step; no container of the killed run survives."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import ROOT, docker_client
    from trainer.setup import local_server_name

    config = _config(tmp_path, "killed", 4)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    command = [sys.executable, "-m", "trainer.run", "--config", str(path)]
    process = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = config.output_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "step-000002").exists() and time.monotonic() < deadline:
        assert process.poll() is None, "the trainer exited before it was killed"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (config.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]
    # The rollouts of the steps redone after the kill (and a line it may have cut short) are not kept twice.
    versions = [
        json.loads(line)["weights_version"] for line in (config.output_dir / "rollouts.jsonl").read_text().splitlines()
    ]
    assert versions == sorted(versions) and versions == [v for v in range(4) for _ in range(4)]
    name = local_server_name(config.output_dir)
    orphans = subprocess.run(
        ["pgrep", "-f", f"--server-name {name}"], capture_output=True, text=True, check=False
    ).stdout
    assert not orphans.strip(), f"the killed run's env server survived: {orphans}"
    assert (
        docker_client().containers.list(all=True, ignore_removed=True, filters={"label": f"envserver.server={name}"})
        == []
    )


def test_embedded_default_shortened(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    """`python -m trainer.run` on the embedded default (tiny model, local env server on the sample tasks, scripted
    demonstrations, synthetic pairs), shortened to 4 warm-start and 2 RL steps: it prints start vs end, writes the
    demonstrations (every one rewarded), the train / held-out pairs (no test shared), the metrics with a step-0 row,
    the plot and the summary. Whether it *learns* takes the full 15-minute run (README)."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    out = tmp_path / "default"
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"steps": 2, "warm_start_steps": 4, "output_dir": str(out), "success_eval_episodes": 1})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.run", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "success rate (evaluation of 8 tasks, fixed seeds): start" in proc.stdout
    assert "contextrl-samples__minicalc-1: " in proc.stdout  # and each task's
    assert "success rate (training rollouts, mean of 1 steps): start" in proc.stdout
    assert "held-out context-selection accuracy: start" in proc.stdout
    demos = [json.loads(line) for line in (out / "demonstrations.jsonl").read_text().splitlines()]
    assert len(demos) == 8 and all(d["reward"] == 1.0 for d in demos)
    from trainer.pairs import load_pairs

    train_tests = {p.provenance["test"] for p in load_pairs(out / "pairs.train.jsonl")}
    heldout_tests = {p.provenance["test"] for p in load_pairs(out / "pairs.heldout.jsonl")}
    assert train_tests and heldout_tests and not train_tests & heldout_tests
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["warm_start/demonstrations"] == 8
    assert rows[0]["warm_start/last_loss"] < rows[0]["warm_start/first_loss"]
    assert all(0.0 <= r["heldout_ca_accuracy"] <= 1.0 for r in (rows[0], rows[-1]))  # before and after
    pairs = TrainerConfig().ca.pairs_per_update
    assert all(r["ca/ca_num_pairs"] == 2 * pairs for r in rows[1:])  # each update's pairs, each in both orders
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_ca_accuracy"]["start"] == rows[0]["heldout_ca_accuracy"]
    assert (out / "metrics.png").stat().st_size > 10_000
    # RL's AdamW started fresh (the warm start's moments are saved beside its model for runs that opt in): its step
    # count is 2 steps × μ passes × the mini-batches of a pass.
    import torch

    from trainer.warmstart import SECOND_MOMENTS_FILE

    saved = torch.load(out / "warm-start-model" / SECOND_MOMENTS_FILE, weights_only=True)
    assert saved and all(float(m["step"]) == 4.0 for m in saved.values())
    state = torch.load(out / "checkpoints" / "latest" / "trainer_state.pt", weights_only=False)
    default = TrainerConfig()
    updates = default.grpo.updates_per_step * default.grpo.minibatches
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {2.0 * updates}
    # L_CA's own AdamW took its updates (each with its own pairs) besides GRPO's.
    assert default.ca.separate_updates > 1
    assert {float(s["step"]) for s in state["ca_optimizer"]["state"].values()} == {2.0 * default.ca.separate_updates}


def test_sigterm_stops_the_local_env_server_and_its_containers(sample_images, tmp_path):  # type: ignore[no-untyped-def]
    """`kill PID` of the trainer alone (not its process group): it unwinds, stopping its local env server, which
    removes its containers; nothing of the run is left."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import ROOT, docker_client
    from trainer.setup import local_server_name

    config = _config(tmp_path, "terminated", 50)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.run", "--config", str(path)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    name = local_server_name(config.output_dir)
    label = {"label": f"envserver.server={name}"}
    deadline = time.monotonic() + 300
    # terminated mid-rollout, once step 1 is done and episode containers of a later step are running
    while not (
        (config.output_dir / "checkpoints" / "step-000001").exists()
        and docker_client().containers.list(all=True, ignore_removed=True, filters=label)
    ):
        assert process.poll() is None, "the trainer exited before it was terminated"
        assert time.monotonic() < deadline, "no checkpoint and running episode within 300 s"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    leftover = subprocess.run(
        ["pgrep", "-f", f"--server-name {name}"], capture_output=True, text=True, check=False
    ).stdout
    assert not leftover.strip(), f"the env server outlived the trainer: {leftover}"
    assert (
        docker_client().containers.list(all=True, ignore_removed=True, filters={"label": f"envserver.server={name}"})
        == []
    )
