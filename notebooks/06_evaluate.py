# %% [markdown]
# # 06 · Evaluation on the benchmarks
#
# Generates answers with every model (zero-shot, SFT variants, preference methods) on the benchmarks of
# `eval`, grades them, and compares (pass@1 with 95% bootstrap intervals). Writes
# `06_evaluate/<model>/results.json`, `samples_<bench>.jsonl` and `comparison.json`.
#
# Run it cell by cell in JupyterLab (`make lab`, then *Open With → Jupytext Notebook* on this file), or
# unattended with `cogpo-kit run PARAMS.yaml --stages evaluate`, which executes it with papermill into
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
nb.preview(params, "evaluate", n=3)

# %% [markdown]
# ## Run the stage
# Skipped when `skip_compute` is true: the manifest already written is read. Below it: the stage's
# status, notes, counts and agent calls (how to read them: a note flags anything unusual, such as
# skewed levels or an empty artifact; the agent table counts LLM calls, cache hits and tokens).

# %%
manifest = nb.run_stage(params, "evaluate", skip_compute)
run = Run.from_params(params)
display.show_stage(run, "evaluate")

# %% [markdown]
# ## Results (paper Table 2 style)
# How to read this: benchmarks as rows, models as columns, pass@1 in % with its 95% bootstrap interval in
# brackets; *protocol* says how the answers were decoded and *truncated correct* counts correct answers cut at
# `max_tokens`. On a few problems the intervals are wide: two models whose
# intervals overlap are not shown to differ.

# %%
tables.results(run, with_ci=True)

# %% [markdown]
# How to read this: the table as bars, one group per benchmark, with the intervals as error bars.

# %%
figures.results(run)

# %% [markdown]
# How to read this: paper Figure 6, each benchmark's score against the scale of the CogPO betas (1 =
# the paper's betas); empty when the run has no beta sweep.

# %%
figures.beta_sweep(run)

# %% [markdown]
# How to read this: samples per model and benchmark and how many were graded correct; a model with
# fewer samples than the others did not finish.

# %%
tables.sample_counts(run)

# %% [markdown]
# ## Browse the samples
# How to read this: one generated answer at a time with the extracted and the gold answer and the verdict;
# filter by benchmark, model and verdict.

# %%
widgets.SampleBrowser(run)
