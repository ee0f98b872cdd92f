#!/usr/bin/env bash
# N ganjax processes on this machine, joined by jax.distributed through a coordinator on 127.0.0.1, each
# with DEVICES virtual CPU devices and gloo collectives: the multi-host code path (one process per host
# of a pod or cluster) tried on one machine. By default a tiny run that trains to completion.
#
# usage: bash launch/multiprocess_local.sh N [--dry-run] [ganjax train flags]
# env:   DEVICES (virtual CPU devices per process, default 2), WORKDIR (default runs/multiprocess),
#        CONFIG (default configs/gansformer.py:shapes32), PORT (coordinator port, default a free one)
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/lib.sh
N=${1:?usage: bash launch/multiprocess_local.sh N [--dry-run] [ganjax train flags]}
shift
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "multiprocess_local.sh: N must be a positive integer, got '$N'" >&2; exit 2; }
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
DEVICES=${DEVICES:-2}
WORKDIR=${WORKDIR:-runs/multiprocess}
CONFIG=${CONFIG:-configs/gansformer.py:shapes32}
PYTHON=$(python_bin)
PORT=${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
# A tiny run unless the caller's flags (which come later and win) say otherwise.
TINY=(--config.train.total_kimg=0.064 --config.train.batch_size=16 --config.train.sample_every_kimg=0.032
      --config.checkpoint.every_kimg=0.032 --config.train.log_every=1)

process_argv() {  # sets ARGV to the command of process $1; the caller's flags follow
  ARGV=(env JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$DEVICES" "$PYTHON" -m ganjax train --config="$CONFIG"
        --workdir="$WORKDIR" "${TINY[@]}" --config.parallel.distributed=on
        --config.parallel.coordinator_address="127.0.0.1:$PORT" --config.parallel.num_processes="$N"
        --config.parallel.process_id="$1" "${@:2}")
}

if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < N; i++)); do process_argv "$i" "$@"; quote "${ARGV[@]}"; done
  exit 0
fi

mkdir -p "$WORKDIR"
pids=()
cleanup() {  # a failed process leaves the others blocked in collectives: stop the ones started here
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # runs the EXIT trap: the processes save (SIGTERM = preemption) and stop
for ((i = 0; i < N; i++)); do
  process_argv "$i" "$@"
  "${ARGV[@]}" >"$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for ((i = 0; i < N; i++)); do
  if ! wait "${pids[$i]}"; then
    status=1
    echo "process $i failed; last lines of $WORKDIR/process_$i.log:" >&2
    tail -n 20 "$WORKDIR/process_$i.log" >&2
    cleanup
  fi
done
trap - EXIT
[[ $status == 0 ]] && echo "$N processes x $DEVICES devices finished; logs: $WORKDIR/process_*.log, run: $WORKDIR"
exit $status
