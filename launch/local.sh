#!/usr/bin/env bash
# The README's first command: install ganjax into .venv, make the dataset, then train GANsformer on the embedded procedural
# scenes at 32x32 (configs/gansformer.py:shapes32) on this machine's CPU. Re-running resumes the run.
#
# usage: bash launch/local.sh [--dry-run] [ganjax train flags, e.g. --config.train.total_kimg=4]
# env:   WORKDIR (default runs/shapes32), CONFIG (default configs/gansformer.py:shapes32)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
WORKDIR=${WORKDIR:-runs/shapes32}
CONFIG=${CONFIG:-configs/gansformer.py:shapes32}

run python3 -m venv .venv
run .venv/bin/pip install -q --upgrade pip
run .venv/bin/pip install -q -e .
config_overrides "$@"
run .venv/bin/python -m ganjax data prepare --config="$CONFIG" "${OVERRIDES[@]}"
run .venv/bin/python -m ganjax train --config="$CONFIG" --workdir="$WORKDIR" "$@"
[[ "$DRY_RUN" == 1 ]] && exit 0

cat <<MSG

Outputs of this run, in $WORKDIR/:
  config.json           the resolved config
  metrics.jsonl         losses, timings and metrics, one JSON record per log step
  samples/fakes*.png    sample grids from fixed latents, one per config.train.sample_every_kimg
  checkpoints/          Orbax checkpoints (re-running this command resumes from the latest)
  tb/                   TensorBoard events: .venv/bin/tensorboard --logdir $WORKDIR/tb
MSG
