"""The run's plan in a notebook: will each training run fit, and how long will it take (``cogpo-kit plan``'s tables).

    from cogpo_kit.viz import plan_view
    plan_view.plan(params, "sft")          # in 04_sft; "preference" in 05_preference

Writes ``plan.json`` and ``plan.md`` into the run folder (as ``cogpo-kit plan`` does), shows its warnings and
returns one row per training run of the stage as a DataFrame. A plan that cannot be made (a model whose shape is
nowhere on this machine) is shown as such, with an empty table: it never stops the stage that follows. The device is the GPU when the stage trains in
bfloat16 (the GPU params files), else the CPU (the demo); pass ``device=`` or any other
:class:`~cogpo_kit.planning.config.PlanSettings` field to change it.
"""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from cogpo_kit.planning.config import PlanSettings
from cogpo_kit.planning.memory import TERMS
from cogpo_kit.planning.plan import STAGE_KEYS, Plan, make_plan
from cogpo_kit.planning.timing import hours


def plan_frame(plan: Optional[Plan], stage: Optional[str] = None) -> pd.DataFrame:
    """One row per training run (of ``stage``, or all): layout, memory terms and total in GB, fits, rows, time
    (no rows without a plan)."""
    rows = []
    for r in plan.runs if plan is not None else ():
        if stage is not None and r.stage != stage:
            continue
        row: dict[str, Any] = {"stage": r.stage, "run": r.name, "GPUs and layout": r.setup.parallel.description}
        row.update({f"{t} (GB)": round(r.memory.terms[t] / 1e9, 2) for t in TERMS})
        row.update({"total (GB)": round(r.memory.total / 1e9, 2), "limit (GB)": round(plan.memory_limit / 1e9, 1),
                    "fits": bool(r.fits), "rows": round(r.rows), "tokens / row": round(r.lengths.mean),
                    "steps": r.plan.steps, "time": hours(r.seconds)})
        rows.append(row)
    columns = ["stage", "run", "GPUs and layout", *(f"{t} (GB)" for t in TERMS), "total (GB)", "limit (GB)", "fits",
               "rows", "tokens / row", "steps", "time"]
    return pd.DataFrame(rows, columns=columns)


def plan(params, stage: Optional[str] = None, *, write: bool = True, **settings: Any) -> pd.DataFrame:
    """Make the run's plan, write it to the run folder, show its warnings; the table of ``stage``'s runs."""
    if stage is not None and stage not in STAGE_KEYS:
        raise ValueError(f"stage must be one of {', '.join(STAGE_KEYS)} or None, got {stage!r}")
    if "device" not in settings:
        sections = [getattr(params, s) for s in ((stage,) if stage else STAGE_KEYS)]
        settings["device"] = "gpu" if any(sec.optim.bf16 for sec in sections) else "cpu"
    written = None
    try:
        the_plan = make_plan(params, PlanSettings(**settings))
        if write:
            from cogpo_kit.planning.report import write_plan

            written = write_plan(the_plan, command=f"cogpo_kit.viz.plan_view.plan(params, {stage!r})")[1]
    except Exception as exc:  # a plan is advice: it must never stop the stage the notebook runs next
        _show(f"**No plan:** {exc}")
        return plan_frame(None, stage)
    _show_warnings(the_plan, stage, written)
    return plan_frame(the_plan, stage)


def _show(text: str) -> None:
    try:
        from IPython.display import Markdown, display
    except ImportError:  # outside IPython: nothing to show
        return
    display(Markdown(text))


def _show_warnings(the_plan: Plan, stage: Optional[str], written) -> None:
    keys = (f"{stage}/",) if stage else tuple(f"{s}/" for s in STAGE_KEYS)
    warnings = [w for w in the_plan.warnings if w.startswith(keys)]
    s = the_plan.settings
    where = (f"{s.gpu_spec.name}, {the_plan.memory_limit / 1e9:.0f} GB per GPU, {s.mfu:.0%} MFU assumed"
             if s.device == "gpu" else f"CPU, {the_plan.memory_limit / 1e9:.0f} GB of memory")
    lines = [f"**Plan** ({where}): " + ("every run fits." if not warnings else f"{len(warnings)} warning(s):")]
    lines += [f"- {w}" for w in warnings]
    if written is not None:
        lines.append(f"\nThe whole plan (CRV agents, evaluation, assumptions): `{written}`")
    _show("\n".join(lines))
