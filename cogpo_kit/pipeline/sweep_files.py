"""Names in a sweep's folder and in a seeded stage's manifest, shared by the sweep
(:mod:`cogpo_kit.pipeline.sweep`) and the cross-run comparison (:mod:`cogpo_kit.viz.compare`).

Nothing to run: import the names.
"""

from __future__ import annotations

SWEEP_MANIFEST = "sweep_manifest.json"
"""Written in the sweep folder: variants, their changes, stages run / reused / up to date."""
BASE_PARAMS = "params.yaml"
"""The sweep's parameters without the ``sweep:`` section, in the sweep folder; every variant runs from it."""
COMPARE_REPORT = "compare.html"
"""The cross-run report of the variants, in the sweep folder."""
REUSED_KEY = "reused_from"
"""Manifest field of a seeded stage: ``{"run": folder, "run_id": id}`` of the run it was copied from."""
