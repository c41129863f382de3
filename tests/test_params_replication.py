"""The paper's replication params files (params/paper-*.yaml): each loads, and every model, data source,
benchmark and path it names is one the paper uses and the kit knows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cogpo_kit.data.loaders import LOADERS
from cogpo_kit.evaluation.benchmarks import REGISTRY
from cogpo_kit.params import load_params, params_dict
from cogpo_kit.params.loader import read_params_file, read_yaml
from cogpo_kit.training.sft import VARIANTS as SFT_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "params" / "paper-qwen2.5-7b.yaml"
FILES = sorted((ROOT / "params").glob("paper-*.yaml"))

PAPER_MODELS = {
    # students
    "Qwen/Qwen2.5-7B-Instruct": "Table 2 and Appendix A.2 (default student); Table 4 (the student as Critic)",
    "Qwen/Qwen2.5-3B-Instruct": "Section 4.6, Figure 4a; Appendix A.2",
    "Qwen/Qwen2.5-14B-Instruct": "Section 4.6, Figure 4b; Appendix A.2",
    "meta-llama/Llama-3.1-8B-Instruct": "Section 4.7, Figure 5a (Llama3.1-8B-Instruct)",
    "mistralai/Mistral-7B-Instruct-v0.3": "Section 4.7, Figure 5b; Appendix A.2 (Mistral-7B-Instruct-v0.3)",
    # CRV agents
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": "Appendix A.2 (Critic, Rethinker, Verifier); Table 4",
    "Qwen/Qwen2.5-32B-Instruct": "Table 4 (Critic)",
    "Qwen/Qwen2.5-72B-Instruct": "Table 4 (Critic)",
    # open-source models compared against
    "SimpleBerry/LLaMA-O1-Supervised-1129": "Table 3, LLaMA-O1 (footnote 8)",
    "AIDC-AI/Marco-o1": "Table 3, 'Macro-o1' (Zhao et al. 2024)",
    "bespokelabs/Bespoke-Stratos-7B": "Table 3 (footnote 9)",
    "open-thoughts/OpenThinker-7B": "Table 3 (footnote 10)",
}
"""Every hub model the paper names, with where it names it."""

PAPER_DATASETS = {
    "bespokelabs/Bespoke-Stratos-17k": "Appendix A.1 (footnote 12): Tables 2, 3, 4, 6; Figures 4, 5",
    "open-thoughts/OpenThoughts-114k": "Appendix A.1 (footnote 14): Tables 3, 5, 10",
    "NovaSky-AI/Sky-T1_data_17k": "Appendix A.1 (footnote 13): Table 9",
}
"""The paper's training sets, by hub id."""

GPUS = {"paper-qwen2.5-14b": 32}
"""Processes per training run where not 8 (Appendix A.2: one node of 8 GPUs; the 14B model 4 nodes)."""

RUN_NAMES = {"zero_shot", *SFT_VARIANTS, "cogpo", "dpo", "beta_dpo", "simpo"}
"""``eval.models`` entries that name a model of the run itself, not a hub model."""

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _named_models(tree, key: str = "") -> list[tuple[str, str]]:
    """``(key, model)`` for every model a params mapping names: ``model`` keys, ``eval.models``,
    ``pairs.tokenizer``."""
    out = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            path = f"{key}.{k}" if key else k
            if k in ("model", "tokenizer") and isinstance(v, str):
                out.append((path, v))
            elif path == "eval.models":
                out += [(path, m) for m in v if m not in RUN_NAMES and not str(m).startswith("cogpo_x")]
            else:
                out += _named_models(v, path)
    return out


def _named_paths(tree, key: str = "") -> list[tuple[str, str]]:
    """``(key, value)`` for every non-null path-like parameter (``path``, ``*_path``, ``*_dir``)."""
    out = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            path = f"{key}.{k}" if key else k
            if isinstance(v, dict):
                out += _named_paths(v, path)
            elif (k == "path" or k.endswith("_path") or k.endswith("_dir")) and v is not None:
                out.append((path, v))
    return out


def test_the_replication_files_are_there():
    names = {f.stem for f in FILES}
    assert MAIN in FILES
    assert {"paper-qwen2.5-3b", "paper-qwen2.5-14b", "paper-llama3.1-8b", "paper-mistral-7b-v0.3",
            "paper-qwen2.5-7b-openthoughts", "paper-qwen2.5-7b-sky-t1", "paper-critic-qwen2.5-7b",
            "paper-critic-qwen2.5-32b", "paper-critic-qwen2.5-72b", "paper-ablation-c",
            "paper-ablation-cr", "paper-table3-open-models", "paper-table5-levels"} <= names


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_replication_file(path):
    p = load_params([path])
    tree = params_dict(p)
    raw = read_params_file(path)

    # one file, one run: the run id is the file's name
    assert p.run.run_id == path.stem

    # every model it names is a hub id the paper names
    for key, model in _named_models(raw):
        assert HUB_ID.match(model), f"{path.name}: {key} = {model!r} is not a hub id"
        assert model in PAPER_MODELS, f"{path.name}: {key} = {model!r} is not a model of the paper"

    # the data source is a loader of the kit, reading one of the paper's training sets
    assert p.data.source in LOADERS, f"{path.name}: unknown data source {p.data.source!r}"
    assert LOADERS[p.data.source].hub in PAPER_DATASETS

    # benchmarks the kit has
    assert set(p.eval.benchmarks) <= set(REGISTRY)

    # every path exists, or is an output of the run
    for key, value in _named_paths(tree):
        if value == "hub" or str(value).startswith("hub:"):  # fetched from the hub, not a local path
            continue
        rel = Path(value)
        assert rel.parts[:1] == ("outputs",) or (ROOT / rel).exists(), f"{path.name}: {key} = {value!r}"
    for mentioned in re.findall(r"params/[\w./-]+\.(?:yaml|json)", path.read_text(encoding="utf-8")):
        assert (ROOT / mentioned).exists(), f"{path.name} mentions {mentioned}, which does not exist"

    # Table 8: global batch 96 for SFT and preference training
    procs = GPUS.get(path.stem, 8)
    for section in (p.sft.optim, p.preference.optim):
        assert section.per_device_batch_size * section.gradient_accumulation_steps * procs == 96


@pytest.mark.parametrize("path", [f for f in FILES if f != MAIN], ids=[f.stem for f in FILES if f != MAIN])
def test_replication_files_extend_the_main_one_and_say_what_they_reproduce(path):
    text = path.read_text(encoding="utf-8")
    assert re.match(r"# Paper .*(Table|Figure) \d", text), f"{path.name}: the first line names no paper table"
    assert read_yaml(path)["extends"] == MAIN.name
    main, p = load_params([MAIN]), load_params([path])
    assert p.report.title != main.report.title and p.run.description != main.run.description
    # what the file does not set is the main file's
    assert p.pairs == main.pairs and p.crv.rethinker.sampling == main.crv.rethinker.sampling
    assert (p.sft.optim.learning_rate, p.preference.optim.learning_rate) == (1e-5, 5e-7)


def test_the_settings_each_file_changes():
    load = {f.stem: load_params([f]) for f in FILES}
    main = load["paper-qwen2.5-7b"]
    assert load["paper-qwen2.5-3b"].student.model == "Qwen/Qwen2.5-3B-Instruct"
    assert load["paper-qwen2.5-14b"].sft.optim.gradient_accumulation_steps == 3
    assert load["paper-qwen2.5-7b-openthoughts"].data.source == "openthoughts"
    assert load["paper-qwen2.5-7b-sky-t1"].data.source == "sky_t1"
    for size in ("7", "32", "72"):
        p = load[f"paper-critic-qwen2.5-{size}b"]
        assert p.crv.critic.engine.model == f"Qwen/Qwen2.5-{size}B-Instruct"
        assert p.crv.critic.engine.thinking_end is None  # not a reasoning model
        assert p.crv.rethinker.engine.model == p.crv.verifier.engine.model == main.crv.critic.engine.model
        assert p.sft.variants == ("crv_sft",) and p.preference.methods == ()
        assert p.crv.critic.engine.gpu_memory_utilization + p.crv.rethinker.engine.gpu_memory_utilization <= 0.9
    assert load["paper-ablation-c"].crv.ablation == "C" and load["paper-ablation-cr"].crv.ablation == "CR"
    assert all(m in PAPER_MODELS for m in load["paper-table3-open-models"].eval.models)
