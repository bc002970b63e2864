#!/usr/bin/env bash
# GPU train-step benchmark: a BERT-base-shaped MLM (12 x 768, 12 heads, FF 3072, BERT's
# 30,522-token vocabulary) in bf16 with f32 master weights, MFU against the chip's dense bf16
# peak, and the Hugging Face BertForMaskedLM peer timed on the same GPU in the same process.
#
#   bash benchmarks/gpu.sh OUT_DIR        (one *.log and one *.json per configuration)
#
# Each configuration has its own time limit so one slow compile cannot take the others down.
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

bench base_b256_l128_peer "${LIMIT_PEER:-370}" --batch 256 --seq 128 --steps 20 --warmup 3 --peer torch
bench base_b256_l128_nodropout "${LIMIT_NODROP:-150}" --batch 256 --seq 128 --steps 20 --warmup 3 --dropout 0
