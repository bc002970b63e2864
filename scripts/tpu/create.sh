#!/usr/bin/env bash
# Create the Cloud TPU VM (all its hosts) described by env.sh.
set -euo pipefail
# shellcheck source=scripts/tpu/env.sh
source "$(dirname "$0")/env.sh"

spot=()
if [[ "$SPOT" == 1 ]]; then
  spot=(--spot)
fi
"${GCLOUD_TPU[@]}" create "$TPU_NAME" \
  --accelerator-type "$ACCELERATOR_TYPE" \
  --version "$RUNTIME_VERSION" \
  "${spot[@]}"
"${GCLOUD_TPU[@]}" describe "$TPU_NAME" --format='value(state)'
