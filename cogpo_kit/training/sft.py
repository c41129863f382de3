"""Supervised fine-tuning with TRL's SFT trainer: the CRV-aligned data and the SFT baselines.

Variants (``sft.variants``), all with the same prompt and the same response shape
(:func:`cogpo_kit.answers.response.format_response`):

- ``crv_sft``: D_SFT* (verified medium CoTs and verified, re-rated rewrites);
- ``sft``: the paper's SFT baseline (Table 2, Table 6 "SFT"): the original dataset without any CRV
  intervention, every row of ``01_critique/input.jsonl``;
- ``sft_same_problems``: the original CoTs of the D_SFT* problems only; against ``crv_sft`` it isolates
  the effect of the rewrites (same problems, different reasoning);
- ``sft_easy``, ``sft_medium``, ``sft_hard`` (paper Table 5): equal-size sets of the original CoTs the
  Critic rated easy, medium, hard (``02_rethink/sft_<level>.jsonl``, written with ``crv.equal_level_subsets``).

Rows are conversational prompt/completion pairs, so TRL computes the loss on the assistant response
only. Checkpoints go to ``checkpoints/``; a rerun resumes from the newest one. With LoRA the saved
``model/`` is the adapter on the student model's HF folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from cogpo_kit.answers.response import PROMPT_TEMPLATE, answer_kind, format_response, student_messages
from cogpo_kit.pairs.inputs import CRVArtifacts
from cogpo_kit.training.common import (is_main_process, load_model, load_tokenizer, lora_config,
                                       resumable_checkpoint, save_final_model, saved_kind, trainer_args, write_metrics)
from cogpo_kit.training.metrics import final_metrics
from cogpo_kit.training.config import SFTParams

VARIANTS = {
    "crv_sft": "D_SFT* (CRV-aligned CoTs)",
    "sft": "the original dataset, every row (the paper's SFT baseline)",
    "sft_same_problems": "the original CoTs of the D_SFT* problems only",
    "sft_easy": "an equal-size set of the original CoTs the Critic rated easy (Table 5)",
    "sft_medium": "an equal-size set of the original CoTs the Critic rated medium (Table 5)",
    "sft_hard": "an equal-size set of the original CoTs the Critic rated hard (Table 5)",
}
"""SFT variant -> what it trains on (as the manifest and the report say it)."""


def _row(sid: str, origin: str, problem: str, gold: str, reasoning: str, template: str) -> dict:
    gold = str(gold).strip()
    kind = answer_kind(gold)
    text = format_response(reasoning, gold, kind)
    return {"id": sid, "origin": origin, "prompt": student_messages(problem, template, kind),
            "completion": [{"role": "assistant", "content": text}]}


LEVEL_VARIANTS = {"sft_easy": "easy", "sft_medium": "medium", "sft_hard": "hard"}


def sft_rows(art: CRVArtifacts, variant: str, template: str = PROMPT_TEMPLATE,
             level_rows: Optional[dict[str, dict]] = None) -> list[dict]:
    """Prompt/completion rows of a variant: D_SFT* order for ``crv_sft`` and ``sft_same_problems``,
    input order for ``sft``, the subset's order for the level variants (``level_rows``: its file, read by
    :func:`cogpo_kit.pairs.inputs.read_level_subset`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SFT variant '{variant}' (known: {', '.join(VARIANTS)})")
    if variant in LEVEL_VARIANTS:
        if level_rows is None:
            raise ValueError(f"SFT variant '{variant}' trains on a level subset: pass its rows")
        return [_row(sid, row["level"], row["problem"], row["answer"], row["reasoning"], template)
                for sid, row in level_rows.items()]
    if variant == "sft":
        return [_row(sid, "original", rec["problem"], rec["answer"], rec["reasoning"], template)
                for sid, rec in art.records.items()]
    rows = []
    for sid, row in art.sft.items():
        if variant == "crv_sft":
            rows.append(_row(sid, row["origin"], row["problem"], row["answer"], row["reasoning"], template))
        else:
            rec = art.records[sid]
            rows.append(_row(sid, "original", rec["problem"], rec["answer"], rec["reasoning"], template))
    return rows


def train_sft(rows: list[dict], *, base_path: str, params: SFTParams, out_dir: str | Path,
              logger: Optional[logging.Logger] = None) -> dict:
    """Train one SFT variant on ``rows``; writes ``model/``, ``metrics.jsonl`` and ``checkpoints/`` in ``out_dir``.

    ``model/`` holds the LoRA adapter with ``base_path`` as its base (the merged model with ``merge_lora``),
    or the full weights without LoRA (:func:`cogpo_kit.training.common.save_final_model`)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    log = logger or logging.getLogger(__name__)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    optim = params.optim
    tok = load_tokenizer(base_path)
    # The config comes first: under DeepSpeed ZeRO-3 it must exist before the weights load.
    config = SFTConfig(**trainer_args(optim, ckpt_dir), completion_only_loss=True, packing=False)
    model = load_model(base_path, bf16=optim.bf16)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                         peft_config=lora_config(params.lora))
    from cogpo_kit.training.step_bar import use_step_bar

    use_step_bar(trainer, f"SFT {out_dir.name}")
    from cogpo_kit.io import stable_hash
    from cogpo_kit.models.adapters import model_fingerprint
    from cogpo_kit.params.loader import params_dict

    key = {"rows": stable_hash(rows), "sft": params_dict(params), "base": model_fingerprint(base_path)}
    resume = resumable_checkpoint(ckpt_dir, key, log)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    write_metrics(out_dir / "metrics.jsonl", trainer.state.log_history)
    save_final_model(trainer, out_dir / "model", base_path=base_path, merge_lora=params.merge_lora, bf16=optim.bf16)
    summary = {"examples": len(rows), "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
               "resumed_from": resume, "final": final_metrics(trainer.state.log_history),
               "train_loss": result.training_loss, "lora": params.lora.enabled,
               "saved": saved_kind(params.lora.enabled, params.merge_lora), "base": str(base_path)}
    if is_main_process():
        log.info("SFT finished: %d steps in %.1f s, train loss %.4f", summary["steps"], seconds, result.training_loss)
    return summary
