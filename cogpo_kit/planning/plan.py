"""A run's plan: per training run (SFT variant, preference method) the per-GPU memory, tokens, FLOPs and time;
the CRV stages' agent calls; the evaluate stage's generation; warnings where a stage will not fit.

    from cogpo_kit.params import load_params
    from cogpo_kit.planning import PlanSettings, make_plan
    plan = make_plan(load_params(["params/paper-qwen2.5-7b.yaml"]), PlanSettings(gpu="a800-80gb"))
    plan.warnings, plan.to_dict()

What each number is made of: :mod:`~cogpo_kit.planning.memory`, :mod:`~cogpo_kit.planning.timing`,
:mod:`~cogpo_kit.planning.tokens`, :mod:`~cogpo_kit.planning.crv_calls`, :mod:`~cogpo_kit.planning.eval_tokens`.
Nothing here loads a model or calls an engine: shapes come from ``config.json`` files
(:mod:`~cogpo_kit.planning.shapes`), lengths from the run's files where they exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from cogpo_kit.io import iter_jsonl
from cogpo_kit.pipeline.stage import run_dir
from cogpo_kit.pipeline.stages import artifact_path
from cogpo_kit.planning.config import PlanError, PlanSettings
from cogpo_kit.planning.crv_calls import CRVOutlook, Funnel, crv_outlook, make_funnel
from cogpo_kit.planning.eval_tokens import EvalOutlook, eval_outlook
from cogpo_kit.planning.memory import LogprobPath, MemoryEstimate, TrainingSetup, estimate_memory
from cogpo_kit.planning.parallel import Parallelism, read_parallelism
from cogpo_kit.planning.shapes import ModelShape, model_shape
from cogpo_kit.planning.timing import (Schedule, forward_flops_per_token, schedule, seconds,
                                       train_flops_per_token)
from cogpo_kit.planning.tokens import (Lengths, TokenCounter, data_rows, pair_lengths, row_lengths, sft_text)

STAGE_KEYS = ("sft", "preference")
"""The training stages a plan covers (their parameter sections)."""


@dataclass
class RunData:
    """What the run's folder (and local data) already says about rows and lengths."""

    examples: Optional[int]
    """CoTs stage 01 reads (``None``: unknown)."""
    examples_source: str
    inputs: Optional[list[dict]] = None
    """The original CoTs (``01_critique/input.jsonl``, or the local data set loaded as stage 01 would)."""
    levels: Optional[list] = None
    """The Critic's labels (``01_critique/critiques.jsonl``)."""
    sft: Optional[list[dict]] = None
    """D_SFT* (``02_rethink/sft.jsonl``)."""
    level_rows: dict = field(default_factory=dict)
    """``sft_<level>.jsonl`` rows by level."""
    pairs: Optional[list[dict]] = None
    """``03_pairs/pairs.jsonl``."""


def _where(run: Path, name: str, **fields) -> str:
    """An artifact's path relative to the run folder, for the plan's "source" column."""
    return artifact_path(run, name, **fields).relative_to(run).as_posix()


def _rows(path: Path) -> Optional[list[dict]]:
    return [row for _, row in iter_jsonl(path)] if path.is_file() else None


def read_run_data(params, *, load_data: bool = True) -> RunData:
    """The rows the run's stages have written, and the local data set when stage 01 has not read it yet."""
    run = run_dir(params)
    inputs = _rows(artifact_path(run, "input"))
    critiques = _rows(artifact_path(run, "critiques"))
    data = RunData(examples=None, examples_source="")
    if inputs is not None:
        data.inputs, data.examples = inputs, len(inputs)
        data.examples_source = _where(run, "input")
    else:
        n, source = data_rows(params.data)
        data.examples, data.examples_source = n, source
        if load_data and _local_data(params.data):
            try:
                from cogpo_kit.data.loaders import load_cot

                records, _ = load_cot(params.data)
                data.inputs = [{"id": r.id, "problem": r.problem, "answer": r.answer, "reasoning": r.reasoning}
                               for r in records]
                data.examples, data.examples_source = len(records), f"{source} (read as stage 01 would)"
            except Exception as exc:  # unreadable here: keep the count only, say why
                data.examples_source = f"{source} (not read: {exc})"
    if critiques is not None:
        data.levels = [c.get("level") for c in critiques]
    data.sft = _rows(artifact_path(run, "sft"))
    for level in ("easy", "medium", "hard"):
        rows = _rows(artifact_path(run, "sft_level", level=level))
        if rows is not None:
            data.level_rows[level] = rows
    data.pairs = _rows(artifact_path(run, "pairs"))
    return data


def _local_data(data) -> bool:
    from cogpo_kit.data.loaders import LOADERS

    spec = LOADERS.get(data.source)
    return bool(data.path) or (spec is not None and spec.hub is None)


@dataclass
class TrainingRun:
    """One SFT variant or preference method: memory per GPU, tokens, FLOPs and time."""

    stage: str
    """``sft`` or ``preference``."""
    name: str
    """Variant or method."""
    setup: TrainingSetup
    memory: MemoryEstimate
    rows: float
    """Rows (pairs) per epoch."""
    rows_source: str
    lengths: Lengths
    """Tokens per row (per pair: both sides) and the sequence length of the average token."""
    plan: Schedule
    flops: float
    """Training FLOPs (policy forward and backward)."""
    ref_flops: float
    """Reference forward FLOPs this run pays (per step, or the precompute pass it runs)."""
    seconds: Optional[float]
    reference: str
    """How the reference log-probs are had."""
    logprobs: str
    """How the log-probs are computed."""
    fits: Optional[bool] = None

    def to_dict(self) -> dict:
        p = self.setup.parallel
        return {"stage": self.stage, "name": self.name, "parallel": p.description, "processes": p.processes,
                "machines": p.machines, "zero_stage": p.zero_stage, "lora": bool(self.setup.lora_params),
                "bf16": self.setup.half, "gradient_checkpointing": self.setup.gradient_checkpointing,
                "micro_batch_tokens": self.setup.tokens, "memory": self.memory.to_dict(), "fits": self.fits,
                "reference": self.reference, "logprobs": self.logprobs, "rows": round(self.rows, 1),
                "rows_source": self.rows_source, "tokens_per_row": round(self.lengths.mean, 1),
                "tokens_source": self.lengths.source, "steps": self.plan.steps, "global_batch": self.plan.global_batch,
                "epochs": self.plan.epochs, "train_tokens": round(self.plan.tokens),
                "flops": self.flops, "ref_flops": self.ref_flops,
                "hours": None if self.seconds is None else round(self.seconds / 3600, 3)}


def preference_methods(pref) -> list[tuple[str, str]]:
    """``[(name, family)]`` as :func:`cogpo_kit.training.preference.method_specs` lists them (``family``:
    ``cogpo`` for the CogPO trainer, ``simpo`` for TRL's CPO trainer), the beta sweep's ``cogpo_x<f>`` last."""
    out = [(m, "simpo" if m == "simpo" else "cogpo") for m in pref.methods]
    return out + [(f"cogpo_x{f:g}", "cogpo") for f in pref.beta_sweep]


def _cogpo_logprob_path(pref, settings: PlanSettings) -> tuple[str, str]:
    """The memory model's log-prob path of a CogPO-family trainer and its label (``preference.logprob_head``,
    ``auto`` resolved as the trainer does: TRL's head on a GPU, the chunked head on the CPU)."""
    chosen = pref.logprob_head
    if chosen == "auto":
        chosen = "trl" if settings.device == "gpu" else "chunked"
    if chosen == "trl":
        return "trl_fused", "TRL fused LM head (4096 x 32768 tiles)"
    if chosen == "full":
        return "full_logits", "full logits"
    return "chunked", f"chunked LM head ({pref.logprob_token_chunk} x {pref.logprob_vocab_chunk} tiles)"


def _sft_rows(variant: str, data: RunData, funnel: Optional[Funnel], params
              ) -> tuple[float, str, Optional[list], bool]:
    """``(rows, source, texts, real)`` of an SFT variant: ``texts`` are the rows to measure (``real``: the variant's
    own rows; else the original CoTs stand for them)."""
    if variant == "sft":
        return float(data.examples or 0), f"every original CoT ({data.examples_source})", data.inputs, True
    if variant in ("crv_sft", "sft_same_problems"):
        if data.sft is not None:
            if variant == "crv_sft":
                return float(len(data.sft)), f"{_where(run_dir(params), 'sft')} (D_SFT*)", data.sft, True
            ids = {r.get("id") for r in data.sft}
            texts = [r for r in data.inputs or [] if r.get("id") in ids]
            return float(len(data.sft)), "the D_SFT* problems' original CoTs", texts, True
        expected = funnel.sft_rows() if funnel is not None else 0.0
        share = expected / funnel.examples if funnel is not None and funnel.examples else 0.0
        return expected, f"expected D_SFT*: {share:.0%} of the CoTs under the CRV assumptions", data.inputs, False
    level = variant.split("_", 1)[1]
    if level in data.level_rows:
        return (float(len(data.level_rows[level])), _where(run_dir(params), "sft_level", level=level),
                data.level_rows[level], True)
    size = params.crv.equal_level_subsets
    return (float(size or 0), "crv.equal_level_subsets" if size else "no level subset (crv.equal_level_subsets unset)",
            data.inputs, False)


def _lengths_of_rows(texts: Optional[list], real: bool, what: str, counter: TokenCounter, max_length: int,
                     settings: PlanSettings) -> Lengths:
    if texts:
        proxy = "" if real else " (the original CoTs' lengths stand for these rows)"
        return row_lengths(texts, sft_text, counter, max_length, what + proxy)
    if settings.tokens_per_row:
        return Lengths.bound(min(max_length, settings.tokens_per_row), "assumed (tokens_per_row)")
    return Lengths.bound(max_length, f"max_length {max_length} (an upper bound: no texts on this machine yet)")


def _setup(shape: ModelShape, section, parallel: Parallelism, settings: PlanSettings, *, max_length: int,
           sequences: int, path: LogprobPath, reference: str) -> TrainingSetup:
    optim, lora = section.optim, section.lora
    return TrainingSetup(shape=shape, batch=optim.per_device_batch_size, max_length=max_length,
                         sequences_per_row=sequences, bf16=optim.bf16, gradient_checkpointing=optim.gradient_checkpointing,
                         accumulation=optim.gradient_accumulation_steps,
                         lora_params=shape.lora_params(lora.r, lora.target_modules) if lora.enabled else 0,
                         logprob_path=path, reference=reference, parallel=parallel, device=settings.device,
                         runtime_reserve_bytes=settings.runtime_reserve_gb * 1e9,
                         token_chunk=getattr(section, "logprob_token_chunk", 1024),
                         vocab_chunk=getattr(section, "logprob_vocab_chunk", 8192))


def _timed(stage: str, name: str, setup: TrainingSetup, rows: float, rows_source: str, lengths: Lengths, optim,
           settings: PlanSettings, *, ref_tokens: float = 0.0, reference: str, logprobs: str) -> TrainingRun:
    sh = setup.shape
    sched = schedule(rows, lengths.mean, optim, setup.parallel.processes)
    flops = sched.tokens * train_flops_per_token(sh, lengths.square_mean, lora=bool(setup.lora_params))
    ref_flops = ref_tokens * forward_flops_per_token(sh, lengths.square_mean)
    secs = None if settings.device != "gpu" else seconds(flops + ref_flops, setup.parallel.processes,
                                                          settings.peak_flops, settings.mfu)
    return TrainingRun(stage=stage, name=name, setup=setup, memory=estimate_memory(setup), rows=rows,
                       rows_source=rows_source, lengths=lengths, plan=sched, flops=flops, ref_flops=ref_flops,
                       seconds=secs, reference=reference, logprobs=logprobs)


def training_runs(params, settings: PlanSettings, *, stages: Sequence[str] = STAGE_KEYS,
                  data: Optional[RunData] = None, shape: Optional[ModelShape] = None,
                  funnel: Optional[Funnel] = None) -> list[TrainingRun]:
    """Every training run of the selected stages with its memory, tokens and time."""
    shape = shape or model_shape(params.student.model)[0]
    data = data or read_run_data(params)
    if funnel is None and data.examples:
        funnel = make_funnel(params.crv, data.examples, settings, data.levels)
    counter = TokenCounter(params.student.model)
    runs: list[TrainingRun] = []
    if "sft" in stages:
        sft = params.sft
        parallel = read_parallelism(sft.launch, "sft.launch")
        setup = _setup(shape, sft, parallel, settings, max_length=sft.optim.max_length, sequences=1, path="trl_fused",
                       reference="none")
        for variant in sft.variants:
            rows, source, texts, real = _sft_rows(variant, data, funnel, params)
            lengths = _lengths_of_rows(texts, real, f"{variant} rows", counter, sft.optim.max_length, settings)
            runs.append(_timed("sft", variant, setup, rows, source, lengths, sft.optim, settings,
                               reference="none", logprobs="TRL fused LM head (4096 x 32768 tiles)"))
    if "preference" in stages:
        pref = params.preference
        parallel = read_parallelism(pref.launch, "preference.launch")
        max_length = min(pref.optim.max_length, params.pairs.max_length)
        if data.pairs is not None:
            rows, source = float(len(data.pairs)), _where(run_dir(params), "pairs")
            lengths = pair_lengths(data.pairs, max_length, counter, "the pairs")
        else:
            rows = funnel.pairs(params.pairs.gaps) if funnel is not None else 0.0
            per = rows / funnel.examples if funnel is not None and funnel.examples else 0.0
            source = f"expected pairs: {per:.2f} per CoT under the CRV assumptions"
            side = _lengths_of_rows(data.inputs, False, "each side", counter, max_length, settings)
            lengths = Lengths(2 * side.mean, side.square_mean, f"{side.source}; two sides a pair")
        shared_pass_done = False
        for name, family in preference_methods(pref):
            if family == "simpo":
                path, ref, ref_tokens, how = "full_logits", "none", 0.0, "none (SimPO is reference-free)"
                logprobs = "full logits (TRL CPO trainer)"
            else:
                path, logprobs = _cogpo_logprob_path(pref, settings)
                if pref.share_ref_log_probs:
                    ref, ref_tokens = "none", 0.0 if shared_pass_done else rows * lengths.mean
                    how = "shared precomputed pass" + ("" if shared_pass_done else " (computed in this run)")
                    shared_pass_done = True
                elif pref.precompute_ref_log_probs:
                    ref, ref_tokens, how = "none", rows * lengths.mean, "precomputed once before training"
                else:
                    ref = "none" if pref.lora.enabled else "model"
                    how = ("adapter-free model, each step" if pref.lora.enabled else "a second model copy, each step")
                    ref_tokens = -1.0  # per step: set below from the schedule
            setup = _setup(shape, pref, parallel, settings, max_length=max_length, sequences=2, path=path, reference=ref)
            run = _timed("preference", name, setup, rows, source, lengths, pref.optim, settings,
                         ref_tokens=max(ref_tokens, 0.0), reference=how, logprobs=logprobs)
            if ref_tokens < 0:  # a reference forward on every token trained
                run = _timed("preference", name, setup, rows, source, lengths, pref.optim, settings,
                             ref_tokens=run.plan.tokens, reference=how, logprobs=logprobs)
            runs.append(run)
    return runs


@dataclass
class Plan:
    """Everything ``cogpo-kit plan`` shows and writes."""

    run_id: str
    run_path: str
    params_files: list[str]
    overrides: list[str]
    settings: PlanSettings
    model: dict
    runs: list[TrainingRun]
    crv: Optional[CRVOutlook]
    eval: Optional[EvalOutlook]
    examples: Optional[int]
    examples_source: str
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def memory_limit(self) -> float:
        """Bytes per device a run must stay under."""
        return _memory_limit(self.settings)

    def stage_hours(self, stage: str) -> Optional[float]:
        secs = [r.seconds for r in self.runs if r.stage == stage]
        return None if not secs or any(s is None for s in secs) else sum(secs) / 3600

    def to_dict(self) -> dict:
        from dataclasses import asdict

        s = self.settings
        return {"run_id": self.run_id, "run_path": self.run_path, "params_files": self.params_files,
                "overrides": self.overrides,
                "settings": {**asdict(s), "gpu_name": s.gpu_spec.name, "memory_limit_gb": round(self.memory_limit / 1e9, 2),
                             "peak_tflops_used": s.peak_flops / 1e12},
                "model": self.model, "examples": self.examples, "examples_source": self.examples_source,
                "training": [r.to_dict() for r in self.runs],
                "stage_hours": {k: self.stage_hours(k) for k in STAGE_KEYS},
                "crv": self.crv.to_dict() if self.crv else None, "eval": self.eval.to_dict() if self.eval else None,
                "warnings": self.warnings, "notes": self.notes}


def _memory_limit(settings: PlanSettings) -> float:
    if settings.device == "cpu" and settings.gpu_memory_gb is None:
        try:
            return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return settings.memory_bytes
    return settings.memory_bytes


def _advice(run: TrainingRun) -> str:
    terms = run.memory.terms
    top = max(terms, key=terms.get)
    p = run.setup.parallel
    tips = {
        "weights": "shard the weights (ZeRO-3 with more GPUs) or train LoRA adapters",
        "gradients": "shard gradients (ZeRO-2/3) or train LoRA adapters",
        "optimizer states": "shard or offload the optimizer (ZeRO-1/2/3, offload_optimizer) or train LoRA adapters",
        "reference model": "precompute the reference log-probs (preference.precompute_ref_log_probs / share_ref_log_probs)",
        "activations": ("turn on optim.gradient_checkpointing" if not run.setup.gradient_checkpointing
                        else "lower per_device_batch_size or max_length"),
        "logits path": "lower per_device_batch_size or max_length (this trainer holds the full logits)",
        "DeepSpeed buffers": "lower the DeepSpeed bucket sizes or turn off overlap_comm",
        "runtime reserve": "nothing to change here: the runtime's own share",
    }
    where = f" (now {p.description})"
    return f"the largest term is {top} ({terms[top] / 1e9:.1f} GB): {tips.get(top, '')}{where}"


def make_plan(params, settings: PlanSettings = PlanSettings(), *, params_files: Sequence[str] = (),
              overrides: Sequence[str] = (), load_data: bool = True) -> Plan:
    """The plan of a run (every training run, the CRV agents, the evaluation), with warnings."""
    try:
        shape, shape_source = model_shape(params.student.model)
    except FileNotFoundError as exc:
        raise PlanError(f"student.model: {exc}") from None
    data = read_run_data(params, load_data=load_data)
    funnel = make_funnel(params.crv, data.examples, settings, data.levels) if data.examples else None
    runs = training_runs(params, settings, data=data, shape=shape, funnel=funnel)
    warnings: list[str] = []
    notes: list[str] = []
    limit = _memory_limit(settings)
    device = "GPU" if settings.device == "gpu" else "process (CPU)"
    seen_notes: set[str] = set()
    for r in runs:
        r.fits = r.memory.total <= limit
        if not r.fits:
            warnings.append(f"{r.stage}/{r.name} will not fit: {r.memory.total / 1e9:.1f} GB per {device}, more than "
                            f"{limit / 1e9:.0f} GB; {_advice(r)}")
        elif r.memory.total > 0.9 * limit:
            warnings.append(f"{r.stage}/{r.name} is tight: {r.memory.total / 1e9:.1f} GB of {limit / 1e9:.0f} GB per "
                            f"{device} (allocator fragmentation can take the rest)")
        for n in (*r.setup.parallel.notes, *r.memory.notes):
            if n not in seen_notes:
                seen_notes.add(n)
                notes.append(n)
        if r.rows == 0:
            warnings.append(f"{r.stage}/{r.name}: no rows to train on ({r.rows_source})")
    crv = None
    if data.examples:
        cot = _cot_tokens(data, params.student.model)
        crv = crv_outlook(params, settings, data.examples, levels=data.levels, cot_tokens=cot[0], cot_source=cot[1],
                          prompt_overhead=_prompt_overhead(params.student.model))
        notes.extend(crv.notes)
    else:
        notes.append(f"CRV: the number of CoTs is unknown ({data.examples_source}); set data.limit or data.path")
    try:
        ev = eval_outlook(params)
        notes.extend(ev.notes)
    except ValueError as exc:
        ev = None
        warnings.append(f"eval: {exc}")
    if shape_source.startswith("shape from the built-in table"):
        notes.append(f"model: {shape_source} (no config.json of {params.student.model} on this machine)")
    if settings.device == "gpu":
        notes.append(f"time: model FLOPs at {settings.mfu:.0%} MFU of {settings.peak_flops / 1e12:.0f} TFLOP/s "
                     f"(BF16 dense, {settings.gpu_spec.name}) per GPU; an assumption, not a measurement")
    model = {"spec": params.student.model, "source": shape_source, **shape.to_dict()}
    return Plan(run_id=params.run.run_id, run_path=str(run_dir(params)), params_files=[str(p) for p in params_files],
                overrides=list(overrides), settings=settings, model=model, runs=runs, crv=crv, eval=ev,
                examples=data.examples, examples_source=data.examples_source, warnings=warnings, notes=notes)


def _cot_tokens(data: RunData, spec: str) -> tuple[Optional[float], str]:
    if not data.inputs:
        return None, "no CoT texts on this machine"
    from cogpo_kit.planning.tokens import sample

    counter = TokenCounter(spec)
    picked = sample(data.inputs)
    counts = counter.count([f"{r.get('problem', '')}\n{r.get('answer', '')}\n{r.get('reasoning', '')}" for r in picked])
    return sum(counts) / len(counts), f"mean of {len(picked)} CoTs, {counter.how}"


def _prompt_overhead(spec: str) -> dict[str, float]:
    """Tokens of each role's prompt around an empty CoT (system prompt and user template)."""
    from cogpo_kit.crv.prompts import build_messages

    counter = TokenCounter(spec)
    out = {}
    for role in ("critic", "expand", "simplify", "verifier", "corrupt", "student"):
        try:
            msgs = build_messages(role, problem="", answer="", reasoning="")
        except (KeyError, ValueError):
            continue
        out[role] = float(counter.count(["\n".join(m.get("content", "") for m in msgs)])[0] + 12)
    return out
