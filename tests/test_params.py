"""Params: YAML files into frozen dataclasses; unknown keys and wrong types name the key and file."""

import dataclasses
from pathlib import Path

import pytest

from cogpo_kit.params import ParamsError, RunParams, load_params, params_dict
from cogpo_kit.params.loader import parse_override

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo.yaml", "smoke.yaml", "paper-qwen2.5-7b.yaml"])
def test_shipped_params_load(name):
    p = load_params([ROOT / "params" / name])
    assert isinstance(p, RunParams)
    assert p.pairs.beta_small < p.pairs.beta_medium < p.pairs.beta_large


def test_paper_params_follow_table8():
    p = load_params([ROOT / "params" / "paper-qwen2.5-7b.yaml"])
    assert p.student.model == "Qwen/Qwen2.5-7B-Instruct"
    assert p.crv.critic.engine.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"
    assert (p.crv.critic.sampling.temperature, p.crv.critic.sampling.top_p, p.crv.critic.sampling.top_k) == (0.7, 0.9, 50)
    assert p.sft.optim.learning_rate == 1e-5 and p.sft.optim.epochs == 3.0
    assert p.preference.optim.learning_rate == 5e-7 and p.preference.optim.epochs == 1.0
    assert (p.preference.simpo_beta, p.preference.simpo_gamma, p.preference.dpo_beta) == (2.0, 0.3, 0.1)
    assert (p.pairs.beta_small, p.pairs.beta_medium, p.pairs.beta_large) == (0.1, 0.2, 0.5)
    assert p.data.source == "bespoke_stratos"


def test_frozen():
    p = load_params([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.crv.votes = 5  # type: ignore[misc]


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("crv:\n  votez: 3\n")
    with pytest.raises(ParamsError) as e:
        load_params([f])
    assert "crv.votez" in str(e.value) and str(f) in str(e.value)


def test_wrong_type_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("sft:\n  optim:\n    max_steps: lots\n")
    with pytest.raises(ParamsError) as e:
        load_params([f])
    assert "sft.optim.max_steps" in str(e.value) and str(f) in str(e.value)


def test_literal_checked(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("crv:\n  ablation: XYZ\n")
    with pytest.raises(ParamsError, match="one of"):
        load_params([f])


def test_later_files_and_overrides_win(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("crv:\n  votes: 5\n  max_attempts: 2\n")
    b.write_text("crv:\n  votes: 7\n")
    p = load_params([a, b])
    assert p.crv.votes == 7 and p.crv.max_attempts == 2
    p = load_params([a, b], ["crv.votes=9", "sft.optim.learning_rate=1e-4"])
    assert p.crv.votes == 9 and p.sft.optim.learning_rate == 1e-4


def test_override_errors_name_the_override():
    with pytest.raises(ParamsError, match="crv.nope"):
        load_params([], ["crv.nope=1"])
    with pytest.raises(ParamsError, match="key=value"):
        parse_override("crv.votes")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params([tmp_path / "nope.yaml"])
    f = tmp_path / "broken.yaml"
    f.write_text("crv: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params([f])


def test_params_dict_round_trip():
    p = load_params([ROOT / "params" / "demo.yaml"])
    from cogpo_kit.params import from_dict

    assert from_dict(RunParams, params_dict(p)) == p


def test_every_field_has_a_docstring():
    """Each params dataclass documents every field with a string literal under it."""
    import ast
    import inspect

    from cogpo_kit.params.loader import from_dict  # noqa: F401

    seen = set()

    def walk(cls):
        if cls in seen:
            return
        seen.add(cls)
        src = inspect.getsource(cls)
        tree = ast.parse(src.lstrip() if not src.startswith("class") else src)
        body = tree.body[0].body
        names = [f.name for f in dataclasses.fields(cls)]
        documented = set()
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and i + 1 < len(body):
                nxt = body[i + 1]
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                        and isinstance(nxt.value.value, str):
                    documented.add(node.target.id)
        missing = [n for n in names if n not in documented]
        assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"
        import typing

        for tp in typing.get_type_hints(cls).values():
            for t in (tp, *typing.get_args(tp)):
                if dataclasses.is_dataclass(t):
                    walk(t)

    walk(RunParams)


# ---------------------------------------------------------------- extends

def test_extends_merges_the_parent_and_the_file_wins(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "run: {run_id: base, seed: 7}\ncrv:\n  votes: 5\n  max_attempts: 2\n"
        "  critic: {sampling: {temperature: 0.3, top_k: 5}}\n"
        "eval: {benchmarks: [gsm8k, math500, aime24]}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nrun: {run_id: child}\ncrv:\n  votes: 7\n  critic: {sampling: {top_k: 9}}\n"
                     "eval: {benchmarks: [aime24]}\n")
    p = load_params([child])
    assert (p.run.run_id, p.run.seed) == ("child", 7)
    assert (p.crv.votes, p.crv.max_attempts) == (7, 2)
    assert (p.crv.critic.sampling.temperature, p.crv.critic.sampling.top_k) == (0.3, 9)  # nested mappings merge
    assert p.eval.benchmarks == ("aime24",)  # lists are replaced
    d = params_dict(p)
    assert "extends" not in d and d["crv"]["votes"] == 7 and d["run"]["seed"] == 7  # the dump is the merged result


def test_extends_is_relative_to_the_file_and_chains(tmp_path):
    (tmp_path / "a.yaml").write_text("crv: {votes: 5, max_attempts: 2}\nstudent: {model: a}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("extends: ../a.yaml\ncrv: {votes: 6}\n")
    (tmp_path / "sub" / "c.yaml").write_text(f"extends: [b.yaml, {tmp_path / 'd.yaml'}]\nstudent: {{model: c}}\n")
    (tmp_path / "d.yaml").write_text("crv: {max_attempts: 4}\n")
    p = load_params([tmp_path / "sub" / "c.yaml"])  # a, then b over it, then d, then c
    assert (p.crv.votes, p.crv.max_attempts, p.student.model) == (6, 4, "c")


def test_extends_with_later_files_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("crv: {votes: 5, max_attempts: 2}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ncrv: {votes: 7}\n")
    (tmp_path / "extra.yaml").write_text("crv: {max_attempts: 3}\n")
    p = load_params([tmp_path / "child.yaml", tmp_path / "extra.yaml"], ["crv.votes=9"])
    assert (p.crv.votes, p.crv.max_attempts) == (9, 3)


def test_extends_cycle_is_an_error_naming_the_files(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\ncrv: {votes: 5}\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ParamsError) as e:
        load_params([a])
    msg = str(e.value)
    assert "cycle" in msg and str(b) in msg and "a.yaml" in msg
    self_ref = tmp_path / "self.yaml"
    self_ref.write_text("extends: self.yaml\n")
    with pytest.raises(ParamsError, match="cycle"):
        load_params([self_ref])


def test_extends_missing_file_names_the_extending_file(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ParamsError) as e:
        load_params([child])
    msg = str(e.value)
    assert msg.startswith(str(child)) and "nowhere.yaml" in msg and "not found" in msg


def test_extends_must_name_files(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: {file: base.yaml}\n")
    with pytest.raises(ParamsError, match=r"'extends' must name a parameter file") as e:
        load_params([child])
    assert str(child) in str(e.value)


def test_errors_in_a_parent_name_the_parent(tmp_path):
    (tmp_path / "base.yaml").write_text("crv: {votez: 3}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\n")
    with pytest.raises(ParamsError) as e:
        load_params([child])
    assert "crv.votez" in str(e.value) and str(tmp_path / "base.yaml") in str(e.value)


def test_the_student_has_one_key(tmp_path):
    """``student.model`` is the student everywhere; the old ``sft.model`` is refused with its new place."""
    (tmp_path / "old.yaml").write_text("sft: {model: other}\n")
    with pytest.raises(ParamsError, match=r"'sft.model' is now 'student.model'") as exc:
        load_params([tmp_path / "old.yaml"])
    assert "old.yaml" in str(exc.value)
