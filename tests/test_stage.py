"""Stage folders and manifests, the stage registry, and stages writing their artifacts through their schemas."""

import pytest

from cogpo_kit.io import DataError
from cogpo_kit.params import load_params, params_dict
from cogpo_kit.pipeline.stage import open_stage, read_manifest, run_dir, scrub_secrets, stage_dir_name
from cogpo_kit.pipeline.stages import LOG_FILE, STAGES, artifact_path, manifest_path, stage_path


def test_stage_manifest(tmp_path):
    p = load_params([], [f"run.output_dir={tmp_path}", "run.run_id=r1"])
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"a": 1}\n')
    st = open_stage(run_dir(p), "critique", params_dict(p), inputs=[inp])
    st.counts["examples"] = 3
    st.note("no medium CoTs")
    m = st.finish()
    assert manifest_path(tmp_path / "r1", "critique").exists()
    assert (stage_path(tmp_path / "r1", "critique") / LOG_FILE).read_text().count("no medium CoTs") == 1
    disk = read_manifest(run_dir(p), STAGES[0])
    assert disk["counts"] == {"examples": 3} and disk["notes"] == ["no medium CoTs"]
    assert disk["inputs"][str(inp)] and m["wall_time_s"] >= 0
    assert "torch" in disk["packages"] and "git_commit" in disk["code_version"]
    again = open_stage(run_dir(p), "critique", params_dict(p), inputs=[inp])
    again.counts["examples"] = 3
    again.note("no medium CoTs")
    assert again.finish()["run_uid"] != m["run_uid"]  # a redone stage's manifest always differs


def test_secrets_never_reach_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-very-secret")
    data = {"engine": {"api_key_env": "MY_KEY", "api_key": "sk-very-secret", "max_tokens": 5}}
    st = open_stage(tmp_path, "rethink", data)
    st.agents["critic"] = {"headers": {"Authorization-token": "sk-very-secret"}}
    st.finish()
    text = manifest_path(tmp_path, "rethink").read_text()
    assert "sk-very-secret" not in text and "MY_KEY" in text
    assert scrub_secrets({"max_tokens": 3})["max_tokens"] == 3


def test_stage_names():
    assert stage_dir_name("evaluate") == STAGES[5] and stage_dir_name(STAGES[2]) == STAGES[2]
    assert [s.split("_", 1)[1] for s in STAGES] == ["critique", "rethink", "pairs", "sft", "preference", "evaluate",
                                                    "report"]
    with pytest.raises(ValueError, match="unknown stage 'critic'"):
        stage_dir_name("critic")


def test_write_checks_rows_against_the_schema(tmp_path):
    st = open_stage(tmp_path, "critique", {})
    row = {"id": "a", "problem": "1 + 1?", "answer": "2", "reasoning": "1 + 1 = 2.", "source": "s", "meta": {}}
    path = st.write("input", [row])
    assert path == artifact_path(tmp_path, "input") and path.read_text().count("\n") == 1
    with pytest.raises(DataError) as err:
        st.write("input", [row, dict(row, id="b", meta=None)])
    assert err.value.line == 2 and err.value.field == "meta"
    assert path.read_text().count("\n") == 1  # nothing written
    with pytest.raises(ValueError, match="written by stage"):
        st.write("pairs", [])


def test_read_only_stage_writes_nothing(tmp_path):
    st = open_stage(tmp_path, "preference", {"preference": {}}, inputs=[tmp_path / "nothing"], read_only=True)
    assert st.path == stage_path(tmp_path, "preference") and not st.path.exists()
    st.note("a note")
    st.counts["pairs"] = 3
    st.write("preference_metrics", [{"step": 1, "loss": 0.5}], method="cogpo")
    assert st.artifact("preference_metrics", method="cogpo") == artifact_path(tmp_path, "preference_metrics",
                                                                               method="cogpo")
    out = st.finish(methods={})
    assert out == {"stage": STAGES[4], "counts": {"pairs": 3}, "notes": ["a note"], "follower": True, "methods": {}}
    assert not tmp_path.joinpath(STAGES[4]).exists() and st.inputs == {}
