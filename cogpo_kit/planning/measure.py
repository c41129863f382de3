"""Peak memory of a few real training steps on CPU, next to the planner's estimate of the same run.

The check of :mod:`cogpo_kit.planning.memory`: a child process (a fresh interpreter, so nothing of another run is
counted) builds the kit's own trainer for one SFT variant or preference method — the same configs, model loading
and log-prob paths as ``04_sft`` / ``05_preference`` — on synthetic rows long enough to fill ``max_length``, and
trains ``steps`` optimizer steps. Measured: the growth of the process's resident set from just before the model
is loaded (everything imported, tokenizer and rows ready) to its peak during training (``VmHWM``, reset at the
baseline through ``/proc/self/clear_refs`` where the kernel allows), the method of ``benchmarks/training.py``, with
glibc told to return freed blocks at once (:data:`MMAP_THRESHOLD`).
The estimate is :func:`cogpo_kit.planning.plan.make_plan` on the same parameters with ``device: cpu``.

    python -m cogpo_kit.planning.measure --stage sft --model 'tiny:llama?layers=8&hidden=512' --max-length 256
    python -m cogpo_kit.planning.measure --stage preference --method dpo --reference model
    python -m cogpo_kit.planning.measure --device gpu --max-length 4096 --gradient-checkpointing \
        --model 'tiny:llama?layers=24&hidden=896&heads=14&kv_heads=2&intermediate=4864&vocab=151936'

On a GPU (``--device gpu``) the run trains in bfloat16 and the measurement is the CUDA allocator's peak of
allocated bytes over its value before the model loads; the estimate then leaves out the runtime reserve, which the
allocator does not see. Prints one JSON line with both numbers. :func:`measure` runs it as a subprocess and returns
that dict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional


MMAP_THRESHOLD = 131072
"""``MALLOC_MMAP_THRESHOLD_`` of the child: glibc serves every block of 128 KiB or more with its own mapping and
unmaps it when freed (a fixed threshold: no dynamic raise), so a freed tensor leaves the resident set at once and the
peak measures the tensors alive together, as ``torch.cuda.max_memory_allocated`` does on a GPU, not what the heap
kept after earlier frees."""


@dataclass(frozen=True)
class MeasureSpec:
    """One measured training run."""

    stage: Literal["sft", "preference"] = "sft"
    """Which stage's trainer."""
    method: str = "cogpo"
    """Preference method (``cogpo``, ``dpo``, ``beta_dpo``, ``simpo``); ignored for SFT."""
    model: str = "tiny:llama?layers=8&hidden=512&heads=8&kv_heads=4&intermediate=1536"
    """Student model spec (a tiny random model: weights, optimizer and activations all count)."""
    max_length: int = 256
    """Tokens per row (per side of a pair); the rows are longer and cut to it."""
    batch: int = 1
    """Rows (pairs) per micro-step."""
    steps: int = 2
    """Optimizer steps (two: the optimizer states exist during the second step's backward)."""
    lora: bool = False
    """Train LoRA adapters (r 16 on every projection) instead of every weight."""
    reference: Literal["precomputed", "model"] = "precomputed"
    """Preference: reference log-probs computed once before training, or by a reference copy each step."""
    gradient_checkpointing: bool = False
    """``optim.gradient_checkpointing``."""
    rows: int = 4
    """Synthetic rows (pairs) in the dataset."""
    threads: int = 1
    """Torch threads in the child."""
    device: Literal["cpu", "gpu"] = "cpu"
    """``cpu``: float32, resident-set growth; ``gpu``: ``bf16`` on, the CUDA allocator's peak of allocated bytes
    (``torch.cuda.max_memory_allocated``) against the estimate without its runtime reserve."""

    def overrides(self, output_dir: str) -> list[str]:
        """``-o`` overrides making a run's parameters describe this measurement."""
        section = self.stage
        ovr = [f"student.model={self.model}", f"run.output_dir={output_dir}", "run.run_id=measure",
               f"{section}.optim.max_length={self.max_length}", f"{section}.optim.per_device_batch_size={self.batch}",
               f"{section}.optim.max_steps={self.steps}", f"{section}.optim.gradient_accumulation_steps=1",
               f"{section}.optim.save_steps=100000", f"{section}.optim.bf16={str(self.device == 'gpu').lower()}",
               f"{section}.optim.gradient_checkpointing={str(self.gradient_checkpointing).lower()}",
               f"{section}.lora.enabled={str(self.lora).lower()}", f"{section}.lora.r=16",
               f"{section}.launch.num_processes=1", f"{section}.optim.warmup_ratio=0.0"]
        if section == "preference":
            ovr += [f"preference.methods=[{self.method}]", "preference.beta_dpo_filter=false",
                    f"preference.precompute_ref_log_probs={str(self.reference == 'precomputed').lower()}",
                    f"preference.share_ref_log_probs={str(self.reference == 'precomputed').lower()}"]
        else:
            ovr += ["sft.variants=[crv_sft]"]
        return ovr


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _text(rng, terms: int) -> tuple[str, str]:
    nums = [rng.randint(2, 99) for _ in range(terms)]
    total, steps = 0, []
    for x in nums:
        steps.append(f"We add {x} to the running total {total}, which gives {total + x}.")
        total += x
    return "What is " + " + ".join(map(str, nums)) + "?", " ".join(steps) + f"\n\nThe answer is {total}."


def synthetic_rows(spec: MeasureSpec) -> list[dict]:
    """SFT rows or preference pairs (the stages' formats) whose texts exceed ``max_length`` tokens."""
    import random

    rng = random.Random(0)
    terms = max(8, spec.max_length // 10)  # ~20 tokens a step: twice the length, cut to max_length
    out = []
    for i in range(spec.rows):
        prompt, chosen = _text(rng, terms)
        _, rejected = _text(rng, terms)
        messages = [{"role": "user", "content": prompt}]
        if spec.stage == "sft":
            out.append({"prompt": messages, "completion": [{"role": "assistant", "content": chosen}]})
        else:
            out.append({"id": f"p{i}", "prompt": messages, "chosen": chosen, "rejected": rejected,
                        "beta": (0.1, 0.2, 0.5)[i % 3], "gap": ("small", "medium", "large")[i % 3]})
    return out


def child(spec: MeasureSpec) -> dict:
    """Train in this process and return the measurement (the ``python -m`` entry runs it)."""
    import torch

    torch.set_num_threads(spec.threads)
    with tempfile.TemporaryDirectory(prefix="cogpo_measure_") as out_dir:
        return _train_and_measure(spec, out_dir)


def _train_and_measure(spec: MeasureSpec, out_dir: str) -> dict:
    import gc

    import torch
    from datasets import Dataset  # every module the trainers use is imported before the baseline
    from trl import SFTConfig, SFTTrainer

    from cogpo_kit.models.resolve import hf_path
    from cogpo_kit.params import load_params
    from cogpo_kit.training import cogpo_trainer, ref_logps, simpo  # noqa: F401
    from cogpo_kit.training.common import load_model, load_tokenizer, lora_config, trainer_args
    from cogpo_kit.training.preference import build_trainer, method_specs

    params = load_params([], spec.overrides(out_dir))
    path = hf_path(spec.model)
    tok = load_tokenizer(path)
    rows = synthetic_rows(spec)
    gc.collect()
    gpu = spec.device == "gpu"
    if gpu:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated() / 1024
        torch.cuda.reset_peak_memory_stats()
        reset = True
    else:
        baseline = _rss_kb("VmRSS")
        reset = _reset_peak()
    if spec.stage == "sft":
        sft = params.sft
        config = SFTConfig(**trainer_args(sft.optim, out_dir), completion_only_loss=True, packing=False)
        model = load_model(path, bf16=sft.optim.bf16)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=lora_config(sft.lora))
    else:
        method = method_specs(params.preference)[0]
        trainer = build_trainer(method, rows, init_path=path, pref=params.preference, out_dir=out_dir)
    setup_rss = _rss_kb("VmRSS")
    trainer.train()
    if gpu:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 1024
    else:
        peak = _rss_kb("VmHWM")
    return {"spec": asdict(spec), "baseline_mb": baseline / 1024, "setup_mb": setup_rss / 1024,
            "peak_mb": peak / 1024, "measured_mb": (peak - baseline) / 1024, "peak_reset": reset,
            "steps": trainer.state.global_step,
            "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6}


def estimate(spec: MeasureSpec) -> dict:
    """The planner's estimate for the same run (on ``spec.device``, no runtime reserve): total and terms in MB."""
    from cogpo_kit.params import load_params
    from cogpo_kit.planning.config import PlanSettings
    from cogpo_kit.planning.plan import RunData, training_runs

    with tempfile.TemporaryDirectory() as tmp:
        params = load_params([], spec.overrides(tmp))
        data = RunData(examples=spec.rows, examples_source="synthetic rows")  # memory does not depend on the rows
        settings = PlanSettings(device=spec.device, runtime_reserve_gb=0.0)  # the allocator's bytes: no runtime
        runs = training_runs(params, settings, stages=(spec.stage,), data=data)
    run = next(r for r in runs if spec.stage == "sft" or r.name == spec.method)
    return {"estimated_mb": run.memory.total / 2**20,
            "terms_mb": {k: round(v / 2**20, 1) for k, v in run.memory.terms.items()}}


def measure(spec: MeasureSpec, *, timeout: Optional[float] = 900) -> dict:
    """Run :func:`child` in a fresh interpreter; its measurement with the planner's estimate and their ratio."""
    cmd = [sys.executable, "-m", "cogpo_kit.planning.measure", "--json", json.dumps(asdict(spec))]
    env = dict(os.environ, COGPO_NO_PROGRESS="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(spec.threads), MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    got = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    got.update(estimate(spec))
    got["ratio"] = got["estimated_mb"] / got["measured_mb"] if got["measured_mb"] > 0 else float("inf")
    return got


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="a MeasureSpec as JSON (what measure() passes)")
    p.add_argument("--stage", choices=["sft", "preference"], default="sft")
    p.add_argument("--method", default="cogpo")
    p.add_argument("--model", default=MeasureSpec.model)
    p.add_argument("--max-length", type=int, default=MeasureSpec.max_length)
    p.add_argument("--batch", type=int, default=MeasureSpec.batch)
    p.add_argument("--steps", type=int, default=MeasureSpec.steps)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--reference", choices=["precomputed", "model"], default="precomputed")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="gpu: bf16 on a CUDA device, measured by the CUDA allocator's peak")
    opts = p.parse_args(argv)
    if opts.json:
        spec = MeasureSpec(**json.loads(opts.json))
        print(json.dumps(child(spec)))
        return 0
    spec = replace(MeasureSpec(), stage=opts.stage, method=opts.method, model=opts.model, max_length=opts.max_length,
                   batch=opts.batch, steps=opts.steps, lora=opts.lora, reference=opts.reference,
                   gradient_checkpointing=opts.gradient_checkpointing, device=opts.device)
    print(json.dumps(measure(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
