#!/usr/bin/env bash
# A fleet of vLLM servers for the CRV agents, on hosts reached by ssh or on this machine (no SLURM needed;
# vllm_fleet.sbatch is the SLURM version and runs the `node` part of this script on every node). Run it from
# the repository root:
#
#   params/launch/vllm_fleet.sh [options] HOST...              # HOST: a host name (ssh) or "local"
#   params/launch/vllm_fleet.sh [options] --hostfile FILE      # hosts one a line (# comments allowed)
#   params/launch/vllm_fleet.sh [options] HOST... -- cogpo-kit run params/paper-qwen2.5-7b.yaml \
#       outputs/fleet/fleet.yaml --stages critique,rethink,pairs
#
# On every host it starts GPUS_PER_HOST / TP `vllm serve` processes, each tensor parallel over its own TP GPUs
# and listening on PORT, PORT+1, ...; waits until every server answers /health with the model loaded and lists
# it in /v1/models; then writes the params fragment FLEET_OUT that points crv.critic, crv.rethinker and
# crv.verifier at all of them (python -m cogpo_kit.launch.fleet_params). With a command after `--` it runs the
# command, then stops the servers; without one it serves until Ctrl-C (or TERM), then stops them.
# Remote hosts need this checkout at the same path (or REMOTE_REPO) and a login shell in which `vllm` runs
# (conda activate cogpo-kit in ~/.bashrc, or VLLM=/path/to/vllm); ssh must work without a password.
#
# Settings (option or environment variable, default):
#   --model M            MODEL           deepseek-ai/DeepSeek-R1-Distill-Qwen-32B (the paper's agents)
#   --served-name N      SERVED_NAME     MODEL; the name the servers answer to (the fragment's engine.model)
#   --tp N               TP              4; GPUs per server (vllm serve --tensor-parallel-size)
#   --gpus N             GPUS_PER_HOST   8; GPUs used on every host (CUDA_VISIBLE_DEVICES is honoured)
#   --port P             PORT            8000; the first server's port on every host
#   --max-model-len L    MAX_MODEL_LEN   32768 (the paper params' context_length)
#   --out FILE           FLEET_OUT       outputs/fleet/fleet.yaml
#   --wait S             WAIT_S          3600; seconds to wait for the servers to load
#   --agents A,B         AGENTS          critic,rethinker,verifier
#                        DTYPE           bfloat16
#                        GPU_MEMORY_UTILIZATION 0.9
#                        VLLM_ARGS       more `vllm serve` arguments, e.g. "--reasoning-parser deepseek_r1"
#                        VLLM_API_KEY    if set, the servers require it and the fragment says api_key_env: VLLM_API_KEY
#                        LOG_DIR         outputs/fleet/logs (one log per host and port, and the servers' pid files)
#                        PYTHON          python (the kit's environment, for cogpo_kit.launch.fleet_params)
#
#   params/launch/vllm_fleet.sh node         # this host's servers, in the foreground (settings from the environment)
#   params/launch/vllm_fleet.sh stop [HOST...]   # stop servers left running (their pid files under LOG_DIR)
set -euo pipefail

MODEL=${MODEL:-deepseek-ai/DeepSeek-R1-Distill-Qwen-32B}
TP=${TP:-4}
GPUS_PER_HOST=${GPUS_PER_HOST:-8}
PORT=${PORT:-8000}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-32768}
DTYPE=${DTYPE:-bfloat16}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.9}
FLEET_OUT=${FLEET_OUT:-outputs/fleet/fleet.yaml}
WAIT_S=${WAIT_S:-3600}
AGENTS=${AGENTS:-critic,rethinker,verifier}
LOG_DIR=${LOG_DIR:-outputs/fleet/logs}
VLLM=${VLLM:-vllm}
VLLM_ARGS=${VLLM_ARGS:-}
PYTHON=${PYTHON:-python}
BIND=${BIND:-0.0.0.0}
SCRIPT="params/launch/vllm_fleet.sh"

die() { echo "vllm_fleet: error: $*" >&2; exit 2; }

# The GPU ids of this host's servers, one group of TP ids per line.
gpu_groups() {
  local ids=() i
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
  else
    for ((i = 0; i < GPUS_PER_HOST; i++)); do ids+=("$i"); done
  fi
  (( ${#ids[@]} >= GPUS_PER_HOST )) \
    || die "$(hostname): ${#ids[@]} GPUs visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}), GPUS_PER_HOST=$GPUS_PER_HOST"
  for ((i = 0; i + TP <= GPUS_PER_HOST; i += TP)); do
    (IFS=,; echo "${ids[*]:i:TP}")
  done
}

servers_per_host() {
  (( TP >= 1 && GPUS_PER_HOST >= TP && GPUS_PER_HOST % TP == 0 )) \
    || die "GPUS_PER_HOST=$GPUS_PER_HOST is not a multiple of TP=$TP"
  echo $((GPUS_PER_HOST / TP))
}

# Start this host's servers and stay in the foreground; when one exits (or on TERM/INT/HUP) stop them all.
NODE_PIDS=()
NODE_HOST=""
node() {
  local groups group port s=0 rc=0
  servers_per_host > /dev/null
  groups=$(gpu_groups)
  mkdir -p "$LOG_DIR/pids"
  NODE_HOST=$(hostname -s)
  trap 'trap - EXIT; kill "${NODE_PIDS[@]}" 2>/dev/null || true; wait || true; rm -f "$LOG_DIR/pids/$NODE_HOST"-*.pid' EXIT
  trap 'exit 143' TERM INT HUP
  while read -r group; do
    port=$((PORT + s))
    # shellcheck disable=SC2086  # VLLM_ARGS is a list of arguments
    CUDA_VISIBLE_DEVICES=$group "$VLLM" serve "$MODEL" --served-model-name "${SERVED_NAME:-$MODEL}" \
      --host "$BIND" --port "$port" --tensor-parallel-size "$TP" --max-model-len "$MAX_MODEL_LEN" \
      --dtype "$DTYPE" --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION" $VLLM_ARGS \
      > "$LOG_DIR/$NODE_HOST-$port.log" 2>&1 &
    NODE_PIDS+=($!)
    echo "$!" > "$LOG_DIR/pids/$NODE_HOST-$port.pid"
    echo "vllm_fleet: $NODE_HOST:$port GPUs $group pid $! log $LOG_DIR/$NODE_HOST-$port.log" >&2
    s=$((s + 1))
  done <<< "$groups"
  wait -n || rc=$?
  echo "vllm_fleet: a server on $NODE_HOST exited (status $rc; see $LOG_DIR/$NODE_HOST-*.log); stopping the others" >&2
  exit 1
}

# Stop the servers whose pid files this host holds (TERM, then KILL after 60 s).
stop_local() {
  local host f pid left
  host=$(hostname -s)
  shopt -s nullglob
  for f in "$LOG_DIR/pids/$host"-*.pid; do
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null && echo "vllm_fleet: stopping $host pid $pid" >&2
  done
  for _ in $(seq 60); do
    left=0
    for f in "$LOG_DIR/pids/$host"-*.pid; do kill -0 "$(cat "$f")" 2>/dev/null && left=1; done
    (( left )) || break
    sleep 1
  done
  for f in "$LOG_DIR/pids/$host"-*.pid; do kill -9 "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
}

is_local() { [[ "$1" == local || "$1" == localhost || "$1" == 127.0.0.1 ]]; }

# The command that runs this script with ARGS on a remote host, in this checkout, with the settings of this run
# (the API key is not in it: it travels on ssh's stdin).
remote_command() {
  local v assign=""
  for v in MODEL SERVED_NAME TP GPUS_PER_HOST PORT MAX_MODEL_LEN DTYPE GPU_MEMORY_UTILIZATION LOG_DIR VLLM VLLM_ARGS BIND; do
    [[ -n "${!v:-}" ]] && assign+="$v=$(printf %q "${!v}") "
  done
  # shellcheck disable=SC2016  # $k is expanded by the remote shell
  printf 'cd %q && IFS= read -r k; [ -n "$k" ] && export VLLM_API_KEY="$k"; exec env %sbash %s %s' \
    "${REMOTE_REPO:-$PWD}" "$assign" "$SCRIPT" "$*"
}

remote() {  # remote HOST ARGS...: this script with ARGS on HOST over ssh
  local host=$1
  shift
  ssh -o BatchMode=yes "$host" "$(remote_command "$@")" <<< "${VLLM_API_KEY:-}"
}

FLEET_HOSTS=()
FLEET_PIDS=()

# On exit (the command done, Ctrl-C, TERM, an error): stop every host's servers.
# shellcheck disable=SC2317  # called by the EXIT trap
stop_fleet() {
  local rc=$? h
  trap - EXIT INT TERM
  echo "vllm_fleet: stopping the servers" >&2
  for h in "${FLEET_HOSTS[@]}"; do is_local "$h" || remote "$h" stop-local || true; done
  if ((${#FLEET_PIDS[@]})); then kill "${FLEET_PIDS[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null
  exit "$rc"
}

main() {
  local cmd=() hostfile="" line
  while (($#)); do
    case $1 in
      --model) MODEL=$2; shift 2 ;;
      --served-name) SERVED_NAME=$2; shift 2 ;;
      --tp) TP=$2; shift 2 ;;
      --gpus) GPUS_PER_HOST=$2; shift 2 ;;
      --port) PORT=$2; shift 2 ;;
      --max-model-len) MAX_MODEL_LEN=$2; shift 2 ;;
      --out) FLEET_OUT=$2; shift 2 ;;
      --wait) WAIT_S=$2; shift 2 ;;
      --agents) AGENTS=$2; shift 2 ;;
      --hostfile) hostfile=$2; shift 2 ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      --) shift; cmd=("$@"); break ;;
      -*) die "unknown option $1 (see --help)" ;;
      *) FLEET_HOSTS+=("$1"); shift ;;
    esac
  done
  if [[ -n "$hostfile" ]]; then
    [[ -r "$hostfile" ]] || die "hostfile $hostfile not readable"
    while read -r line; do
      line=${line%%#*}; line=${line//[[:space:]]/}
      [[ -n "$line" ]] && FLEET_HOSTS+=("$line")
    done < "$hostfile"
  fi
  ((${#FLEET_HOSTS[@]})) || die "no host given (HOST... or --hostfile FILE; 'local' for this machine)"
  [[ -f "$SCRIPT" ]] || die "run it from the repository root ($SCRIPT not found in $PWD)"
  local per urls=() h s
  per=$(servers_per_host)
  mkdir -p "$LOG_DIR"
  export MODEL SERVED_NAME TP GPUS_PER_HOST PORT MAX_MODEL_LEN DTYPE GPU_MEMORY_UTILIZATION LOG_DIR VLLM VLLM_ARGS BIND
  trap stop_fleet EXIT
  trap 'exit 130' INT TERM
  for h in "${FLEET_HOSTS[@]}"; do
    if is_local "$h"; then
      bash "$SCRIPT" node &
    else
      (exec ssh -o BatchMode=yes "$h" "$(remote_command node)" <<< "${VLLM_API_KEY:-}") &
    fi
    FLEET_PIDS+=($!)
    for ((s = 0; s < per; s++)); do
      if is_local "$h"; then urls+=(--url "http://127.0.0.1:$((PORT + s))/v1"); else urls+=(--url "http://$h:$((PORT + s))/v1"); fi
    done
  done
  local key_args=()
  [[ -n "${VLLM_API_KEY:-}" ]] && key_args=(--api-key-env VLLM_API_KEY)
  "$PYTHON" -m cogpo_kit.launch.fleet_params --model "${SERVED_NAME:-$MODEL}" "${urls[@]}" --agents "$AGENTS" \
    --wait "$WAIT_S" "${FLEET_PIDS[@]/#/--pid=}" "${key_args[@]}" -o "$FLEET_OUT"
  echo "vllm_fleet: ${#FLEET_HOSTS[@]} host(s) x $per server(s) ready; params fragment $FLEET_OUT" >&2
  if ((${#cmd[@]})); then
    "${cmd[@]}"
  else
    echo "vllm_fleet: serving until Ctrl-C" >&2
    wait -n || true
    echo "vllm_fleet: a host's servers stopped; stopping the rest" >&2
    exit 1
  fi
}

case "${1:-}" in
  node) shift; node "$@" ;;
  stop-local) stop_local ;;
  stop) shift; for h in "$@"; do if is_local "$h"; then stop_local; else remote "$h" stop-local || true; fi; done
        (($#)) || stop_local ;;
  *) main "$@" ;;
esac
