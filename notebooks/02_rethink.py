# %% [markdown]
# # 02 · Rethink and verify: CoTs that fit the student
#
# The **Rethinker** expands easy CoTs and simplifies hard ones; the **Verifier** checks each rewrite (and the
# medium CoTs); a verified rewrite is rated again by the Critic and kept only as medium; failures go back to
# the Rethinker, up to the attempt limit (paper §3.2.2–3.2.3). The Rethinker also writes an *incorrect* CoT
# per example, checked to really reach a wrong answer. Writes `02_rethink/rewrites.jsonl`, `incorrect.jsonl`
# and `sft.jsonl` (= D_SFT\*).
#
# Run it cell by cell in JupyterLab (`make lab`, then *Open With → Jupytext Notebook* on this file), or
# unattended with `cogpo-kit run PARAMS.yaml --stages rethink`, which executes it with papermill into
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
nb.preview(params, "rethink", n=3)

# %% [markdown]
# ## Run the stage
# Skipped when `skip_compute` is true: the manifest already written is read. Below it: the stage's
# status, notes, counts and agent calls (how to read them: a note flags anything unusual, such as
# skewed levels or an empty artifact; the agent table counts LLM calls, cache hits and tokens).

# %%
manifest = nb.run_stage(params, "rethink", skip_compute)
run = Run.from_params(params)
display.show_stage(run, "rethink")

# %% [markdown]
# ## The CRV funnel
# How to read this: from top to bottom, the CoTs that came in, how the Critic rated them, how many of each
# level were kept in D_SFT\*, how many incorrect CoTs were found, and why the others were discarded
# (`max_attempts`: every rewrite attempt failed the Verifier or the re-rating).

# %%
tables.funnel(run)

# %% [markdown]
# How to read this: the same funnel as a Sankey diagram; the width of a band is the number of CoTs
# taking that path (hover it for the count).

# %%
figures.crv_funnel(run)

# %% [markdown]
# How to read this: per Critic level (and for the incorrect CoTs), how many examples were attempted,
# how many attempts that took, the share the Verifier said YES to, and the outcome of each example's last
# attempt.

# %%
tables.rewrite_outcomes(run)

# %% [markdown]
# How to read this: examples with a usable incorrect CoT (the rethink stage found one that reaches a
# wrong answer) and those without; an example without one gets no (r\*, r~) or (r_orig, r~) pair later.

# %%
tables.incorrect_summary(run)

# %% [markdown]
# ## One example at a time
# How to read this: the original CoT, each rewrite attempt and the incorrect version side by side; words
# added against the original are green, removed ones struck through. The header gives the Critic's votes,
# the Verifier's verdicts and the outcome. Filter by level and outcome; an exported copy of this notebook
# shows the first example.

# %%
widgets.CoTComparison(run)
