"""Stage ``03_pairs``: the CogPO preference pairs of a run, with their statistics.

Reads the critique stage's ``input`` and ``critiques`` and the rethink stage's ``sft``, ``rewrites``
and ``incorrect`` artifacts, writes ``pairs.jsonl`` and a manifest with pairs per gap and kind, skip
reasons, token lengths of the chosen and rejected sides, and the over-length pairs with what was done to them.
"""

from __future__ import annotations

from cogpo_kit.pairs.build import GAPS, build_pairs
from cogpo_kit.pairs.inputs import read_crv
from cogpo_kit.pairs.lengths import fit_lengths
from cogpo_kit.params.loader import params_dict
from cogpo_kit.pipeline.stage import open_stage, run_dir


def run_pairs(params) -> dict:
    """Build the pairs file of a run; returns the manifest."""
    run_path = run_dir(params)
    art = read_crv(run_path)
    sections = params_dict(params)
    stage = open_stage(run_path, "pairs", {"pairs": sections["pairs"], "student_model": params.student.model},
                       inputs=art.paths.values())
    log = stage.logger
    cfg = params.pairs
    pairs, report = build_pairs(art, cfg)
    log.info("built %d pairs from %d examples: %s", len(pairs), report["examples"], report["pairs_per_gap"])
    for reason, n in report["skipped"].items():
        log.info("skipped %d: %s", n, reason)
    for what, n in report["inconsistencies"].items():
        stage.note(f"{n} example(s): {what}")
    lengths: dict = {}
    if pairs:
        from cogpo_kit.models.resolve import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer or params.student.model)
        pairs, lengths = fit_lengths(pairs, tok, cfg.max_length, cfg.overlength)
        if lengths["overlength_pairs"]:
            stage.note(f"{lengths['overlength_pairs']} pair(s) longer than {cfg.max_length} tokens: "
                       f"{lengths['dropped']} dropped, {lengths['truncated']} truncated (overlength: {cfg.overlength})")
    if not art.records:
        stage.note(f"no CoT records in {art.paths['input'].parent.name}/{art.paths['input'].name}: zero pairs")
    elif not pairs:
        stage.note(f"zero pairs from {len(art.records)} example(s): "
                   + ("; ".join(f"{n} {r}" for r, n in report["skipped"].items()) or "no usable CoTs"))
    per_gap = {g: sum(1 for p in pairs if p["gap"] == g) for g in GAPS if g in cfg.gaps}
    for gap, n in per_gap.items():
        if n == 0 and pairs:
            stage.note(f"no {gap}-gap pairs")
    path = stage.write("pairs", pairs)
    stage.counts.update({"examples": report["examples"], "pairs": len(pairs), **{f"pairs_{g}": n for g, n in per_gap.items()}})
    log.info("wrote %d pairs to %s", len(pairs), path)
    return stage.finish(pairs=dict(report, pairs_written=len(pairs), pairs_per_gap=per_gap), lengths=lengths)
