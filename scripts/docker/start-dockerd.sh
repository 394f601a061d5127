#!/usr/bin/env bash
# Start an isolated Docker daemon that leaves the host's networking alone (no iptables rules, no bridge, no
# forwarding) and shares nothing with a system daemon: its own data root, exec root, pidfile and socket, all under
# STATE_DIR. Used by the CI Docker stage (tests/test_docker_image.py) and by hand:
#   scripts/docker/start-dockerd.sh /tmp/pgps-dockerd   # prints DOCKER_HOST=unix:///tmp/pgps-dockerd/docker.sock
#   scripts/docker/stop-dockerd.sh  /tmp/pgps-dockerd   # stops it by PID and removes STATE_DIR
# Needs root (dockerd does). Exit 3 = dockerd is not installed; exit 4 = it did not come up (see dockerd.log).
set -euo pipefail
state=${1:?usage: start-dockerd.sh STATE_DIR [TIMEOUT_S]}
timeout_s=${2:-60}
command -v dockerd >/dev/null || { echo "start-dockerd: dockerd not installed (apt-get install docker.io)" >&2; exit 3; }
mkdir -p "$state/data" "$state/exec"
state=$(cd "$state" && pwd)
sock="$state/docker.sock"
if [ ${#sock} -gt 100 ]; then echo "start-dockerd: socket path too long for a unix socket: $sock" >&2; exit 4; fi
if [ -s "$state/dockerd.pid" ] && kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null; then
  echo "DOCKER_HOST=unix://$sock"; exit 0
fi
# setsid: the daemon gets its own session, so a Ctrl-C in the caller's terminal does not reach it
setsid dockerd \
  --data-root "$state/data" --exec-root "$state/exec" --pidfile "$state/dockerd.pid" \
  -H "unix://$sock" --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
  --storage-driver=overlay2 >"$state/dockerd.log" 2>&1 </dev/null &
echo $! >"$state/dockerd.launcher.pid"
client=/usr/bin/docker; [ -x "$client" ] || client=docker
for _ in $(seq "$((timeout_s * 5))"); do
  if "$client" -H "unix://$sock" info >/dev/null 2>&1; then echo "DOCKER_HOST=unix://$sock"; exit 0; fi
  kill -0 "$(cat "$state/dockerd.launcher.pid")" 2>/dev/null || break
  sleep 0.2
done
echo "start-dockerd: daemon did not come up; last lines of $state/dockerd.log:" >&2
tail -n 5 "$state/dockerd.log" >&2 || true
exit 4
