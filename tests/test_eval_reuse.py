"""Stage 06 reuses a model's answers by content, and never asks a greedy answer cut at max_tokens again.

The stage runs for real (problems, prompts, grading, files) on a scripted engine; the models are small
folders whose bytes stand for weights (the fingerprint reads files, never loads them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cogpo_kit.engines.base import Completion
from cogpo_kit.engines.cache import CachedEngine
from cogpo_kit.engines.scripted import ScriptedEngine
from cogpo_kit.evaluation.stage import run_evaluate
from cogpo_kit.io import read_json, read_jsonl
from cogpo_kit.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def _params(out: Path, run_id: str, *overrides: str):
    return load_params([ROOT / "params" / "smoke.yaml"], [
        f"run.output_dir={out}", f"run.run_id={run_id}", "eval.benchmarks=[gsm8k, math500]", "eval.limit=2",
        "eval.models=[sft]", "eval.bootstrap=50", "eval.grader_workers=1", *overrides])


def _model(folder: Path, weights: bytes = b"\x00\x01weights" * 64) -> Path:
    """A model folder as the fingerprint sees one: config, weights, tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder


def _sft_dir(out: Path, run_id: str) -> Path:
    return out / run_id / "04_sft" / "sft" / "model"


class Factory:
    """Builds scripted engines answering ``\\boxed{7}`` and counts how often it was asked for one."""

    def __init__(self):
        self.built: list[str] = []
        self.engines: list[ScriptedEngine] = []

    def __call__(self, spec):
        self.built.append(spec)
        eng = ScriptedEngine(lambda req, i: "Adding up, we get 7.\nThe final answer is $\\boxed{7}$.",
                             model_id=f"scripted:{spec}")
        self.engines.append(eng)
        return eng


def test_same_content_in_another_folder_is_reused_without_building_an_engine(tmp_path):
    out = tmp_path / "outputs"
    first_dir = _model(_sft_dir(out, "first"))
    first = Factory()
    run_evaluate(_params(out, "first"), engine_factory=first, show_progress=False)
    assert first.built == [str(first_dir)] and first.engines[0].calls == 4
    res1 = read_json(out / "first" / "06_evaluate" / "sft" / "results.json")
    assert res1["reused_from"] is None and res1["generated"] == ["gsm8k", "math500"]

    # the same bytes in another run's folder: served from the store, no engine built
    shutil.copytree(first_dir, _sft_dir(out, "second"))
    second = Factory()
    manifest = run_evaluate(_params(out, "second"), engine_factory=second, show_progress=False)
    assert second.built == []
    ev2 = out / "second" / "06_evaluate"
    res2 = read_json(ev2 / "sft" / "results.json")
    assert res2["generated"] == [] and set(res2["reused_from"]) == {"gsm8k", "math500"}
    assert res2["reused_from"]["gsm8k"]["results"] == str(out / "first" / "06_evaluate" / "sft")
    assert res2["fingerprint"] == res1["fingerprint"]
    assert manifest["models"]["sft"]["reused_from"] and manifest["counts"]["models_reused"] == 1
    assert "reused" in (ev2 / "stage.log").read_text()
    # graded again from the stored answers: the same samples and scores
    for bench in ("gsm8k", "math500"):
        a = read_jsonl(out / "first" / "06_evaluate" / "sft" / f"samples_{bench}.jsonl")
        b = read_jsonl(ev2 / "sft" / f"samples_{bench}.jsonl")
        assert [r["output"] for r in a] == [r["output"] for r in b]
        assert [r["extracted"] for r in a] == [r["extracted"] for r in b] == ["7", "7"]
        assert res1["benchmarks"][bench]["score"] == res2["benchmarks"][bench]["score"]

    # one byte of the weights changed: evaluated again
    third_dir = _sft_dir(out, "third")
    shutil.copytree(first_dir, third_dir)
    data = bytearray((third_dir / "model.safetensors").read_bytes())
    data[5] ^= 1
    (third_dir / "model.safetensors").write_bytes(bytes(data))
    third = Factory()
    run_evaluate(_params(out, "third"), engine_factory=third, show_progress=False)
    assert third.built == [str(third_dir)]
    assert read_json(out / "third" / "06_evaluate" / "sft" / "results.json")["reused_from"] is None


def test_settings_that_change_answers_are_in_the_key(tmp_path):
    out = tmp_path / "outputs"
    _model(_sft_dir(out, "a"))
    run_evaluate(_params(out, "a"), engine_factory=Factory(), show_progress=False)
    # grading settings are not in the key (answers graded again), a longer budget and a new benchmark are
    shutil.copytree(_sft_dir(out, "a"), _sft_dir(out, "b"))
    same = Factory()
    run_evaluate(_params(out, "b", "eval.truncated_as_wrong=true"), engine_factory=same, show_progress=False)
    assert same.built == []
    budget = Factory()
    run_evaluate(_params(out, "b", "eval.sampling.max_tokens=32"), engine_factory=budget, show_progress=False)
    assert len(budget.built) == 1 and budget.engines[0].calls == 4
    more = Factory()
    manifest = run_evaluate(_params(out, "b", "eval.benchmarks=[gsm8k, math500, gpqa_diamond]"),
                            engine_factory=more, show_progress=False)
    assert len(more.built) == 1 and more.engines[0].calls == 2  # only the new benchmark's problems
    assert manifest["models"]["sft"]["generated"] == ["gpqa_diamond"]
    off = Factory()
    run_evaluate(_params(out, "b", "eval.reuse=false"), engine_factory=off, show_progress=False)
    assert len(off.built) == 1


def test_greedy_answer_cut_at_max_tokens_is_not_asked_again(tmp_path):
    """The response cache under the eval engine serves a temperature-0 answer cut at ``max_tokens``
    (``retry_truncated`` left at its default) instead of generating it again."""
    out = tmp_path / "outputs"
    backends: list[ScriptedEngine] = []

    def factory(spec):
        be = ScriptedEngine(lambda req, i: Completion(text="First, 3 + 4 = 7, so the answer", finish_reason="length",
                                                      completion_tokens=16))
        backends.append(be)
        return CachedEngine(be, out / "cache" / "responses.sqlite", show_progress=False)

    for run_id in ("one", "two"):
        run_evaluate(_params(out, run_id, "eval.models=[zero_shot]", "eval.reuse=false"), engine_factory=factory,
                     show_progress=False)
    assert [b.calls for b in backends] == [4, 0]
    rows = read_jsonl(out / "two" / "06_evaluate" / "zero_shot" / "samples_gsm8k.jsonl")
    assert all(r["truncated"] for r in rows)
