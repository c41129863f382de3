#!/usr/bin/env bash
# Multi-node training with accelerate (DeepSpeed ZeRO or DDP) on hosts reached by ssh, without SLURM
# (train_multinode.sbatch is the SLURM version and runs the `rank` part of this script on every node).
# Run it from the repository root on a shared filesystem (every host runs this checkout and writes the same
# outputs/ folder):
#
#   params/launch/train_multinode.sh --hosts node1,node2 sft params/paper-qwen2.5-7b.yaml \
#       -o sft.optim.gradient_accumulation_steps=6
#   params/launch/train_multinode.sh --hostfile hosts.txt preference params/paper-qwen2.5-7b.yaml
#
# The first host is machine 0 (main_process_ip); every host gets one `accelerate launch` with the same
# --num_machines/--num_processes and its own --machine_rank, which starts GPUS_PER_NODE processes there, all
# running `python -m cogpo_kit.cli train sft|preference PARAMS...`. Processes in all = hosts x GPUS_PER_NODE,
# so the global batch is processes x per-device batch x accumulation steps: the paper's 96 is 8 x 1 x 12 on
# one node of 8 GPUs, 16 x 1 x 6 on two (GLOBAL_BATCH=96 makes a different one an error before launching).
# A host may be "local" (this machine, no ssh). Remote hosts need the kit's environment active in their login
# shell (or ACCELERATE=/path/to/accelerate) and ssh without a password.
#
# Settings (option or environment variable, default):
#   --config FILE        CONFIG             params/launch/zero3.yaml (zero2.yaml, ddp.yaml)
#   --gpus N             GPUS_PER_NODE      8
#   --port P             MAIN_PROCESS_PORT  29500
#   --global-batch N     GLOBAL_BATCH       (unset: not checked) the global batch the run must have
#                        ACCELERATE         accelerate
#                        PYTHON             python
#
#   params/launch/train_multinode.sh rank MAIN_IP NUM_MACHINES MACHINE_RANK sft|preference PARAMS...
#       one node's launcher (what srun and ssh run; MACHINE_RANK "slurm" reads SLURM_NODEID)
set -euo pipefail

CONFIG=${CONFIG:-params/launch/zero3.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
GLOBAL_BATCH=${GLOBAL_BATCH:-}
ACCELERATE=${ACCELERATE:-accelerate}
PYTHON=${PYTHON:-python}
SCRIPT="params/launch/train_multinode.sh"

die() { echo "train_multinode: error: $*" >&2; exit 2; }

# One node's `accelerate launch`: rank MAIN_IP NUM_MACHINES MACHINE_RANK STAGE PARAMS...
rank() {
  (($# >= 5)) || die "rank needs MAIN_IP NUM_MACHINES MACHINE_RANK sft|preference PARAMS..."
  local main_ip=$1 machines=$2 machine_rank=$3
  shift 3
  if [[ "$machine_rank" == slurm ]]; then machine_rank=${SLURM_NODEID:?SLURM_NODEID is not set: not under srun}; fi
  echo "train_multinode: $(hostname -s) machine $machine_rank of $machines, main $main_ip:$MAIN_PROCESS_PORT," \
    "$((machines * GPUS_PER_NODE)) processes, $CONFIG" >&2
  exec "$ACCELERATE" launch --config_file "$CONFIG" \
    --num_machines "$machines" --num_processes "$((machines * GPUS_PER_NODE))" \
    --machine_rank "$machine_rank" --main_process_ip "$main_ip" --main_process_port "$MAIN_PROCESS_PORT" \
    --rdzv_backend static --same_network \
    -m cogpo_kit.cli train "$@"
}

# Before launching: the stage is known, the config exists, and the global batch is the expected one.
check() {  # check NUM_MACHINES STAGE PARAMS...
  local machines=$1 stage=$2
  shift 2
  [[ "$stage" == sft || "$stage" == preference ]] || die "the stage is sft or preference, got '$stage'"
  [[ -f "$CONFIG" ]] || die "accelerate config $CONFIG not found (run from the repository root)"
  "$PYTHON" -m cogpo_kit.launch.global_batch "$stage" --processes "$((machines * GPUS_PER_NODE))" \
    ${GLOBAL_BATCH:+--expect "$GLOBAL_BATCH"} "$@"
}

main() {
  local hosts=() hostfile="" line
  while (($#)); do
    case $1 in
      --hosts) IFS=, read -ra hosts <<< "$2"; shift 2 ;;
      --hostfile) hostfile=$2; shift 2 ;;
      --config) CONFIG=$2; shift 2 ;;
      --gpus) GPUS_PER_NODE=$2; shift 2 ;;
      --port) MAIN_PROCESS_PORT=$2; shift 2 ;;
      --global-batch) GLOBAL_BATCH=$2; shift 2 ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) break ;;
    esac
  done
  if [[ -n "$hostfile" ]]; then
    [[ -r "$hostfile" ]] || die "hostfile $hostfile not readable"
    while read -r line; do
      line=${line%%#*}; line=${line//[[:space:]]/}
      [[ -n "$line" ]] && hosts+=("$line")
    done < "$hostfile"
  fi
  (( ${#hosts[@]} )) || die "no host given (--hosts a,b or --hostfile FILE; 'local' for this machine)"
  (($# >= 2)) || die "give the stage and the params: sft|preference PARAMS... [-o key=value ...]"
  [[ -f "$SCRIPT" ]] || die "run it from the repository root ($SCRIPT not found in $PWD)"
  local n=${#hosts[@]} main_ip=${hosts[0]} pids=() i rc=0 args
  [[ "$main_ip" == local ]] && main_ip=127.0.0.1
  check "$n" "$@"
  export CONFIG GPUS_PER_NODE MAIN_PROCESS_PORT ACCELERATE
  args=$(printf '%q ' "$@")
  # shellcheck disable=SC2317  # called by the EXIT trap
  cleanup() { trap - EXIT; kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  for ((i = 0; i < n; i++)); do
    if [[ "${hosts[i]}" == local ]]; then
      bash "$SCRIPT" rank "$main_ip" "$n" "$i" "$@" &
    else
      # -tt: closing the connection (Ctrl-C here) hangs up the remote launcher and its processes
      ssh -tt -o BatchMode=yes "${hosts[i]}" "cd $(printf %q "${REMOTE_REPO:-$PWD}") && exec env \
CONFIG=$(printf %q "$CONFIG") GPUS_PER_NODE=$GPUS_PER_NODE MAIN_PROCESS_PORT=$MAIN_PROCESS_PORT \
ACCELERATE=$(printf %q "$ACCELERATE") bash $SCRIPT rank $main_ip $n $i $args" < /dev/null &
    fi
    pids+=($!)
  done
  # the first launcher to fail ends the run on every host
  for ((i = 0; i < n; i++)); do
    if ! wait -n; then rc=1; break; fi
  done
  exit "$rc"
}

case "${1:-}" in
  rank) shift; rank "$@" ;;
  *) main "$@" ;;
esac
