"""Chunked per-token logprobs: values, entropy and gradients (wrt hidden and head) equal the naive full log-softmax,
for chunk sizes that do and do not divide the token count; bf16 hidden states; a causal LM's alignment."""

from __future__ import annotations

import pytest
import torch

from trainer.logprobs import IGNORE_INDEX, model_token_logprobs, token_logprobs


def naive(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    logp = torch.log_softmax((hidden @ weight.T) / temperature, dim=-1)
    valid = targets != IGNORE_INDEX
    picked = logp.gather(-1, torch.where(valid, targets, 0)[..., None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return torch.where(valid, picked, torch.zeros((), dtype=picked.dtype)), entropy


def inputs(dtype: torch.dtype, batch: int = 2, length: int = 37, width: int = 16, vocab: int = 301, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, width, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(vocab, width, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    targets = torch.randint(0, vocab, (batch, length), generator=gen)
    return hidden.requires_grad_(), weight.requires_grad_(), targets


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 37, 74, 1024])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_entropy_and_gradients_match_naive(chunk_size: int, dtype: torch.dtype) -> None:
    hidden, weight, targets = inputs(dtype)
    targets[0, 3] = IGNORE_INDEX
    targets[1, -1] = IGNORE_INDEX
    upstream = torch.randn(targets.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    logprobs, entropy = token_logprobs(hidden, weight, targets, chunk_size=chunk_size, return_entropy=True)
    assert logprobs.dtype == entropy.dtype == torch.float32 and logprobs.shape == targets.shape
    assert not entropy.requires_grad and logprobs.requires_grad
    (logprobs * upstream.float()).sum().backward()
    got_h, got_w = hidden.grad.clone(), weight.grad.clone()
    assert got_h.dtype == dtype and got_w.dtype == dtype
    hidden.grad = weight.grad = None

    ref, ref_entropy = naive(hidden.double(), weight.double(), targets)
    (ref * upstream).sum().backward()
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(logprobs.double(), ref.detach(), **tol)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), **tol)
    torch.testing.assert_close(got_h.double(), hidden.grad.double(), **tol)
    torch.testing.assert_close(got_w.double(), weight.grad.double(), **tol)
    assert logprobs[0, 3] == 0 and logprobs[1, -1] == 0
    assert torch.all(got_h[0, 3] == 0)  # an ignored target sends no gradient to its hidden state


def test_temperature() -> None:
    hidden, weight, targets = inputs(torch.float64)
    logprobs = token_logprobs(hidden, weight, targets, chunk_size=7, temperature=0.7)
    logprobs.sum().backward()
    got = hidden.grad.clone()
    hidden.grad = None
    ref, _ = naive(hidden, weight, targets, temperature=0.7)
    ref.sum().backward()
    torch.testing.assert_close(logprobs.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, hidden.grad, rtol=1e-5, atol=1e-5)


def test_bf16_hidden_and_weight_close_to_float64() -> None:
    hidden, weight, targets = inputs(torch.bfloat16, length=50)
    logprobs, entropy = token_logprobs(hidden, weight, targets, chunk_size=16, return_entropy=True)
    logprobs.sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    # the reference sees the same bf16-rounded inputs, in float64: the chunked pass computes in float32
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref, ref_entropy = naive(h64, w64, targets)
    ref.sum().backward()
    torch.testing.assert_close(logprobs.double(), ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=2e-2, atol=2e-2)  # bf16 output rounding
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=2e-2, atol=2e-2)


def test_gradient_wrt_hidden_only_and_no_grad() -> None:
    hidden, weight, targets = inputs(torch.float64)
    weight.requires_grad_(False)
    token_logprobs(hidden, weight, targets, chunk_size=8).sum().backward()
    assert hidden.grad is not None and weight.grad is None
    with torch.no_grad():
        out = token_logprobs(hidden, weight, targets, chunk_size=8)
    assert not out.requires_grad


def test_rejects_bad_inputs() -> None:
    hidden, weight, targets = inputs(torch.float32)
    with pytest.raises(ValueError, match="target ids outside"):
        token_logprobs(hidden, weight, torch.full_like(targets, 301))
    with pytest.raises(ValueError, match="lm_head_weight"):
        token_logprobs(hidden, weight[:, :3], targets)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(hidden, weight, targets, chunk_size=0)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    from agent.tiny import build_tiny_model

    return AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.mark.slow  # ~7 s CPU: left out of scripts/test.sh --fast
def test_model_alignment_and_gradients(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model
    model.train()  # no dropout in Qwen3: train mode only switches gradient checkpointing on where enabled
    ids = torch.randint(0, 151_000, (2, 21), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # right padding
    model.zero_grad()
    logprobs, entropy = model_token_logprobs(model, ids, mask, chunk_size=6, return_entropy=True)
    logprobs[mask.bool()].sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    import copy

    reference = copy.deepcopy(model).double()  # the reference runs in float64 throughout
    logits = reference(input_ids=ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits, dim=-1)
    ref = torch.zeros(ids.shape, dtype=torch.float64)
    ref[:, 1:] = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # token t from the hidden state at t-1
    ref = ref * mask
    ref_entropy = torch.zeros(ids.shape, dtype=torch.float64)
    ref_entropy[:, 1:] = -(logp.exp() * logp).sum(-1)[:, :-1]
    ref_entropy = ref_entropy * mask
    ref[mask.bool()].sum().backward()

    torch.testing.assert_close(logprobs.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=1e-5, atol=1e-5)
    assert torch.all(logprobs[:, 0] == 0) and torch.all(logprobs[1, -4:] == 0)
    ref_grads = {name: param.grad for name, param in reference.named_parameters()}
    assert "lm_head.weight" not in ref_grads  # tied: the embedding gets both its input and its head gradients
    # float32 vs float64: ~1e-5 relative. A thin chunk's [c, V] @ [V, H] goes through a CPU BLAS path that sums the
    # 151k-long reductions less accurately than the full-size matmul (measured 1e-6 at c = T, ~1e-5 at c ≤ 32).
    for name, grad in grads.items():
        assert relative_error(grad, ref_grads[name]) < 1e-4, name

    model.zero_grad()
    checkpointed = model_token_logprobs(model, ids, mask, chunk_size=6, gradient_checkpointing=True)
    assert model.is_activation_checkpointing
    checkpointed[mask.bool()].sum().backward()
    torch.testing.assert_close(checkpointed, logprobs.detach(), rtol=1e-6, atol=1e-6)
    for name, param in model.named_parameters():
        assert relative_error(param.grad, grads[name]) < 1e-5, name
    model.activation_checkpointing_disable()
    model.eval()


def test_masked_model_logprobs_equal_full_at_masked_positions():
    """The head-only-where-sampled variant gives the same numbers (and gradients) as the full computation there."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from trainer.logprobs import masked_model_token_logprobs, model_token_logprobs

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=97,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=64,
            tie_word_embeddings=True,
        )
    ).float()
    ids = torch.randint(0, 97, (2, 11))
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0
    mask = torch.zeros_like(ids, dtype=torch.float32)
    mask[0, 4:9] = 1
    mask[1, 0:6] = 1  # position 0 can never be predicted: it must come out as 0
    full, full_entropy = model_token_logprobs(model, ids, attention, return_entropy=True)
    part, part_entropy = masked_model_token_logprobs(model, ids, attention, mask, chunk_size=3, return_entropy=True)
    where = mask.bool().clone()
    where[:, 0] = False
    assert torch.allclose(part[where], full[where], atol=1e-5)
    assert torch.allclose(part_entropy[where], full_entropy[where], atol=1e-5)
    assert (part[~where] == 0).all()
    grad_full = torch.autograd.grad((full * where).sum(), model.model.embed_tokens.weight)[0]
    grad_part = torch.autograd.grad(part.sum(), model.model.embed_tokens.weight)[0]
    assert torch.allclose(grad_full, grad_part, atol=1e-5)
