"""Routes a causal LM's ``fused_lm_head=True`` forward through :mod:`cogpo_kit.training.chunked_logprobs`.

TRL's DPO trainer (and so :class:`~cogpo_kit.training.cogpo_trainer.CogPOTrainer`) gets the policy's and the
reference's per-token log-probs with ``model(..., labels=labels, fused_lm_head=True)``, a forward that
``trl.trainer.utils.add_fused_lm_head`` patches onto the model. Without Triton that path scores every position,
prompt and padding included, in tiles of 4096 tokens x 32768 vocabulary columns whose float32 temporaries are
0.5 GB each. :func:`add_completion_logprob_head` patches the same forward once more, on top: with
``fused_lm_head=True`` it runs the backbone and scores only the counted positions (labels != -100), in tiles of
the given size (``path="chunked"``), or through the full logits (``path="full"``, the plain computation, for
checks); any other call goes to the forward underneath, so generation is unchanged. The backbone and the head are
looked up at each call (PEFT and FSDP replace them), and the patch sits on the base model, under any DDP or PEFT
wrapper, so the forward still goes through the wrapped model. The output has the fields the trainer reads
(``log_probs``, ``entropy``, ``label_mask``, ``aux_loss``), each (B, T-1).

Checked by ``pytest -q tests/test_training_chunked_logprobs.py``.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Optional

import torch
from torch.distributed.tensor import DTensor
from transformers.utils import ModelOutput

from cogpo_kit.training.chunked_logprobs import completion_logprobs, full_logprobs

PATHS = ("chunked", "full")
_MARK = "_cogpo_logprob_head"


@dataclass
class CompletionLogProbOutput(ModelOutput):
    """Per-token fields of a ``fused_lm_head=True`` forward, each (B, T-1) and zero where the label is -100."""

    loss: Optional[torch.Tensor] = None
    log_probs: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None
    label_mask: Optional[torch.Tensor] = None
    aux_loss: Optional[torch.Tensor] = None


def logit_transform(config) -> tuple[float, Optional[float]]:
    """``(logit_scale, softcap)`` of a model config, read as TRL's ``add_fused_lm_head`` reads them."""
    text = config.get_text_config()
    softcap = getattr(text, "final_logit_softcapping", None)
    scale = getattr(text, "logit_scale", None)
    if scale is None:
        scale = getattr(text, "output_multiplier", None)
    if scale is None:
        scale = getattr(text, "lm_head_multiplier", None)
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = text.logits_scaling if text.model_type == "hyperclovax" else 1 / text.logits_scaling
    return (1.0 if scale is None else float(scale)), softcap


def add_completion_logprob_head(model, *, path: str = "chunked", token_chunk: int = 1024,
                                vocab_chunk: int = 8192) -> bool:
    """Patch ``model.forward`` (the base causal LM, not a PEFT or DDP wrapper) as the module doc says.

    Idempotent: a model already patched with the same settings is left alone; returns whether it patched.
    """
    if path not in PATHS:
        raise ValueError(f"logprob path must be one of {PATHS}, got {path!r}")
    settings = (path, int(token_chunk), int(vocab_chunk))
    current = getattr(model, _MARK, None)
    if current is not None and current[0] == settings:
        return False
    underneath = current[1] if current is not None else model.forward
    logit_scale, softcap = logit_transform(model.config)
    text_config = model.config.get_text_config()

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head:
            if labels is not None:
                kwargs["labels"] = labels
            return underneath(*args, **kwargs)
        if kwargs.get("shift_labels") is not None:
            raise ValueError("the completion log-prob head takes `labels` (shifted inside), not `shift_labels`")
        kwargs.pop("num_items_in_batch", None)
        kwargs.pop("shift_labels", None)
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        backbone_out = self.base_model(*args, **kwargs)
        head = self.get_output_embeddings()
        weight, bias = head.weight, head.bias
        hidden = backbone_out.last_hidden_state.to(weight.device)
        labels = labels.to(weight.device)
        if path == "full":
            log_probs, entropy, mask = full_logprobs(hidden, weight, labels, bias=bias, logit_scale=logit_scale,
                                                     softcap=softcap)
        else:
            from trl.trainer.utils import maybe_gather_lm_head_ctx

            if isinstance(weight, DTensor):  # FSDP2: one gathered head for the whole call, as TRL does
                weight = weight.full_tensor()
                bias = bias.full_tensor() if bias is not None else None
            log_probs, entropy, mask = completion_logprobs(
                hidden, weight, labels, bias=bias, token_chunk=token_chunk, vocab_chunk=vocab_chunk,
                logit_scale=logit_scale, softcap=softcap, gather_ctx=maybe_gather_lm_head_ctx)
        loss = -log_probs.sum() / mask.sum().clamp(min=1)
        aux_loss = None
        if kwargs.get("output_router_logits"):
            from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

            aux_loss = load_balancing_loss_func(backbone_out.router_logits, text_config.num_experts,
                                                text_config.num_experts_per_tok, kwargs.get("attention_mask"))
            loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss
        return CompletionLogProbOutput(loss=loss, log_probs=log_probs, entropy=entropy, label_mask=mask,
                                       aux_loss=aux_loss)

    model.forward = types.MethodType(forward, model)
    setattr(model, _MARK, (settings, underneath))
    return True
