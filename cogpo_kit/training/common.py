"""What SFT and preference training share: TRL arguments from params, LoRA, processes, checkpoints, saving.

Training runs in-process (CPU or one GPU) or under a launcher (``torchrun``, ``accelerate launch`` with a
config from ``params/launch/``); every process runs the same code and only the main process writes the
stage's files. Final models are written to a temporary folder and renamed into place, so a ``model/``
folder that exists is complete. What a ``model/`` folder holds:

- LoRA: the adapter (PEFT's files, the tokenizer, the chat template) and ``base_model.json``; its base is
  recorded as an absolute path (``base_model_name_or_path``) and relative to the folder, so loading needs
  no merged copy (:mod:`cogpo_kit.models.adapters` merges in memory, or once into the cache where a
  consumer needs full weights on disk); ``merge_lora: true`` saves the merged model instead;
- full fine-tuning: the full weights in the training dtype;
- nothing to train: a pointer folder (``model_pointer.json``) standing for the starting model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from cogpo_kit.io import atomic_write_jsonl, replace_dir
from cogpo_kit.models.adapters import (adapter_chain, load_model_with_adapters, tokenizer_path, write_base_pointer,
                                       write_model_pointer)
from cogpo_kit.models.specs import plain_hf_path
from cogpo_kit.training.config import LoraParams, OptimParams


def process_rank() -> int:
    """Global rank of this process under a launcher (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def trainer_args(optim: OptimParams, output_dir: str | Path, *, seed: Optional[int] = None) -> dict:
    """Keyword arguments shared by TRL's SFT/DPO/CPO configs, from our optimisation params."""
    if optim.bf16 and not _has_cuda():
        bf16 = False  # CPU runs train in float32; the GPU params file sets bf16
    else:
        bf16 = optim.bf16
    kw = dict(
        output_dir=str(output_dir),
        learning_rate=optim.learning_rate,
        num_train_epochs=optim.epochs,
        max_steps=optim.max_steps,
        per_device_train_batch_size=optim.per_device_batch_size,
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        warmup_steps=optim.warmup_ratio if optim.warmup_ratio < 1 else int(optim.warmup_ratio),
        lr_scheduler_type=optim.lr_scheduler,
        weight_decay=optim.weight_decay,
        bf16=bf16,
        fp16=False,
        activation_checkpointing=optim.gradient_checkpointing,  # gradient_checkpointing, as transformers 5 names it
        logging_steps=optim.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=optim.save_steps,
        save_total_limit=optim.save_total_limit,
        seed=optim.seed if seed is None else seed,
        data_seed=optim.seed if seed is None else seed,
        report_to="none",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        max_length=optim.max_length,
    )
    if not _has_cuda():
        # Accelerate's multi-process CPU mode (gloo) under torchrun needs use_cpu.
        kw["use_cpu"] = True
        if world_size() > 1:
            kw["ddp_backend"] = "gloo"
    return kw


def lora_config(lora: LoraParams):
    """A PEFT LoRA config for causal LMs, or ``None`` for full fine-tuning."""
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), bias="none")


CHECKPOINT_DONE = "trainer_state.json"
"""Written by the Trainer after the weights, optimizer and RNG states: a checkpoint without it is partial."""


def last_checkpoint(folder: str | Path, logger: Optional[logging.Logger] = None) -> Optional[str]:
    """The newest complete ``checkpoint-N`` folder under ``folder`` (``None`` if there is none).

    A run killed while the Trainer was writing a checkpoint leaves a folder without
    ``trainer_state.json``; such partial folders newer than the chosen one are removed (and logged)
    so that the resumed run writes that step again into a clean folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for sub in folder.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", sub.name)
        if m and sub.is_dir():
            found.append((int(m.group(1)), sub))
    for _step, sub in sorted(found, reverse=True):
        try:
            json.loads((sub / CHECKPOINT_DONE).read_text(encoding="utf-8"))
            return str(sub)
        except (OSError, ValueError):
            pass
        if is_main_process():  # every process picks the same checkpoint; one of them cleans up
            (logger or logging.getLogger(__name__)).warning(
                "removing partial checkpoint %s (no readable %s: the run was stopped while writing it)",
                sub, CHECKPOINT_DONE)
            shutil.rmtree(sub, ignore_errors=True)
    return None


def _dtype(bf16: bool):
    import torch

    return torch.bfloat16 if bf16 and _has_cuda() else torch.float32


RUN_KEY_FILE = "run_key.json"
"""In a ``checkpoints/`` folder: the hash of what its checkpoints were trained on (data, settings, starting model)."""


def resumable_checkpoint(folder: str | Path, key: dict, logger: Optional[logging.Logger] = None) -> Optional[str]:
    """The checkpoint to resume from in ``folder``, only if it was trained on what ``key`` describes.

    ``key`` names everything a checkpoint depends on (the training rows or pairs, the stage's settings, the
    starting model's fingerprint). Checkpoints written under another key (the stage is running again because
    its data or settings changed) or under no key are removed, with a warning, so a rerun never continues a
    run on other data; then the key is recorded and :func:`last_checkpoint` picks the newest complete one.
    Every process must call this.
    """
    from cogpo_kit.io import atomic_write_json, stable_hash

    folder = Path(folder)
    digest = stable_hash(key)
    if is_main_process():
        try:
            recorded = json.loads((folder / RUN_KEY_FILE).read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError):
            recorded = None
        if folder.is_dir() and recorded != digest and any(folder.glob("checkpoint-*")):
            (logger or logging.getLogger(__name__)).warning(
                "removing the checkpoints in %s: they were trained on other data or settings (%s), not this run's",
                folder, "no run key recorded" if recorded is None else f"run key {recorded[:12]}")
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / RUN_KEY_FILE, {"key": digest})
    barrier()
    return last_checkpoint(folder, logger)


def load_model(path: str, *, bf16: bool = False):
    """The causal LM a training run starts from, in float32 (or bfloat16 on a GPU when asked).

    ``path`` may be a full HF folder, an adapter folder (its base loaded once and each adapter of the chain
    merged in memory) or a pointer folder (the model it stands for).
    """
    chain = adapter_chain(path)
    if len(chain) > 1:
        with _plain_loading():  # merging needs whole weights; DeepSpeed partitions them when training starts
            return load_model_with_adapters(path, dtype=_dtype(bf16))
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(plain_hf_path(chain[0]), dtype=_dtype(bf16))


def load_tokenizer(path: str):
    """The tokenizer of the model at ``path`` (an adapter folder's own, else its base's), with a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@contextmanager
def _plain_loading():
    """Load weights whole even while a DeepSpeed ZeRO-3 config is active (which would partition them)."""
    try:
        from transformers.integrations import deepspeed as hf_ds
    except ImportError:
        yield
        return
    ref = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
    active = ref() if ref is not None else None
    if active is None:
        yield
        return
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds.set_hf_deepspeed_config(active)


def save_final_model(trainer, model_dir: str | Path, *, base_path: str, merge_lora: bool = False,
                     bf16: bool = False) -> Path:
    """Save the trained model to ``model_dir`` with its tokenizer and chat template.

    LoRA: the adapter, with ``base_path`` (the model training started from: an HF folder, an adapter or a
    pointer folder) recorded as its base (:func:`cogpo_kit.models.adapters.write_base_pointer`); with
    ``merge_lora`` the merged full model instead, in the base's dtype. Full fine-tuning: the weights in the
    training dtype. Saving goes through ``trainer.save_model`` so DeepSpeed ZeRO-3 gathers its shards.
    Every process must call this.
    """
    from peft import PeftModel

    model_dir = Path(model_dir)
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    is_peft = isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel)
    if trainer.accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    if not is_peft or not merge_lora:
        trainer.save_model(str(tmp))
        if is_peft and trainer.accelerator.is_main_process:
            write_base_pointer(tmp, base_path)
    else:
        adapter = model_dir.with_name(model_dir.name + ".adapter")
        trainer.save_model(str(adapter))
        if trainer.accelerator.is_main_process:
            write_base_pointer(adapter, base_path)
            with _plain_loading():
                merged = load_model_with_adapters(adapter, dtype="auto")
            merged.save_pretrained(str(tmp), safe_serialization=True)
            shutil.rmtree(adapter)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(str(tmp))
        replace_dir(tmp, model_dir)
    trainer.accelerator.wait_for_everyone()
    return model_dir


def saved_kind(lora: bool, merge_lora: bool) -> str:
    """What :func:`save_final_model` leaves in ``model/``: ``adapter``, ``merged`` or ``full``."""
    return ("merged" if merge_lora else "adapter") if lora else "full"


def point_model(src: str | Path, model_dir: str | Path) -> Path:
    """Make ``model_dir`` a pointer folder standing for ``src`` (main process only; a few hundred bytes
    where a copy would be the whole model). Readers follow it (:mod:`cogpo_kit.models.resolve`)."""
    model_dir = Path(model_dir)
    if is_main_process():
        tmp = model_dir.with_name(model_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        write_model_pointer(tmp, src)
        replace_dir(tmp, model_dir)
    barrier()
    return model_dir


def write_metrics(path: str | Path, log_history: list[dict]) -> None:
    """``metrics.jsonl``: TRL's log history, one row per logging step (main process only)."""
    if is_main_process():
        atomic_write_jsonl(path, log_history)
