"""RL's optimizer starting from the warm start's AdamW second moments (trainer/warmstart.py adopt_second_moments):
the state it takes, the update it then makes (against Adam's formula by hand), and the errors for a wrong model."""

from __future__ import annotations

import pytest
import torch

from trainer.warmstart import adopt_second_moments, second_moments


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _loss(model: torch.nn.Module, scale: float = 1.0) -> torch.Tensor:
    x = torch.linspace(-1, 1, 20).reshape(5, 4)
    return scale * model(x).pow(2).sum()


def _warm_started(steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        _loss(model).backward()
        optimizer.step()
    return model, optimizer


def test_adopted_state_is_the_second_moments_with_zero_first_moments():
    model, warm = _warm_started(steps=3)
    moments = second_moments(model, warm)
    assert set(moments) == {name for name, _ in model.named_parameters()}
    rl = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    assert adopt_second_moments(model, rl, moments) == 4
    for parameter in model.parameters():
        state, warm_state = rl.state[parameter], warm.state[parameter]
        assert float(state["step"]) == 3.0
        assert torch.equal(state["exp_avg_sq"], warm_state["exp_avg_sq"])
        assert not state["exp_avg_sq"] is warm_state["exp_avg_sq"]  # a copy: the warm start's optimizer can go
        assert torch.count_nonzero(state["exp_avg"]) == 0
    assert rl.param_groups[0]["lr"] == 1e-3  # RL's own hyperparameters stay


def test_first_update_divides_by_the_inherited_scale_not_its_own():
    """A fresh AdamW's first update moves every parameter by lr (a sign step) however small its gradient; with the
    inherited second moments the same gradient, 100× smaller than the warm start's, takes a step ~100× smaller — the
    step Adam's formula gives by hand with the inherited v and step count."""
    model, warm = _warm_started(steps=3)
    moments = second_moments(model, warm)
    start = [p.detach().clone() for p in model.parameters()]
    lr, (beta1, beta2), eps = 1e-3, (0.9, 0.999), 1e-8

    def one_update(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), start):
                p.copy_(p0)
        optimizer.zero_grad()
        _loss(model, scale=0.01).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        optimizer.step()
        return grads, [p.detach() - p0 for p, p0 in zip(model.parameters(), start)]

    _, fresh_steps = one_update(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0))
    for step, grad in zip(fresh_steps, [p.grad for p in model.parameters()]):
        nonzero = grad != 0
        assert torch.allclose(step[nonzero].abs(), torch.full_like(step[nonzero], lr), rtol=1e-3)

    rl = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    adopt_second_moments(model, rl, moments)
    grads, inherited_steps = one_update(rl)
    for parameter, grad, step in zip(model.parameters(), grads, inherited_steps):
        v0, t = moments_v(moments, model, parameter), 4
        m = (1 - beta1) * grad
        v = beta2 * v0 + (1 - beta2) * grad**2
        expected = -lr * (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps)
        assert torch.allclose(step, expected, rtol=1e-3, atol=5e-8)  # p - p0 in float32
        assert step.abs().max() < lr / 10


def moments_v(moments: dict, model: torch.nn.Module, parameter: torch.Tensor) -> torch.Tensor:
    name = next(n for n, p in model.named_parameters() if p is parameter)
    return moments[name]["exp_avg_sq"]


def test_wrong_model_or_used_optimizer_is_refused():
    model, warm = _warm_started(steps=1)
    moments = second_moments(model, warm)
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    with pytest.raises(ValueError, match="shape"):
        adopt_second_moments(other, torch.optim.AdamW(other.parameters()), moments)
    renamed = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 3)})
    with pytest.raises(ValueError, match="does not have"):
        adopt_second_moments(renamed, torch.optim.AdamW(renamed.parameters()), moments)
    with pytest.raises(ValueError, match="already stepped"):
        adopt_second_moments(model, warm, moments)


def test_moments_saved_beside_a_warm_started_model_are_found_by_runs_started_from_it(tmp_path):
    """`model: <output_dir>/warm-start-model` with warm_start_steps 0 (the λ = 0 control's recipe) reads the second
    moments the warm start saved there; a model folder without them, or the built tiny model, gives none; weights
    saved over the folder afterwards (or moments without their weights' fingerprint) are refused with a message."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.tiny import build_tiny_model
    from trainer.config import TrainerConfig
    from trainer.setup import save_warm_start, saved_second_moments

    built = build_tiny_model(tmp_path / "tiny", tokenizer="code-bpe")
    model = AutoModelForCausalLM.from_pretrained(built, dtype=torch.float32)
    warm = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        warm.zero_grad()
        model(torch.arange(1, 9)[None]).logits.square().mean().backward()
        warm.step()
    moments = second_moments(model, warm)
    folder = tmp_path / "warm-start-model"
    save_warm_start(model, AutoTokenizer.from_pretrained(built), moments, folder)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = TrainerConfig(model=str(folder), warm_start_steps=0)
    found = saved_second_moments(config, reloaded)
    assert found is not None and set(found) == set(moments)
    assert all(torch.equal(found[name]["exp_avg_sq"], moments[name]["exp_avg_sq"]) for name in moments)
    assert saved_second_moments(TrainerConfig(model=str(built)), reloaded) is None  # a folder without moments
    assert saved_second_moments(TrainerConfig(), reloaded) is None

    with torch.no_grad():  # another fine-tune saved over the folder: the moments are not this model's
        next(reloaded.parameters()).add_(1e-2)
    messages: list[str] = []
    assert saved_second_moments(config, reloaded, messages.append) is None
    assert "not the ones these moments were saved with" in messages[0]
    (folder / "adam-second-moments.weights.json").unlink()
    assert saved_second_moments(config, model, messages.append) is None and len(messages) == 2
