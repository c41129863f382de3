"""Training stages that start their own launcher (``sft.launch`` / ``preference.launch``).

From a notebook executed by ``cogpo-kit run``, a stage with ``launch: {launcher: torchrun, num_processes: 2}``
trains the same model as ``torchrun --nproc_per_node 2 -m cogpo_kit.cli train sft`` on the command line
(two gloo processes on CPU), streams the processes' output and log, and is skipped on the next run as
any finished stage is; a failing launcher raises with its own error; a launched process never launches
again and stops when the process that started it is gone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cogpo_kit.params import ParamsError, load_params
from cogpo_kit.training.launch import (LAUNCHED_ENV, PARENT_ENV, LaunchError, inside_launcher, launch_command,
                                       launch_if_asked, resolve_config, write_launch_params)
from test_pairs_fixtures import write_crv_fixture
from test_training_distributed import quiet_env, torchrun

ROOT = Path(__file__).resolve().parents[1]

PARAMS = """
run: {{output_dir: {out}, run_id: nb}}
student: {{model: "tiny:llama"}}
sft:
  variants: [crv_sft]
  optim: {{max_steps: 2, per_device_batch_size: 2, max_length: 256, learning_rate: 0.01, warmup_ratio: 0.0,
          save_steps: 100, logging_steps: 1}}
  launch: {{launcher: torchrun, num_processes: 2}}
"""


def _cell_outputs(notebook: Path, marker: str) -> dict[str, str]:
    """``{stream name: text}`` of the executed notebook's code cell whose source holds ``marker``."""
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and marker in "".join(c["source"]))
    out: dict[str, str] = {}
    for o in cell["outputs"]:
        if o["output_type"] == "stream":
            out[o["name"]] = out.get(o["name"], "") + "".join(o["text"])
    return out


def _with_bars(env: dict) -> dict:
    """The environment with progress bars on (CI turns them off with COGPO_NO_PROGRESS; this test reads them)."""
    env.pop("COGPO_NO_PROGRESS", None)
    return env


@pytest.mark.slow
@pytest.mark.builds_model
def test_notebook_run_launches_itself_and_trains_the_command_lines_model(tmp_path):
    import torch
    from safetensors.torch import load_file

    from cogpo_kit.pipeline.runner import run_pipeline

    out = tmp_path / "out"
    for run_id in ("nb", "cli"):
        write_crv_fixture(out / run_id)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(PARAMS.format(out=out))
    logs = {name: (tmp_path / f"{name}.out", tmp_path / f"{name}.err") for name in ("nb", "cli")}
    files = {name: (open(o, "w"), open(e, "w")) for name, (o, e) in logs.items()}
    # the same thread count in both runs, so both sum in the same order; the notebook run keeps its bars
    procs = {
        "nb": subprocess.Popen([sys.executable, "-m", "cogpo_kit.cli", "run", str(cfg), "--stages", "sft"],
                               cwd=tmp_path, env=_with_bars(dict(os.environ, OMP_NUM_THREADS="1")),
                               stdout=files["nb"][0], stderr=files["nb"][1]),
        "cli": subprocess.Popen([*torchrun(2), "-m", "cogpo_kit.cli", "train", "sft", str(cfg), "-o", "run.run_id=cli"],
                                cwd=tmp_path, env=quiet_env(), stdout=files["cli"][0], stderr=files["cli"][1]),
    }
    for name, proc in procs.items():
        proc.wait(timeout=600)
        for f in files[name]:
            f.close()
        assert proc.returncode == 0, (name, logs[name][1].read_text()[-4000:])

    nb_stage, cli_stage = out / "nb" / "04_sft", out / "cli" / "04_sft"
    m_nb = json.loads((nb_stage / "manifest.json").read_text())
    m_cli = json.loads((cli_stage / "manifest.json").read_text())
    # the launched main process wrote the manifest an in-process run writes, with the run's parameters
    assert m_nb["params"] == m_cli["params"] and m_nb["params"]["sft"]["launch"]["num_processes"] == 2
    assert m_nb["variants"]["crv_sft"]["steps"] == m_cli["variants"]["crv_sft"]["steps"] == 2
    assert m_nb["host"]["argv"][1:3] == ["train", "sft"]
    # the same model, tensor by tensor
    a = load_file(str(nb_stage / "crv_sft" / "model" / "adapter_model.safetensors"))
    b = load_file(str(cli_stage / "crv_sft" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k), "training should have moved the adapters"
    losses = [[r["loss"] for r in map(json.loads, (s / "crv_sft" / "metrics.jsonl").open()) if "loss" in r]
              for s in (nb_stage, cli_stage)]
    assert losses[0] == losses[1] and len(losses[0]) == 2

    # streamed: stage.log lines on the terminal of cogpo-kit run, the processes' bars on its stderr; the
    # notebook's output holds both
    term, term_err = logs["nb"][0].read_text(), logs["nb"][1].read_text()
    assert "launching torchrun (2 processes)" in term and "SFT finished: 2 steps" in term
    assert "SFT crv_sft" in term_err
    cell = _cell_outputs(out / "nb" / "notebooks" / "04_sft.ipynb", "nb.run_stage")
    assert "SFT finished: 2 steps" in cell["stdout"] and "torchrun (2 processes) finished" in cell["stdout"]
    assert "SFT crv_sft" in cell["stderr"]
    assert "exit code 0" in (nb_stage / "launch" / "output.log").read_text()
    assert load_params([nb_stage / "launch" / "params.yaml"]) == load_params([cfg])  # output_dir is absolute

    # finished: the next run skips the stage (and launches nothing)
    again = run_pipeline([cfg], stages="sft", in_process=True, summary=False, show_logs=False)
    assert again["executed"] == [] and "04_sft" in again["skipped"]
    assert (nb_stage / "stage.log").read_text().count("launching torchrun") == 1


@pytest.mark.slow
def test_failing_processes_fail_the_stage_with_their_error(tmp_path):
    from cogpo_kit.pipeline.runner import PipelineError, run_pipeline

    cfg = tmp_path / "p.yaml"
    cfg.write_text(PARAMS.format(out=tmp_path / "out"))  # no CRV artifacts: every process stops at once
    with pytest.raises(PipelineError) as exc:
        run_pipeline([cfg], stages="sft", in_process=True, summary=False, show_logs=False)
    err = exc.value.__cause__
    assert isinstance(err, LaunchError) and err.returncode == 1
    text = str(exc.value)
    # the processes' own error first, then the launcher's (torchrun's summary of the failed processes)
    assert "torchrun (2 processes) exited with code 1: cogpo-kit: error: " in text
    assert "01_critique/input.jsonl: file not found" in text
    assert "ChildFailedError" in err.tail and "cogpo_kit.cli FAILED" in text
    stage = tmp_path / "out" / "nb" / "04_sft"
    assert not (stage / "manifest.json").exists()
    assert "ERROR torchrun (2 processes) exited with code 1" in (stage / "stage.log").read_text()
    assert "01_critique/input.jsonl: file not found" in (stage / "launch" / "output.log").read_text()


@pytest.mark.slow
def test_failing_launcher_raises_its_own_error(tmp_path):
    from cogpo_kit.training.stage import run_sft

    bad = tmp_path / "bad.yaml"
    bad.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: BOGUS\nnum_processes: 2\n")
    params = load_params([], [f"run.output_dir={tmp_path}", "run.run_id=r", f"sft.launch.config={bad}"])
    with pytest.raises(LaunchError) as exc:
        run_sft(params)
    assert exc.value.returncode == 1 and "--config_file" in exc.value.command
    assert "accelerate (1 process) exited with code 1: ValueError: 'BOGUS' is not a valid DistributedType" in str(
        exc.value)


def test_launch_parameters_are_checked():
    assert not load_params([]).sft.launch.enabled
    assert load_params([], ["sft.launch.num_processes=2"]).sft.launch.enabled
    assert load_params([], ["preference.launch.config=params/launch/ddp.yaml"]).preference.launch.enabled
    with pytest.raises(ParamsError, match="'sft.launch': config 'x.yaml' is an accelerate config"):
        load_params([], ["sft.launch.launcher=torchrun", "sft.launch.config=x.yaml"])
    with pytest.raises(ParamsError, match="num_processes \\(3\\) must be a multiple of num_machines \\(2\\)"):
        load_params([], ["preference.launch.num_processes=3", "preference.launch.num_machines=2"])


def test_launch_commands(tmp_path):
    params = load_params([], ["sft.launch.launcher=torchrun", "sft.launch.num_processes=4",
                              "preference.launch.num_processes=8", "preference.launch.num_machines=2"])
    f = tmp_path / "params.yaml"
    assert launch_command(params.sft.launch, "sft", f) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
        "-m", "cogpo_kit.cli", "train", "sft", str(f)]
    assert launch_command(params.preference.launch, "05_preference", f, "/cfg/zero3.yaml") == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "/cfg/zero3.yaml",
        "--num_processes", "8", "--num_machines", "2", "-m", "cogpo_kit.cli", "train", "preference", str(f)]
    two_nodes = load_params([], ["sft.launch.launcher=torchrun", "sft.launch.num_processes=8",
                                 "sft.launch.num_machines=2"]).sft.launch
    assert launch_command(two_nodes, "sft", f)[3:7] == ["--nnodes", "2", "--nproc_per_node", "4"]


@pytest.mark.parametrize("name", ["smoke.yaml", "demo.yaml", "paper-qwen2.5-7b.yaml"])
def test_the_launched_processes_get_the_runs_parameters(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    params = load_params([ROOT / "params" / name], ["sft.launch.num_processes=2", "run.output_dir=rel/out"])
    path = write_launch_params(params, tmp_path / "launch" / "params.yaml")
    again = load_params([path])
    assert again.run.output_dir == str(tmp_path / "rel" / "out")  # the same run folder from any directory
    assert dataclasses.replace(again, run=params.run) == params and again.sft.launch.num_processes == 2


def test_accelerate_config_is_found_above_the_current_folder(tmp_path, monkeypatch):
    from cogpo_kit.training.stage import run_sft

    (tmp_path / "params" / "launch").mkdir(parents=True)
    (tmp_path / "params" / "launch" / "ddp.yaml").write_text("distributed_type: MULTI_GPU\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # where a notebook opened in JupyterLab runs
    root = tmp_path.resolve()
    assert resolve_config("params/launch/ddp.yaml") == (root / "params" / "launch" / "ddp.yaml", root)
    params = load_params([], [f"run.output_dir={tmp_path}", "run.run_id=r",
                              "sft.launch.config=params/launch/zero9.yaml"])
    with pytest.raises(FileNotFoundError, match="sft.launch.config: accelerate config params/launch/zero9.yaml "
                                                "not found"):
        run_sft(params)
    assert not (tmp_path / "r" / "04_sft" / "launch" / "output.log").exists()  # nothing was started


def test_a_launched_process_trains_itself(monkeypatch):
    params = load_params([], ["sft.launch.num_processes=2"])
    for var in (LAUNCHED_ENV, PARENT_ENV, "WORLD_SIZE", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(var, raising=False)
    assert not inside_launcher()
    for var, value in (("WORLD_SIZE", "2"), ("ACCELERATE_MIXED_PRECISION", "no"), (LAUNCHED_ENV, "1")):
        with monkeypatch.context() as m:
            m.setenv(var, value)  # torchrun, accelerate launch (any mode), the stage's own launcher
            assert inside_launcher() and launch_if_asked(params, "sft") is None


def test_launched_process_stops_when_the_process_that_launched_it_is_gone():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    code = ("import sys, time\nfrom cogpo_kit.params import load_params\n"
            "from cogpo_kit.training.launch import launch_if_asked\n"
            "assert launch_if_asked(load_params([], ['sft.launch.num_processes=2']), 'sft') is None\n"
            "time.sleep(float(sys.argv[1]))\n")

    def child(parent: int, seconds: float) -> subprocess.Popen:
        env = dict(os.environ, **{LAUNCHED_ENV: "1", PARENT_ENV: str(parent)})
        return subprocess.Popen([sys.executable, "-c", code, str(seconds)], env=env)

    assert child(gone.pid, 60).wait(timeout=60) == -signal.SIGTERM
    assert child(os.getpid(), 2.5).wait(timeout=60) == 0  # its parent alive: it runs to its end
