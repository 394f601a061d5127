#!/usr/bin/env bash
# Stop the daemon started by start-dockerd.sh (by its PID, never by name), unmount what it left mounted (the
# netns of the default network, overlay layers), and delete STATE_DIR. Safe to run twice.
set -uo pipefail
state=${1:?usage: stop-dockerd.sh STATE_DIR}
[ -d "$state" ] || exit 0
state=$(cd "$state" && pwd)
for f in dockerd.pid dockerd.launcher.pid; do
  pid=$(cat "$state/$f" 2>/dev/null) || continue
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
  kill -TERM "$pid"
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
done
# deepest mounts first
grep -F " $state/" /proc/self/mounts | awk '{print $2}' | sort -r | while read -r mnt; do
  umount "$mnt" 2>/dev/null || umount -l "$mnt"
done
rm -rf "$state"
