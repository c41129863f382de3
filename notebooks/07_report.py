# %% [markdown]
# # 07 · The run report
#
# Collects the run's settings, stage overview, funnel, tables and figures into one self-contained HTML file,
# `07_report/report.html` (plotly.js inlined; opens from disk without a server), with the figures also under
# `07_report/figures/`.
#
# Run it cell by cell in JupyterLab (`make lab`, then *Open With → Jupytext Notebook* on this file), or
# unattended with `cogpo-kit run PARAMS.yaml --stages report`, which executes it with papermill into
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
nb.preview(params, "report", n=3)

# %% [markdown]
# ## Run the stage
# Skipped when `skip_compute` is true: the manifest already written is read. Below it: the stage's
# status, notes, counts and agent calls (how to read them: a note flags anything unusual, such as
# skewed levels or an empty artifact; the agent table counts LLM calls, cache hits and tokens).

# %%
manifest = nb.run_stage(params, "report", skip_compute)
run = Run.from_params(params)
display.show_stage(run, "report")

# %% [markdown]
# ## The run at a glance
# How to read this: one row per stage with its status, wall time, main counts and notes; a stage that has
# not run is marked so and the report says what is missing.

# %%
tables.stage_overview(run)

# %% [markdown]
# How to read this: every stage's notes in one list: what was unusual or missing in the run.

# %%
display.show_all_notes(run)

# %% [markdown]
# How to read this: the results table of the evaluation stage (see `06_evaluate`).

# %%
tables.results(run, with_ci=True)

# %% [markdown]
# How to read this: where the report and the figures are; open `report.html` in any browser.

# %%
display.show_report(run)
