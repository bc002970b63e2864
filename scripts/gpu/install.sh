#!/usr/bin/env bash
# On a GPU host (CUDA 12 driver): clone or update the repo and install tlm_jax with jax[cuda12].
#   REPO_URL=https://github.com/OWNER/tlm_jax.git scripts/gpu/install.sh [DIR]
set -euo pipefail
REPO_URL="${REPO_URL:-https://github.com/OWNER/tlm_jax.git}"
REPO_REF="${REPO_REF:-main}"
dir="${1:-$HOME/tlm_jax}"

if [[ ! -d "$dir/.git" ]]; then
  git clone "$REPO_URL" "$dir"
fi
cd "$dir"
git fetch -q origin && git checkout -q "$REPO_REF"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[gpu]"
.venv/bin/python -c "import jax; print(jax.device_count(), jax.devices()[0].platform)"
