"""The plan as tables (Markdown, aligned so the terminal reads it too), ``plan.json`` and ``plan.md``, and the
``cogpo-kit plan`` command.

    cogpo-kit plan params/paper-qwen2.5-7b.yaml --gpu a800-80gb \\
        -o sft.launch.config=params/launch/zero3.yaml -o sft.launch.num_processes=8
    cogpo-kit plan params/demo.yaml --device cpu --no-write

Writes ``<output_dir>/<run_id>/plan.json`` and ``plan.md`` (``--no-write``: neither) and prints the tables;
``--strict`` exits with status 3 when a training run will not fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from cogpo_kit.io import atomic_write_json, atomic_write_text
from cogpo_kit.planning.config import PlanSettings, settings_from_args
from cogpo_kit.planning.memory import TERMS
from cogpo_kit.planning.plan import STAGE_KEYS, Plan, make_plan
from cogpo_kit.planning.timing import hours

PLAN_JSON, PLAN_MD = "plan.json", "plan.md"
"""The files a plan writes in the run folder."""

SHORT_TERMS = {"weights": "weights", "gradients": "grads", "optimizer states": "optimizer", "reference model": "ref model",
               "activations": "activations", "logits path": "logits", "DeepSpeed buffers": "DS buffers",
               "runtime reserve": "reserve"}
"""Column names of the memory table."""


def md_table(headers: Sequence[str], rows: Sequence[Sequence], align_right: Sequence[bool] = ()) -> list[str]:
    """A Markdown table with padded columns (readable as plain text too)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = list(align_right) + [False] * (len(headers) - len(align_right))

    def line(row):
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if r else "-" * w for w, r in zip(widths, right)) + " |"
    return [line(cells[0]), sep] + [line(r) for r in cells[1:]]


def count(n: Optional[float]) -> str:
    """``1.2 B``, ``34.5 M``, ``12.3 k``, ``950``; ``n/a`` for ``None``."""
    if n is None:
        return "n/a"
    for div, unit in ((1e12, " T"), (1e9, " B"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def pflop(flops: float) -> str:
    """FLOPs in PFLOP: ``32,358``, ``0.004``."""
    p = flops / 1e15
    return f"{p:,.0f}" if p >= 10 else f"{p:.2g}"


def gb(n: float) -> str:
    return f"{n / 1e9:.1f}" if n >= 5e7 or n == 0 else f"{n / 1e9:.2f}"


def memory_table(plan: Plan, stages: Sequence[str] = STAGE_KEYS) -> list[str]:
    headers = ["stage", "run", "GPUs and layout"] + [SHORT_TERMS[t] for t in TERMS] + ["total", "fits"]
    rows = []
    for r in plan.runs:
        if r.stage not in stages:
            continue
        fits = "yes" if r.fits else "**NO**"
        rows.append([r.stage, r.name, r.setup.parallel.description] + [gb(r.memory.terms[t]) for t in TERMS]
                    + [gb(r.memory.total), fits])
    return md_table(headers, rows, [False, False, False] + [True] * (len(TERMS) + 1) + [False])


def time_table(plan: Plan, stages: Sequence[str] = STAGE_KEYS) -> list[str]:
    headers = ["stage", "run", "rows", "tokens / row (pair)", "epochs", "steps (global batch)", "tokens", "PFLOP",
               "time"]
    rows = []
    for r in plan.runs:
        if r.stage not in stages:
            continue
        rows.append([r.stage, r.name, count(r.rows), count(r.lengths.mean),
                     "max_steps" if r.plan.by_steps else f"{r.plan.epochs:g}",
                     f"{r.plan.steps} ({r.plan.global_batch})", count(r.plan.tokens),
                     pflop(r.flops + r.ref_flops), hours(r.seconds)])
    for stage in stages:
        h = plan.stage_hours(stage)
        if any(r.stage == stage for r in plan.runs):
            runs = [r for r in plan.runs if r.stage == stage]
            rows.append([stage, "**all runs**", "", "", "", "", count(sum(r.plan.tokens for r in runs)),
                         pflop(sum(r.flops + r.ref_flops for r in runs)), hours(None if h is None else h * 3600)])
    return md_table(headers, rows, [False, False, True, True, True, True, True, True, True])


def sources_list(plan: Plan, stages: Sequence[str] = STAGE_KEYS) -> list[str]:
    out, seen = [], set()
    for r in plan.runs:
        if r.stage not in stages:
            continue
        for what, text in (("rows", r.rows_source), ("tokens", r.lengths.source)):
            line = f"- {r.stage}/{r.name} {what}: {text}"
            if (r.stage, what, text) not in seen:
                seen.add((r.stage, what, text))
                out.append(line)
        out.append(f"- {r.stage}/{r.name}: log-probs by {r.logprobs}; reference: {r.reference}")
    return out


def crv_lines(plan: Plan) -> list[str]:
    c = plan.crv
    if c is None:
        return ["Unknown: the number of CoTs is not known (set `data.limit` or `data.path`)."]
    f = c.funnel
    rows = [[a.agent, a.stage, a.model, count(a.samples), count(a.samples_max), count(a.prompt_tokens),
             count(a.completion_budget)] for a in c.loads]
    total = [sum(a.samples for a in c.loads), sum(a.samples_max for a in c.loads)]
    prompt = None if any(a.prompt_tokens is None for a in c.loads) else sum(a.prompt_tokens for a in c.loads)
    rows.append(["**all agents**", "", "", count(total[0]), count(total[1]), count(prompt),
                 count(sum(a.completion_budget for a in c.loads))])
    lines = md_table(["agent", "stage", "model", "samples (expected)", "at most", "prompt tokens", "completion budget"],
                     rows, [False, False, False, True, True, True, True])
    lines += ["", f"{f.examples:,} CoTs; level shares {'/'.join(f'{s:.2f}' for s in f.shares)} (easy/medium/hard, "
                  f"{f.source}); expected D_SFT* {f.sft_rows():,.0f} rows, a rewrite kept for "
                  f"{f.keep_rewrite:.0%} of easy/hard CoTs. Prompt tokens: the agents' prompts around CoTs of "
                  f"{count(c.cot_tokens)} tokens ({c.cot_source}). Completion budget: samples x `max_tokens` (an upper "
                  "bound; a reasoning agent may use all of its thinking budget)."]
    return lines


def eval_lines(plan: Plan) -> list[str]:
    e = plan.eval
    if e is None:
        return ["Unknown (see the warnings)."]
    rows = [[b, count(n)] for b, n in e.problems.items()]
    lines = md_table(["benchmark", "problems"], rows, [False, True])
    plural = "s" if len(e.models) > 1 else ""
    lines += ["", f"{len(e.models)} model{plural} ({', '.join(e.models)}) x {e.samples_per_problem} sample(s) per "
                  f"problem = {e.samples:,} samples; at most {count(e.token_budget)} generated tokens "
                  f"(`max_tokens` {e.max_tokens:,} each)."]
    return lines


def plan_markdown(plan: Plan, *, command: Optional[str] = None, stages: Sequence[str] = STAGE_KEYS,
                  heading: str = "#") -> str:
    """The whole plan as Markdown."""
    s = plan.settings
    m = plan.model
    limit = plan.memory_limit
    where = (f"{s.gpu_spec.name}: {limit / 1e9:.0f} GB and {s.peak_flops / 1e12:.0f} TFLOP/s BF16 per GPU, "
             f"{s.mfu:.0%} MFU assumed" if s.device == "gpu" else
             f"CPU (float32): {limit / 1e9:.0f} GB of memory per process, no time estimate")
    lines = [f"{heading} Plan: {plan.run_id}", ""]
    if command:
        lines += [f"Command: `{command}`  "]
    lines += [f"Hardware: {where}.  ",
              f"Student: `{m['spec']}` — {m['params'] / 1e9:.2f} B parameters, {m['layers']} layers, hidden "
              f"{m['hidden']}, {m['heads']} heads ({m['kv_heads']} KV), intermediate {m['intermediate']}, vocabulary "
              f"{m['vocab']:,}{', tied embeddings' if m['tied'] else ''} ({m['source']}).  ",
              f"Data: {count(plan.examples)} CoTs ({plan.examples_source}).", ""]
    if plan.warnings:
        lines += [f"{heading}# Warnings", ""] + [f"- **{w}**" for w in plan.warnings] + [""]
    per = "GPU" if s.device == "gpu" else "process"
    lines += [f"{heading}# Memory per {per} (GB)", "",
              "Per process at the peak of a training step (the LM head's backward on one micro-batch at `max_length`); "
              "the total counts the gradients only where they are alive then (gradient accumulation above 1), else "
              "the larger of them and activations + logits; terms in `cogpo_kit/planning/memory.py`.", ""]
    lines += memory_table(plan, stages) + [""]
    lines += [f"{heading}# Tokens and time", ""] + time_table(plan, stages) + [""] + sources_list(plan, stages) + [""]
    if set(stages) == set(STAGE_KEYS):
        lines += [f"{heading}# CRV agents (stages 01-02)", ""] + crv_lines(plan) + [""]
        lines += [f"{heading}# Evaluation (stage 06)", ""] + eval_lines(plan) + [""]
    if plan.notes:
        lines += [f"{heading}# Notes and assumptions", ""] + [f"- {n}" for n in plan.notes] + [""]
    return "\n".join(lines)


def write_plan(plan: Plan, *, command: Optional[str] = None, folder: Optional[str] = None) -> tuple[Path, Path]:
    """Write ``plan.json`` and ``plan.md`` into the run folder (or ``folder``); returns their paths."""
    out = Path(folder or plan.run_path)
    out.mkdir(parents=True, exist_ok=True)
    data = plan.to_dict()
    data["command"] = command
    return (atomic_write_json(out / PLAN_JSON, data),
            atomic_write_text(out / PLAN_MD, plan_markdown(plan, command=command) + "\n"))


def main(args) -> int:
    """``cogpo-kit plan``: print the plan, write it to the run folder; status 3 with ``--strict`` when a run will
    not fit."""
    import shlex

    from cogpo_kit.params import load_params

    params = load_params(args.params, args.overrides)
    settings = settings_from_args(args)
    plan = make_plan(params, settings, params_files=args.params, overrides=args.overrides)
    command = " ".join(["cogpo-kit plan", *map(shlex.quote, args.params),
                        *[f"-o {shlex.quote(o)}" for o in args.overrides],
                        *_option_words(args)])
    print(plan_markdown(plan, command=command))
    if not args.no_write:
        json_path, md_path = write_plan(plan, command=command)
        print(f"wrote {json_path} and {md_path}")
    if args.strict and any(r.fits is False for r in plan.runs):
        return 3
    return 0


def _option_words(args) -> list[str]:
    words = []
    defaults = PlanSettings()
    if args.gpu != defaults.gpu:
        words += ["--gpu", args.gpu]
    for flag, value in (("--gpu-memory-gb", args.gpu_memory_gb), ("--peak-tflops", args.peak_tflops),
                        ("--tokens-per-row", args.tokens_per_row)):
        if value is not None:
            words += [flag, f"{value:g}"]
    if args.mfu != defaults.mfu:
        words += ["--mfu", f"{args.mfu:g}"]
    if args.device != defaults.device:
        words += ["--device", args.device]
    return words
