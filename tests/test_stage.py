"""Stage folders and manifests."""

import os

from cogpo_kit.io import read_json
from cogpo_kit.params import load_params, params_dict
from cogpo_kit.pipeline.stage import open_stage, read_manifest, run_dir, scrub_secrets, stage_dir_name


def test_stage_manifest(tmp_path):
    p = load_params([], [f"run.output_dir={tmp_path}", "run.run_id=r1"])
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"a": 1}\n')
    st = open_stage(run_dir(p), "critique", params_dict(p), inputs=[inp])
    st.counts["examples"] = 3
    st.note("no medium CoTs")
    m = st.finish()
    assert (tmp_path / "r1" / "01_critique" / "manifest.json").exists()
    assert (tmp_path / "r1" / "01_critique" / "stage.log").read_text().count("no medium CoTs") == 1
    disk = read_manifest(run_dir(p), "01_critique")
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
    text = (tmp_path / "02_rethink" / "manifest.json").read_text()
    assert "sk-very-secret" not in text and "MY_KEY" in text
    assert scrub_secrets({"max_tokens": 3})["max_tokens"] == 3


def test_stage_names():
    assert stage_dir_name("evaluate") == "06_evaluate" and stage_dir_name("03_pairs") == "03_pairs"
