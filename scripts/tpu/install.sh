#!/usr/bin/env bash
# On every worker: mount the bucket with gcsfuse, clone the repo, install tlm_jax with jax[tpu].
set -euo pipefail
# shellcheck source=scripts/tpu/env.sh
source "$(dirname "$0")/env.sh"

# Expanded here (on this machine), then run by bash on each worker.
remote=$(cat <<REMOTE
set -euo pipefail
if ! command -v gcsfuse >/dev/null; then
  codename=\$(lsb_release -c -s)
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$codename main" \
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse python3-venv
fi
sudo mkdir -p "$MOUNT" && sudo chown "\$USER" "$MOUNT"
if ! mountpoint -q "$MOUNT"; then
  # Orbax renames a checkpoint's temporary directory when it is complete.
  gcsfuse --implicit-dirs --rename-dir-limit=1000000 "$BUCKET" "$MOUNT"
fi
if [[ ! -d tlm_jax ]]; then
  git clone "$REPO_URL" tlm_jax
fi
cd tlm_jax && git fetch -q origin && git checkout -q "$REPO_REF"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[tpu]"
.venv/bin/python -c "import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].platform)"
REMOTE
)
"${GCLOUD_TPU[@]}" ssh "$TPU_NAME" --worker=all --command "bash -c $(printf %q "$remote")"
