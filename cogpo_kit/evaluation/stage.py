"""Stage ``06_evaluate``: generate and grade on the benchmarks, per model, and compare the models.

For each name in ``eval.models``:

- ``zero_shot`` is the student as is (``student.model``); ``sft`` / ``crv_sft`` (and any other SFT
  variant) are ``04_sft/<name>/model``; ``cogpo``, ``dpo``, ``beta_dpo``, ``simpo`` and
  ``cogpo_x<f>`` (beta sweep) are ``05_preference/<name>/model``; anything else is a model spec;
- a missing checkpoint is a note in the manifest and the model is skipped, not a crash;
- one engine per model (``eval.engine`` with the model filled in), all prompts of all benchmarks
  sent at once; then grading (math: time-limited worker; choice: letter extractors; code: sandbox);
- with the transformers engine and ``eval.batch_models``, the models that share a base (the student and the
  LoRA adapters on it) generate first, together: one engine, their rows in shared batches
  (:mod:`cogpo_kit.engines.hf_multi`); ``results.json`` names them (``generated_with``);
- a model whose answers on a benchmark were generated before under the same content key (its weights'
  fingerprint, the prompts, the decoding, the engine settings that change outputs: see
  :mod:`cogpo_kit.evaluation.reuse`) gets them from ``<output_dir>/cache/evaluations`` and is graded
  again; when every benchmark is served so, no engine is built (no model load). ``results.json`` and
  the manifest record ``reused_from`` (``eval.reuse: false`` generates everything again).

The decoding protocol (``eval.protocol``: greedy / r1 / as ``eval.sampling`` says) is resolved once and
recorded with every number; with ``eval.expect_sizes: paper`` every benchmark's size is checked
against the paper's Table 7 before anything is generated. With a code benchmark, the code sandbox's
isolation is checked first too: where it has no namespaces (mode ``rlimits``) the stage stops before
any model is loaded unless ``eval.code_allow_unisolated`` is true; the mode and what it contains are
in the manifest (``counts.sandbox_mode``, ``agents.sandbox_isolation``).

Writes ``06_evaluate/<model>/results.json`` and ``samples_<bench>.jsonl``, and
``06_evaluate/comparison.json`` + ``comparison.csv``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from cogpo_kit.evaluation.benchmarks import (LoadOptions, build_messages, check_paper_size, get_benchmark,
                                             list_benchmarks, load_problems, select_subset)  # noqa: F401
from cogpo_kit.evaluation.comparison import build_comparison, comparison_csv
from cogpo_kit.evaluation.grading import MathGrader
from cogpo_kit.evaluation.protocol import budget_note, ignored_sampling_note
from cogpo_kit.evaluation.reuse import STORE_DIR, EvaluationStore, generation_key
from cogpo_kit.evaluation.scoring import grade_benchmark, problem_scores, summarize_benchmark
from cogpo_kit.params.loader import params_dict
from cogpo_kit.pipeline.stage import open_stage, run_dir
from cogpo_kit.pipeline.stages import artifact_path

SFT_NAMES = ("sft", "crv_sft")
PREFERENCE_NAMES = ("cogpo", "dpo", "beta_dpo", "simpo")

EngineFactory = Callable[[str], object]
"""``factory(model_spec) -> engine`` (tests pass a fake; the stage uses :func:`build_engine`)."""


def model_dir_name(name: str) -> str:
    """Folder of a model's results: its name, with ``/`` as ``__`` (``Qwen/Qwen2.5-7B`` -> ``Qwen__Qwen2.5-7B``)."""
    return re.sub(r"[^\w.@+=-]", "_", name.replace("/", "__"))


def eval_model_names(params) -> list[str]:
    """``eval.models``, plus the beta-sweep models when ``cogpo`` is evaluated and asked for."""
    names = list(dict.fromkeys(params.eval.models))
    if params.eval.include_beta_sweep and "cogpo" in names:
        for f in params.preference.beta_sweep:
            name = f"cogpo_x{f:g}"
            if name not in names:
                names.insert(names.index("cogpo") + 1, name)
    return names


def resolve_eval_model(name: str, params, run_path: Path) -> tuple[Optional[str], str]:
    """``(spec, where)`` for an evaluated model; ``spec`` is ``None`` when its checkpoint is missing."""
    if name == "zero_shot":
        return params.student.model, "student.model"
    sft = artifact_path(run_path, "sft_model", variant=name)
    pref = artifact_path(run_path, "preference_model", method=name)
    if name in SFT_NAMES or name in params.sft.variants or sft.exists():
        return (str(sft) if sft.exists() else None), str(sft)
    if name in PREFERENCE_NAMES or name.startswith("cogpo_x") or pref.exists():
        return (str(pref) if pref.exists() else None), str(pref)
    return name, "model spec"


def load_eval_problems(ev, st=None) -> dict[str, list]:
    """Every benchmark's problems (``eval.exclude`` left out, then ``limit`` / ``limits``); with
    ``eval.expect_sizes: paper`` each full size is checked against the paper's Table 7 first (a
    documented departure or a benchmark outside the paper is a note in the manifest)."""
    opts = LoadOptions(seed=ev.seed, data_dir=ev.data_dir, mmlu_subjects=tuple(ev.mmlu_subjects),
                       mmlu_split=ev.mmlu_split, livecodebench_path=ev.livecodebench_path,
                       livecodebench_release=ev.livecodebench_release, olympiadbench_path=ev.olympiadbench_path)
    unknown = sorted(set(ev.exclude) - set(ev.benchmarks))
    if unknown:
        raise ValueError(f"eval.exclude names benchmark(s) not in eval.benchmarks: {unknown}")
    out = {}
    for name in ev.benchmarks:
        full = load_problems(name, opts, None, exclude=ev.exclude.get(name, ()))
        limit = ev.limits.get(name, ev.limit)
        if ev.expect_sizes == "paper":
            if limit is not None and limit < len(full):
                raise ValueError(f"eval.expect_sizes=paper: eval.limit/limits evaluates {limit} of {len(full)} "
                                 f"problems of '{name}'; set eval.expect_sizes: null for a partial run")
            note = check_paper_size(name, len(full))
            if note and st is not None:
                st.note(f"size check: {note}")
        out[name] = select_subset(full, name, ev.seed, limit)
        if st is not None and ev.exclude.get(name):
            st.counts[f"excluded_{name}"] = len(ev.exclude[name])
    return out


def _default_factory(params, run_path: Path) -> EngineFactory:
    """:func:`~cogpo_kit.engines.build_engine` with ``eval.engine``; a llama.cpp engine gets a trained model
    (HF or adapter folder) as its GGUF export (:func:`cogpo_kit.models.gguf_export.engine_model`, once per
    content)."""
    from cogpo_kit.engines import build_engine

    cache = str(Path(params.run.output_dir) / "cache" / "responses.sqlite")

    def factory(spec: str):
        if params.eval.engine.engine == "llamacpp":
            from cogpo_kit.models.gguf_export import engine_model

            spec = engine_model(spec)
        return build_engine(replace(params.eval.engine, model=spec), cache_path=cache, model=spec)

    return factory


def bench_sampling(sampling, bench, stop_at_final_answer: bool):
    """The sampling of one benchmark's requests: with ``eval.stop_at_final_answer``, a benchmark graded on its
    boxed answer (math, choice) also stops once its final answer line is written."""
    from cogpo_kit.engines.hf import FINAL_ANSWER_STOP

    if stop_at_final_answer and bench.kind in ("math", "choice") and FINAL_ANSWER_STOP not in sampling.stop:
        return replace(sampling, stop=(*sampling.stop, FINAL_ANSWER_STOP))
    return sampling


def evaluation_store(params) -> Optional[EvaluationStore]:
    """The store of finished evaluations (``<output_dir>/cache/evaluations``), or ``None`` when answers
    are not to be reused (``eval.reuse: false``, or the engine's response cache off or cleared)."""
    ev = params.eval
    if not ev.reuse or not ev.engine.cache.enabled or ev.engine.cache.clear:
        return None
    return EvaluationStore(Path(params.run.output_dir) / "cache" / STORE_DIR)


def model_content(spec: str) -> Optional[str]:
    """The content fingerprint of an evaluated model (weights, config, tokenizer, chat template), or
    ``None`` where there is no content to hash: a spec the kit cannot read itself (a model only an engine
    knows), or a hub id with no local snapshot (it names a moving revision). Such models are never reused."""
    from cogpo_kit.models.adapters import model_fingerprint
    from cogpo_kit.models.specs import ModelNotFoundError

    try:
        fp = model_fingerprint(spec)
    except ModelNotFoundError:
        return None
    return None if fp == spec else fp


def run_evaluate(params, *, engine_factory: Optional[EngineFactory] = None, show_progress: bool = True) -> dict:
    """Run stage 06 and return its manifest."""
    from cogpo_kit.engines import Request, TagStats

    ev = params.eval
    run_path = run_dir(params)
    st = open_stage(run_path, "evaluate", params_dict(params))
    log = st.logger
    factory = engine_factory or _default_factory(params, run_path)
    decoding = ev.decoding()
    protocol = decoding.record()
    st.counts["protocol"] = decoding.label
    log.info("decoding protocol: %s", decoding.label)
    ignored = ignored_sampling_note(ev.protocol, ev.sampling)
    if ignored:
        st.note(ignored)
    benches = {name: get_benchmark(name) for name in ev.benchmarks}
    if any(b.kind == "code" for b in benches.values()):
        from cogpo_kit.evaluation.sandbox import require_isolation

        require_isolation(ev.code_allow_unisolated)  # before any model is loaded: no compute wasted
    sampling = {name: bench_sampling(decoding.sampling, bench, ev.stop_at_final_answer)
                for name, bench in benches.items()}
    if ev.stop_at_final_answer and ev.engine.engine != "transformers":
        st.note(f"eval.stop_at_final_answer is served by the transformers engine only; the {ev.engine.engine} "
                "engine generates to the end of turn or max_tokens")
    problems = load_eval_problems(ev, st)
    prompts = {name: [build_messages(p, benches[name], template=ev.templates.get(name),
                                     system_prompt=ev.system_prompt) for p in problems[name]] for name in benches}
    for name, probs in problems.items():
        st.counts[f"problems_{name}"] = len(probs)
        log.info("benchmark %s: %d problems (%s)", name, len(probs), benches[name].description)
        if benches[name].kind == "code" and probs and probs[0].meta.get("tests_source") == "parsed_from_statement":
            st.note(f"{name}: graded on the sample tests parsed from the statements only (a weaker, public-tests-"
                    "only proxy, not the paper's LiveCodeBench: that is benchmark livecodebench with "
                    "eval.livecodebench_path)")
    if any(b.kind == "code" for b in benches.values()):
        from cogpo_kit.evaluation.sandbox import isolation_report

        iso = isolation_report()
        st.counts["sandbox_mode"] = iso.get("mode")
        st.agents["sandbox_isolation"] = iso
        log.info("sandbox isolation: %s", iso)
        if iso.get("mode") == "rlimits":
            st.note(f"generated code ran without namespaces (sandbox mode rlimits: {iso.get('why_unisolated')}), "
                    "with the user's uid, network and files: eval.code_allow_unisolated allowed it")

    results: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    models_info: dict[str, dict] = {}
    beta_scales = {}
    store = evaluation_store(params)
    workers = ev.grader_workers or max(1, min(4, os.cpu_count() or 1))
    grader = MathGrader(timeout_s=ev.math_timeout_s, workers=workers)

    def reuse_plan(spec: str) -> tuple[dict, dict, dict, Optional[str]]:
        """(answers per benchmark, generation keys, reused origins, fingerprint) of a model before generating."""
        by_bench: dict[str, list] = {b: [None] * len(problems[b]) for b in benches}
        keys: dict[str, tuple[str, dict]] = {}
        reused: dict[str, dict] = {}
        fingerprint = model_content(spec) if store is not None else None
        if fingerprint is not None:
            for bname in benches:
                keys[bname] = generation_key(fingerprint, bname, prompts[bname], sampling[bname],
                                             decoding.n_samples, ev.engine)
                hit = store.get(keys[bname][0], len(prompts[bname]))
                if hit is not None:
                    by_bench[bname] = hit["completions"]
                    reused[bname] = {**hit["origin"], "key": keys[bname][0]}
        return by_bench, keys, reused, fingerprint

    def requests_for(todo: list[str]) -> tuple[list, list[tuple[str, int]]]:
        reqs, index = [], []
        for bname in todo:
            for i, msgs in enumerate(prompts[bname]):
                reqs.append(Request(messages=msgs, sampling=sampling[bname], n=decoding.n_samples, tag=f"eval:{bname}"))
                index.append((bname, i))
        return reqs, index

    plans: dict[str, tuple] = {}
    shared: dict = {}
    try:
        if engine_factory is None and ev.batch_models and ev.engine.engine == "transformers":
            from cogpo_kit.engines.hf_multi import generate_grouped

            todo_specs, todo_reqs = {}, {}
            for name in eval_model_names(params):
                spec, _where = resolve_eval_model(name, params, run_path)
                if spec is not None:
                    plans[name] = reuse_plan(spec)
                    todo = [b for b in benches if b not in plans[name][2]]
                    if todo:
                        todo_specs[name], todo_reqs[name] = spec, requests_for(todo)[0]
            shared = generate_grouped(ev.engine, todo_specs, todo_reqs, show_progress=show_progress, logger=log,
                                      cache_path=str(Path(params.run.output_dir) / "cache" / "responses.sqlite"))
        for name in eval_model_names(params):
            spec, where = resolve_eval_model(name, params, run_path)
            if spec is None:
                reason = f"no checkpoint at {where} (its training stage has not produced it)"
                st.note(f"model '{name}' skipped: {reason}")
                skipped[name] = reason
                models_info[name] = {"status": "skipped", "reason": reason}
                continue
            if name.startswith("cogpo_x"):
                try:
                    beta_scales[name] = float(name[len("cogpo_x"):])
                except ValueError:
                    pass
            log.info("model %s: %s (%s)", name, spec, where)
            if Path(spec).exists():
                st.add_input(spec)
            t0 = time.time()
            by_bench, keys, reused, fingerprint = plans.pop(name, None) or reuse_plan(spec)
            todo = [b for b in benches if b not in reused]
            stats: dict = {}
            model_id = None
            if reused:
                log.info("model %s: answers on %s reused (same model content %s and generation settings) from %s",
                         name, ", ".join(reused), fingerprint,
                         "; ".join(f"{b}: {o.get('results') or o.get('spec')}" for b, o in reused.items()))
            if todo:
                reqs, index = requests_for(todo)
                if name in shared:  # generated with the other models of its base, above
                    outs, stats, model_id = shared[name].completions, shared[name].stats, shared[name].model_id
                    t0 -= shared[name].seconds
                else:
                    engine = factory(spec)
                    try:
                        outs = engine.generate(reqs)
                        stats = engine.stats_by_tag() if isinstance(engine, TagStats) else {}
                        model_id = getattr(engine, "model_id", spec)
                    finally:
                        engine.close()
                if len(outs) != len(reqs):
                    raise RuntimeError(f"engine returned {len(outs)} results for {len(reqs)} requests (model {name})")
                for (bname, i), comps in zip(index, outs):
                    by_bench[bname][i] = comps
                if fingerprint is not None:
                    folder_path = artifact_path(run_path, "results", model=model_dir_name(name)).parent
                    for bname in todo:
                        store.put(keys[bname][0], keys[bname][1], by_bench[bname],
                                  {"model": name, "spec": spec, "model_id": model_id, "results": str(folder_path)})
            else:
                model_id = next(iter(reused.values())).get("model_id") or spec
            gen_s = time.time() - t0
            t1 = time.time()
            res_model, scores[name] = {}, {}
            folder = model_dir_name(name)
            for bname, bench in benches.items():
                texts = [m[-1]["content"] for m in prompts[bname]]
                rows, verdicts = grade_benchmark(bench, problems[bname], texts, by_bench[bname], ev, grader,
                                                 show_progress=show_progress)
                st.write("samples", rows, model=folder, benchmark=bname)
                res_model[bname] = summarize_benchmark(bench, problems[bname], verdicts, rows, ev, protocol)
                cut = budget_note(decoding.sampling.max_tokens, res_model[bname]["truncated"], len(rows))
                if cut:
                    st.note(f"model {name}, {bname}: {cut}")
                scores[name][bname] = problem_scores(problems[bname], verdicts)
                log.info("model %s, %s: %.1f%% [%.1f, %.1f] (n=%d)", name, bname, res_model[bname]["score"],
                         res_model[bname]["ci_low"], res_model[bname]["ci_high"], res_model[bname]["n"])
            grade_s = time.time() - t1
            results[name] = res_model
            info = {"status": "evaluated", "spec": spec, "source": where, "model_id": model_id,
                    "generate_s": round(gen_s, 2), "grade_s": round(grade_s, 2), "fingerprint": fingerprint,
                    "generated": todo, "reused_from": reused or None,
                    **({"generated_with": list(shared[name].group)} if name in shared else {})}
            models_info[name] = info
            st.write("results", {"model": name, **info, "benchmarks": res_model, "protocol": protocol,
                                 "sampling": params_dict(decoding)["sampling"], "n_samples": decoding.n_samples},
                     model=folder)
            st.agents[f"eval:{name}"] = {**stats, **({"reused_benchmarks": sorted(reused)} if reused else {})}
    finally:
        st.counts["math_checks"] = grader.checks
        st.counts["math_timeouts"] = grader.timeouts
        st.counts["grader_restarts"] = grader.restarts
        grader.close()

    doc = build_comparison(results, scores, resamples=ev.bootstrap, seed=ev.seed, beta_scales=beta_scales,
                           reference=ev.compare_to, skipped=skipped, correction=ev.multiple_comparisons)
    st.write("comparison", doc)
    st.write("comparison_csv", comparison_csv(doc))
    noisy = [p for p in doc["paired"] if p["within_noise"] and doc["reference"] in (p["model_a"], p["model_b"])]
    if noisy:
        st.note(f"{len(noisy)} of the differences to '{doc['reference']}' are within noise (95% interval contains 0)")
    st.counts["models_evaluated"] = len(results)
    st.counts["models_generated"] = sum(1 for i in models_info.values() if i.get("generated"))
    st.counts["models_reused"] = sum(1 for i in models_info.values() if i.get("reused_from") and not i.get("generated"))
    st.counts["models_skipped"] = len(skipped)
    return st.finish(models=models_info)
