"""Log-probabilities of label tokens through the LM head, tile by tile, without the (tokens x vocabulary) logits.

Pure functions, like :mod:`cogpo_kit.training.losses`; :mod:`cogpo_kit.training.logprob_head` puts them behind a
model's forward for :class:`~cogpo_kit.training.cogpo_trainer.CogPOTrainer`.

- :func:`chunked_logprobs`: ``hidden`` (N, H), LM head ``weight`` (V, H) (and ``bias`` (V,)), ``targets`` (N,) ->
  log p(target) (N,) and the entropy of each next-token distribution (N,). The logits ``hidden @ weight.T`` are
  computed in tiles of ``token_chunk`` tokens x ``vocab_chunk`` vocabulary columns and folded into an online
  log-sum-exp; the backward recomputes every tile and turns it in place into the logits' gradient, so no tensor of
  more than one or two tiles exists at a time. Gradients reach ``hidden``, ``weight`` and ``bias`` (accumulated in
  float32); the entropy is for logging and carries none.
- :func:`completion_logprobs`: the same for a padded batch of hidden states (B, T, H) and labels (B, T) with
  ``-100`` where a position does not count (prompt, padding): only the counted positions are gathered (compactly)
  and scored; returns (B, T-1) tensors, zero where the shifted label is ``-100``.
- :func:`full_logprobs`: the plain computation (``log_softmax`` over the full logits), the reference of the tests.

Logits are ``softcap * tanh(logit_scale * y / softcap)`` with ``softcap`` set (Gemma-2 style), else
``logit_scale * y``, where ``y = hidden @ weight.T + bias``, as TRL's fused head (``trl.trainer.utils.add_fused_lm_head``).

Run its checks: ``pytest -q tests/test_training_chunked_logprobs.py``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Optional

import torch
import torch.nn.functional as F


def _tile(hidden_block: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], start: int, end: int,
          compute_dtype: torch.dtype) -> torch.Tensor:
    """``hidden_block @ weight[start:end].T + bias[start:end]`` in float32, shape (n, end - start)."""
    y = torch.mm(hidden_block, weight[start:end].to(compute_dtype).t())
    y = y.float()
    if bias is not None:
        y.add_(bias[start:end].float())
    return y


class _ChunkedLogProbs(torch.autograd.Function):
    """log p(target) and entropy of ``hidden @ weight.T`` over tiles; see :func:`chunked_logprobs`."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_chunk, vocab_chunk, logit_scale, softcap, gather_ctx):
        ctx.set_materialize_grads(False)
        device = hidden.device
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        compute_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        log_z = torch.empty(n_tokens, device=device, dtype=torch.float32)
        entropy = torch.empty(n_tokens, device=device, dtype=torch.float32)
        target_logit = torch.zeros(n_tokens, device=device, dtype=torch.float32)
        with torch.autocast(device.type, enabled=False), gather_ctx(weight, bias):
            for t0 in range(0, n_tokens, token_chunk):
                t1 = min(t0 + token_chunk, n_tokens)
                h = hidden[t0:t1].to(compute_dtype)
                tgt = targets[t0:t1]
                m = s = u = None  # running max, sum exp(z - m), sum exp(z - m) * (z - m)
                for v0 in range(0, vocab, vocab_chunk):
                    v1 = min(v0 + vocab_chunk, vocab)
                    z = _tile(h, weight, bias, v0, v1, compute_dtype)
                    if softcap is not None:
                        z.mul_(logit_scale / softcap).tanh_().mul_(softcap)
                    elif logit_scale != 1.0:
                        z.mul_(logit_scale)
                    local = tgt - v0
                    inside = (local >= 0) & (local < v1 - v0)
                    picked = z.gather(1, local.clamp(0, v1 - v0 - 1).unsqueeze(1)).squeeze(1)
                    target_logit[t0:t1] = torch.where(inside, picked, target_logit[t0:t1])
                    new_m = z.amax(dim=1) if m is None else torch.maximum(m, z.amax(dim=1))
                    d = z.sub_(new_m.unsqueeze(1))  # z - new_m, in place
                    e = torch.exp(d)
                    s_tile = e.sum(dim=1)
                    u_tile = torch.bmm(e.unsqueeze(1), d.unsqueeze(2)).view(-1)
                    if m is None:
                        s, u = s_tile, u_tile
                    else:
                        shift = m - new_m
                        r = torch.exp(shift)
                        s, u = s * r + s_tile, r * (u + shift * s) + u_tile
                    m = new_m
                    del z, d, e
                if m is None:
                    continue
                log_z[t0:t1] = m + torch.log(s)
                entropy[t0:t1] = torch.log(s) - u / s
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.params = (token_chunk, vocab_chunk, logit_scale, softcap, gather_ctx, compute_dtype)
        ctx.mark_non_differentiable(entropy)
        return target_logit - log_z, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        token_chunk, vocab_chunk, logit_scale, softcap, gather_ctx, compute_dtype = ctx.params
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if grad_logprobs is None or not (need_h or need_w or need_b):
            return None, None, None, None, None, None, None, None, None
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        g_all = grad_logprobs.float()
        grad_h = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False), gather_ctx(weight, bias):
            for t0 in range(0, n_tokens, token_chunk):
                t1 = min(t0 + token_chunk, n_tokens)
                h = hidden[t0:t1].to(compute_dtype)
                hf = h.float()
                g = g_all[t0:t1].unsqueeze(1)
                lz = log_z[t0:t1].unsqueeze(1)
                tgt = targets[t0:t1]
                rows = torch.arange(t1 - t0, device=hidden.device)
                for v0 in range(0, vocab, vocab_chunk):
                    v1 = min(v0 + vocab_chunk, vocab)
                    y = _tile(h, weight, bias, v0, v1, compute_dtype)
                    if softcap is not None:
                        t = y.mul_(logit_scale / softcap).tanh_()  # tanh, in place
                        grad = (t * softcap).sub_(lz).exp_()  # p
                    else:
                        t = None
                        grad = (y.mul_(logit_scale) if logit_scale != 1.0 else y).sub_(lz).exp_()  # p, in place
                    grad.mul_(-g)  # d log p_target / dz_j = 1[j = target] - p_j, times the incoming gradient
                    local = tgt - v0
                    inside = (local >= 0) & (local < v1 - v0)
                    grad[rows[inside], local[inside]] += g.squeeze(1)[inside]
                    if t is not None:
                        grad.mul_(t.square_().neg_().add_(1.0).mul_(logit_scale))  # dz/dy = scale * (1 - tanh^2)
                    elif logit_scale != 1.0:
                        grad.mul_(logit_scale)
                    if grad_h is not None:
                        grad_h[t0:t1].addmm_(grad, weight[v0:v1].float())
                    if grad_w is not None:
                        grad_w[v0:v1].addmm_(grad.t(), hf)
                    if grad_b is not None:
                        grad_b[v0:v1] += grad.sum(dim=0)
                    del y, t, grad
        return (grad_h.to(hidden.dtype) if grad_h is not None else None,
                grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None,
                None, None, None, None, None, None)


def _no_gather(*_params):
    return nullcontext()


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                     bias: Optional[torch.Tensor] = None, token_chunk: int = 1024, vocab_chunk: int = 8192,
                     logit_scale: float = 1.0, softcap: Optional[float] = None,
                     gather_ctx: Optional[Callable] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``targets`` and entropies under ``softmax(hidden @ weight.T + bias)``, in tiles.

    Args:
        hidden: (N, H) hidden states of the scored positions only.
        weight: (V, H) LM head weight; bias: (V,) or ``None``.
        targets: (N,) token ids in [0, V).
        token_chunk, vocab_chunk: tile size; at most one or two float32 tiles of this size exist at a time.
        logit_scale, softcap: the logit transform (module doc); ``None`` softcap: none.
        gather_ctx: ``gather_ctx(weight, bias)`` is entered around every direct use of the weight (ZeRO-3 gathers
            the sharded head there, ``trl.trainer.utils.maybe_gather_lm_head_ctx``); ``None``: nothing.

    Returns:
        ``(log_probs, entropy)``, each (N,) float32; ``log_probs`` is differentiable w.r.t. hidden, weight and bias,
        ``entropy`` is not.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be (N, H) and weight (V, H), got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if token_chunk < 1 or vocab_chunk < 1:
        raise ValueError(f"token_chunk and vocab_chunk must be >= 1, got {token_chunk} and {vocab_chunk}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        raise ValueError(f"targets must lie in [0, {weight.shape[0]}), got [{int(targets.min())}, {int(targets.max())}]")
    return _ChunkedLogProbs.apply(hidden, weight, bias, targets, int(token_chunk), int(vocab_chunk),
                                  float(logit_scale), None if softcap is None else float(softcap),
                                  gather_ctx or _no_gather)


def shift_for_next_token(hidden_states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (B, T, H) and labels (B, T) -> (B, T-1, H) predicting the shifted labels (B, T-1)."""
    return hidden_states[:, :-1], labels[:, 1:]


def completion_logprobs(hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                        bias: Optional[torch.Tensor] = None, token_chunk: int = 1024, vocab_chunk: int = 8192,
                        logit_scale: float = 1.0, softcap: Optional[float] = None,
                        gather_ctx: Optional[Callable] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the counted labels of a padded batch, scoring only the counted positions.

    Args:
        hidden_states: (B, T, H) last hidden states of the model.
        labels: (B, T) token ids, ``-100`` where the position does not count (prompt, padding).
        Others: as :func:`chunked_logprobs`.

    Returns:
        ``(log_probs, entropy, mask)``, each (B, T-1): position t scores ``labels[:, t+1]`` from
        ``hidden_states[:, t]``; ``mask`` is where that label is not -100, and both values are 0 elsewhere.
    """
    hidden, shifted = shift_for_next_token(hidden_states, labels)
    mask = shifted != -100
    logps, entropy = chunked_logprobs(hidden[mask], weight, shifted[mask], bias=bias, token_chunk=token_chunk,
                                      vocab_chunk=vocab_chunk, logit_scale=logit_scale, softcap=softcap,
                                      gather_ctx=gather_ctx)
    # masked_scatter keeps the result connected to the model even when no label counts (a zero gradient)
    out = logps.new_zeros(mask.shape).masked_scatter(mask, logps)
    return out, entropy.new_zeros(mask.shape).masked_scatter(mask, entropy), mask


def full_logprobs(hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                  bias: Optional[torch.Tensor] = None, logit_scale: float = 1.0,
                  softcap: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same as :func:`completion_logprobs` through the full (B, T-1, V) float32 logits and ``log_softmax``."""
    hidden, shifted = shift_for_next_token(hidden_states, labels)
    mask = shifted != -100
    z = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    z = softcap * torch.tanh(logit_scale * z / softcap) if softcap is not None else logit_scale * z
    logp_all = torch.log_softmax(z, dim=-1)
    logps = logp_all.gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    entropy = -(logp_all.exp() * logp_all).sum(-1).detach() * mask
    return logps, entropy, mask
