#!/usr/bin/env bash
# Copy the run's results from the bucket to ./runs/RUN_NAME (checkpoints only with CHECKPOINTS=1).
set -euo pipefail
# shellcheck source=scripts/tpu/env.sh
source "$(dirname "$0")/env.sh"

src="gs://$BUCKET/${WORKDIR#"$MOUNT"/}"
dest="${DEST:-runs/$RUN_NAME}"
mkdir -p "$dest"
exclude=()
if [[ "${CHECKPOINTS:-0}" != 1 ]]; then
  exclude=(--exclude '^checkpoints/')
fi
gcloud storage rsync --recursive "${exclude[@]}" "$src" "$dest"
ls -l "$dest"
