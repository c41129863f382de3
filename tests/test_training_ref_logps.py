"""Reference log-probs computed once and shared by the CogPO-family methods (cogpo_kit.training.ref_logps).

The pairs are the pairs stage's own output on the CRV fixture; the starting model is a real PEFT LoRA
adapter (random, non-zero weights) on ``tiny:llama``, as the SFT stage leaves it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cogpo_kit.params import load_params
from cogpo_kit.training.config import OptimParams, PreferenceParams
from test_pairs_fixtures import write_crv_fixture

pytestmark = pytest.mark.builds_model


@pytest.fixture(scope="module")
def pairs_and_start(tmp_path_factory, tiny_model_path):
    """(pairs written by run_pairs, an SFT-like adapter folder on tiny:llama)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cogpo_kit.models.adapters import write_base_pointer
    from cogpo_kit.pairs.schema import load_pairs
    from cogpo_kit.pairs.stage import run_pairs

    root = tmp_path_factory.mktemp("ref")
    write_crv_fixture(root / "r")
    run_pairs(load_params([], [f"run.output_dir={root}", "run.run_id=r", "student.model=tiny:llama",
                               "pairs.max_length=256"]))
    pairs = load_pairs(root / "r" / "03_pairs" / "pairs.jsonl")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
                           LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False,
                                      target_modules=["q_proj", "v_proj"]))
    start = root / "sft_model"
    model.save_pretrained(str(start))
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(str(start))
    write_base_pointer(start, tiny_model_path)
    return pairs, str(start)


def _pref(**kw) -> PreferenceParams:
    optim = OptimParams(learning_rate=1e-3, max_steps=1, per_device_batch_size=2, max_length=256, warmup_ratio=0.0)
    return PreferenceParams(optim=optim, **kw)


def _shared(path: Path, start: str, pairs):
    from cogpo_kit.models.adapters import model_fingerprint
    from cogpo_kit.training.ref_logps import SharedRefLogps

    return SharedRefLogps(path=path, model=model_fingerprint(start), pairs=pairs)


def _ref_columns(trainer) -> dict:
    data = trainer.train_dataset
    return {pid: (c, r) for pid, c, r in zip(data["pair_id"], data["ref_chosen_logps"], data["ref_rejected_logps"])}


def _trl_precomputed(like, pairs, start, out):
    """A plain CogPOTrainer (TRL's precompute pass) with the same settings as trainer ``like``."""
    import dataclasses

    from cogpo_kit.training.cogpo_trainer import CogPOTrainer
    from cogpo_kit.training.common import load_model, load_tokenizer
    from cogpo_kit.training.preference import preference_dataset

    args = dataclasses.replace(like.args, output_dir=str(out))
    return CogPOTrainer(model=load_model(start), args=args, train_dataset=preference_dataset(pairs),
                        processing_class=load_tokenizer(start), peft_config=_peft(like))


def _peft(trainer):
    return trainer.model.peft_config["default"]


def test_shared_values_equal_each_trainers_own(pairs_and_start, tmp_path, monkeypatch):
    from trl import DPOTrainer

    from cogpo_kit.training.preference import build_trainer, method_specs

    pairs, start = pairs_and_start
    pref = _pref(methods=("cogpo", "dpo", "beta_dpo"), beta_sweep=(2.0,), precompute_ref_log_probs=True)
    specs = method_specs(pref)
    assert [s.name for s in specs] == ["cogpo", "dpo", "beta_dpo", "cogpo_x2"]
    own = {s.name: _ref_columns(build_trainer(s, pairs, init_path=start, pref=pref, out_dir=tmp_path / f"own_{s.name}"))
           for s in specs}
    shared = _shared(tmp_path / "ref_logps.jsonl", start, pairs)
    first = build_trainer(specs[0], pairs, init_path=start, pref=pref, out_dir=tmp_path / "s0", shared=shared)
    assert shared.source == "computed" and shared.computed_by == "cogpo"
    assert _ref_columns(first) == own["cogpo"]  # the first trainer's own pass is the shared one
    # and that pass gives what TRL's own precompute pass (through its datasets cache file) gives
    trl_own = _ref_columns(_trl_precomputed(first, pairs, start, tmp_path / "trl"))
    assert set(trl_own) == set(own["cogpo"])
    for pid, (c, r) in trl_own.items():
        assert own["cogpo"][pid][0] == pytest.approx(c, abs=1e-5) and own["cogpo"][pid][1] == pytest.approx(r, abs=1e-5)

    calls = []
    real = DPOTrainer._precompute_ref_logps
    monkeypatch.setattr(DPOTrainer, "_precompute_ref_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    for spec in specs[1:]:
        trainer = build_trainer(spec, pairs, init_path=start, pref=pref, out_dir=tmp_path / spec.name, shared=shared)
        got = _ref_columns(trainer)
        assert set(got) == set(own[spec.name]) and len(got) == len(pairs)
        for pid, (c, r) in own[spec.name].items():
            assert got[pid][0] == pytest.approx(c, abs=1e-5) and got[pid][1] == pytest.approx(r, abs=1e-5)
    assert calls == []  # no trainer after the first computed them again
    rows = [json.loads(line) for line in (tmp_path / "ref_logps.jsonl").open()]
    assert [r["id"] for r in rows] == [p["id"] for p in pairs]
    assert {r["model"] for r in rows} == {shared.model}
    assert all(math.isfinite(r["ref_chosen_logps"]) and r["ref_chosen_logps"] < 0 for r in rows)


def test_a_training_step_is_the_same_with_and_without_sharing(pairs_and_start, tmp_path):
    from cogpo_kit.training.preference import method_specs, train_preference

    pairs, start = pairs_and_start
    pref = _pref(methods=("cogpo", "beta_dpo"))
    shared = _shared(tmp_path / "ref_logps.jsonl", start, pairs)
    for spec in method_specs(pref):
        alone = train_preference(spec, pairs, init_path=start, pref=pref, out_dir=tmp_path / f"alone_{spec.name}")
        with_shared = train_preference(spec, pairs, init_path=start, pref=pref,
                                       out_dir=tmp_path / f"shared_{spec.name}", shared=shared)
        assert alone["reference_logps"] == "per step"
        assert with_shared["reference_logps"] in ("computed for all", "shared (computed)")
        assert with_shared["train_loss"] == pytest.approx(alone["train_loss"], abs=1e-5)
        for key in ("rewards/margins", "rewards/chosen", "logps/chosen"):
            assert with_shared["final"][key] == pytest.approx(alone["final"][key], abs=1e-4), key


def test_the_file_is_reused_only_for_the_same_model_texts_and_settings(pairs_and_start, tmp_path):
    from cogpo_kit.training.preference import build_trainer, method_specs
    from cogpo_kit.training.ref_logps import SharedRefLogps, pair_hash

    pairs, start = pairs_and_start
    pref = _pref(methods=("dpo",))
    path = tmp_path / "ref_logps.jsonl"
    first = _shared(path, start, pairs)
    build_trainer(method_specs(pref)[0], pairs, init_path=start, pref=pref, out_dir=tmp_path / "a", shared=first)
    settings = first.settings
    again = _shared(path, start, pairs)
    assert again.ready(settings) and again.source == "file" and again.values == first.values
    assert not _shared(path, start, pairs).ready(dict(settings, max_length=128))
    assert not SharedRefLogps(path=path, model="another-model", pairs=pairs).ready(settings)
    changed = [dict(pairs[0], chosen=pairs[0]["chosen"] + " More."), *pairs[1:]]
    assert pair_hash(changed[0]) != pair_hash(pairs[0])
    assert not _shared(path, start, changed).ready(settings)
    assert not _shared(path, start, pairs[1:]).ready(settings)  # the file holds another pair set
