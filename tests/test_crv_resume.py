"""Resume: the CRV stages killed (SIGKILL) at three random points and started again finish with the
outputs of an uninterrupted run, byte for byte, and pay no finished call twice.

A real engine serves the agents: llama.cpp on the embedded model when ``llama_cpp`` imports, else
transformers on ``tiny:llama``. The kill points are chosen by the number of samples in the response
cache (plus a random delay, so kills also land between commits and while artifacts are written).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ("01_critique/input.jsonl", "01_critique/critiques.jsonl", "02_rethink/rewrites.jsonl",
             "02_rethink/incorrect.jsonl", "02_rethink/sft.jsonl")

pytestmark = pytest.mark.slow


def _engine_overrides() -> list[str]:
    # a completion cut at max_tokens is a finished call: the cache must serve it (retry_truncated: false)
    cache = "cache: {retry_truncated: false}"
    if importlib.util.find_spec("llama_cpp") is not None:
        eng = f"{{engine: llamacpp, model: 'embedded:smollm2-135m-instruct', context_length: 1024, batch_size: 8, {cache}}}"
    else:
        eng = f"{{engine: transformers, model: 'tiny:llama', context_length: 1024, batch_size: 8, {cache}}}"
    return [f"crv.critic.engine={eng}", f"crv.verifier.engine={eng}", f"crv.rethinker.engine={eng}"]


# Short system prompts keep the prompts (what a CPU spends most time on) small; the mechanics are the same.
SHORT_PROMPTS = ["crv.critic.system_prompt='Rate how hard the reasoning is for a small model: easy, medium or hard.'",
                 "crv.verifier.system_prompt='Does the reasoning reach the correct answer? Answer YES or NO.'",
                 "crv.rethinker.system_prompt='Rewrite the reasoning with more detail.'"]


def _overrides(out: Path) -> list[str]:
    return [f"run.output_dir={out}", "run.run_id=resume", "data.limit=3", "data.on_invalid=reject", *SHORT_PROMPTS,
            "crv.rethinker.sampling.max_tokens=24", "crv.critic.sampling.max_tokens=4",
            "crv.verifier.sampling.max_tokens=4", "crv.max_attempts=2", "crv.incorrect_max_attempts=2",
            *_engine_overrides()]


def _command(out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "cogpo_kit.crv.stage", str(ROOT / "params" / "smoke.yaml")]
    for o in _overrides(out):
        cmd += ["-o", o]
    return cmd


def _env() -> dict:
    return dict(os.environ, COGPO_NO_PROGRESS="1")


def _cache_rows(out: Path) -> tuple[int, int]:
    """(all stored samples, samples the cache serves)."""
    db = out / "cache" / "responses.sqlite"
    if not db.exists():
        return 0, 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            total, good = conn.execute("SELECT COUNT(*), COALESCE(SUM(ok), 0) FROM responses").fetchone()
        finally:
            conn.close()
        return int(total), int(good)
    except sqlite3.Error:
        return -1, -1


def _run(out: Path, log: Path) -> None:
    with open(log, "ab") as fh:
        res = subprocess.run(_command(out), cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT, timeout=600)
    assert res.returncode == 0, f"CRV stages failed; see {log}"


def _run_and_kill(out: Path, log: Path, target: int, delay: float) -> bool:
    """Start the stages, SIGKILL them once the cache holds ``target`` samples (+ ``delay`` s).
    Returns False if the run finished before the kill."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen(_command(out), cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None and _cache_rows(out)[0] < target:
                time.sleep(0.02)
            time.sleep(delay)
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _paid(out: Path) -> int:
    total = 0
    for stage in ("01_critique", "02_rethink"):
        m = json.loads((out / "resume" / stage / "manifest.json").read_text())
        total += m["funnel"]["calls"]["paid"] + m["funnel"]["calls"]["probe_paid"]
    return total


@pytest.mark.builds_model
def test_killed_three_times_then_rerun_gives_identical_outputs(tmp_path):
    ref = tmp_path / "ref"
    _run(ref, tmp_path / "ref.log")
    stored, n_total = _cache_rows(ref)
    assert n_total == _paid(ref) > 5, (
        f"the uninterrupted run paid {_paid(ref)} samples but its cache serves {n_total} of the {stored} it stored: "
        "finished samples the cache will not serve (e.g. truncated ones) are paid again by every rerun")

    out = tmp_path / "killed"
    seed = int(os.environ.get("COGPO_RESUME_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    targets = sorted(rng.sample(range(1, n_total), 3))
    kills = 0
    for target in targets:
        kills += _run_and_kill(out, tmp_path / "killed.log", target, rng.uniform(0.0, 0.3))
    assert kills >= 2, f"kill points {targets} (seed {seed}) mostly came after the run finished"
    stored_before, finished_before = _cache_rows(out)
    _run(out, tmp_path / "killed.log")
    for name in ARTIFACTS:
        assert (out / "resume" / name).read_bytes() == (ref / "resume" / name).read_bytes(), \
            f"{name} differs after kills at {targets} (COGPO_RESUME_SEED={seed})"
    # the final run paid exactly for the samples not finished before it
    assert _paid(out) == n_total - finished_before, (
        f"rerun paid {_paid(out)}, expected {n_total - finished_before} ({stored_before} samples stored before it, "
        f"{finished_before} served)")
    assert _cache_rows(out)[1] == n_total
