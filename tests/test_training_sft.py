"""SFT rows of every variant, and TRL's SFT loss on the response only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cogpo_kit.answers.extraction import extract_answer
from cogpo_kit.pairs.inputs import read_crv
from cogpo_kit.training.sft import sft_rows
from test_pairs_fixtures import write_crv_fixture


def test_variants_share_prompts_and_the_baseline_is_the_whole_dataset(tmp_path):
    art = read_crv(write_crv_fixture(tmp_path / "run"), which=("input", "sft"))
    crv, same = sft_rows(art, "crv_sft"), sft_rows(art, "sft_same_problems")
    plain = sft_rows(art, "sft")
    assert [r["id"] for r in crv] == [r["id"] for r in same] == ["e1", "m1", "e2", "h2", "e3"]
    # the paper's SFT baseline: the original dataset without any CRV intervention, every row
    assert [r["id"] for r in plain] == ["e1", "h1", "m1", "m2", "e2", "h2", "e3", "x1"]
    assert all(a["prompt"] == b["prompt"] for a, b in zip(crv, same))
    by_id = {r["id"]: r["completion"][0]["content"] for r in crv}
    assert by_id["e1"].startswith("Tom starts with 3 apples")  # the kept rewrite
    assert {r["id"]: r["completion"][0]["content"] for r in same}["e1"].startswith("3 + 4 = 7.")  # the original
    for r in crv + same + plain:
        assert r["completion"][0]["role"] == "assistant" and extract_answer(r["completion"][0]["content"])
    with pytest.raises(ValueError, match="unknown SFT variant"):
        sft_rows(art, "dpo")


@pytest.mark.builds_model
def test_sft_loss_is_on_the_response_only(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from cogpo_kit.models.resolve import hf_path

    path = hf_path("tiny:llama")
    tok = AutoTokenizer.from_pretrained(path)
    art = read_crv(write_crv_fixture(tmp_path / "run"), which=("input", "sft"))
    rows = sft_rows(art, "crv_sft")[:2]
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    cfg = SFTConfig(output_dir=str(tmp_path / "o"), completion_only_loss=True, bf16=False, report_to="none",
                    activation_checkpointing=False, max_length=256, per_device_train_batch_size=2)
    tr = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=cfg, train_dataset=ds,
                    processing_class=tok)
    batch = tr.data_collator([tr.train_dataset[i] for i in range(2)])
    for i, r in enumerate(rows):
        n_prompt = len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"])
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert (labels[:n_prompt] == -100).all(), "prompt tokens must not be trained on"
        n_real = int(batch["attention_mask"][i].sum()) if "attention_mask" in batch else len(ids)
        assert (labels[n_prompt:n_real] == ids[n_prompt:n_real]).all(), "every response token is trained on"
        answer = tok.decode(ids[n_prompt:n_real])
        assert r["completion"][0]["content"][:40] in answer
    tr.model.eval()
    with torch.no_grad():
        loss = tr.compute_loss(tr.model, batch)
        logits = tr.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
                             ignore_index=-100)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-4)


def test_last_checkpoint_skips_and_removes_partial_checkpoints(tmp_path):
    from cogpo_kit.training.common import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step in (1, 2, 3, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # cut while being written
    (tmp_path / "checkpoint-3" / "model.safetensors").write_text("partial")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-4").exists() and not (tmp_path / "checkpoint-3").exists()
    assert (tmp_path / "checkpoint-1").exists()  # older complete checkpoints are kept


@pytest.mark.builds_model
def test_training_steps_show_as_the_kits_progress_bar(tmp_path, monkeypatch, capsys):
    """Training draws the kit's own bar (steps done of max_steps, with the loss), which the runner forwards to
    the terminal, instead of transformers' notebook table or printed log dicts."""
    from cogpo_kit.models.resolve import hf_path
    from cogpo_kit.progress import MODE_ENV
    from cogpo_kit.training.config import LoraParams, OptimParams, SFTParams
    from cogpo_kit.training.sft import train_sft

    monkeypatch.delenv("COGPO_NO_PROGRESS", raising=False)
    monkeypatch.setenv(MODE_ENV, "text")
    art = read_crv(write_crv_fixture(tmp_path / "run"), which=("input", "sft"))
    params = SFTParams(optim=OptimParams(max_steps=2, per_device_batch_size=2, max_length=128, save_steps=2,
                                         logging_steps=1, bf16=False, gradient_checkpointing=False),
                       lora=LoraParams(enabled=True, r=4, alpha=8))
    out = tmp_path / "crv_sft"
    summary = train_sft(sft_rows(art, "crv_sft")[:4], base_path=hf_path("tiny:llama"), params=params, out_dir=out)
    captured = capsys.readouterr()
    err, printed = captured.err, captured.out
    assert summary["steps"] == 2
    assert "SFT crv_sft" in err and "2/2" in err and "loss=" in err
    assert "{'loss'" not in printed  # transformers' PrinterCallback is gone


@pytest.mark.builds_model
def test_checkpoints_of_other_data_are_not_resumed(tmp_path, caplog):
    """A stage that runs again because its data changed starts over; one stopped half-way on the same data
    resumes from its checkpoint."""
    import shutil

    from cogpo_kit.models.resolve import hf_path
    from cogpo_kit.training.common import RUN_KEY_FILE
    from cogpo_kit.training.config import LoraParams, OptimParams, SFTParams
    from cogpo_kit.training.sft import train_sft

    art = read_crv(write_crv_fixture(tmp_path / "run"), which=("input", "sft"))
    rows = sft_rows(art, "crv_sft")
    params = SFTParams(optim=OptimParams(max_steps=2, per_device_batch_size=2, max_length=128, save_steps=1,
                                         save_total_limit=2, bf16=False, gradient_checkpointing=False),
                       lora=LoraParams(enabled=True, r=4, alpha=8))
    base, out = hf_path("tiny:llama"), tmp_path / "crv_sft"
    first = train_sft(rows[:4], base_path=base, params=params, out_dir=out)
    assert first["resumed_from"] is None and (out / "checkpoints" / RUN_KEY_FILE).exists()
    # other rows: the old checkpoints are removed, not continued
    second = train_sft(rows[1:5], base_path=base, params=params, out_dir=out)
    assert second["resumed_from"] is None and second["steps"] == 2
    assert "trained on other data or settings" in caplog.text
    # the same rows after a stop at step 1: resumed
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    third = train_sft(rows[1:5], base_path=base, params=params, out_dir=out)
    assert third["resumed_from"] and third["resumed_from"].endswith("checkpoint-1")
