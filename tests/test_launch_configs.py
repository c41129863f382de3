"""The cluster recipes in ``params/launch/``: accelerate and DeepSpeed configs, scripts, the fleet fragment.

- every accelerate YAML loads with accelerate's own loader and names a DeepSpeed JSON that exists;
- every DeepSpeed JSON, its ``auto`` values filled the way transformers' Trainer and accelerate fill them for the
  paper's run (8 GPUs, Table 8's batches), passes DeepSpeed's own validation (``DeepSpeedConfig``), and a broken
  one does not;
- the shell and SLURM scripts parse (``bash -n``, and ``shellcheck`` where it is installed);
- the fleet fragment loads through the kit's params loader after the paper's params, with the URLs in every
  agent's engine; the readiness wait against stand-in servers;
- ``vllm_fleet.sh`` and ``vllm_fleet.sbatch`` run with a stand-in ``vllm`` executable (and stand-in ``srun`` /
  ``scontrol``): servers on their GPU groups, the fragment, the command, the servers stopped;
- ``train_multinode.sbatch`` (stand-in ``srun``/``scontrol``: two "nodes" on this host, one CPU process each)
  trains SFT under the shipped ZeRO-3 config and matches one in-process run with the same global batch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "params" / "launch"
PAPER = ROOT / "params" / "paper-qwen2.5-7b.yaml"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
ACCELERATE_CONFIGS = sorted(LAUNCH.glob("*.yaml"))
DEEPSPEED_CONFIGS = sorted(LAUNCH.glob("ds_*.json"))
PAPER_GPUS = 8
"""The paper's training setup: one node of 8 GPUs (Table 8: global batch 96 = 8 x 1 x 12)."""
STUDENT_HIDDEN = 3584
"""Qwen2.5-7B-Instruct's hidden size (its config.json), which the hidden-size ``auto`` values of ZeRO follow."""
NEEDS_DEEPSPEED = "DeepSpeed is not installed (pip install deepspeed; it is in the gpu and test extras)"


def test_there_is_something_to_check():
    assert {p.name for p in ACCELERATE_CONFIGS} >= {"ddp.yaml", "zero2.yaml", "zero3.yaml"}
    assert {p.name for p in DEEPSPEED_CONFIGS} == {"ds_zero2.json", "ds_zero3.json"}
    assert {p.name for p in SCRIPTS} == {"vllm_fleet.sh", "vllm_fleet.sbatch", "train_multinode.sh",
                                         "train_multinode.sbatch"}


# --- accelerate configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(str(path))
    assert cfg.num_machines == 1 and cfg.machine_rank == 0 and cfg.num_processes == PAPER_GPUS
    if cfg.distributed_type == DistributedType.DEEPSPEED:
        ds_file = cfg.deepspeed_config["deepspeed_config_file"]
        assert not Path(ds_file).is_absolute() and (ROOT / ds_file).is_file(), f"{path.name}: {ds_file} not found"
        stage = json.loads((ROOT / ds_file).read_text())["zero_optimization"]["stage"]
        assert path.stem == f"zero{stage}", f"{path.name} names {ds_file}, a ZeRO-{stage} config"
        # multi-node runs launch with torchrun on every node (the recipes' srun/ssh), not with pdsh
        assert cfg.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
        assert cfg.deepspeed_config["zero3_init_flag"] == (stage == 3)
    else:
        assert cfg.distributed_type == DistributedType.MULTI_GPU


def test_every_deepspeed_config_is_used():
    named = {yaml.safe_load(p.read_text()).get("deepspeed_config", {}).get("deepspeed_config_file")
             for p in ACCELERATE_CONFIGS}
    assert {f"params/launch/{p.name}" for p in DEEPSPEED_CONFIGS} <= named


# --- DeepSpeed's own validation ------------------------------------------------------------------------------


class _OnGPUs:
    """Training arguments as the processes of an ``processes``-GPU launch see them (world size, bf16)."""

    def __init__(self, args, processes: int, bf16: bool):
        self._args, self.world_size, self.bf16 = args, processes, bf16

    def __getattr__(self, name):
        return getattr(self._args, name)


def _validated(ds_json: dict, optim, tmp_path: Path, processes: int = PAPER_GPUS):
    """``DeepSpeedConfig`` of ``ds_json`` with its ``auto`` values filled as a ``processes``-GPU launch fills them.

    The path of a run: accelerate's ``DeepSpeedPlugin`` reads the file; transformers' Trainer fills batch,
    accumulation, clipping and precision from the training arguments (``trainer_config_process``) and the
    hidden-size values from the model (``trainer_config_finalize``); accelerate's ``prepare`` fills what is left;
    ``deepspeed.initialize`` validates the result with ``DeepSpeedConfig`` over the data-parallel world.
    """
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime import config as ds_config
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config
    from trl import SFTConfig

    from cogpo_kit.training.common import trainer_args

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds_json))
    # the training arguments the kit builds (the DeepSpeed ones are TrainingArguments' own fields); on this CPU
    # machine trainer_args turns bf16 off, which a GPU keeps as the params say
    args = _OnGPUs(SFTConfig(**trainer_args(optim, tmp_path / "ckpt")), processes, optim.bf16)
    try:
        plugin = DeepSpeedPlugin(hf_ds_config=str(path))
        plugin.hf_ds_config = HfTrainerDeepSpeedConfig(plugin.hf_ds_config.config)
        plugin.deepspeed_config = plugin.hf_ds_config.config
        plugin.hf_ds_config.trainer_config_process(args)
        model = SimpleNamespace(config=SimpleNamespace(hidden_size=STUDENT_HIDDEN))
        plugin.hf_ds_config.trainer_config_finalize(args, model, num_training_steps=100)
        per_device, accumulation = optim.per_device_batch_size, plugin.get_value("gradient_accumulation_steps")
        plugin.deepspeed_config_process(
            must_match=False, gradient_clipping=1.0, train_micro_batch_size_per_gpu=per_device,
            train_batch_size=per_device * accumulation * processes,
            **{"zero_optimization.stage3_gather_16bit_weights_on_model_save": False,
               "zero_optimization.reduce_bucket_size": STUDENT_HIDDEN ** 2,
               "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * STUDENT_HIDDEN ** 2),
               "zero_optimization.stage3_param_persistence_threshold": 10 * STUDENT_HIDDEN})
        filled = plugin.deepspeed_config
    finally:
        unset_hf_deepspeed_config()
    left = [k for k, v in _leaves(filled) if v == "auto"]
    assert not left, f"'auto' left unfilled: {left}"
    # DeepSpeed asks its communication layer for the world; answer as rank 0 of the launch
    with mock.patch.object(ds_config.dist, "get_rank", return_value=0), \
            mock.patch.object(ds_config.dist, "get_world_size", return_value=processes):
        return ds_config.DeepSpeedConfig(filled), filled


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("stage", ["sft", "preference"])
@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_config_validates_for_the_paper_run(path, stage, tmp_path):
    pytest.importorskip("deepspeed", reason=NEEDS_DEEPSPEED)
    from cogpo_kit.params import load_params

    optim = getattr(load_params([PAPER]), stage).optim
    dc, filled = _validated(json.loads(path.read_text()), optim, tmp_path)
    assert dc.world_size == PAPER_GPUS
    assert (dc.train_batch_size, dc.train_micro_batch_size_per_gpu, dc.gradient_accumulation_steps) == (96, 1, 12)
    assert dc.zero_optimization_stage == int(path.stem[-1])
    assert dc.bfloat16_config.enabled and not dc.float16_config.enabled
    assert dc.gradient_clipping == 1.0
    if dc.zero_optimization_stage == 3:
        assert dc.zero_config.gather_16bit_weights_on_model_save
        assert filled["zero_optimization"]["stage3_param_persistence_threshold"] == 10 * STUDENT_HIDDEN


BROKEN = {
    # DeepSpeed's own schema: a misspelt key, a ZeRO stage that does not exist, an offload device it does not know
    "typo": ({"stage3_gather_16bit_weights_on_model_sav": True}, "stage3_gather_16bit_weights_on_model_sav"),
    "stage 4": ({"stage": 4}, "Input should be 0, 1, 2, 3"),
    "offload": ({"offload_optimizer": {"device": "gpu"}}, "offload_optimizer.device"),
    # the Trainer's check on the way: a fixed batch that is not 8 GPUs x 1 x 12
    "batch": (64, "ds train_batch_size=64 vs hf train_batch_size"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_deepspeed_validation_catches_broken_configs(case, tmp_path):
    pytest.importorskip("deepspeed", reason=NEEDS_DEEPSPEED)
    from cogpo_kit.params import load_params

    optim = load_params([PAPER]).sft.optim
    good = json.loads((LAUNCH / "ds_zero3.json").read_text())
    change, message = BROKEN[case]
    if isinstance(change, dict):
        broken = dict(good, zero_optimization=dict(good["zero_optimization"], **change))
    else:
        broken = dict(good, train_batch_size=change)
    with pytest.raises(Exception, match=re.escape(message)):
        _validated(broken, optim, tmp_path)


# --- scripts parse ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(path):
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert path.read_text().startswith("#!"), f"{path.name} has no #! line"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt install shellcheck)")
def test_scripts_pass_shellcheck():
    r = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", ["vllm_fleet.sh", "train_multinode.sh"])
def test_script_help(script):
    r = subprocess.run(["bash", str(LAUNCH / script), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "Settings" in r.stdout and not r.stdout.startswith("#")


# --- the fleet fragment ------------------------------------------------------------------------------------


URLS = ["http://gpu-a:8000/v1", "http://gpu-a:8001/v1", "http://gpu-b:8000/v1"]
R1 = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"


def test_fragment_loads_after_the_paper_params(tmp_path):
    from cogpo_kit.launch.fleet_params import main
    from cogpo_kit.params.run import load_params

    out = tmp_path / "fleet" / "fleet.yaml"
    args = ["--model", R1, "--api-key-env", "VLLM_API_KEY", "-o", str(out)]
    assert main([*args, *(a for u in URLS for a in ("--url", u))]) == 0
    assert out.read_text().startswith("# CRV agents on 3 vLLM server(s)")
    paper = load_params([PAPER])
    params = load_params([PAPER, out])
    for agent in ("critic", "rethinker", "verifier"):
        engine = getattr(params.crv, agent).engine
        assert (engine.engine, engine.model, engine.base_urls) == ("openai", R1, tuple(URLS))
        assert engine.api_key_env == "VLLM_API_KEY" and engine.max_concurrency == 3 * 32
        # the run's own agent settings stay: reasoning marker, thinking budget, context, sampling
        before = getattr(paper.crv, agent)
        assert engine.thinking_end == before.engine.thinking_end == "</think>"
        assert engine.max_thinking_tokens == before.engine.max_thinking_tokens
        assert engine.context_length == before.engine.context_length
        assert getattr(params.crv, agent).sampling == before.sampling
    assert params.student == paper.student and params.eval == paper.eval


def test_fragment_from_a_urls_file_for_some_agents(tmp_path):
    from cogpo_kit.launch.fleet_params import main
    from cogpo_kit.params.run import load_params

    urls_file = tmp_path / "urls.txt"
    urls_file.write_text("# critic fleet\nhttp://gpu-c:8000/v1/\n\nhttp://gpu-d:8000/v1\n")
    out = tmp_path / "critic.yaml"
    assert main(["--model", "judge", "--urls-file", str(urls_file), "--agents", "critic", "--per-server", "4",
                 "-o", str(out)]) == 0
    params = load_params([PAPER, out])
    assert params.crv.critic.engine.base_urls == ("http://gpu-c:8000/v1", "http://gpu-d:8000/v1")
    assert params.crv.critic.engine.max_concurrency == 8
    assert params.crv.rethinker.engine.engine == "vllm"  # untouched


@pytest.mark.parametrize("argv, message", [
    (["--url", "gpu-a:8000/v1"], "must start with http"),
    (["--url", URLS[0], "--url", URLS[0] + "/"], "given twice"),
    ([], "no server URL"),
    (["--url", URLS[0], "--agents", "critic,judge"], "unknown agent 'judge'"),
    (["--url", URLS[0], "--per-server", "0"], "at least 1"),
])
def test_fragment_errors(argv, message, tmp_path, capsys):
    from cogpo_kit.launch.fleet_params import main

    out = tmp_path / "f.yaml"
    assert main(["--model", R1, "-o", str(out), *argv]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def _stand_in_vllm(served: str, healthy_after: int = 0):
    """A handler answering ``/health`` (503 for the first ``healthy_after`` asks) and ``/v1/models``."""
    from http.server import BaseHTTPRequestHandler

    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                asked.append(1)
                self._send(200 if len(asked) > healthy_after else 503, b"")
            elif self.path == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": served, "owned_by": "vllm"}]}).encode())
            else:
                self._send(404, b"")

        def _send(self, code, body):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def test_wait_for_servers(loopback_server):
    from cogpo_kit.launch.fleet_params import FleetError, wait_for_servers

    slow = loopback_server(_stand_in_vllm(R1, healthy_after=2))
    ready = loopback_server(_stand_in_vllm(R1))
    logs = []
    waited = wait_for_servers([slow, ready], R1, timeout_s=30, interval_s=0.05, log=logs.append)
    assert waited < 30 and sorted(line.split()[1] for line in logs) == sorted([slow, ready])
    other = loopback_server(_stand_in_vllm("Qwen/Qwen2.5-32B-Instruct"))
    with pytest.raises(FleetError, match=r"serves \['Qwen/Qwen2.5-32B-Instruct'\], not"):
        wait_for_servers([other], R1, timeout_s=30, interval_s=0.05)
    never = loopback_server(_stand_in_vllm(R1, healthy_after=10 ** 6))
    with pytest.raises(FleetError, match=r"1 of 1 servers not ready after 0 s: .*/health answered 503"):
        wait_for_servers([never], R1, timeout_s=0.2, interval_s=0.05)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(FleetError, match=f"process {gone.pid} running the servers has exited"):
        wait_for_servers([never], R1, timeout_s=30, interval_s=0.05, pids=[gone.pid])


# --- the fleet scripts with a stand-in vllm ----------------------------------------------------------------

FAKE_VLLM = """\
#!{python}
# stand-in for `vllm serve MODEL ...`: answers /health and /v1/models; records its arguments and GPUs
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
port, served = int(opt("--port")), opt("--served-model-name")
with open(os.environ["FAKE_VLLM_RECORD"], "a") as fh:
    fh.write(json.dumps({{"args": args, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}}) + "\\n")
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"data": [{{"id": served}}]}}).encode() if self.path == "/v1/models" else b""
        self.send_response(200 if self.path in ("/health", "/v1/models") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""

FAKE_SCONTROL = """\
#!/usr/bin/env bash
# stand-in for `scontrol show hostnames LIST`: the comma-separated list, one name a line
[[ "$1 $2" == "show hostnames" ]] || exit 1
tr , '\\n' <<< "$3"
"""

FAKE_SRUN = """\
#!/usr/bin/env bash
# stand-in for srun inside a job: one task per node of the job, all on this host, with its SLURM_NODEID
while [[ "$1" == --* ]]; do shift; done
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' TERM INT
for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit "$rc"
"""


def _free_ports(n: int) -> int:
    """A first port P with P .. P+n-1 free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


def _tool(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fleet_env(tmp_path):
    """Environment for the fleet scripts: a stand-in vllm, srun and scontrol first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "vllm", FAKE_VLLM.format(python=sys.executable))
    _tool(bin_dir, "scontrol", FAKE_SCONTROL)
    _tool(bin_dir, "srun", FAKE_SRUN)
    record = tmp_path / "vllm_calls.jsonl"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHON=sys.executable, FAKE_VLLM_RECORD=str(record), LOG_DIR=str(tmp_path / "logs"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for name in ("CUDA_VISIBLE_DEVICES", "VLLM_API_KEY", "SLURM_JOB_ID", "SLURM_NODEID"):
        env.pop(name, None)
    return env, record


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


CHECK_DURING = """\
import sys, urllib.request
for url in sys.argv[1:]:
    assert urllib.request.urlopen(url, timeout=5).status == 200, url
print("servers answered during the command")
"""


def test_vllm_fleet_sh_local(fleet_env, tmp_path):
    env, record = fleet_env
    port = _free_ports(2)
    out = tmp_path / "fleet.yaml"
    health = [f"http://127.0.0.1:{port + i}/health" for i in range(2)]
    r = subprocess.run(
        ["bash", "params/launch/vllm_fleet.sh", "--model", "org/agent", "--served-name", "agent", "--tp", "2",
         "--gpus", "4", "--port", str(port), "--wait", "60", "--out", str(out), "local",
         "--", sys.executable, "-c", CHECK_DURING, *health],
        cwd=ROOT, env=dict(env, CUDA_VISIBLE_DEVICES="4,5,6,7", VLLM_ARGS="--enforce-eager"),
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "servers answered during the command" in r.stdout
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(c["gpus"] for c in calls) == ["4,5", "6,7"]
    for c in calls:
        assert c["args"][:2] == ["serve", "org/agent"] and c["args"][-1] == "--enforce-eager"
        assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "2"
        assert c["args"][c["args"].index("--max-model-len") + 1] == "32768"
    from cogpo_kit.params.run import load_params

    params = load_params([PAPER, out])
    assert params.crv.verifier.engine.base_urls == (f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port + 1}/v1")
    assert params.crv.critic.engine.model == "agent"
    # the servers are stopped once the command has finished
    assert not any(_answers(u) for u in health)
    assert not list((tmp_path / "logs" / "pids").glob("*.pid"))


def test_vllm_fleet_sh_fails_when_a_server_dies(fleet_env, tmp_path):
    env, _ = fleet_env
    port = _free_ports(1)
    with socket.socket() as taken:  # the server cannot bind its port and exits at once
        taken.bind(("127.0.0.1", port))
        r = subprocess.run(
            ["bash", "params/launch/vllm_fleet.sh", "--tp", "1", "--gpus", "1", "--port", str(port), "--wait", "60",
             "--out", str(tmp_path / "fleet.yaml"), "local", "--", "true"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "running the servers has exited" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "fleet.yaml").exists()
    assert not list((tmp_path / "logs" / "pids").glob("*.pid"))


def test_vllm_fleet_sbatch(fleet_env, tmp_path):
    env, record = fleet_env
    port = _free_ports(2)
    out = tmp_path / "fleet.yaml"
    slurm = dict(SLURM_SUBMIT_DIR=str(ROOT), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="127.0.0.1",
                 SLURM_JOB_NUM_NODES="1", PORT=str(port), TP="1", GPUS_PER_HOST="2", WAIT_S="60",
                 FLEET_OUT=str(out), MODEL="org/agent")
    health = [f"http://127.0.0.1:{port + i}/health" for i in range(2)]
    r = subprocess.run(["bash", str(LAUNCH / "vllm_fleet.sbatch"), sys.executable, "-c", CHECK_DURING, *health],
                       cwd=tmp_path, env=dict(env, **slurm), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "servers answered during the command" in r.stdout
    assert sorted(json.loads(line)["gpus"] for line in record.read_text().splitlines()) == ["0", "1"]
    frag = yaml.safe_load(out.read_text())
    assert frag["crv"]["rethinker"]["engine"]["base_urls"] == [f"http://127.0.0.1:{port + i}/v1" for i in range(2)]
    assert not any(_answers(u) for u in health)


# --- train_multinode.sh: the accelerate command on every host ----------------------------------------------

FAKE_ACCELERATE = """\
#!{python}
# stand-in for accelerate: records its arguments (one JSON line per call)
import json, os, sys
with open(os.environ["FAKE_ACCELERATE_RECORD"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_train_multinode_sh_launches_every_host(fleet_env, tmp_path):
    from accelerate.commands.launch import launch_command_parser

    env, _ = fleet_env
    record = tmp_path / "accelerate_calls.jsonl"
    stub = _tool(tmp_path / "bin", "accelerate-stub", FAKE_ACCELERATE.format(python=sys.executable))
    env = dict(env, ACCELERATE=str(stub), FAKE_ACCELERATE_RECORD=str(record), GLOBAL_BATCH="96")
    cmd = ["bash", "params/launch/train_multinode.sh", "--hosts", "local,local", "--gpus", "4", "--port", "29999",
           "sft", str(PAPER), "-o", "run.run_id=two-nodes"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sft: global batch 96 = 8 processes x 1 per device x 12 accumulation steps" in r.stdout
    calls = sorted((json.loads(line) for line in record.read_text().splitlines()),
                   key=lambda argv: argv[argv.index("--machine_rank") + 1])
    assert len(calls) == 2
    for rank, argv in enumerate(calls):
        assert argv[0] == "launch"
        args = launch_command_parser().parse_args(argv[1:])  # accelerate's own parser takes every flag
        assert (args.config_file, args.num_machines, args.num_processes, args.machine_rank) == \
            ("params/launch/zero3.yaml", 2, 8, rank)
        assert (args.main_process_ip, args.main_process_port, args.rdzv_backend, args.same_network) == \
            ("127.0.0.1", 29999, "static", True)
        assert args.module and args.training_script == "cogpo_kit.cli"
        assert args.training_script_args == ["train", "sft", str(PAPER), "-o", "run.run_id=two-nodes"]
    # 2 hosts x 8 GPUs would double the paper's batch: stopped before launching, with the override that fixes it
    record.unlink()
    cmd[cmd.index("--gpus") + 1] = "8"
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "add -o sft.optim.gradient_accumulation_steps=6" in r.stderr, r.stderr[-3000:]
    assert not record.exists()


# --- ZeRO-3 on CPU: two "nodes" of one process through train_multinode.sbatch ------------------------------

TRAIN_PARAMS = """\
run: {{output_dir: {out}, run_id: {run_id}}}
student: {{model: "tiny:llama"}}
pairs: {{max_length: 256}}
sft:
  variants: [crv_sft]
  lora: {{enabled: false}}
  optim: {{max_steps: 2, per_device_batch_size: {batch}, max_length: 256, learning_rate: 0.01, warmup_ratio: 0.0,
          save_steps: 100, logging_steps: 1}}
"""


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "04_sft" / "crv_sft" / "metrics.jsonl").open()]
    return [r for r in rows if "loss" in r]


@pytest.mark.slow
@pytest.mark.builds_model
def test_zero3_two_nodes_on_cpu_match_one_process(fleet_env, tmp_path, tiny_model_path):
    """The shipped zero3.yaml and ds_zero3.json, launched as a 2-node job (1 CPU process per node, gloo):
    DeepSpeed shards the model over both ranks and the run matches one process with the same global batch.
    The first DeepSpeed run on a machine compiles its CPU communication op once (minutes; ~/.cache/torch_extensions)."""
    pytest.importorskip("deepspeed", reason=NEEDS_DEEPSPEED)
    from test_pairs_fixtures import write_crv_fixture

    env, _ = fleet_env
    out = tmp_path / "out"
    write_crv_fixture(out / "zero3", copies=2)  # 10 SFT rows
    shutil.copytree(out / "zero3", out / "one")
    for run_id, batch in (("zero3", 2), ("one", 4)):
        (tmp_path / f"{run_id}.yaml").write_text(TRAIN_PARAMS.format(out=out, run_id=run_id, batch=batch))
    env = dict(env, COGPO_NO_PROGRESS="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1", SLURM_SUBMIT_DIR=str(ROOT),
               SLURM_JOB_NODELIST="127.0.0.1,localhost", SLURM_JOB_NUM_NODES="2", GPUS_PER_NODE="1",
               MAIN_PROCESS_PORT=str(_free_ports(1)), GLOBAL_BATCH="4")
    procs = [
        subprocess.Popen(["bash", str(LAUNCH / "train_multinode.sbatch"), "sft", str(tmp_path / "zero3.yaml")],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, "-m", "cogpo_kit.cli", "train", "sft", str(tmp_path / "one.yaml")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    logs = [p.communicate(timeout=840)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    assert "sft: global batch 4 = 2 processes x 2 per device x 1 accumulation steps" in logs[0]
    # ZeRO-3: each rank saved its own shard of the parameters and optimizer states
    step = out / "zero3" / "04_sft" / "crv_sft" / "checkpoints" / "checkpoint-2" / "global_step2"
    assert sorted(p.name for p in step.iterdir()) == [f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt"
                                                      for r in (0, 1) for k in ("model", "optim")]
    a, b = _metrics(out / "zero3"), _metrics(out / "one")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)
        assert ra["num_tokens"] == rb["num_tokens"]
    from safetensors.torch import load_file

    # the final model is whole (gathered from the shards) and the same training as one process
    wz = load_file(str(out / "zero3" / "04_sft" / "crv_sft" / "model" / "model.safetensors"))
    w1 = load_file(str(out / "one" / "04_sft" / "crv_sft" / "model" / "model.safetensors"))
    w0 = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    assert wz.keys() == w1.keys() and all(wz[k].shape == w1[k].shape for k in wz)
    moved = max((w1[k].float() - w0[k].float()).abs().max().item() for k in w1)
    diff = max((wz[k].float() - w1[k].float()).abs().max().item() for k in wz)
    assert moved > 1e-3 and diff < moved / 20, (moved, diff)
