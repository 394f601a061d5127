#!/usr/bin/env bash
# Stop the cluster that start-cluster.sh DIR started: cancel its jobs first (a job's slurmstepd outlives slurmd),
# then stop each daemon by the PID in its pid file, munged last. Idempotent.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: stop-cluster.sh DIR" >&2; exit 1; }
DIR=$(cd "$1" 2>/dev/null && pwd) || exit 0
export PATH="$PATH:/usr/sbin"
export SLURM_CONF="$DIR/etc/slurm.conf"

stop_pids() {  # stop_pids PIDFILE...: TERM them all, wait up to 10 s for all to exit, then KILL the rest
  local f pid pids=()
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null && pids+=("$pid"); fi
    rm -f "$f"
  done
  for _ in $(seq 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  return 0
}

if [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
  ids=$(squeue -h -o '%A' 2>/dev/null | sort -u)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null
    for _ in $(seq 100); do [ -z "$(squeue -h -o '%A' 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi
# slurm daemons together, then accounting, then its database and munge
stop_pids "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid"
stop_pids "$DIR/run/slurmdbd.pid"
stop_pids "$DIR/run/mariadbd.pid" "$DIR/run/munged.pid"
echo "SLURM cluster in $DIR stopped"
