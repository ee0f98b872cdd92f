# Shared by the launchers (sourced, not run): dry-run aware command execution.
# With DRY_RUN=1, `run CMD...` prints the command (shell-quoted, one line) instead of running it.

DRY_RUN=${DRY_RUN:-0}

quote() {  # print the arguments as one shell-quoted command line
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+="$arg "; else out+="'${arg//\'/\'\\\'\'}' "; fi
  done
  printf '%s\n' "${out% }"
}

run() {
  if [[ "$DRY_RUN" == 1 ]]; then quote "$@"; else "$@"; fi
}

python_bin() {  # $PYTHON if set, else the project's venv if present (local.sh/test.sh create it), else python3
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"
  elif [[ -x "$root/.venv/bin/python" ]]; then echo "$root/.venv/bin/python"; else echo python3; fi
}

config_overrides() {  # sets OVERRIDES to the --config.* arguments among "$@" (what `ganjax data` accepts too)
  OVERRIDES=()
  local arg
  for arg in "$@"; do [[ "$arg" == --config.* ]] && OVERRIDES+=("$arg"); done
  return 0
}

require_train_flags() {  # $1: the launcher's name; the rest: the ganjax train flags it was given. Exits 2, before
  # anything is submitted, unless --config and --workdir are among them (ganjax train needs both).
  local who=$1 arg config=0 workdir=0
  shift
  for arg in "$@"; do
    case "$arg" in
      --config|--config=*) config=1 ;;
      --workdir|--workdir=*) workdir=1 ;;
    esac
  done
  if [[ $config == 0 || $workdir == 0 ]]; then
    echo "$who: ganjax train needs --config FILE.py[:preset] and --workdir DIR among the flags (got: ${*:-none})" >&2
    exit 2
  fi
}
