#!/usr/bin/env bash
# Keep a Spot/preemptible run going: whenever the TPU is preempted (or training stops
# with an error), recreate the VM if needed, reinstall and start train.sh again. The
# run resumes from the newest complete checkpoint in WORKDIR on the bucket.
# Stops when summary.json appears in WORKDIR (the run finished) or after MAX_TRIES.
set -euo pipefail
here="$(dirname "$0")"
# shellcheck source=scripts/tpu/env.sh
source "$here/env.sh"
MAX_TRIES="${MAX_TRIES:-20}"
summary="gs://$BUCKET/${WORKDIR#"$MOUNT"/}/summary.json"

for ((try = 1; try <= MAX_TRIES; try++)); do
  if gcloud storage ls "$summary" >/dev/null 2>&1; then
    echo "run finished: $summary"
    exit 0
  fi
  state=$("${GCLOUD_TPU[@]}" describe "$TPU_NAME" --format='value(state)' 2>/dev/null || echo MISSING)
  echo "try $try: TPU $TPU_NAME is $state"
  case "$state" in
    READY) ;;
    PREEMPTED | TERMINATED | FAILED)
      "${GCLOUD_TPU[@]}" delete "$TPU_NAME" --quiet
      "$here/create.sh" && "$here/install.sh" ;;
    MISSING)
      "$here/create.sh" && "$here/install.sh" ;;
    *)
      sleep 60
      continue ;;
  esac
  "$here/train.sh" || echo "train.sh exited with $?; checking the TPU again"
  sleep 30
done
echo "gave up after $MAX_TRIES tries" >&2
exit 1
