# %% [markdown]
# # 04 · Supervised fine-tuning
#
# Fine-tunes the student on D_SFT\* (**CRV+SFT**) and, as the baseline, on the original CoTs of the same
# problems (**SFT**). Writes `04_sft/<variant>/model/` and `metrics.jsonl`.
#
# Run it cell by cell in JupyterLab (`make lab`, then *Open With → Jupytext Notebook* on this file), or
# unattended with `cogpo-kit run PARAMS.yaml --stages sft`, which executes it with papermill into
# `outputs/<run_id>/notebooks/`. The parameters below run the demo (`params/demo.yaml`); set
# `skip_compute = True` to only look at what the stage already wrote.

# %% tags=["parameters"]
params_files = ['params/demo.yaml']
overrides = []
run_id = None
output_dir = None
skip_compute = False

# %%
import cogpo_kit.pipeline.notebook as nb
from cogpo_kit.viz import display, figures, plan_view, tables, widgets
from cogpo_kit.viz.artifacts import Run

display.setup_notebook()
params = nb.load(params_files, overrides, run_id, output_dir)
params.run

# %% [markdown]
# ## Preview a few examples
# The first rows this stage will read, before the full run: check they look right (and that the
# earlier stages wrote them) before spending the compute.

# %%
nb.preview(params, "sft", n=3)

# %% [markdown]
# ## Will it fit?
# How to read this: one row per training run of this stage: the memory each GPU (or the CPU process) needs,
# term by term, against what it has (`fits`), and the expected time at an assumed utilisation. A warning
# above the table names the largest term and what lowers it. The whole plan, with the CRV agents' calls and
# the evaluation, is written to `plan.md` in the run folder (`cogpo-kit plan PARAMS` prints the same).

# %%
plan_view.plan(params, "sft")

# %% [markdown]
# ## Run the stage
# Skipped when `skip_compute` is true: the manifest already written is read. Below it: the stage's
# status, notes, counts and agent calls (how to read them: a note flags anything unusual, such as
# skewed levels or an empty artifact; the agent table counts LLM calls, cache hits and tokens).
# With `sft.launch` set in the params, the stage starts the training processes itself (torchrun or
# accelerate launch); their output and log lines appear below as they come.

# %%
manifest = nb.run_stage(params, "sft", skip_compute)
run = Run.from_params(params)
display.show_stage(run, "sft")

# %% [markdown]
# ## Training
# How to read this: one row per trained variant: logged steps, the first and the last logged loss and the
# mean training loss. The last loss should be below the first; equal values mean the model did not learn (too few steps or a zero learning
# rate).

# %%
tables.training_summary(run)

# %% [markdown]
# How to read this: the training loss of each variant against the step; lower is better.

# %%
figures.training_loss(run)
