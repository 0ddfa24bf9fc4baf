#!/usr/bin/env bash
# Run one JAX job as N processes on this machine (multi-host rehearsal on localhost).
#
#   launch/local_multihost.sh N COMMAND [ARGS...]
#   launch/local_multihost.sh 2 python -m hobs_jax.main --config=configs/quickstart.py:smoke --workdir=/tmp/mh
#   launch/local_multihost.sh 2 python -m tests.train_job --workdir=/tmp/mh --steps=8
#
# Each process gets HOBS_COORDINATOR_ADDRESS=127.0.0.1:PORT (a free port, or $HOBS_PORT),
# HOBS_NUM_PROCESSES=N and HOBS_PROCESS_ID=i, which hobs_jax.train.distributed.initialize()
# reads (it also selects gloo CPU collectives). Output of process i goes to
# $LOG_DIR/process_i.log when LOG_DIR is set, else to this terminal prefixed by "[i]".
# If one process fails, the others are stopped (they would wait forever in a collective);
# SIGINT/SIGTERM are forwarded to all of them. Exit status: the first failure, else 0.
set -euo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES COMMAND [ARGS...]" >&2
  exit 2
fi
N=$1
shift
PY=${PYTHON:-python3}
PORT=${HOBS_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
[[ -n "${LOG_DIR:-}" ]] && mkdir -p "$LOG_DIR"

pids=()
stop_all() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap 'stop_all' INT TERM

for ((i = 0; i < N; i++)); do
  if [[ -n "${LOG_DIR:-}" ]]; then
    HOBS_COORDINATOR_ADDRESS=127.0.0.1:$PORT HOBS_NUM_PROCESSES=$N HOBS_PROCESS_ID=$i \
      "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  else
    HOBS_COORDINATOR_ADDRESS=127.0.0.1:$PORT HOBS_NUM_PROCESSES=$N HOBS_PROCESS_ID=$i \
      "$@" > >(sed "s/^/[$i] /") 2>&1 &
  fi
  pids+=($!)
done

# Poll rather than `wait -n`: bash reaps children in the background, after which
# `wait -n PID...` no longer finds them; `wait PID` still returns their saved status.
status=0
live=("${pids[@]}")
while ((${#live[@]} > 0)); do
  next=()
  for p in "${live[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      next+=("$p")
      continue
    fi
    rc=0
    wait "$p" || rc=$?
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "local_multihost: process pid $p exited with status $rc; stopping the others" >&2
      stop_all
    fi
  done
  live=("${next[@]}")
  if ((${#live[@]} > 0)); then sleep 0.2; fi
done
exit "$status"
