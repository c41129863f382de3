"""Before a run: will each training stage fit on the GPUs, how long will it take, and what will the agents cost.

``cogpo-kit plan PARAMS`` (:mod:`cogpo_kit.planning.report`) prints and writes the plan
(``<output_dir>/<run_id>/plan.json`` and ``plan.md``); the notebooks show it with
:func:`cogpo_kit.viz.plan_view.plan`. Modules, one concern each:

- :mod:`~cogpo_kit.planning.shapes`: the model's shape from its ``config.json`` (or a built-in table of the
  paper's students where the hub is out of reach);
- :mod:`~cogpo_kit.planning.parallel`: processes, DDP or DeepSpeed ZeRO stage and offload from ``*.launch``;
- :mod:`~cogpo_kit.planning.memory`: per-GPU memory, term by term;
- :mod:`~cogpo_kit.planning.tokens`: rows and tokens per row, real where the stages have written them;
- :mod:`~cogpo_kit.planning.timing`: FLOPs and time at an assumed utilisation;
- :mod:`~cogpo_kit.planning.crv_calls`: the CRV stages' agent samples and tokens;
- :mod:`~cogpo_kit.planning.eval_tokens`: the evaluate stage's generation;
- :mod:`~cogpo_kit.planning.plan`: all of it for one run, with warnings;
- :mod:`~cogpo_kit.planning.report`: tables, ``plan.json`` and ``plan.md``;
- :mod:`~cogpo_kit.planning.measure`: the memory model against a measured CPU run (``tests/test_plan.py``).
"""

from cogpo_kit.planning.config import GPUS, PlanError, PlanSettings

__all__ = ["GPUS", "Plan", "PlanError", "PlanSettings", "make_plan"]


def __getattr__(name: str):
    # make_plan and Plan on first use, so that importing the settings (the CLI's parser) stays light
    if name in ("Plan", "make_plan"):
        from cogpo_kit.planning import plan

        return getattr(plan, name)
    raise AttributeError(f"module 'cogpo_kit.planning' has no attribute {name!r}")
