# %% [markdown]
# # 05 · Preference optimisation: CogPO and the baselines
#
# Trains **CogPO** (DPO with each pair's own beta) and the baselines **DPO**, **β-DPO** and **SimPO**, all from
# the same CRV+SFT checkpoint on the same pairs (and the beta sweep of paper Figure 6 when
# `preference.beta_sweep` is set). Writes `05_preference/<method>/model/` and `metrics.jsonl`.
#
# Run it cell by cell in JupyterLab (`make lab`, then *Open With → Jupytext Notebook* on this file), or
# unattended with `cogpo-kit run PARAMS.yaml --stages preference`, which executes it with papermill into
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
nb.preview(params, "preference", n=3)

# %% [markdown]
# ## Will it fit?
# How to read this: one row per training run of this stage: the memory each GPU (or the CPU process) needs,
# term by term, against what it has (`fits`), and the expected time at an assumed utilisation. A warning
# above the table names the largest term and what lowers it. The whole plan, with the CRV agents' calls and
# the evaluation, is written to `plan.md` in the run folder (`cogpo-kit plan PARAMS` prints the same).

# %%
plan_view.plan(params, "preference")

# %% [markdown]
# ## Run the stage
# Skipped when `skip_compute` is true: the manifest already written is read. Below it: the stage's
# status, notes, counts and agent calls (how to read them: a note flags anything unusual, such as
# skewed levels or an empty artifact; the agent table counts LLM calls, cache hits and tokens).
# With `preference.launch` set in the params, the stage starts the training processes itself (torchrun or
# accelerate launch); their output and log lines appear below as they come.

# %%
manifest = nb.run_stage(params, "preference", skip_compute)
run = Run.from_params(params)
display.show_stage(run, "preference")

# %% [markdown]
# ## Training
# How to read this: one row per method (the SFT variants of `04_sft` first): logged steps, first and last
# loss, and the last reward margin (how
# much more the model prefers the chosen side than the reference model does; it should grow).

# %%
tables.training_summary(run)

# %% [markdown]
# How to read this: the loss of each method against the step; lower is better.

# %%
figures.training_loss(run)

# %% [markdown]
# How to read this: the reward margin against the step, CogPO per gap and every method overall; a
# margin that stays near zero means the pairs taught the model little.

# %%
figures.reward_margins(run)
