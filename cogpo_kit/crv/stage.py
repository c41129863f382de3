"""Stages 01 (critique) and 02 (rethink): the CRV system as pipeline stages.

``run_critique(params)`` loads the CoT dataset and has the Critic rate every CoT:
``01_critique/{input.jsonl, critiques.jsonl, rejects.jsonl?, manifest.json}``.

``run_rethink(params)`` reads them and runs the Verifier, the Rethinker loop and the incorrect CoTs:
``02_rethink/{rewrites.jsonl, incorrect.jsonl, sft.jsonl, sft_<level>.jsonl?, manifest.json}``, the
manifest holding the ``funnel``.

State lives in the response cache under the engines: a killed run started again replays every
finished call from the cache and writes the same outputs. From a shell::

    python -m cogpo_kit.crv.stage params/smoke.yaml --stages critique,rethink
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from cogpo_kit.crv.agents import build_agents
from cogpo_kit.crv.critic import LabelResult, ask_label
from cogpo_kit.crv.funnel import (call_stats, early_exit_stats, funnel_table, label_quality, level_counts,
                                  level_notes, rethink_funnel)
from cogpo_kit.crv.rethink import Rethink, incorrect_row, sft_row
from cogpo_kit.crv.scheduler import Scheduler
from cogpo_kit.crv.studies import equal_level_subsets
from cogpo_kit.data.records import CoTRecord
from cogpo_kit.io import DataError, read_jsonl
from cogpo_kit.params.loader import params_dict
from cogpo_kit.pipeline.stage import open_stage, read_manifest, run_dir
from cogpo_kit.pipeline.stages import artifact_path, stage_path


def _report_dict(report: Any) -> Any:
    if report is None or isinstance(report, (dict, list, str, int, float)):
        return report
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if dataclasses.is_dataclass(report):
        return dataclasses.asdict(report)
    return str(report)


def _load_records(params, stage) -> tuple[list[CoTRecord], Any]:
    from cogpo_kit.data.loaders import load_cot

    rejects = stage.artifact("rejects") if params.data.on_invalid == "reject" else None
    records, report = load_cot(params.data, rejects_path=rejects, logger=stage.logger)
    for path in getattr(report, "paths", None) or ([params.data.path] if params.data.path else []):
        if Path(path).exists():
            stage.add_input(path)
    return list(records), report


def _attach(agents, stage) -> None:
    """Send the engines' log lines to the stage log."""
    for key in agents.owned:
        eng = agents.engines[key]
        if hasattr(eng, "logger"):
            try:
                eng.logger = stage.logger
            except AttributeError:
                pass


def _critique_row(rec: CoTRecord, r: LabelResult, probe: Optional[LabelResult]) -> dict:
    row = {"id": rec.id, "level": r.label, "votes": r.votes, "raw": r.raw, "reasks": r.reasks,
           "invalid": r.invalid, "asked": r.asked, "skipped": r.skipped, "reason": r.reason}
    if probe is not None:
        row["free_probe"] = {"votes": probe.votes, "raw": probe.raw, "invalid": probe.invalid, "asked": probe.asked}
    return row


def run_critique(params, *, records: Optional[Sequence[CoTRecord]] = None,
                 engines: Optional[dict[str, Any]] = None, naive: bool = False) -> dict:
    """Stage 01: the Critic's majority rating of every CoT. Returns the manifest.

    ``records`` replaces loading ``params.data``; ``engines`` (role -> engine) replaces building them;
    ``naive`` drives the workflows one example, one request of one sample at a time (the baseline of
    ``benchmarks/crv.py``).
    """
    crv = params.crv
    stage = open_stage(run_dir(params), "critique", params_dict(params))
    if records is None:
        records, report = _load_records(params, stage)
    else:
        records, report = list(records), {"given": len(records)}
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"duplicate id '{dup}' in the CoT records", field="id")
    stage.write("input", [r.to_dict() for r in records])
    stage.logger.info("critique: %d CoTs, %d votes each (early exit %s)", len(records), crv.votes, crv.early_exit)
    agents = build_agents(params, "critique", engines=engines)
    _attach(agents, stage)
    try:
        critic = agents.role("critic")
        jobs = [ask_label(critic, critic.messages(problem=r.problem, answer=r.answer, reasoning=r.reasoning),
                          votes=crv.votes, early_exit=crv.early_exit) for r in records]
        n_probe = min(crv.free_label_probe, len(records)) if critic.constrained else 0
        jobs += [ask_label(critic, critic.messages(problem=r.problem, answer=r.answer, reasoning=r.reasoning),
                           votes=crv.votes, early_exit=False, free=True, tag="critic_free", max_reasks=0)
                 for r in records[:n_probe]]
        sched = Scheduler(agents, logger=stage.logger, desc="critique", sequential=naive,
                          stream=crv.stream)
        try:
            results = sched.run(jobs)
        except Exception as exc:
            stage.logger.error("critique stopped: %s; calls so far: %s", exc, agents.counter_dict())
            raise
        main, probes = results[:len(records)], results[len(records):]
        rows = [_critique_row(rec, r, probes[i] if i < len(probes) else None) for i, (rec, r) in
                enumerate(zip(records, main))]
        stage.write("critiques", rows)
        levels = level_counts([r.label for r in main])
        ee = early_exit_stats(main, crv.votes)
        funnel = {
            "examples": len(records),
            "input": _report_dict(report),
            "levels": levels,
            "no_label": {k: sum(1 for r in main if r.reason == k) for k in ("no_majority", "no_valid_label")},
            "early_exit": ee,
            "labels": label_quality(results),
            "calls": {**call_stats(agents, len(records), skipped_votes=ee["votes_skipped"]),
                      "rounds": sched.rounds, "generate_calls": sched.generate_calls,
                      "streamed": sched.streamed},
        }
        for note in level_notes(levels):
            stage.note(note)
        _label_notes(stage, funnel["labels"])
        stage.counts.update({"records": len(records), "rejected": getattr(report, "n_rejected", 0),
                             **{f"level_{k}": v for k, v in levels.items()}})
        stage.agents.update(funnel["calls"]["by_tag"])
        stage.logger.info("levels: %s; critic samples %d (naive %d)", levels, ee["samples_asked"], ee["naive_samples"])
        return stage.finish(funnel=funnel)
    finally:
        agents.close()


def _label_notes(stage, labels: dict) -> None:
    for mode, q in labels.items():
        share = q.get("invalid_share") or 0
        if share >= 0.2:
            stage.note(f"{100 * share:.0f}% of {mode} label outputs were not a valid label "
                       f"({q['invalid']} of {q['outputs']}; {q['reasks']} re-asked).")


def _read_critique(run_path: Path) -> tuple[list[CoTRecord], dict[str, dict], Path, Path]:
    src = stage_path(run_path, "critique")
    inp, crit = artifact_path(run_path, "input"), artifact_path(run_path, "critiques")
    if read_manifest(run_path, "critique") is None or not inp.exists() or not crit.exists():
        raise FileNotFoundError(f"{src}: no finished critique stage (manifest.json, input.jsonl, critiques.jsonl); "
                                "run the critique stage first")
    records = []
    for i, row in enumerate(read_jsonl(inp), start=1):
        try:
            records.append(CoTRecord.from_dict(row))
        except KeyError as exc:
            raise DataError("missing field", path=inp, line=i, field=str(exc.args[0])) from None
    crits = {}
    for i, row in enumerate(read_jsonl(crit), start=1):
        if "id" not in row or "level" not in row:
            raise DataError("missing field", path=crit, line=i, field="id" if "id" not in row else "level")
        crits[str(row["id"])] = row
    missing = [r.id for r in records if r.id not in crits]
    if missing:
        raise DataError(f"no critique for id '{missing[0]}' ({len(missing)} missing)", path=crit, field="id")
    return records, crits, inp, crit


def run_rethink(params, *, engines: Optional[dict[str, Any]] = None, naive: bool = False) -> dict:
    """Stage 02: Verifier, Rethinker loop and incorrect CoTs -> D_SFT*. Returns the manifest.

    ``engines`` and ``naive`` as in :func:`run_critique`."""
    crv = params.crv
    run_path = run_dir(params)
    records, crits, inp, crit = _read_critique(run_path)
    stage = open_stage(run_path, "rethink", params_dict(params), inputs=[inp, crit])
    stage.logger.info("rethink: %d CoTs, ablation %s, verifier %s, %d attempts", len(records), crv.ablation,
                      crv.verifier_mode, crv.max_attempts)
    agents = build_agents(params, "rethink", engines=engines)
    _attach(agents, stage)
    try:
        rt = Rethink(agents, crv)
        n = len(records)
        jobs = [rt.example(r, crits[r.id]["level"], crits[r.id].get("reason")) for r in records]
        n_inc = n if crv.incorrect_cots else 0
        jobs += [rt.incorrect(r) for r in records[:n_inc]]
        probe_n = 0
        if crv.free_label_probe and "verifier" in agents.roles and agents.roles["verifier"].constrained:
            verifier = agents.role("verifier")
            probe_n = min(crv.free_label_probe, n)
            jobs += [ask_label(verifier, verifier.messages(problem=r.problem, answer=r.answer, reasoning=r.reasoning),
                               votes=1, free=True, tag="verifier_free", max_reasks=0) for r in records[:probe_n]]
        sched = Scheduler(agents, logger=stage.logger, desc="rethink", sequential=naive,
                          stream=crv.stream)
        try:
            results = sched.run(jobs)
        except Exception as exc:
            stage.logger.error("rethink stopped: %s; calls so far: %s", exc, agents.counter_dict())
            raise
        outcomes, incorrect, probes = results[:n], results[n:n + n_inc], results[n + n_inc:]
        rewrites = [row for o in outcomes for row in o.attempts] + [row for o in incorrect for row in o.attempts]
        stage.write("rewrites", rewrites)
        by_id = {r.id: r for r in records}
        levels_by_id = {r.id: crits[r.id]["level"] for r in records}
        sft = [sft_row(by_id[o.id], o) for o in outcomes if o.kept]
        stage.write("sft", sft)
        inc_rows = [incorrect_row(by_id[o.id], o, levels_by_id[o.id]) for o in incorrect if o.found]
        stage.write("incorrect", inc_rows)
        levels = level_counts([levels_by_id[r.id] for r in records])
        funnel = rethink_funnel(levels, outcomes, incorrect)
        if crv.equal_level_subsets:
            subsets, notes = equal_level_subsets(records, levels_by_id, crv.equal_level_subsets, seed=params.run.seed)
            for lv, rows in subsets.items():
                stage.write("sft_level", rows, level=lv)
            funnel["equal_level_subsets"] = {lv: len(rows) for lv, rows in subsets.items()}
            for note in notes:
                stage.note(note)
        # label questions asked in this stage (verifier verdicts and Critic re-ratings)
        label_results = rt.label_results + list(probes)
        rerate_skipped = sum(r.get("rerating", {}).get("skipped", 0) for o in outcomes for r in o.attempts)
        funnel["labels"] = label_quality(label_results)
        funnel["calls"] = {**call_stats(agents, n, skipped_votes=rerate_skipped),
                           "rounds": sched.rounds, "generate_calls": sched.generate_calls,
                           "streamed": sched.streamed}
        funnel["crv_calls"] = _crv_calls(run_path, funnel["calls"], n)
        _rethink_notes(stage, funnel, crv)
        _label_notes(stage, funnel["labels"])
        stage.counts.update({"records": n, "sft": len(sft), "incorrect": len(inc_rows), "rewrite_rows": len(rewrites)})
        stage.agents.update(funnel["calls"]["by_tag"])
        stage.logger.info("funnel:\n%s", funnel_table(funnel))
        return stage.finish(funnel=funnel)
    finally:
        agents.close()


def _crv_calls(run_path: Path, rethink_calls: dict, n: int) -> dict:
    """Both stages together: samples, paid calls and the naive count, per example."""
    m = read_manifest(run_path, "critique") or {}
    c = (m.get("funnel") or {}).get("calls") or {}
    samples = rethink_calls["samples"] + c.get("samples", 0)
    naive = rethink_calls["naive"] + c.get("naive", 0)
    paid = rethink_calls["paid"] + c.get("paid", 0)
    per = (lambda x: round(x / n, 3) if n else None)
    return {"samples": samples, "paid": paid, "naive": naive, "per_example": per(samples),
            "naive_per_example": per(naive), "naive_over_actual": round(naive / samples, 3) if samples else None}


def _rethink_notes(stage, funnel: dict, crv) -> None:
    for note in level_notes(funnel["levels"]):
        stage.note(note)
    sft = funnel["sft"]
    if sft["total"] == 0:
        stage.note("D_SFT* is empty: no CoT passed verification and re-rating.")
    n = funnel["examples"]
    found = funnel["incorrect"]["found"]
    if not crv.incorrect_cots:
        stage.note("no incorrect CoTs were written (crv.incorrect_cots: false): no medium- or large-gap pairs.")
    elif n and found < n:
        why = ", ".join(f"{reason}: {count}" for reason, count in sorted(funnel["incorrect"]["failed"].items()))
        stage.note(f"no incorrect CoT for {n - found} of {n} examples within crv.incorrect_max_attempts="
                   f"{crv.incorrect_max_attempts} (examples by reason: {why}).")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m cogpo_kit.crv.stage PARAMS... [-o key=value] [--stages critique,rethink]``."""
    ap = argparse.ArgumentParser(prog="python -m cogpo_kit.crv.stage", description="Run the CRV stages.")
    ap.add_argument("params", nargs="+")
    ap.add_argument("-o", "--set", dest="overrides", action="append", default=[])
    ap.add_argument("--stages", default="critique,rethink")
    args = ap.parse_args(argv)
    from cogpo_kit.params.run import load_params

    params = load_params(args.params, args.overrides)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for s in stages:
        if s not in ("critique", "rethink"):
            ap.error(f"unknown stage '{s}' (critique, rethink)")
    if "critique" in stages:
        run_critique(params)
    if "rethink" in stages:
        m = run_rethink(params)
        print(funnel_table(m["funnel"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
