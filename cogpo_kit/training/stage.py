"""Stages ``04_sft`` and ``05_preference``.

``run_sft(params)``: each SFT variant (``crv_sft`` on D_SFT*, ``sft`` on the whole original dataset,
``sft_same_problems`` on the original CoTs of the D_SFT* problems) from the student model ->
``04_sft/<variant>/{model/, metrics.jsonl}``; the manifest says what each variant trained on.

``run_preference(params)``: each method from the same SFT model ``04_sft/<init_from>/model`` (the student
model, with a note, when that is missing) on the same ``03_pairs/pairs.jsonl`` ->
``05_preference/<method>/{model/, metrics.jsonl}``, and the shared reference log-probs
``05_preference/ref_logps.jsonl``. The pairs file is checked row by row before anything trains. With no
rows or no pairs, each output model is a pointer folder standing for its starting model (a few hundred
bytes, not a copy), with a note, so evaluation still runs.

With LoRA, ``model/`` is an adapter folder whose base is recorded as an absolute path and relative to the
folder (SFT adapters sit on the student model's HF folder, preference adapters on the SFT adapter folder);
the manifests say which (``saved``, ``base``, and the starting model's fingerprint).

Both run unchanged in-process, under ``torchrun`` and under ``accelerate launch``; only the main process
writes the stage's log and manifest (the other processes open the same stage read-only). With
``sft.launch`` / ``preference.launch`` set, the stage called in-process (a notebook, ``cogpo-kit run``,
``cogpo-kit train``) starts that launcher itself on ``cogpo-kit train``, streams its output and returns the
manifest its main process wrote (:mod:`cogpo_kit.training.launch`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cogpo_kit.params.loader import params_dict
from cogpo_kit.pipeline.stage import open_stage, run_dir
from cogpo_kit.pipeline.stages import artifact_path
from cogpo_kit.training.common import is_main_process, point_model, write_metrics
from cogpo_kit.training.launch import launch_if_asked


def _open(run_path: Path, name: str, params: dict, inputs):
    return open_stage(run_path, name, params, inputs=inputs, read_only=not is_main_process())


def _base_model_path(spec: str) -> str:
    """HF folder of a model spec; non-main processes wait for the main one to convert/build it."""
    from cogpo_kit.models.resolve import hf_path, resolve

    if is_main_process() or not spec.startswith("embedded:"):
        return hf_path(spec)
    deadline = time.time() + 1800
    while resolve(spec).hf_path is None:
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for the main process to convert {spec}")
        time.sleep(2)
    return resolve(spec).hf_path


def run_sft(params) -> dict:
    """Train every SFT variant of a run (under ``sft.launch``'s launcher when it names one); returns the manifest."""
    launched = launch_if_asked(params, "sft")
    if launched is not None:
        return launched
    from cogpo_kit.pairs.inputs import read_crv, read_level_subset
    from cogpo_kit.training.sft import LEVEL_VARIANTS, VARIANTS, sft_rows, train_sft

    run_path = run_dir(params)
    art = read_crv(run_path, which=("input", "sft"))
    levels = {}
    for variant in params.sft.variants:
        if variant in LEVEL_VARIANTS:
            path = artifact_path(run_path, "sft_level", level=LEVEL_VARIANTS[variant])
            if not path.exists():
                raise FileNotFoundError(f"{path}: SFT variant '{variant}' needs the equal-size level subsets; "
                                        "set crv.equal_level_subsets and run the rethink stage again")
            levels[variant] = (path, read_level_subset(path, LEVEL_VARIANTS[variant]))
    sections = params_dict(params)
    stage = _open(run_path, "sft", {"sft": sections["sft"], "prompt_template": params.pairs.prompt_template},
                  [*art.paths.values(), *(p for p, _ in levels.values())])
    base = _base_model_path(params.student.model)
    stage.logger.info("student model %s -> %s", params.student.model, base)
    summaries = {}
    for variant in params.sft.variants:
        rows = sft_rows(art, variant, params.pairs.prompt_template, levels.get(variant, (None, None))[1])
        out = stage.artifact("sft_model", variant=variant).parent
        stage.counts[f"{variant}_examples"] = len(rows)
        if not rows:
            stage.note(f"{variant}: no training rows ({VARIANTS[variant]}: none); its model is the student "
                       "model (a pointer folder)")
            point_model(base, stage.artifact("sft_model", variant=variant))
            write_metrics(stage.artifact("sft_metrics", variant=variant), [])
            summaries[variant] = {"examples": 0, "steps": 0, "points_to": base, "saved": "pointer",
                                  "data": VARIANTS[variant]}
            continue
        stage.logger.info("%s: %d rows of %s", variant, len(rows), VARIANTS[variant])
        if variant != "crv_sft":
            stage.note(f"SFT baseline '{variant}' trained on {len(rows)} rows: {VARIANTS[variant]}")
        summaries[variant] = train_sft(rows, base_path=base, params=params.sft, out_dir=out, logger=stage.logger)
        summaries[variant]["data"] = VARIANTS[variant]
    from cogpo_kit.models.adapters import model_fingerprint

    return stage.finish(student=params.student.model, student_path=base, student_fingerprint=model_fingerprint(base),
                        variants=summaries)


def _is_model_dir(path: Path) -> bool:
    from cogpo_kit.models.adapters import is_adapter_dir, is_pointer_dir

    return (path / "config.json").exists() or is_adapter_dir(path) or is_pointer_dir(path)


def _init_model(params, run_path: Path, stage) -> str:
    init = artifact_path(run_path, "sft_model", variant=params.preference.init_from)
    if _is_model_dir(init):
        return str(init)
    stage.note(f"SFT model {init} not found: preference training starts from the student model {params.student.model}")
    return _base_model_path(params.student.model)


def _model_input_files(path: Path) -> list[Path]:
    """The small files of a model folder that change when it is retrained (the stage's inputs)."""
    from cogpo_kit.models.adapters import ADAPTER_WEIGHTS, BASE_POINTER, MODEL_POINTER

    names = ("config.json", MODEL_POINTER, BASE_POINTER, *ADAPTER_WEIGHTS)
    return [path / n for n in names if (path / n).is_file()]


def run_preference(params) -> dict:
    """Train every preference method of a run from the same SFT model on the same pairs (under
    ``preference.launch``'s launcher when it names one); returns the manifest."""
    launched = launch_if_asked(params, "preference")
    if launched is not None:
        return launched
    from cogpo_kit.models.adapters import model_fingerprint
    from cogpo_kit.pairs.schema import load_pairs
    from cogpo_kit.training.preference import method_specs, train_preference

    run_path = run_dir(params)
    pairs_path = artifact_path(run_path, "pairs")
    pairs = load_pairs(pairs_path)  # every row checked before any model loads
    specs = method_specs(params.preference)
    sections = params_dict(params)
    stage = _open(run_path, "preference", {"preference": sections["preference"]}, [pairs_path])
    init_path = _init_model(params, run_path, stage)
    if is_main_process():
        for f in _model_input_files(Path(init_path)):
            stage.add_input(f)
    init_fp = model_fingerprint(init_path)
    stage.logger.info("%d pairs; methods %s; starting model %s (fingerprint %s)", len(pairs),
                      [s.name for s in specs], init_path, init_fp)
    max_len = params.preference.optim.max_length
    longer = sum(1 for p in pairs if max(p.get("chosen_tokens", 0), p.get("rejected_tokens", 0)) > max_len)
    if longer:
        stage.note(f"{longer} pair(s) longer than the training max_length {max_len}: TRL keeps their first "
                   f"{max_len} tokens (pairs.max_length is {params.pairs.max_length})")
    gaps = {g: sum(1 for p in pairs if p["gap"] == g) for g in ("small", "medium", "large")}
    stage.counts.update({"pairs": len(pairs), **{f"pairs_{g}": n for g, n in gaps.items()}})
    shared = None
    if pairs and params.preference.share_ref_log_probs and any(s.family == "cogpo" for s in specs):
        from cogpo_kit.training.ref_logps import SharedRefLogps

        shared = SharedRefLogps(path=stage.artifact("ref_logps"), model=init_fp, pairs=pairs,
                                save=lambda rows: stage.write("ref_logps", rows))
    summaries = {}
    for spec in specs:
        out = stage.artifact("preference_model", method=spec.name).parent
        if not pairs:
            stage.note(f"{spec.name}: zero pairs, nothing to train; its model is {init_path} (a pointer folder)")
            point_model(init_path, stage.artifact("preference_model", method=spec.name))
            write_metrics(stage.artifact("preference_metrics", method=spec.name), [])
            summaries[spec.name] = {"method": spec.name, "pairs": 0, "steps": 0, "points_to": init_path,
                                    "saved": "pointer"}
            continue
        summaries[spec.name] = train_preference(spec, pairs, init_path=init_path, pref=params.preference,
                                                out_dir=out, logger=stage.logger, shared=shared)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    extra = {"reference_logps": shared.record()} if shared is not None else {}
    return stage.finish(init_model=init_path, init_model_fingerprint=init_fp, processes=world, methods=summaries,
                        **extra)
