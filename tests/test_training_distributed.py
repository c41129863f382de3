"""Two gloo processes (torchrun) train the same as one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_pairs_fixtures import write_crv_fixture

PARAMS = """
run: {{output_dir: {out}, run_id: one}}
student: {{model: "tiny:llama"}}
pairs: {{max_length: 256}}
preference:
  methods: [cogpo, beta_dpo]
  share_ref_log_probs: false
  beta_dpo_filter: true
  beta_dpo_keep: 0.5
  optim: {{max_steps: 2, per_device_batch_size: 4, max_length: 256, learning_rate: 0.01, warmup_ratio: 0.0,
          save_steps: 100, logging_steps: 1}}
"""


def quiet_env() -> dict[str, str]:
    """The environment of a training subprocess: no progress bars, one thread per process."""
    return dict(os.environ, COGPO_NO_PROGRESS="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1")


def torchrun(nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc_per_node <nproc>`` of this interpreter (gloo on CPU)."""
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(nproc)]


def _rows(run: Path, method: str) -> list[dict]:
    return [json.loads(line) for line in (run / "05_preference" / method / "metrics.jsonl").open() if "loss" in line
            and "train_runtime" not in line]


@pytest.mark.slow
@pytest.mark.builds_model
def test_two_processes_match_one(tmp_path):
    from cogpo_kit.params import load_params
    from cogpo_kit.pairs.stage import run_pairs

    out = tmp_path / "out"
    write_crv_fixture(out / "one", copies=2)  # 24 pairs: every global batch of 4 is full
    cfg = tmp_path / "p.yaml"
    cfg.write_text(PARAMS.format(out=out))
    m = run_pairs(load_params([cfg]))
    assert m["counts"]["pairs"] == 24
    shutil.copytree(out / "one" / "03_pairs", out / "two" / "03_pairs")
    shutil.copytree(out / "one" / "03_pairs", out / "shared" / "03_pairs")
    env = quiet_env()
    cli = ["-m", "cogpo_kit.cli", "train", "preference", str(cfg)]
    procs = [
        subprocess.Popen([sys.executable, *cli], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([*torchrun(), *cli, "-o", "run.run_id=two", "-o", "preference.optim.per_device_batch_size=2"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        # the reference log-probs shared by the methods, computed over two processes
        subprocess.Popen([*torchrun(), *cli, "-o", "run.run_id=shared",
                          "-o", "preference.optim.per_device_batch_size=2",
                          "-o", "preference.share_ref_log_probs=true"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    one, two = out / "one", out / "two"
    manifest = json.loads((two / "05_preference" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and not (two / "preference").exists()
    for method in ("cogpo", "beta_dpo"):
        a, b = _rows(one, method), _rows(two, method)
        assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
        for ra, rb in zip(a, b):
            for key in ("loss", "rewards/margins", "rewards/accuracies", "beta/mean", "large_gap/rewards/margins"):
                if key in ra:
                    assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (method, ra["step"], key)
        assert a[-1]["loss"] != pytest.approx(0.6931, abs=1e-3), "the second step should have moved the policy"
        from safetensors.torch import load_file

        # the saved LoRA adapters (what training changed)
        wa = load_file(str(one / "05_preference" / method / "model" / "adapter_model.safetensors"))
        wb = load_file(str(two / "05_preference" / method / "model" / "adapter_model.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            # Adam divides by sqrt(v) + eps: where a gradient is near eps, float reduction order (one process
            # against two) moves the update by a few 1e-6 of the learning rate 0.01; a real difference in the
            # data or the loss moves it by a whole step (1e-2)
            diff = (wa[k] - wb[k]).abs().max().item()
            assert diff < 1e-4, (method, k, diff)
    assert "filter/kept" in _rows(two, "beta_dpo")[0]
    # shared reference log-probs over two processes: computed once, by the first method, for every pair; CogPO
    # trains as with its own reference pass each step (beta-DPO's filter is left out: at step 1 every margin is
    # float noise around 0 when the reference comes from another batching, and the filter's draw follows it)
    shared = out / "shared"
    methods = json.loads((shared / "05_preference" / "manifest.json").read_text())["methods"]
    assert [methods[m]["reference_logps"] for m in ("cogpo", "beta_dpo")] == ["computed for all", "shared (computed)"]
    refs = [json.loads(line) for line in (shared / "05_preference" / "ref_logps.jsonl").open()]
    assert len(refs) == 24 and all(r["ref_chosen_logps"] < 0 and r["ref_rejected_logps"] < 0 for r in refs)
    for ra, rb in zip(_rows(one, "cogpo"), _rows(shared, "cogpo")):
        for key in ("loss", "rewards/margins", "large_gap/rewards/margins"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-4), ("shared", ra["step"], key)
