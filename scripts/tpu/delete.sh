#!/usr/bin/env bash
# Delete the TPU VM (the bucket, and the run in it, stay).
set -euo pipefail
# shellcheck source=scripts/tpu/env.sh
source "$(dirname "$0")/env.sh"

"${GCLOUD_TPU[@]}" delete "$TPU_NAME" --quiet
