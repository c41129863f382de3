"""The 04_sft and 05_preference stages on the CRV fixture with tiny:llama."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cogpo_kit.io import DataError
from cogpo_kit.params import load_params
from test_pairs_fixtures import write_crv_fixture

FAST = ["student.model=tiny:llama", "pairs.max_length=256",
        "sft.optim.max_steps=1", "sft.optim.per_device_batch_size=2", "sft.optim.max_length=256",
        "sft.optim.learning_rate=0.001",
        "preference.optim.max_steps=1", "preference.optim.per_device_batch_size=2",
        "preference.optim.max_length=256", "preference.optim.learning_rate=0.001"]


def _params(tmp_path, *more):
    return load_params([], [f"run.output_dir={tmp_path}", "run.run_id=r", *FAST, *more])


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


@pytest.mark.slow
@pytest.mark.builds_model
def test_sft_then_preference_end_to_end(tmp_path):
    from cogpo_kit.models.adapters import adapter_chain, is_adapter_dir, model_fingerprint
    from cogpo_kit.models.resolve import hf_path, load_causal_lm
    from cogpo_kit.pairs.stage import run_pairs
    from cogpo_kit.training.stage import run_preference, run_sft

    run = write_crv_fixture(tmp_path / "r")
    params = _params(tmp_path, "preference.methods=[cogpo, simpo]", "preference.precompute_ref_log_probs=true")
    run_pairs(params)
    m = run_sft(params)
    assert m["counts"] == {"crv_sft_examples": 5, "sft_examples": 8}  # the baseline trains on every row
    assert any("SFT baseline 'sft' trained on 8 rows" in n for n in m["notes"])
    tiny = str(Path(hf_path("tiny:llama")).resolve())
    for variant in ("crv_sft", "sft"):
        folder = run / "04_sft" / variant
        # the LoRA adapter with its base recorded, no merged weights on disk
        assert is_adapter_dir(folder / "model") and not list((folder / "model").glob("model*.safetensors"))
        assert adapter_chain(folder / "model") == [tiny, str((folder / "model").resolve())]
        pointer = json.loads((folder / "model" / "base_model.json").read_text())
        assert pointer["path"] == tiny and pointer["fingerprint"] == model_fingerprint(tiny)
        model, tok, _ = load_causal_lm(str(folder / "model"))
        assert not any("lora" in n for n, _ in model.named_parameters())  # adapters merged in memory
        assert tok.chat_template and any("loss" in r for r in _metrics(folder / "metrics.jsonl"))
        assert m["variants"][variant]["steps"] == 1 and m["variants"][variant]["saved"] == "adapter"
    assert m["student_fingerprint"] == model_fingerprint(tiny)
    m = run_preference(params)
    sft_model = run / "04_sft" / "crv_sft" / "model"
    assert m["init_model"] == str(sft_model) and not m["notes"]
    assert m["init_model_fingerprint"] == model_fingerprint(sft_model)
    assert m["counts"]["pairs"] == 12
    for method in ("cogpo", "simpo"):
        folder = run / "05_preference" / method
        assert adapter_chain(folder / "model") == [tiny, str(sft_model.resolve()), str((folder / "model").resolve())]
        load_causal_lm(str(folder / "model"))
        rows = [r for r in _metrics(folder / "metrics.jsonl") if "loss" in r]
        assert rows and any(k.endswith("_gap/rewards/margins") for k in rows[0])
        assert any(k.endswith("_gap/rewards/accuracies") for k in rows[0])
        assert m["methods"][method]["steps"] == 1 and "rewards/margins" in m["methods"][method]["final"]
    assert m["methods"]["cogpo"]["reference_logps"] == "computed for all"
    assert m["methods"]["simpo"]["reference_logps"] == "none"
    refs = _metrics(run / "05_preference" / "ref_logps.jsonl")
    assert len(refs) == 12 and {r["model"] for r in refs} == {model_fingerprint(sft_model)}
    assert m["reference_logps"]["computed_by"] == "cogpo" and m["reference_logps"]["pairs"] == 12
    assert not list(run.rglob("model.safetensors"))  # no full model copies anywhere in the run


@pytest.mark.builds_model
def test_zero_pairs_and_missing_sft_model_give_pointers_with_notes(tmp_path):
    from cogpo_kit.models.adapters import follow_pointers, is_pointer_dir, model_fingerprint
    from cogpo_kit.models.resolve import hf_path, load_causal_lm, resolve
    from cogpo_kit.training.stage import run_preference

    (tmp_path / "r" / "03_pairs").mkdir(parents=True)
    (tmp_path / "r" / "03_pairs" / "pairs.jsonl").write_text("")
    m = run_preference(_params(tmp_path))
    assert any("not found" in n and "student model" in n for n in m["notes"])
    assert sum("zero pairs" in n for n in m["notes"]) == 4
    tiny = Path(hf_path("tiny:llama")).resolve()
    for method in ("cogpo", "dpo", "beta_dpo", "simpo"):
        model = tmp_path / "r" / "05_preference" / method / "model"
        # a pointer of a few hundred bytes, not a copy of the weights; every reader follows it
        assert is_pointer_dir(model) and [p.name for p in model.iterdir()] == ["model_pointer.json"]
        assert follow_pointers(model) == str(tiny) and hf_path(str(model)) == str(tiny)
        assert resolve(str(model)).identity == f"sha256:{model_fingerprint(tiny)}"
        assert m["methods"][method]["saved"] == "pointer"
        assert (tmp_path / "r" / "05_preference" / method / "metrics.jsonl").read_text() == ""
    model, tok, _ = load_causal_lm(str(tmp_path / "r" / "05_preference" / "cogpo" / "model"))
    assert tok.chat_template and model.config.num_hidden_layers == 2
    assert not (tmp_path / "r" / "05_preference" / "ref_logps.jsonl").exists()


def test_bad_pairs_fail_before_training(tmp_path):
    from cogpo_kit.training.stage import run_preference

    (tmp_path / "r" / "03_pairs").mkdir(parents=True)
    row = {"id": "a", "prompt": [{"role": "user", "content": "q"}], "chosen": "x", "rejected": "y",
           "gap": "small", "beta": 0.1}
    lines = [row, dict(row, id="b", beta=-0.2)]
    (tmp_path / "r" / "03_pairs" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(DataError) as exc:
        run_preference(_params(tmp_path))
    assert exc.value.line == 2 and exc.value.field == "beta"
    assert not (tmp_path / "r" / "05_preference").exists()


@pytest.mark.slow
@pytest.mark.builds_model
def test_sft_resumes_after_a_kill(tmp_path):
    write_crv_fixture(tmp_path / "r")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"run: {{output_dir: {tmp_path}, run_id: r}}\nsft: {{variants: [crv_sft]}}\n")
    args = [sys.executable, "-m", "cogpo_kit.cli", "train", "sft", str(cfg), *sum((["-o", o] for o in FAST), []),
            "-o", "sft.optim.max_steps=4", "-o", "sft.optim.save_steps=1", "-o", "sft.optim.save_total_limit=2"]
    env = dict(os.environ, COGPO_NO_PROGRESS="1", TQDM_DISABLE="1")
    ckpts = tmp_path / "r" / "04_sft" / "crv_sft" / "checkpoints"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ckpts / "checkpoint-1" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "r" / "04_sft" / "crv_sft" / "model").exists()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "r" / "04_sft" / "manifest.json").read_text())
    info = m["variants"]["crv_sft"]
    assert info["resumed_from"] and "checkpoint-" in info["resumed_from"] and info["steps"] == 4
    steps = [r["step"] for r in _metrics(tmp_path / "r" / "04_sft" / "crv_sft" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]  # the log history of the killed run is carried over
    assert (tmp_path / "r" / "04_sft" / "crv_sft" / "model" / "adapter_model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.builds_model
def test_full_fine_tuning_saves_weights_and_merge_lora_saves_the_merged_model(tmp_path):
    import torch
    from safetensors.torch import load_file

    from cogpo_kit.models.adapters import adapter_chain, is_adapter_dir
    from cogpo_kit.models.resolve import load_causal_lm
    from cogpo_kit.pairs.stage import run_pairs
    from cogpo_kit.training.stage import run_preference, run_sft

    run = write_crv_fixture(tmp_path / "r")
    params = _params(tmp_path, "sft.variants=[crv_sft]", "sft.lora.enabled=false", "preference.methods=[dpo]",
                     "preference.merge_lora=true", "preference.optim.warmup_ratio=0.0")  # the one step moves
    run_pairs(params)
    m = run_sft(params)
    sft = run / "04_sft" / "crv_sft" / "model"
    assert m["variants"]["crv_sft"]["saved"] == "full" and not is_adapter_dir(sft)
    weights = load_file(str(sft / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}  # the training dtype on CPU
    m = run_preference(params)
    dpo = run / "05_preference" / "dpo" / "model"
    assert m["methods"]["dpo"]["saved"] == "merged" and not is_adapter_dir(dpo) and adapter_chain(dpo) == [str(dpo)]
    assert not (dpo.parent / "model.adapter").exists()
    merged = load_file(str(dpo / "model.safetensors"))
    assert merged.keys() == weights.keys() and {t.dtype for t in merged.values()} == {torch.float32}
    assert any(not torch.equal(merged[k], weights[k]) for k in merged)  # the method's LoRA is in the weights
    model, tok, _ = load_causal_lm(str(dpo))
    assert tok.chat_template and not any("lora" in n for n, _ in model.named_parameters())
