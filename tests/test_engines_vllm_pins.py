"""The ``gpu`` extra resolves: its vLLM pin accepts the kit's transformers and torch pins.

vLLM releases pin transformers and torch tightly; a kit pin outside their range makes
``pip install -e .[gpu]`` fail, or pip backtracks to an untested vLLM. The requirements below are
copied from the wheels' METADATA (``pip download --no-deps vllm==X``), so the check runs offline.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

packaging = pytest.importorskip("packaging")
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.version import Version  # noqa: E402

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

VLLM_METADATA = {
    "0.30.0": ("<3.15,>=3.10", ["transformers>=5.10.4", "huggingface_hub>=1.31.0", "tokenizers>=0.21.1",
                                "torch==2.13.0"]),
    "0.31.0": ("<3.15,>=3.10", ["transformers<5.18.0,>=5.10.4", "huggingface_hub>=1.31.0", "tokenizers>=0.21.1",
                                "torch==2.13.0"]),
    "0.32.0": ("<3.15,>=3.11", ["transformers<5.20.0,>=5.16.1", "huggingface_hub>=1.31.0", "tokenizers>=0.23.2",
                                "torch==2.13.0"]),
    "0.33.0": ("<3.15,>=3.11", ["transformers<5.21.0,>=5.16.1", "huggingface_hub>=1.31.0", "tokenizers>=0.23.2",
                                "torch==2.14.0"]),
}
"""``Requires-Python`` and the ``Requires-Dist`` lines that concern the kit, per vLLM release."""

RELEASED = {
    "transformers": ["5.16.1", "5.17.0", "5.18.0", "5.19.0", "5.20.0", "5.20.1", "5.20.2", "5.21.0", "5.21.1",
                     "5.22.0", "5.22.1", "5.22.2", "5.23.0", "5.24.0"],
    "torch": ["2.11.0", "2.12.0", "2.13.0", "2.14.0", "2.14.1"],
}
"""Released versions a pin range can land on (checked for a common one)."""


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _specs(requirements, name: str) -> list[SpecifierSet]:
    out = []
    for line in requirements:
        req = Requirement(line)
        if req.name.replace("_", "-").lower() == name and (req.marker is None or req.marker.evaluate({"extra": "gpu"})):
            out.append(req.specifier)
    return out


def _gpu_requirements() -> list[str]:
    project = _pyproject()["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["gpu"])


def _pinned_vllm() -> str:
    pins = [s for s in _specs(_pyproject()["project"]["optional-dependencies"]["gpu"], "vllm")]
    assert len(pins) == 1, "the gpu extra names vllm once"
    exact = [sp.version for sp in pins[0] if sp.operator == "=="]
    assert exact, f"the gpu extra must pin vllm exactly (got 'vllm{pins[0]}')"
    return exact[0]


def test_gpu_extra_pins_a_vllm_whose_requirements_accept_the_kit():
    version = _pinned_vllm()
    assert version in VLLM_METADATA, f"vllm=={version}: record its METADATA requirements in this test"
    python, requires = VLLM_METADATA[version]
    ours = _gpu_requirements()
    for name in ("transformers", "torch"):
        specs = _specs(ours, name) + _specs(requires, name)
        fits = [v for v in RELEASED[name] if all(Version(v) in s for s in specs)]
        assert fits, f"vllm=={version} requires {_specs(requires, name)}, the kit pins {_specs(ours, name)}: no {name}"
    kit_python = SpecifierSet(_pyproject()["project"]["requires-python"])
    env_python = re.search(r"^\s*-\s*python=(\S+)", (ROOT / "environment.yml").read_text(), re.M)
    assert env_python and Version(env_python.group(1)) in SpecifierSet(python) & kit_python


def test_environment_yml_installs_the_same_vllm():
    text = (ROOT / "environment.yml").read_text()
    lines = [ln.strip().lstrip("-").strip() for ln in text.splitlines() if re.match(r"\s*-\s*vllm\b", ln)]
    assert lines == [f"vllm=={_pinned_vllm()}"]

