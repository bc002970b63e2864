#!/usr/bin/env bash
# Run `tlm pretrain` on every worker at once. JAX finds the other hosts by itself
# (jax.distributed.initialize() auto-detects Cloud TPU VMs; distributed.enabled=true).
# Re-running it after a stop or preemption resumes from the newest checkpoint in WORKDIR.
set -euo pipefail
# shellcheck source=scripts/tpu/env.sh
source "$(dirname "$0")/env.sh"

remote=$(cat <<REMOTE
set -euo pipefail
mountpoint -q "$MOUNT" || gcsfuse --implicit-dirs --rename-dir-limit=1000000 "$BUCKET" "$MOUNT"
cd tlm_jax
export TLM_DATA_DIR="$DATA_DIR" TLM_CACHE_DIR="\$HOME/.cache/tlm_jax"
.venv/bin/tlm pretrain --config "$CONFIG" --workdir "$WORKDIR" distributed.enabled=true $OVERRIDES \
  2>&1 | tee -a "\$HOME/tlm-pretrain.log"
REMOTE
)
"${GCLOUD_TPU[@]}" ssh "$TPU_NAME" --worker=all --command "bash -c $(printf %q "$remote")"
