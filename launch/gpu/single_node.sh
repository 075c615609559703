#!/usr/bin/env bash
# One machine, one process, all its GPUs (or those of --gpus) in one mesh: no jax.distributed.
# Re-running it on the same workdir resumes; Ctrl-C / SIGTERM saves a checkpoint first.
# See launch/README.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PROG=launch/gpu/single_node.sh
# shellcheck source=../lib.sh
source "$ROOT/launch/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/gpu/single_node.sh [options] --config C --workdir DIR [-- --config.key=value ...]

Runs `python -m o1_jax.train` once, on every GPU of this machine (or those of --gpus).

options (a flag wins over its environment variable):
  --config C      O1_CONFIG      config file, e.g. configs/smollm2_scifact.py
  --workdir DIR   O1_WORKDIR     the run's workdir
  --gpus LIST     O1_GPUS        GPU indices, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES; default all)
  --python PATH   O1_PYTHON      interpreter (default: .venv/bin/python, else python3)
  --dry_run       print the command, run nothing
  -h, --help      this text
EOF
}

config=${O1_CONFIG:-}
workdir=${O1_WORKDIR:-}
gpus=${O1_GPUS:-}
python=${O1_PYTHON:-$(default_python "$ROOT")}
overrides=()

while (($#)); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;  # --flag=value is --flag value
  esac
  case $1 in
    --config) config=$(value_of "$@"); shift 2 ;;
    --workdir) workdir=$(value_of "$@"); shift 2 ;;
    --gpus) gpus=$(value_of "$@"); shift 2 ;;
    --python) python=$(value_of "$@"); shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown argument $1 (see --help; config overrides go after --)" ;;
  esac
done

require "$config" "config" --config O1_CONFIG
require "$workdir" "workdir" --workdir O1_WORKDIR
[[ -z $gpus || $gpus =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus $gpus: expected GPU indices like 0,1,2,3"

cmd=("$python" -m o1_jax.train --config "$config" --workdir "$workdir" ${overrides[@]+"${overrides[@]}"})
if [[ -n $gpus ]]; then
  cmd=(env "CUDA_VISIBLE_DEVICES=$gpus" "${cmd[@]}")
fi
# exec: the process is the trainer, so SIGTERM reaches it and it checkpoints.
if ((DRY_RUN)); then
  run "${cmd[@]}"
else
  printf '+ %s\n' "$(shell_join "${cmd[@]}")" >&2
  exec "${cmd[@]}"
fi
