#!/usr/bin/env bash
# N training processes on this machine, each with K CPU devices, joined by jax.distributed through a
# coordinator on localhost: the code path of a pod (one process per host, a global mesh over all of
# them) without one. Waits for all; if one fails, the others are stopped and this fails.
# See launch/README.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PROG=launch/local/run.sh
# shellcheck source=../lib.sh
source "$ROOT/launch/lib.sh"

usage() {
  cat <<'EOF'
usage: launch/local/run.sh [options] --config CONFIG --workdir DIR [-- --config.key=value ...]

Starts N processes of `python -m o1_jax.train` on localhost, each with K CPU devices (N*K devices
in one mesh), waits for them all and fails if any fails. Re-running it on the same DIR resumes.
Process 0 prints to this terminal; process i>0 writes DIR/logs/process<i>.log.

options (a flag wins over its environment variable):
  -n, --processes N        O1_PROCESSES    number of processes (default 2)
  --devices_per_process K  O1_DEVICES      CPU devices in each process (default 4)
  --config C               O1_CONFIG       config file, e.g. configs/demo.py:short
  --workdir DIR            O1_WORKDIR      the run's workdir (shared by the processes)
  --port P                 O1_PORT         coordinator port (default: a free one)
  --python PATH            O1_PYTHON       interpreter (default: .venv/bin/python, else python3)
  (environment only)       O1_GRACE_SECONDS  after a failure, SIGKILL what still runs this long after SIGTERM (60)
  --dry_run                print the N commands, run none
  -h, --help               this text
EOF
}

processes=${O1_PROCESSES:-2}
devices=${O1_DEVICES:-4}
config=${O1_CONFIG:-}
workdir=${O1_WORKDIR:-}
port=${O1_PORT:-}
python=${O1_PYTHON:-$(default_python "$ROOT")}
overrides=()

while (($#)); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;  # --flag=value is --flag value
  esac
  case $1 in
    -n | --processes) processes=$(value_of "$@"); shift 2 ;;
    --devices_per_process) devices=$(value_of "$@"); shift 2 ;;
    --config) config=$(value_of "$@"); shift 2 ;;
    --workdir) workdir=$(value_of "$@"); shift 2 ;;
    --port) port=$(value_of "$@"); shift 2 ;;
    --python) python=$(value_of "$@"); shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown argument $1 (see --help; config overrides go after --)" ;;
  esac
done

require "$config" "config" --config O1_CONFIG
require "$workdir" "workdir" --workdir O1_WORKDIR
is_count "$processes" || die "--processes $processes: expected a positive integer"
is_count "$devices" || die "--devices_per_process $devices: expected a positive integer"
if [[ -z $port ]]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
fi
[[ $port =~ ^[0-9]+$ ]] || die "--port $port: expected a port number"

# The caller's other XLA flags are kept; the device count is ours.
read -ra xla_flags <<<"${XLA_FLAGS:-}"
xla=""
for flag in ${xla_flags[@]+"${xla_flags[@]}"}; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || xla+="$flag "
done
xla+="--xla_force_host_platform_device_count=$devices"

command_for() {  # the command of process $1, into the array `cmd`
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=$xla"
    "$python" -m o1_jax.train --config "$config" --workdir "$workdir"
    --config.distributed.initialize=True
    "--config.distributed.coordinator_address=localhost:$port"
    "--config.distributed.num_processes=$processes"
    "--config.distributed.process_id=$1"
    ${overrides[@]+"${overrides[@]}"})
}

if ((DRY_RUN)); then
  for ((i = 0; i < processes; i++)); do
    command_for "$i"
    run "${cmd[@]}"
  done
  exit 0
fi

mkdir -p "$workdir/logs"
pids=()
stop_all() {  # SIGTERM makes each process save a checkpoint and exit
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    [[ -z $pid ]] || kill -TERM "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; wait; exit 130' INT TERM

start() {  # print the command, then become it (so that $! is the process itself, for kill)
  printf '+ %s\n' "$(shell_join "$@")" >&2
  exec "$@"
}
for ((i = 0; i < processes; i++)); do
  command_for "$i"
  if ((i == 0)); then
    start "${cmd[@]}" &
  else
    start "${cmd[@]}" >"$workdir/logs/process$i.log" 2>&1 &
  fi
  pids+=("$!")
done

# Poll rather than `wait -n` (bash 4.3+, and it cannot say which process ended).
GRACE_SECONDS=${O1_GRACE_SECONDS:-60}
failed=""
stopped_at=0
status=0
running=$processes
while ((running)); do
  for i in "${!pids[@]}"; do
    pid=${pids[i]}
    if [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null; then
      continue  # reaped already, or still running
    fi
    rc=0
    wait "$pid" || rc=$?
    pids[i]=""
    running=$((running - 1))
    if ((rc != 0)) && [[ -z $failed ]]; then
      failed=$i
      status=$rc
      echo "$PROG: process $i exited with status $rc; stopping the others" >&2
      stop_all
      stopped_at=$SECONDS
    fi
  done
  # A process blocked in a collective whose peer has died may never see its SIGTERM.
  if [[ -n $failed ]] && ((running && SECONDS - stopped_at > GRACE_SECONDS)); then
    echo "$PROG: still running $GRACE_SECONDS s after SIGTERM; killing" >&2
    for pid in "${pids[@]}"; do
      [[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  ((running == 0)) || sleep 0.2
done

if [[ -n $failed ]]; then
  if ((failed > 0)); then
    echo "$PROG: the end of $workdir/logs/process$failed.log:" >&2
    tail -n 30 "$workdir/logs/process$failed.log" >&2
  fi
  exit "$status"
fi
echo "$PROG: all $processes processes finished" >&2
