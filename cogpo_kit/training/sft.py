"""Supervised fine-tuning with TRL's SFT trainer: D_SFT* (``crv_sft``) and the original CoTs (``sft``).

Both variants train on the same problems (the ids of D_SFT*), with the same prompt and the same response
shape (:mod:`cogpo_kit.pairs.format`); they differ only in the reasoning: the CRV-aligned one or the
original. Rows are conversational prompt/completion pairs, so TRL computes the loss on the assistant
response only. Checkpoints go to ``checkpoints/``; a rerun resumes from the newest one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from cogpo_kit.pairs.format import DEFAULT_PROMPT_TEMPLATE, format_response, student_messages
from cogpo_kit.pairs.inputs import CRVArtifacts
from cogpo_kit.training.common import (is_main_process, last_checkpoint, load_model, lora_config, save_final_model,
                                       trainer_args, write_metrics)
from cogpo_kit.training.metrics import final_metrics
from cogpo_kit.training.params import SFTParams

VARIANTS = ("crv_sft", "sft")


def sft_rows(art: CRVArtifacts, variant: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> list[dict]:
    """Prompt/completion rows of a variant, in D_SFT* order."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SFT variant '{variant}' (known: {', '.join(VARIANTS)})")
    rows = []
    for sid, row in art.sft.items():
        gold = str(row["answer"]).strip()
        if variant == "crv_sft":
            text = format_response(row.get("response") or row.get("reasoning"), gold)
        else:
            text = format_response(art.records[sid]["reasoning"], gold)
        rows.append({"id": sid, "origin": row["origin"],
                     "prompt": student_messages(row["problem"], template),
                     "completion": [{"role": "assistant", "content": text}]})
    return rows


def train_sft(rows: list[dict], *, base_path: str, params: SFTParams, out_dir: str | Path,
              logger: Optional[logging.Logger] = None) -> dict:
    """Train one SFT variant on ``rows``; writes ``model/``, ``metrics.jsonl`` and ``checkpoints/`` in ``out_dir``."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    log = logger or logging.getLogger(__name__)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    optim = params.optim
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # The config comes first: under DeepSpeed ZeRO-3 it must exist before the weights load.
    config = SFTConfig(**trainer_args(optim, ckpt_dir), completion_only_loss=True, packing=False)
    model = load_model(base_path, bf16=optim.bf16)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                         peft_config=lora_config(params.lora))
    resume = last_checkpoint(ckpt_dir, log)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    write_metrics(out_dir / "metrics.jsonl", trainer.state.log_history)
    save_final_model(trainer, out_dir / "model", base_path=base_path, merge_lora=params.merge_lora, bf16=optim.bf16)
    summary = {"examples": len(rows), "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
               "resumed_from": resume, "final": final_metrics(trainer.state.log_history),
               "train_loss": result.training_loss, "lora": params.lora.enabled}
    if is_main_process():
        log.info("SFT finished: %d steps in %.1f s, train loss %.4f", summary["steps"], seconds, result.training_loss)
    return summary
