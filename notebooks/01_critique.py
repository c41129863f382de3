# %% [markdown]
# # 01 · Critique: how hard is each CoT for the student?
#
# The **Critic** reads every original chain of thought (CoT) and rates it *easy*, *medium* or *hard* for the
# student model, with sampled votes and a majority (paper §3.2.1, Table 13 prompt). Reads the CoT dataset
# (`data` params); writes `01_critique/input.jsonl` (the records) and `critiques.jsonl` (votes, raw outputs,
# level, re-asks).
#
# Run it cell by cell in JupyterLab (`make lab`, then *Open With → Jupytext Notebook* on this file), or
# unattended with `cogpo-kit run PARAMS.yaml --stages critique`, which executes it with papermill into
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
from cogpo_kit.viz import display, figures, tables, widgets
from cogpo_kit.viz.artifacts import Run

display.setup_notebook()
params = nb.load(params_files, overrides, run_id, output_dir)
params.run

# %% [markdown]
# ## Preview a few examples
# The first rows this stage will read, before the full run: check they look right (and that the
# earlier stages wrote them) before spending the compute.

# %%
nb.preview(params, "critique", n=3)

# %% [markdown]
# ## Run the stage
# Skipped when `skip_compute` is true: the manifest already written is read. Below it: the stage's
# status, notes, counts and agent calls (how to read them: a note flags anything unusual, such as
# skewed levels or an empty artifact; the agent table counts LLM calls, cache hits and tokens).

# %%
manifest = nb.run_stage(params, "critique", skip_compute)
run = Run.from_params(params)
display.show_stage(run, "critique")

# %% [markdown]
# ## Levels (paper Table 1 style)
# How to read this: one row per level; *Critic: original CoTs* counts the CoTs the Critic put in that
# level (and their share), *in D_SFT\* (by original level)* how many examples of that original level ended up
# in the SFT set after the rethink stage (0 until it has run). A 135M Critic tends to put almost everything in one level: a note above says so.

# %%
tables.level_distribution(run)

# %% [markdown]
# How to read this: how often the Critic's votes agreed (all the same, a majority, no majority) and how
# many answers had to be re-asked because they were not a valid label. Many re-asks or no-majority rows mean
# the Critic model is too weak or its sampling too hot for the prompt.

# %%
tables.critic_votes(run)

# %% [markdown]
# How to read this: the same counts as the first table as bars, the Critic's rating next to what
# entered D_SFT\*; hover a bar for its number.

# %%
figures.level_distribution(run)
