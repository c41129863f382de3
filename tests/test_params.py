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
