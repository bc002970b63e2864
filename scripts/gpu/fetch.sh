#!/usr/bin/env bash
# Copy a run from the GPU host to ./runs/NAME (checkpoints only with CHECKPOINTS=1).
#   scripts/gpu/fetch.sh user@gpu-host /path/to/workdir [DEST]
set -euo pipefail
host="${1:?usage: fetch.sh user@host REMOTE_WORKDIR [DEST]}"
remote="${2:?usage: fetch.sh user@host REMOTE_WORKDIR [DEST]}"
dest="${3:-runs/$(basename "$remote")}"
mkdir -p "$dest"
exclude=()
if [[ "${CHECKPOINTS:-0}" != 1 ]]; then
  exclude=(--exclude checkpoints/)
fi
rsync -az --partial "${exclude[@]}" "$host:$remote/" "$dest/"
ls -l "$dest"
