#!/usr/bin/env bash
# GPU train-step benchmark: a BERT-base-shaped MLM (12 x 768, 12 heads, FF 3072, BERT's
# 30,522-token vocabulary) in bf16 with f32 master weights, MFU against the chip's dense bf16
# peak, and the Hugging Face BertForMaskedLM peer timed on the same GPU in the same process.
#
#   bash benchmarks/gpu.sh OUT_DIR        (one *.log and one *.json per configuration)
#
# Each stage has its own time limit so one slow compile cannot take the others down; the
# whole script fits a 10-minute call (about 6 minutes on an H200, compiles included).
# Needs the package's dependencies beside a CUDA jax + torch + transformers; on an image that
# lacks them (the lent H200's had no grain, array_record, portpicker, omegaconf, tensorboardX,
# zstandard, importlib_resources), install those wheels first.
set -uo pipefail
out=${1:-benchmarks/out}
mkdir -p "$out"
py=${PYTHON:-python3}
# JAX and torch share the GPU here: leave torch half of the memory.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
export PYTHONUNBUFFERED=1

bench() {
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$py" -m benchmarks.train_step --model base --vocab 30522 --dtype bf16 \
    --json "$@" 2>&1 | tee "$out/$name.log"
  tail -n 1 "$out/$name.log" | grep '^{' > "$out/$name.json" || rm -f "$out/$name.json"
}

# ours = model.attention_impl=auto (the fused Pallas attention on a GPU); the xla variant is
# the same step with XLA's attention, timed round-robin with it.
bench base_b256_l128_peer "${LIMIT_PEER:-330}" --batch 256 --seq 128 --steps 20 --warmup 3 \
  --peer torch --variant xla:model.attention_impl=xla
# Attention alone: the fused kernels (default blocks, and a sweep of the query blocks and
# warps: the backward kernel has never been tuned), our XLA attention, jax.nn's and cuDNN's.
timeout "${LIMIT_ATTENTION:-150}" "$py" -m benchmarks.attention --reps 10 \
  --fused-blocks 64,64,4,8 --fused-blocks 64,16,4,4 --fused-blocks 128,32,8,8 \
  --fused-blocks 128,64,8,8 --fused-blocks 32,32,4,4 2>&1 | tee "$out/attention_b256_l128.log"
# Where the step's time goes (mask / forward / backward / optimizer).
timeout "${LIMIT_BREAKDOWN:-170}" "$py" -m benchmarks.step_breakdown --model base --vocab 30522 \
  --batch 256 --seq 128 --dtype bf16 --steps 10 2>&1 | tee "$out/base_b256_l128_breakdown.log"
