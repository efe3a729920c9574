"""trainer.compare (runs side by side) and the command line's config overrides, on metrics files written the way
trainer.run writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.compare import main as compare_main
from trainer.run import config_from_args
from trainer.summary import start_end_summary


def _run(
    folder: Path,
    ca_weight: float,
    success: list[float],
    accuracy: list[float],
    evaluation: tuple[float, float] | None = None,
) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"ca": {"weight": ca_weight}}))
    tasks = [["a", "b"], ["c", "d"]]
    rows = [{"step": 0, "heldout_ca_accuracy": accuracy[0]} | ({"success_eval": evaluation[0]} if evaluation else {})]
    for step, rate in enumerate(success, start=1):
        row = {"step": step, "success_rate": rate, "tasks": tasks[(step - 1) % 2], "ca/ca_loss": 0.7}
        if step == len(success):
            row["heldout_ca_accuracy"] = accuracy[-1]
            if evaluation:
                row["success_eval"] = evaluation[-1]
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def test_summary_windows_are_one_pass_over_the_tasks():  # type: ignore[no-untyped-def]
    rows = [{"step": 0, "heldout_ca_accuracy": 0.5}] + [
        {"step": s, "success_rate": r, "tasks": [["a", "b"], ["c", "d"]][(s - 1) % 2]}
        for s, r in enumerate([0.0, 1.0, 0.5, 0.5, 1.0, 1.0], start=1)
    ]
    summary = start_end_summary(rows)
    assert summary["success_rate"] == {"start": 0.5, "end": 1.0, "window_steps": 2}
    assert start_end_summary(rows, window=1)["success_rate"]["start"] == 0.0
    assert summary["heldout_ca_accuracy"] == {"start": 0.5, "end": 0.5}


def test_compare_prints_start_and_end_and_plots(tmp_path, capsys):  # type: ignore[no-untyped-def]
    main_run = _run(tmp_path / "default", 1.0, [0.25, 0.25, 0.5, 0.75], [0.5, 0.8], evaluation=(0.375, 0.875))
    control = _run(tmp_path / "lambda0", 0.0, [0.25, 0.25, 0.5, 0.5], [0.5, 0.5])
    out = tmp_path / "compare.png"
    assert compare_main([str(main_run), str(control), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line for line in printed.splitlines() if line.startswith(("default", "lambda0"))}
    cells = lines["default"].split("  ")
    assert "(λ = 1)" in lines["default"] and [c.strip() for c in cells if "→" in c] == [
        "0.38 → 0.88",
        "0.25 → 0.62",
        "0.50 → 0.80",
    ]  # evaluation, rollouts, held-out
    assert "(λ = 0)" in lines["lambda0"] and "0.50 → 0.50" in lines["lambda0"]
    assert [c.strip() for c in lines["lambda0"].split("  ") if c.strip()][2] == "-"  # no evaluation in that run
    assert out.stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        compare_main([str(tmp_path), "--out", str(out)])


def test_config_overrides(tmp_path):  # type: ignore[no-untyped-def]
    config = config_from_args(
        None, ["ca.weight=0", "grpo.kl_coef=0.25", "agent.tools=[execute_bash]", "engine_url=null"]
    )
    assert config.ca.weight == 0.0 and config.grpo.kl_coef == 0.25 and config.agent.tools == ("execute_bash",)
    assert config.grpo.clip_high == 0.28 and config.ca.clip == 5.0  # the rest of a section keeps its defaults
    # A partial `agent:` section applies over the embedded default's agent, not over AgentConfig's defaults.
    sampling = config_from_args(None, ["agent.top_p=0.8", "agent.top_k=20", "agent.temperature=0.5"]).agent
    assert (sampling.top_p, sampling.top_k, sampling.temperature) == (0.8, 20, 0.5)
    assert (sampling.max_turns, sampling.max_tokens_per_turn) == (2, 192)
    assert config_from_args(None, ["agent.tools=null"]).agent.tools is None
    # Keys of older configs say where the setting went.
    with pytest.raises(SystemExit, match=r"`ca_weight` is now `ca.weight`.*`temperature` is now `agent.temperature`"):
        config_from_args(None, ["ca_weight=0", "temperature=0.5"])
    with pytest.raises(SystemExit, match="`agent_tools` is now `agent.tools`"):
        config_from_args(None, ["agent_tools=null"])
    with pytest.raises(SystemExit, match="agent.seed"):
        config_from_args(None, ["agent.seed=3"])
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\ngrpo:\n  clip_low: 0.1\n")
    config = config_from_args(path, ["steps=7", "grpo.clip_high=0.3"])
    assert (config.steps, config.grpo.clip_low, config.grpo.clip_high) == (7, 0.1, 0.3)
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        config_from_args(None, ["steps"])
    with pytest.raises(SystemExit, match="nope"):
        config_from_args(None, ["nope=1"])
    with pytest.raises(SystemExit, match="not a section"):
        config_from_args(path, ["steps.x=1"])
    with pytest.raises(SystemExit, match="steps"):  # a section where a number belongs: pydantic says which field
        config_from_args(None, ["steps.x=1"])


def test_compare_runs_without_torch():  # type: ignore[no-untyped-def]
    """Comparing runs reads metrics files: a laptop without torch can do it (trainer.summary holds no torch)."""
    import subprocess
    import sys

    probe = "import sys, trainer.compare; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "False"
