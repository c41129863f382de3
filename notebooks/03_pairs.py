# %% [markdown]
# # 03 · Preference pairs with a gap and a beta
#
# CogPO's mini-tasks (paper §3.3.2): **small gap** (r\*, r_orig) for easy/hard examples, **medium gap**
# (r_orig, r~), **large gap** (r_med, r~_med) and (r\*, r~); each pair carries the beta of its gap. Writes
# `03_pairs/pairs.jsonl`.
#
# Run it cell by cell in JupyterLab (`make lab`, then *Open With → Jupytext Notebook* on this file), or
# unattended with `cogpo-kit run PARAMS.yaml --stages pairs`, which executes it with papermill into
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
nb.preview(params, "pairs", n=3)

# %% [markdown]
# ## Run the stage
# Skipped when `skip_compute` is true: the manifest already written is read. Below it: the stage's
# status, notes, counts and agent calls (how to read them: a note flags anything unusual, such as
# skewed levels or an empty artifact; the agent table counts LLM calls, cache hits and tokens).

# %%
manifest = nb.run_stage(params, "pairs", skip_compute)
run = Run.from_params(params)
display.show_stage(run, "pairs")

# %% [markdown]
# ## Pairs per gap
# How to read this: one row per gap size with its number of pairs, its beta, which kinds of CoT were chosen
# and rejected, and their mean lengths in words. A gap with no pairs is named in the notes above (no medium
# CoTs means no large-gap (r_med, r~_med) pairs).

# %%
tables.pairs_by_gap(run)

# %% [markdown]
# How to read this: the pair counts of the table as bars, one per gap.

# %%
figures.pairs_per_gap(run)

# %% [markdown]
# How to read this: lengths in words of the chosen and the rejected side per gap; a chosen side much
# longer than the rejected one means the pair also teaches length.

# %%
figures.pair_lengths(run)

# %% [markdown]
# ## Browse the pairs
# How to read this: chosen and rejected side by side, each side's own words highlighted; filter by gap.

# %%
widgets.PairBrowser(run)
