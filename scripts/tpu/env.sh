#!/usr/bin/env bash
# Settings shared by the Cloud TPU scripts. Override any of them in the environment:
#   TPU_NAME=my-tpu ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 BUCKET=my-bucket scripts/tpu/create.sh
# shellcheck disable=SC2034  # this file is sourced; the variables are used by the scripts
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-tlm-tpu}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"        # v4-8: one host; v4-32: four hosts
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-1}"                                    # 1: a Spot (preemptible) VM
REPO_URL="${REPO_URL:-https://github.com/OWNER/tlm_jax.git}"  # where the workers clone from
REPO_REF="${REPO_REF:-main}"
BUCKET="${BUCKET:?set BUCKET to a GCS bucket name (no gs://) in the TPU region}"
MOUNT="${MOUNT:-/mnt/tlm}"                           # the bucket, mounted with gcsfuse on every worker
RUN_NAME="${RUN_NAME:-bert6-wiki}"
WORKDIR="${WORKDIR:-$MOUNT/runs/$RUN_NAME}"          # shared by all workers: Orbax writes it together
CONFIG="${CONFIG:-cpu-bert6-wiki}"                   # a configs/ name or a YAML path in the repo
OVERRIDES="${OVERRIDES:-}"                           # extra key=value overrides, space separated
DATA_DIR="${DATA_DIR:-$MOUNT/data}"                  # TLM_DATA_DIR on the workers
GCLOUD_TPU=(gcloud compute tpus tpu-vm --project "$PROJECT" --zone "$ZONE")
