#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: first compile the training step for that slice on this machine
# (`ganjax plan`, libtpu's compiler, no TPU needed) and stop if it does not fit the chips' HBM; then create
# the slice (or reuse it if it exists), copy this checkout to every worker, install ganjax with jax[tpu], and
# run the same `python -m ganjax train` on all workers at once (--worker=all). jax.distributed.initialize() finds the other hosts of the slice by itself. The TFDS data
# dir and the workdir live on GCS (gs://BUCKET/tensorflow_datasets, gs://BUCKET/runs/RUN, mounted with
# gcsfuse on every worker), so every worker sees the same data, checkpoints and metrics.
#
# usage: bash launch/tpu_vm.sh [--dry-run] --name NAME --zone ZONE --bucket gs://BUCKET [--type v4-8]
#            [--version RUNTIME (default: the type's base image)] [--project PROJECT] [--spot] [--run RUN]
#            [--config configs/gansformer.py:ffhq256] [--force | --no-plan] [-- ganjax train flags]
# --dry-run prints every command (the plan, gcloud, tar) instead of running it. --force runs a config the plan
# says does not fit; --no-plan skips the plan (it needs libtpu here: pip install 'jax[tpu]').
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh

NAME="" ZONE="" BUCKET="" PROJECT="" SPOT=0 FORCE=0 NO_PLAN=0
TYPE=v4-8 VERSION="" CONFIG=configs/gansformer.py:ffhq256 RUN=""
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --name) NAME=$2; shift ;;
    --zone) ZONE=$2; shift ;;
    --bucket) BUCKET=${2%/}; shift ;;
    --type) TYPE=$2; shift ;;
    --version) VERSION=$2; shift ;;
    --project) PROJECT=$2; shift ;;
    --spot) SPOT=1 ;;
    --force) FORCE=1 ;;
    --no-plan) NO_PLAN=1 ;;
    --config) CONFIG=$2; shift ;;
    --run) RUN=$2; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "tpu_vm.sh: unknown option $1 (train flags go after --)" >&2; usage ;;
  esac
  shift
done
[[ -n "$NAME" && -n "$ZONE" && "$BUCKET" == gs://* ]] || {
  echo "tpu_vm.sh: --name, --zone and --bucket gs://... are required" >&2; usage; }
if [[ -z "$VERSION" ]]; then  # the base software image of each TPU generation
  case "$TYPE" in
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) echo "tpu_vm.sh: no default --version for --type $TYPE; pass --version" >&2; exit 2 ;;
  esac
fi
RUN=${RUN:-$NAME}
# The bucket is mounted with gcsfuse at the same path on every worker: ganjax writes metrics, samples and
# TensorBoard events with plain file I/O, so the workdir and the TFDS data dir are ordinary paths.
MOUNT=/mnt/gcs
WORKDIR="$MOUNT/runs/$RUN"
DATA_DIR="$MOUNT/tensorflow_datasets"
TARBALL=/tmp/ganjax-$NAME.tar.gz

TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")
CREATE=("${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$TYPE" --version="$VERSION")
[[ "$SPOT" == 1 ]] && CREATE+=(--spot)

# 0. The plan: the step compiled for this slice here; exit status 3 means it does not fit the chips' HBM.
config_overrides "$@"
PLAN=("$(python_bin)" -m ganjax plan --config="$CONFIG" --tpu="$TYPE" --phases=false --sample=false
      "${OVERRIDES[@]}")
if [[ "$NO_PLAN" == 1 ]]; then
  echo "skipping the plan (--no-plan)"
elif [[ "$DRY_RUN" == 1 ]]; then
  quote "${PLAN[@]}"
else
  set +e; "${PLAN[@]}"; rc=$?; set -e
  if [[ $rc == 3 && "$FORCE" == 1 ]]; then
    echo "tpu_vm.sh: the plan says $CONFIG does not fit $TYPE; running anyway (--force)" >&2
  elif [[ $rc == 3 ]]; then
    echo "tpu_vm.sh: $CONFIG does not fit $TYPE (the plan above); change the batch, strategy or slice, or pass --force" >&2
    exit 3
  elif [[ $rc != 0 ]]; then
    echo "tpu_vm.sh: the plan failed (exit $rc; its message is above); fix it, or pass --no-plan to skip it" >&2
    exit "$rc"
  fi
fi

# 1. Reuse the VM if it exists, else create it.
if [[ "$DRY_RUN" == 1 ]]; then
  echo "$(quote "${TPU[@]}" describe "$NAME" "${WHERE[@]}") >/dev/null 2>&1 || $(quote "${CREATE[@]}")"
elif "${TPU[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  echo "reusing TPU VM $NAME"
else
  run "${CREATE[@]}"
fi

# 2. Copy this checkout (without local venvs and runs) to every worker.
run tar czf "$TARBALL" --exclude=./.venv --exclude=./runs --exclude=./.git --exclude=__pycache__ .
run "${TPU[@]}" scp "$TARBALL" "$NAME:ganjax.tar.gz" "${WHERE[@]}" --worker=all
REMOTE_SETUP='rm -rf ganjax && mkdir ganjax && tar xzf ganjax.tar.gz -C ganjax && cd ganjax'
REMOTE_SETUP+=' && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip'
REMOTE_SETUP+=' && .venv/bin/pip install -q -e . "jax[tpu]>=0.10.2"'
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$REMOTE_SETUP"
MOUNT_GCS='if ! command -v gcsfuse >/dev/null; then'
MOUNT_GCS+=' echo "deb https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main"'
MOUNT_GCS+=' | sudo tee /etc/apt/sources.list.d/gcsfuse.list'
MOUNT_GCS+=' && curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -'
MOUNT_GCS+=' && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi'
MOUNT_GCS+=" && sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT"
MOUNT_GCS+=" && (mountpoint -q $MOUNT || gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT)"
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$MOUNT_GCS"

# 3. Make the dataset once, from worker 0 (a data problem then shows before the slice starts training;
#    `ganjax train` would otherwise prepare it too, process 0 first).
PREPARE=(.venv/bin/python -m ganjax data prepare --config="$CONFIG" --config.data.data_dir="$DATA_DIR"
         "${OVERRIDES[@]}")
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 --command="cd ganjax && $(quote "${PREPARE[@]}")"

# 4. The same training command on every worker; data and workdir on GCS.
TRAIN=(.venv/bin/python -m ganjax train --config="$CONFIG" --workdir="$WORKDIR"
       --config.data.data_dir="$DATA_DIR" "$@")
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="cd ganjax && $(quote "${TRAIN[@]}")"
[[ "$DRY_RUN" == 1 ]] || echo "done: workdir $BUCKET/runs/$RUN (delete the VM with: $(quote "${TPU[@]}" delete "$NAME" "${WHERE[@]}"))"
