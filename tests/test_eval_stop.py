"""``eval.stop_at_final_answer``: generation ends after the boxed answer line, the extracted answer unchanged;
and the transformers engine's all-greedy batches (no sampler) pick the same tokens as mixed ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogpo_kit.answers.extraction import extract_answer
from cogpo_kit.answers.response import FINAL_LINE
from cogpo_kit.engines.base import Request
from cogpo_kit.engines.config import EngineParams, SamplingParams
from cogpo_kit.engines.hf import FINAL_ANSWER_STOP, final_answer_end
from cogpo_kit.engines.scripted import ScriptedEngine
from cogpo_kit.evaluation.stage import run_evaluate
from cogpo_kit.io import read_json
from cogpo_kit.params import load_params

ROOT = Path(__file__).resolve().parents[1]
REASONING = "Tom has 3 apples and buys 4 more.\n3 + 4 = 7."
CONTINUATIONS = ["\nLet me check: 7 - 4 = 3, which is right.", "\n\nIn summary, Tom ends with seven apples.",
                 "\nThe question asks for apples, so the unit is apples.\n"]


@pytest.mark.parametrize("after", CONTINUATIONS)
def test_cut_after_the_final_line_keeps_the_answer(after):
    final = FINAL_LINE.format(answer="7")
    full = f"{REASONING}\n{final}{after}"
    end = final_answer_end(full)
    assert full[:end] == f"{REASONING}\n{final}"
    assert extract_answer(full[:end]) == extract_answer(full) == "7"
    # not before the line has ended, nor on an unclosed box
    assert final_answer_end(f"{REASONING}\n{final}") is None
    assert final_answer_end(f"{REASONING}\nThe final answer is $\\boxed{{\\frac{{1}}{{2") is None
    assert final_answer_end(REASONING + "\n") is None


def test_transformers_stopping_criterion_ends_rows_after_their_final_line():
    import torch

    from cogpo_kit.engines.hf import _stop_on_text_cls
    from cogpo_kit.models.resolve import load_tokenizer

    tok = load_tokenizer("embedded:smollm2-135m-instruct")
    prompt = tok("Question?", add_special_tokens=False)["input_ids"]
    texts = [f"{REASONING}\n{FINAL_LINE.format(answer='7')}\nMore", f"{REASONING}\n{FINAL_LINE.format(answer='7')}",
             REASONING]
    rows = [prompt + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    crit = _stop_on_text_cls()(tok, (FINAL_ANSWER_STOP,), len(prompt))
    assert crit(ids, None).tolist() == [True, False, False]
    both = _stop_on_text_cls()(tok, (FINAL_ANSWER_STOP, "More"), len(prompt))
    assert both(ids, None).tolist() == [True, False, False]


def _params(tmp_path, *overrides):
    return load_params([ROOT / "params" / "smoke.yaml"], [
        f"run.output_dir={tmp_path / 'outputs'}", "run.run_id=stop", "eval.limit=2", "eval.models=[zero_shot]",
        "eval.bootstrap=50", "eval.grader_workers=1", *overrides])


def test_stage_asks_boxed_benchmarks_to_stop_and_keys_on_it(tmp_path):
    seen: list[Request] = []

    def factory(spec):
        def answer(req, i):
            seen.append(req)
            return "3 + 4 = 7.\n" + FINAL_LINE.format(answer="7")
        return ScriptedEngine(answer)

    params = _params(tmp_path, "eval.benchmarks=[gsm8k, livecodebench_public]", "eval.stop_at_final_answer=true")
    manifest = run_evaluate(params, engine_factory=factory, show_progress=False)
    by_tag = {r.tag: r.sampling.stop for r in seen}
    assert FINAL_ANSWER_STOP in by_tag["eval:gsm8k"] and FINAL_ANSWER_STOP not in by_tag["eval:livecodebench_public"]
    assert not any("transformers engine only" in n for n in manifest["notes"])  # smoke.yaml's engine
    # the answers generated without the stop are not the ones with it: generated again, not reused
    seen.clear()
    run_evaluate(_params(tmp_path, "eval.benchmarks=[gsm8k, livecodebench_public]"), engine_factory=factory,
                 show_progress=False)
    res = read_json(tmp_path / "outputs" / "stop" / "06_evaluate" / "zero_shot" / "results.json")
    assert res["generated"] == ["gsm8k"] and list(res["reused_from"]) == ["livecodebench_public"]
    assert all(FINAL_ANSWER_STOP not in r.sampling.stop for r in seen)


def test_all_greedy_batch_picks_the_same_tokens_as_a_mixed_one(tiny_model_path):
    from cogpo_kit.engines.hf import TransformersEngine

    eng = TransformersEngine(EngineParams(engine="transformers", model=tiny_model_path, batch_size=4,
                                          context_length=256))
    msgs = ({"role": "user", "content": "Count to five."},)
    greedy = Request(messages=msgs, sampling=SamplingParams(temperature=0.0, top_k=0, top_p=1.0, max_tokens=12))
    sampled = Request(messages=({"role": "user", "content": "Say hi."},),
                      sampling=SamplingParams(temperature=0.9, max_tokens=12, seed=3))
    try:
        alone = eng.generate([greedy])[0][0]
        mixed = eng.generate([greedy, sampled])[0][0]
    finally:
        eng.close()
    assert alone.text == mixed.text and alone.completion_tokens == mixed.completion_tokens == 12
