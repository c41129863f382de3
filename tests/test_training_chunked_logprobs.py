"""Chunked completion log-probs against the full computation (log_softmax over the full logits), in float32.

Per-token log-probs and entropies, the CogPO loss and its gradients w.r.t. hidden states, LM head weight and bias,
through tiny:llama w.r.t. every parameter, and one CogPOTrainer step (chunked, full, TRL's head; LoRA; precomputed
reference) agree within 1e-5; no tensor of tokens x vocabulary size is created on the chunked path.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cogpo_kit.training.chunked_logprobs import chunked_logprobs, completion_logprobs, full_logprobs
from cogpo_kit.training.losses import cogpo_loss

ATOL = 1e-5
# (token_chunk, vocab_chunk): sizes that divide nothing, one token per tile, a vocab chunk wider than the vocabulary
CHUNKS = [(5, 17), (1, 7), (64, 1000)]
# (logit_scale, softcap, bias)
TRANSFORMS = [(1.0, None, False), (0.75, None, True), (1.3, 4.0, True)]


def _batch(seed=0, B=4, T=13, H=24, V=101):
    """Hidden states, head and labels with prompt masking (first tokens) and right padding of varied length."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * 0.5
    bias = torch.randn(V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    prompt = [3, 5, 2, 4]
    pad = [0, 2, 5, 1]
    for i in range(B):
        labels[i, : prompt[i]] = -100
        if pad[i]:
            labels[i, T - pad[i]:] = -100
    return hidden, weight, bias, labels


def _leaves(*tensors):
    return [t.clone().requires_grad_(True) if t is not None else None for t in tensors]


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_per_token_logprobs_and_entropy_match_full(chunks, transform):
    hidden, weight, bias, labels = _batch()
    scale, softcap, with_bias = transform
    b = bias if with_bias else None
    lp, ent, mask = completion_logprobs(hidden, weight, labels, bias=b, token_chunk=chunks[0], vocab_chunk=chunks[1],
                                        logit_scale=scale, softcap=softcap)
    lp_ref, ent_ref, mask_ref = full_logprobs(hidden, weight, labels, bias=b, logit_scale=scale, softcap=softcap)
    assert lp.shape == (4, 12) and torch.equal(mask, mask_ref)
    assert torch.equal(mask, labels[:, 1:] != -100)
    assert torch.all(lp[~mask] == 0) and torch.all(ent[~mask] == 0)
    assert torch.all(lp[mask] < 0)
    torch.testing.assert_close(lp, lp_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, ent_ref, atol=ATOL, rtol=0)


def _cogpo_loss_of(per_token, betas):
    logps = per_token.sum(dim=1)
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = torch.tensor([-30.0, -41.0]), torch.tensor([-35.0, -33.0])
    losses, _, _ = cogpo_loss(chosen, rejected, ref_chosen, ref_rejected, betas)
    return losses.mean()


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_cogpo_loss_and_gradients_match_full(chunks, transform):
    hidden, weight, bias, labels = _batch(seed=1)
    scale, softcap, with_bias = transform
    betas = torch.tensor([0.1, 0.5])
    results = []
    for fn in ("chunked", "full"):
        h, w, b = _leaves(hidden, weight, bias if with_bias else None)
        if fn == "chunked":
            lp, _, _ = completion_logprobs(h, w, labels, bias=b, token_chunk=chunks[0], vocab_chunk=chunks[1],
                                           logit_scale=scale, softcap=softcap)
        else:
            lp, _, _ = full_logprobs(h, w, labels, bias=b, logit_scale=scale, softcap=softcap)
        loss = _cogpo_loss_of(lp, betas)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad, None if b is None else b.grad))
    (l1, gh1, gw1, gb1), (l2, gh2, gw2, gb2) = results
    torch.testing.assert_close(l1, l2, atol=ATOL, rtol=0)
    assert gh1.abs().max() > 1e-3 and gw1.abs().max() > 1e-3
    torch.testing.assert_close(gh1, gh2, atol=ATOL, rtol=0)
    torch.testing.assert_close(gw1, gw2, atol=ATOL, rtol=0)
    # prompt and padding positions get no gradient
    shifted_mask = labels[:, 1:] != -100
    assert torch.all(gh1[:, :-1][~shifted_mask] == 0) and torch.all(gh1[:, -1] == 0)
    if with_bias:
        torch.testing.assert_close(gb1, gb2, atol=ATOL, rtol=0)


def test_no_counted_token_gives_zero_connected_gradient():
    hidden, weight, _, labels = _batch()
    h, w = _leaves(hidden, weight)
    lp, ent, mask = completion_logprobs(h, w, torch.full_like(labels, -100), token_chunk=4, vocab_chunk=8)
    assert not mask.any() and torch.all(lp == 0) and torch.all(ent == 0)
    lp.sum().backward()
    assert torch.all(h.grad == 0) and torch.all(w.grad == 0)


def test_argument_errors_name_the_problem():
    hidden, weight, _, _ = _batch()
    flat = hidden[0]
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 101\)"):
        chunked_logprobs(flat, weight, torch.full((13,), 101))
    with pytest.raises(ValueError, match="token_chunk and vocab_chunk"):
        chunked_logprobs(flat, weight, torch.zeros(13, dtype=torch.long), vocab_chunk=0)
    with pytest.raises(ValueError, match="hidden must be"):
        chunked_logprobs(hidden, weight, torch.zeros(13, dtype=torch.long))


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("path", ["chunked", "full"])
def test_no_tokens_x_vocab_tensor_on_the_chunked_path(path):
    B, T, H, V = 4, 64, 16, 3000
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :8] = -100
    tokens = int((labels[:, 1:] != -100).sum())
    with _LargestTensor() as probe:
        if path == "chunked":
            lp, _, _ = completion_logprobs(hidden, weight, labels, token_chunk=32, vocab_chunk=256)
        else:
            lp, _, _ = full_logprobs(hidden, weight, labels)
        lp.sum().backward()
    if path == "chunked":
        # the biggest tensors are the LM head weight and its gradient (V x H); a tile is 32 x 256
        assert probe.largest <= max(V * H, 32 * 256)
    else:
        assert probe.largest >= tokens * V  # the probe sees the full logits when they exist


# -- through a model ------------------------------------------------------------------------------------------------

def _model(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # move away from the tiny init so gradients are not all tiny
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.builds_model
def test_all_parameter_gradients_through_tiny_llama(tiny_model_path):
    from cogpo_kit.training.logprob_head import add_completion_logprob_head

    model = _model(tiny_model_path)
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, model.config.vocab_size, (4, 19), generator=g)
    attention = torch.ones_like(input_ids)
    attention[1, -3:] = 0
    attention[3, -6:] = 0
    labels = input_ids.masked_fill(attention == 0, -100)
    labels[:, :5] = -100
    betas = torch.tensor([0.1, 0.5])
    results = {}
    for path, chunks in (("full", (1, 1)), ("chunked", (7, 5000)), ("chunked", (64, 100_000))):
        assert add_completion_logprob_head(model, path=path, token_chunk=chunks[0], vocab_chunk=chunks[1])
        model.zero_grad()
        out = model(input_ids=input_ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        loss = _cogpo_loss_of(out.log_probs, betas)
        loss.backward()
        results[(path, chunks)] = (loss.detach(), out.entropy.detach(),
                                   {n: p.grad.clone() for n, p in model.named_parameters()})
    plain = model(input_ids=input_ids, attention_mask=attention)  # other calls reach the model's own forward
    assert plain.logits.shape == (4, 19, model.config.vocab_size)
    loss_f, ent_f, grads_f = results[("full", (1, 1))]
    for key in (("chunked", (7, 5000)), ("chunked", (64, 100_000))):
        loss_c, ent_c, grads_c = results[key]
        torch.testing.assert_close(loss_c, loss_f, atol=ATOL, rtol=0)
        # the entropy (logged only) is about log(V) = 10.8 here: float32 rounding of the full sum, so relative
        torch.testing.assert_close(ent_c, ent_f, atol=ATOL, rtol=1e-5)
        assert grads_c.keys() == grads_f.keys() and len(grads_f) > 5
        for name in grads_f:
            assert grads_f[name].abs().max() > 0, name
            torch.testing.assert_close(grads_c[name], grads_f[name], atol=ATOL, rtol=0, msg=name)


# -- through CogPOTrainer -------------------------------------------------------------------------------------------

def _pairs():
    from datasets import Dataset

    rows = []
    for i, (beta, gap) in enumerate(zip([0.1, 0.2, 0.5, 0.2], ["small", "medium", "large", "medium"])):
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {i} + {i + 3}? Reason step by step."}],
            "chosen": [{"role": "assistant", "content": f"{i} + {i + 3} = {2 * i + 3}. So \\boxed{{{2 * i + 3}}}."}],
            "rejected": [{"role": "assistant", "content": f"It is {i * 7} because {i} times {7 + i}. \\boxed{{{i * 7}}}"}],
            "beta": beta, "gap": gap})
    return Dataset.from_list(rows)


def _trainer(path, tmp_path, mode, logprob_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cogpo_kit.training.cogpo_trainer import CogPOConfig, CogPOTrainer

    args = CogPOConfig(output_dir=str(tmp_path / logprob_path), per_device_train_batch_size=4, bf16=False,
                       activation_checkpointing=False, report_to="none", max_length=96, beta=0.1, seed=0,
                       precompute_ref_log_probs=mode == "precompute", logprob_path=logprob_path,
                       logprob_token_chunk=13, logprob_vocab_chunk=5000)
    peft = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]) \
        if mode == "lora" else None
    tr = CogPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=_pairs(),
                      processing_class=AutoTokenizer.from_pretrained(path), peft_config=peft)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the policy moves away from the reference, so margins are not zero
        for _, p in sorted(tr.model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return tr


@pytest.mark.parametrize("mode", ["full", "lora", "precompute"])
@pytest.mark.builds_model
def test_cogpo_trainer_step_chunked_equals_full_logits(tiny_model_path, tmp_path, mode):
    from accelerate.utils import is_peft_model

    results = {}
    for logprob_path in ("full", "chunked", "trl"):  # trl: TRL's own head, what `auto` takes on CUDA
        tr = _trainer(tiny_model_path, tmp_path, mode, logprob_path)
        base = tr.model.get_base_model() if is_peft_model(tr.model) else tr.model
        if logprob_path == "trl":
            assert not hasattr(base, "_cogpo_logprob_head")
        else:
            assert base._cogpo_logprob_head[0] == (logprob_path, 13, 5000)
            if tr.ref_model is not None:
                assert tr.ref_model._cogpo_logprob_head[0] == (logprob_path, 13, 5000)
        ds = tr.train_dataset
        batch = tr.data_collator([ds[i] for i in range(len(ds))])
        tr.model.train()
        tr.model.zero_grad()
        loss = tr.compute_loss(tr.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}
        ref = (ds["ref_chosen_logps"], ds["ref_rejected_logps"]) if mode == "precompute" else None
        results[logprob_path] = (loss.detach(), grads, ref, tr._metrics["train"])
    (l_full, g_full, ref_full, m_full), (l_ch, g_ch, ref_ch, m_ch) = results["full"], results["chunked"]
    assert abs(l_full.item() - 0.6931) > 1e-3, "margins should not all be zero"
    torch.testing.assert_close(l_ch, l_full, atol=ATOL, rtol=0)
    assert g_ch.keys() == g_full.keys() and len(g_full) > 0
    for name in g_full:
        torch.testing.assert_close(g_ch[name], g_full[name], atol=ATOL, rtol=0, msg=name)
    if mode == "precompute":
        torch.testing.assert_close(torch.tensor(ref_ch), torch.tensor(ref_full), atol=1e-4, rtol=0)
    for key in ("logps/chosen", "rewards/margins", "entropy"):
        assert m_ch[key][-1] == pytest.approx(m_full[key][-1], abs=1e-4), key
    l_trl, g_trl, ref_trl, m_trl = results["trl"]
    torch.testing.assert_close(l_trl, l_full, atol=ATOL, rtol=0)
    assert g_trl.keys() == g_full.keys()
    for name in g_full:
        torch.testing.assert_close(g_trl[name], g_full[name], atol=ATOL, rtol=0, msg=name)
    if mode == "precompute":
        torch.testing.assert_close(torch.tensor(ref_trl), torch.tensor(ref_full), atol=1e-4, rtol=0)
    for key in ("logps/chosen", "rewards/margins"):
        assert m_trl[key][-1] == pytest.approx(m_full[key][-1], abs=1e-4), key


def test_config_rejects_unknown_logprob_path(tmp_path):
    from cogpo_kit.training.cogpo_trainer import CogPOConfig

    with pytest.raises(ValueError, match="logprob_path must be auto, chunked, full or trl, got 'fast'"):
        CogPOConfig(output_dir=str(tmp_path), bf16=False, logprob_path="fast")
    with pytest.raises(ValueError, match="logprob_token_chunk and logprob_vocab_chunk must be >= 1"):
        CogPOConfig(output_dir=str(tmp_path), bf16=False, logprob_vocab_chunk=0)


def test_auto_logprob_path_is_trl_on_cuda_and_chunked_elsewhere(tmp_path):
    """``auto`` (the default) keeps TRL's head where TRL's Triton kernel runs (CUDA: as little memory as the
    chunked head and faster, benchmarks/results/training_gpu.md) and the chunked head on the CPU."""
    from types import SimpleNamespace

    from cogpo_kit.params.run import load_params
    from cogpo_kit.training.cogpo_trainer import CogPOConfig, CogPOTrainer

    assert CogPOConfig(output_dir=str(tmp_path), bf16=False).logprob_path == "auto"
    assert load_params([]).preference.logprob_head == "auto"

    def model_on(device: str):
        return SimpleNamespace(parameters=lambda: iter([torch.empty(0, device="meta").new_empty(0)])
                               if device == "meta" else iter([SimpleNamespace(device=torch.device(device))]))

    for chosen, device, used in [("auto", "cuda", "trl"), ("auto", "cpu", "chunked"), ("auto", "meta", "chunked"),
                                 ("chunked", "cuda", "chunked"), ("full", "cpu", "full"), ("trl", "cpu", "trl")]:
        trainer = SimpleNamespace(args=SimpleNamespace(logprob_path=chosen))
        assert CogPOTrainer.logprob_path_in_use(trainer, model_on(device)) == used, (chosen, device)


@pytest.mark.builds_model
def test_tiny_llama_vocab_option(tmp_path, tiny_model_path):
    from transformers import AutoConfig, AutoTokenizer

    from cogpo_kit.models.tiny import build_tiny, tiny_folder_name

    def tokenizer():
        return AutoTokenizer.from_pretrained(tiny_model_path)

    with pytest.raises(ValueError, match="vocab=10 is below the tokenizer's"):
        build_tiny("tiny:llama?vocab=10&hidden=16&intermediate=32", tmp_path, tokenizer)
    spec = "tiny:llama?vocab=50000&hidden=16&intermediate=32"
    assert tiny_folder_name(spec).endswith("-vocab50000")
    assert "vocab" not in tiny_folder_name("tiny:llama")
    folder = build_tiny(spec, tmp_path, tokenizer)
    assert AutoConfig.from_pretrained(folder).vocab_size == 50000
