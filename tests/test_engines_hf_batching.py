"""The transformers engine's batching: rows that leave the batch as they finish, and several models on one base.

Everything runs in float32 on ``tiny:llama`` with its LM head scaled up (untied from the embeddings), so that
its next-token distributions are peaked: the random model's are nearly flat, and there the rounding of another
batch shape can flip a token (with ``model.generate`` as with the kit's loop). Checked: the kit's decoding
loop gives the tokens ``model.generate`` gives; a row leaving the batch does not change the others; stacked
LoRA updates give each row its own model's logits (the merged model's); a shared engine answers as each
model's own engine does, under the same response cache. Every adapter is a real PEFT LoRA adapter saved by PEFT.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cogpo_kit.engines.base import Request
from cogpo_kit.engines.config import CacheParams, EngineParams, SamplingParams

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytestmark = pytest.mark.builds_model

TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def _save_adapter(base: str, out: Path, seed: int, tokenizer_from: str, **lora) -> str:
    """A LoRA adapter with random (non-zero) weights on ``base`` (a model spec, possibly an adapter), saved by
    PEFT, with the tokenizer and the kit's base pointer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from cogpo_kit.models.adapters import load_model_with_adapters, write_base_pointer

    torch.manual_seed(seed)
    model = load_model_with_adapters(base, dtype=torch.float32)
    cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False,
                     **lora)
    get_peft_model(model, cfg).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(str(out))
    write_base_pointer(out, base)
    return str(out)


@pytest.fixture(scope="module")
def models(tiny_model_path, tmp_path_factory) -> dict[str, str]:
    """A sharp base (``tiny:llama``, LM head x 5), an SFT-like adapter on it and a preference-like adapter on
    that one (a chain)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("adapters")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone() * 5.0)
    base = root / "base"
    model.save_pretrained(str(base))
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(str(base))
    sft = _save_adapter(str(base), root / "sft", 1, str(base))
    pref = _save_adapter(sft, root / "pref", 2, str(base))
    return {"base": str(base), "sft": sft, "pref": pref}


def _config(**kw) -> EngineParams:
    base = dict(engine="transformers", model="tiny:llama", batch_size=4, device="cpu", context_length=512,
                dtype="float32")
    base.update(kw)
    return EngineParams(**base)


def _requests(max_tokens: int = 12) -> list[Request]:
    """Prompts of several lengths; greedy and sampled rows, two samples each."""
    out = []
    for k in range(5):
        sampled = k % 2 == 0
        sp = SamplingParams(temperature=0.8 if sampled else 0.0, top_k=40 if sampled else 0,
                            top_p=0.9 if sampled else 1.0, max_tokens=max_tokens, seed=k)
        out.append(Request(messages=({"role": "user", "content": f"Question {k}: " + "more words " * (3 * k)},),
                           sampling=sp, n=2))
    return out


def _flat(outs):
    return [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for row in outs for c in row]


def test_decoding_loop_gives_the_tokens_generate_gives(models):
    from cogpo_kit.engines.hf import TransformersEngine

    eng = TransformersEngine(_config(model=models["base"]))
    try:
        reqs = _requests()
        # a stop string that one sample meets early: that row leaves the batch, the others go on
        free = eng.generate([reqs[0]])[0][0]
        stop = next(free.text[i:i + 3] for i in range(5, len(free.text) - 3) if free.text[i:i + 3].strip())
        reqs[0] = replace(reqs[0], sampling=replace(reqs[0].sampling, stop=(stop,)))
        kit = eng.generate(reqs)
        eng.config = replace(eng.config, retire_rows=False)
        plain = eng.generate(reqs)
    finally:
        eng.close()
    assert _flat(kit) == _flat(plain)
    assert kit[0][0].text == free.text[:free.text.index(stop)] and kit[0][0].completion_tokens < 12
    assert any(c.finish_reason == "length" for row in kit for c in row)


def test_rows_leaving_the_batch_do_not_change_the_others(models):
    """Rows ended at different steps (as stop strings end them) leave the batch; every row's tokens are the
    ones it gets alone, and the ones of the same batch with nobody leaving."""
    import torch

    from cogpo_kit.engines.hf_decode import decode
    from cogpo_kit.models.resolve import load_causal_lm

    model, tok, _ = load_causal_lm(models["base"], dtype="float32", device="cpu")
    prompts = [tok(f"Row {k} says " + "hello " * k, add_special_tokens=False)["input_ids"] for k in range(6)]
    ends = {0: 2, 2: 5, 3: 1, 5: 9}  # row -> the step after which its text "ends"

    def stop(generated, rows):
        return [generated.shape[1] >= ends.get(r, 10 ** 6) for r in rows]

    common = dict(max_new=14, pad_id=tok.pad_token_id, eos_ids=[-1])
    retired = decode(model, prompts, stop=stop, **common)
    kept = decode(model, prompts, stop=stop, retire=False, **common)
    assert retired == kept
    assert [len(t) for t in retired] == [ends.get(k, 14) for k in range(6)]
    for k, p in enumerate(prompts):
        alone = decode(model, [p], **common)[0]
        assert retired[k] == alone[:len(retired[k])]
    with torch.no_grad():  # the decoding loop's first token is the model's own argmax after the prompt
        first = model(torch.tensor([prompts[4]])).logits[0, -1].argmax().item()
    assert retired[4][0] == first
    # past the cache's first 64 new positions (it doubles): the tokens generate gives
    from transformers import GenerationConfig

    two = prompts[1:3]
    long = decode(model, two, max_new=150, pad_id=tok.pad_token_id, eos_ids=[-1])
    width = max(len(p) for p in two)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in two])
    mask = (torch.arange(width)[None, :] >= torch.tensor([[width - len(p)] for p in two])).long()
    gc = GenerationConfig(max_new_tokens=150, min_new_tokens=150, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)[:, width:].tolist()
    assert long == want and len(long[0]) == 150


def test_stacked_updates_give_each_row_its_merged_model(models):
    import torch

    from cogpo_kit.models.adapters import load_model_with_adapters
    from cogpo_kit.models.lora_fold import LoraBank, base_of, fold_chain, install, read_lora, uninstall
    from cogpo_kit.models.resolve import load_causal_lm

    base, _tok, _ = load_causal_lm(models["base"], dtype="float32", device="cpu")
    names = ["base", "sft", "pref", "sft"]
    bank = LoraBank(base, [base_of(models[n])[1] for n in names])
    assert len(bank.folders) == 2  # the SFT adapter is read once for both models that use it
    # a chain folded into one update of the summed rank is the sum of its links' updates
    links = [read_lora(f, base) for f in base_of(models["pref"])[1]]
    folded = fold_chain(links)
    name = "model.layers.0.self_attn.q_proj"
    assert folded[name].A.shape[0] == 8
    assert torch.allclose(folded[name].B @ folded[name].A, sum(u[name].B @ u[name].A for u in links), atol=1e-6)
    assert torch.allclose(bank.update_of(2)[name].B @ bank.update_of(2)[name].A,
                          folded[name].B @ folded[name].A, atol=1e-6)

    ids = torch.tensor([[1, 20, 300, 4000, 77, 5]] * len(names))
    rows = install(base, bank)
    try:
        rows.select(list(range(len(names))))
        with torch.no_grad():
            mixed = base(ids).logits
        rows.select(None)
        with torch.no_grad():
            plain = base(ids[:1]).logits
    finally:
        uninstall(base)
    assert not any(type(m).__name__ == "StackedLoraLinear" for m in base.modules())
    assert torch.allclose(mixed[0], plain[0], atol=1e-6)
    for b, n in enumerate(names):
        merged = load_model_with_adapters(models[n], dtype="float32")
        with torch.no_grad():
            want = merged(ids[:1]).logits[0]
        assert torch.allclose(mixed[b], want, atol=1e-4), n
    assert not torch.allclose(mixed[1], mixed[2], atol=1e-3)  # the models differ


def test_shared_engine_answers_as_each_models_own_engine(models, tmp_path):
    from cogpo_kit.engines import build_engine
    from cogpo_kit.engines.cache_store import is_good
    from cogpo_kit.engines.hf_multi import generate_grouped, generate_shared, shared_groups

    specs = [models["base"], models["sft"], models["pref"]]
    reqs = _requests()
    cache = str(tmp_path / "responses.sqlite")
    own = []
    for spec in specs:
        eng = build_engine(_config(model=spec, cache=CacheParams(enabled=False)))
        try:
            own.append((eng.generate(reqs), eng.model_id))
        finally:
            eng.close()
    shared = generate_shared(_config(), specs, [reqs, reqs, reqs], cache_path=cache, show_progress=False)
    for (outs, model_id), (s_outs, stats, s_id) in zip(own, shared):
        assert _flat(s_outs) == _flat(outs) and s_id == model_id
        assert stats[""]["misses"] == 10
    # the response cache holds each model's answers under its own identity: asked again, what the cache serves
    # (good answers, and greedy ones cut at the budget) comes from it, the rest is generated again
    again = generate_shared(_config(), specs, [reqs, reqs[:2], []], cache_path=cache, show_progress=False)
    for k, n in ((0, 5), (1, 2)):
        served = sum(is_good(c, None, serve_truncated=r.sampling.temperature <= 0)
                     for r, row in zip(reqs[:n], own[k][0]) for c in row)
        assert again[k][1][""]["cache_hits"] == served and again[k][1][""]["misses"] == 2 * n - served
        assert _flat(again[k][0]) == _flat(own[k][0][:n])
    assert again[1][1][""]["cache_hits"] > 0 and again[2][0] == []
    # a model whose adapter is not plain LoRA is served on its own
    dora = _save_adapter(models["base"], tmp_path / "dora", 3, models["base"], use_dora=True)
    named = {"base": models["base"], "sft": models["sft"], "dora": dora, "pref": models["pref"]}
    assert shared_groups(named) == [["base", "sft", "pref"]]
    grouped = generate_grouped(_config(cache=CacheParams(enabled=False)), named,
                               {n: reqs[:1] for n in named}, show_progress=False)
    assert sorted(grouped) == ["base", "pref", "sft"] and grouped["sft"].group == ("base", "sft", "pref")
    assert _flat(grouped["pref"].completions) == _flat(own[2][0][:1])


def test_a_sampled_row_does_not_depend_on_a_greedy_neighbour(models):
    """top-p is taken over the row's own top-k, also when a neighbour without top-k widens the batch's sort."""
    from cogpo_kit.engines.hf import TransformersEngine

    reqs = _requests()
    eng = TransformersEngine(_config(model=models["base"]))
    try:
        alone = eng.generate([reqs[2]])[0]
        beside_greedy = eng.generate([reqs[2], reqs[1]])[0]  # reqs[1]: temperature 0, top_k 0
    finally:
        eng.close()
    assert _flat([alone]) == _flat([beside_greedy])


def test_evaluate_stage_generates_the_models_of_one_base_together(models, tmp_path):
    """The stage with ``eval.batch_models``: the base and its adapter chains in one engine, the same answers as
    one engine per model, the shared run named in each model's results."""
    from cogpo_kit.evaluation.stage import run_evaluate
    from cogpo_kit.io import read_json, read_jsonl
    from cogpo_kit.params import load_params

    root = Path(__file__).resolve().parents[1]
    for stage, name, spec in (("04_sft", "sft", models["sft"]), ("05_preference", "cogpo", models["pref"])):
        for run_id in ("together", "apart"):
            (tmp_path / run_id / stage / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / run_id / stage / name / "model").symlink_to(spec)

    def run(run_id: str, together: bool) -> dict:
        params = load_params([root / "params" / "smoke.yaml"], [
            f"run.output_dir={tmp_path}", f"run.run_id={run_id}", f"student.model={models['base']}",
            "eval.models=[zero_shot, sft, cogpo]", "eval.limit=2", "eval.bootstrap=20", "eval.grader_workers=1",
            "eval.engine.cache.enabled=false", "eval.reuse=false", f"eval.batch_models={str(together).lower()}"])
        return run_evaluate(params, show_progress=False)

    together, apart = run("together", True), run("apart", False)
    for name in ("zero_shot", "sft", "cogpo"):
        assert together["models"][name]["generated_with"] == ["zero_shot", "sft", "cogpo"]
        assert "generated_with" not in apart["models"][name]
        for bench in ("gsm8k", "math500"):
            a, b = (read_jsonl(tmp_path / r / "06_evaluate" / name / f"samples_{bench}.jsonl")
                    for r in ("together", "apart"))
            assert [(x["output"], x["finish_reason"]) for x in a] == [(x["output"], x["finish_reason"]) for x in b]
    res = read_json(tmp_path / "together" / "06_evaluate" / "cogpo" / "results.json")
    assert res["model_id"] == apart["models"]["cogpo"]["model_id"] and res["generate_s"] > 0
