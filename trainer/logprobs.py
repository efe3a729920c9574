"""Per-token logprobs (and entropy) without materialising the [tokens × vocab] float32 logits.

Why: at Qwen3's 151,669-token vocabulary one float32 row of logits is 0.6 MB, so a naive `log_softmax(h @ Wᵀ)` over
an 8k-token trajectory holds 5 GB of logits, another 5 GB of log-probabilities, and its backward as much again — per
sequence. Only the target token's logprob (and, for metrics, the entropy) is needed per position.

`token_logprobs` runs the head over chunks of `chunk_size` tokens: per chunk it computes the logits in float32, their
logsumexp, the target logit and the entropy, and keeps nothing but those per-token numbers. The backward is memory
lean as well: it is a `torch.autograd.Function` that recomputes each chunk's logits from the saved hidden states and
head weight and applies d logprob / d logits = onehot(target) − softmax chunk by chunk, accumulating the head
weight's gradient and writing the hidden states' gradient in place. Peak memory beyond the inputs is about one chunk
of float32 logits — the max-shift, exp and sum run in place on it, and the backward turns it in place into the
logits' gradient — plus a second one in forward when the entropy is asked for, the [V, H] float32 accumulator of W's
gradient, and a float32 copy of W when W is not float32.

Why an autograd.Function rather than `torch.utils.checkpoint` around each chunk: checkpointing would rebuild each
chunk's autograd graph (matmul → log_softmax → gather) in backward and run log_softmax's generic backward, which
allocates the chunk's full gradient of the log-probabilities, the exp of the log-probabilities and the gradient of
the logits — three or four chunk-sized buffers — and produces a fresh [V, H] weight gradient per chunk for autograd
to add up. The hand-written backward needs one chunk buffer (the softmax, turned into the logits' gradient in place),
fuses the gather's backward into a scatter-add on that buffer, and accumulates the weight gradient with `addmm_`.

Alignment for a causal LM (`model_token_logprobs`): the logprob at position t is that of token t given tokens < t,
computed from the hidden state at t − 1; position 0 has no prediction and gets 0. So the result lines up with the
token ids, and with a trajectory's per-token loss mask and sampling logprobs (agent/trajectory.py).
"""

from __future__ import annotations

from typing import Any, cast

import torch

IGNORE_INDEX = -100
"""A target id that means "no target here": its logprob is 0 and it gets no gradient."""


def _chunk_logits(
    hidden_chunk: torch.Tensor, weight32: torch.Tensor, inv_temperature: float, buffer: torch.Tensor
) -> torch.Tensor:
    """float32 logits [c, V] of one chunk (divided by the temperature), written into the first c rows of `buffer`.

    One buffer serves every chunk of a call: a fresh [c, V] allocation per chunk (620 MB at c = 1024) is a fresh
    mmap whose pages all fault in again — measured at ~24% of a GRPO step on CPU."""
    logits = torch.matmul(hidden_chunk.to(torch.float32), weight32.T, out=buffer[: hidden_chunk.shape[0]])
    if inv_temperature != 1.0:
        logits.mul_(inv_temperature)
    return logits


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """logprobs [N] (and entropy [N], no gradient) of targets [N] under softmax(hidden [N, H] @ weight [V, H]ᵀ / τ)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_size: int,
        inv_temperature: float,
        want_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        valid = targets != IGNORE_INDEX
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
        weight32 = weight.to(torch.float32)  # no copy when W is float32; otherwise one [V, H] copy, not T-dependent
        logprobs = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.zeros(n if want_entropy else 0, dtype=torch.float32, device=hidden.device)
        rows = min(chunk_size, n)
        buffer = torch.empty((rows, weight.shape[0]), dtype=torch.float32, device=hidden.device)
        exps_buffer = torch.empty_like(buffer) if want_entropy else None
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            shifted = _chunk_logits(hidden[start:stop], weight32, inv_temperature, buffer)  # the one [c, V] buffer
            row_max = shifted.amax(dim=-1)
            shifted.sub_(row_max[:, None])  # s = logit − max: exp(s) cannot overflow, Σ exp(s) ≥ 1
            target_shifted = shifted.gather(1, safe_targets[start:stop, None]).squeeze(1)
            if want_entropy:  # H = log Z − Σ exp(s)·s / Z; needs s and exp(s) at once: a second buffer
                exps = torch.exp(shifted, out=exps_buffer[: stop - start])  # type: ignore[index]
                norm = exps.sum(dim=-1)
                weighted = exps.mul_(shifted).sum(dim=-1)  # Σ exp(s)·s, in place (torch's sum is pairwise: accurate)
                del exps
                log_norm = norm.log()
                entropy[start:stop] = log_norm - weighted / norm
            else:
                log_norm = shifted.exp_().sum(dim=-1).log()
            lse[start:stop] = log_norm + row_max
            logprobs[start:stop] = target_shifted - log_norm
            del shifted
        logprobs.masked_fill_(~valid, 0.0)
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse)
        ctx.chunk_size = chunk_size
        ctx.inv_temperature = inv_temperature
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: torch.Tensor, _grad_entropy: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, targets, valid, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_logprobs is None or not (need_hidden or need_weight):
            return None, None, None, None, None, None
        inv_t = ctx.inv_temperature
        # d logprob / d logits = onehot(target) − softmax; times the incoming gradient (0 where the target is ignored)
        # and the temperature's 1/τ (logits = h Wᵀ / τ).
        grad = torch.where(valid, grad_logprobs.to(torch.float32), torch.zeros((), device=lse.device)) * inv_t
        weight32 = weight.to(torch.float32)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight32 = torch.zeros_like(weight32) if need_weight else None
        buffer = torch.empty(
            (min(ctx.chunk_size, hidden.shape[0]), weight.shape[0]), dtype=torch.float32, device=hidden.device
        )
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = min(start + ctx.chunk_size, hidden.shape[0])
            hidden32 = hidden[start:stop].to(torch.float32)
            g = grad[start:stop]
            dlogits = _chunk_logits(hidden32, weight32, inv_t, buffer)  # recomputed, then turned in place into
            dlogits.sub_(lse[start:stop, None]).exp_()  # the softmax,
            dlogits.mul_(-g[:, None])  # −g·softmax,
            dlogits.scatter_add_(1, targets[start:stop, None], g[:, None])  # + g·onehot(target)
            if grad_hidden is not None:
                grad_hidden[start:stop] = (dlogits @ weight32).to(hidden.dtype)
            if grad_weight32 is not None:
                grad_weight32.addmm_(dlogits.T, hidden32)
            del dlogits
        grad_weight = grad_weight32.to(weight.dtype) if grad_weight32 is not None else None
        return grad_hidden, grad_weight, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    target_ids: torch.Tensor,
    chunk_size: int = 1024,
    return_entropy: bool = False,
    temperature: float = 1.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ lm_head_weightᵀ / temperature)[target] per token, chunked in forward and backward.

    hidden: [B, T, H] (any float dtype; each chunk is upcast to float32).
    lm_head_weight: [V, H] (the output head, or the tied input embedding).
    target_ids: [B, T] int ids; IGNORE_INDEX (-100) marks positions without a target (logprob 0, no gradient).
    chunk_size: tokens per chunk: peak extra memory ≈ chunk_size · V · 4 bytes (twice that with return_entropy).
    return_entropy: also return the entropy (nats) of each position's distribution, for metrics: it carries no
        gradient and is computed in the same pass (it is not 0 at ignored positions).
    temperature: divide the logits by it (the distribution the sampler drew from, when it sampled with one).
    Returns float32 logprobs [B, T] (and entropy [B, T]). Differentiable with respect to hidden and lm_head_weight;
    their gradients come back in their own dtypes.
    """
    if hidden.dim() != 3 or target_ids.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [B, T, H] and target_ids [B, T]; got {tuple(hidden.shape)} and {tuple(target_ids.shape)}"
        )
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"lm_head_weight must be [V, {hidden.shape[2]}]; got {tuple(lm_head_weight.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, length, width = hidden.shape
    targets = target_ids.reshape(-1).to(torch.long)
    vocab = lm_head_weight.shape[0]
    out_of_range = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= vocab))
    if bool(out_of_range.any()):
        raise ValueError(f"target ids outside [0, {vocab}): {targets[out_of_range][:5].tolist()}")
    logprobs, entropy = _ChunkedTokenLogprobs.apply(
        hidden.reshape(-1, width), lm_head_weight, targets, chunk_size, 1.0 / temperature, return_entropy
    )
    logprobs = logprobs.view(batch, length)
    if return_entropy:
        return logprobs, entropy.view(batch, length)
    return logprobs


def _enable_activation_checkpointing(model: Any) -> None:
    """transformers' decoder-layer checkpointing, non-reentrant: `activation_checkpointing_enable` in 5.x, its
    deprecated name `gradient_checkpointing_enable` before."""
    if hasattr(model, "activation_checkpointing_enable"):
        if not model.is_activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif not model.is_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def model_token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int = 1024,
    gradient_checkpointing: bool = False,
    return_entropy: bool = False,
    temperature: float = 1.0,
    **model_kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token logprobs [B, T] of `input_ids` under a transformers causal LM, without its [B, T, V] logits.

    Alignment: result[:, t] = log p(input_ids[:, t] | input_ids[:, :t]) for t ≥ 1, from the hidden state at t − 1;
    result[:, 0] = 0 (nothing predicts the first token). Where attention_mask[:, t] == 0 (padding) the result is 0.
    With return_entropy, entropy[:, t] is that of the distribution that predicts token t (0 at t = 0).

    The decoder runs as `model.model(...)` (hidden states after the final norm, no logits); the head is
    `model.get_output_embeddings()` — `lm_head`, which is the input embedding when the weights are tied. Models
    whose head is more than a bias-free linear map (logit soft-capping, scaling) are refused.
    gradient_checkpointing: True turns on the decoder layers' activation checkpointing (transformers'
        `activation_checkpointing_enable`, formerly `gradient_checkpointing_enable`; non-reentrant) before the
        pass. It is a model setting: it stays on after the call and, as in transformers, acts in train mode only.
        False leaves the model's setting as it is.
    model_kwargs: passed to `model.model` (e.g. position_ids for left-padded batches).
    """
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("an output head with a bias is not supported")
    config = getattr(model, "config", None)
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None) not in (None, 1.0):
            raise NotImplementedError(f"the model's config sets {name}: not a plain linear head")
    if gradient_checkpointing:
        _enable_activation_checkpointing(model)
    outputs = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **model_kwargs)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    # The hidden state at t predicts token t + 1: target t is input t + 1; the last position predicts nothing.
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    targets[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        targets[:, :-1].masked_fill_(attention_mask[:, 1:] == 0, IGNORE_INDEX)
    result = token_logprobs(
        hidden, head.weight, targets, chunk_size=chunk_size, return_entropy=return_entropy, temperature=temperature
    )
    logprobs, entropy = (
        cast(tuple[torch.Tensor, torch.Tensor], result) if return_entropy else (cast(torch.Tensor, result), None)
    )
    # Shift right by one so that index t holds token t's logprob; position 0 gets 0.
    logprobs = torch.nn.functional.pad(logprobs[:, :-1], (1, 0))
    if entropy is None:
        return logprobs
    entropy = torch.nn.functional.pad(entropy[:, :-1], (1, 0))
    if attention_mask is not None:
        entropy = entropy.masked_fill(attention_mask == 0, 0.0)
    return logprobs, entropy


def masked_model_token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    mask: torch.Tensor,
    chunk_size: int = 1024,
    return_entropy: bool = False,
    gradient_checkpointing: bool = False,
    temperature: float = 1.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`model_token_logprobs`, but the output head runs only where `mask` [B, T] is set (the sampled tokens).

    A rollout's sampled tokens are a small part of its sequence (prompt and tool output are the rest), and at a
    151k vocabulary the head dominates the cost: this computes exactly the same numbers at the masked positions
    and 0 elsewhere (entropy likewise), for a fraction of the work. Position 0 is never computed (nothing
    predicts it)."""
    if gradient_checkpointing:
        _enable_activation_checkpointing(model)
    outputs = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    wanted = mask.bool().clone()
    wanted[:, 0] = False
    rows, cols = wanted.nonzero(as_tuple=True)
    predicting = hidden[rows, cols - 1]  # the hidden state at t − 1 predicts token t
    result = token_logprobs(
        predicting[None],
        model.get_output_embeddings().weight,
        input_ids[rows, cols][None],
        chunk_size=chunk_size,
        return_entropy=return_entropy,
        temperature=temperature,
    )
    values, entropy = (
        cast(tuple[torch.Tensor, torch.Tensor], result) if return_entropy else (cast(torch.Tensor, result), None)
    )
    zeros = torch.zeros(input_ids.shape, dtype=torch.float32, device=values.device)
    logprobs = zeros.index_put((rows, cols), values[0])
    if entropy is None:
        return logprobs
    return logprobs, zeros.index_put((rows, cols), entropy[0])
