#!/usr/bin/env bash
# Pretrain on this GPU host (all its GPUs, one process), restarting after a crash or a
# preemption of the job: `tlm pretrain` resumes from the newest checkpoint in WORKDIR.
#
# Several hosts: run this on each with NUM_NODES, NODE_RANK (0..NUM_NODES-1) and
# COORDINATOR=host0:port (reachable from all); WORKDIR must be one shared filesystem
# (NFS, a mounted bucket), since Orbax writes each checkpoint from all processes.
#   CONFIG=cpu-bert6-wiki WORKDIR=/shared/runs/bert6 scripts/gpu/train.sh [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG="${CONFIG:-cpu-bert6-wiki}"
WORKDIR="${WORKDIR:?set WORKDIR (a directory kept across restarts)}"
NUM_NODES="${NUM_NODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MAX_TRIES="${MAX_TRIES:-10}"

dist=()
if ((NUM_NODES > 1)); then
  dist=("distributed.coordinator_address=${COORDINATOR:?set COORDINATOR=host0:port}"
        "distributed.num_processes=$NUM_NODES" "distributed.process_id=$NODE_RANK")
fi
for ((try = 1; try <= MAX_TRIES; try++)); do
  if [[ -f "$WORKDIR/summary.json" ]]; then
    echo "run finished: $WORKDIR/summary.json"
    exit 0
  fi
  echo "try $try: tlm pretrain --config $CONFIG --workdir $WORKDIR $*"
  status=0
  .venv/bin/tlm pretrain --config "$CONFIG" --workdir "$WORKDIR" "${dist[@]}" "$@" || status=$?
  if ((status == 0)); then
    exit 0
  elif ((status == 2)); then  # a configuration error: retrying cannot help
    exit 2
  fi
  sleep 10
done
echo "gave up after $MAX_TRIES tries" >&2
exit 1
