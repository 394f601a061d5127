#!/usr/bin/env bash
# Debian packages for the Docker and SLURM test stages. Idempotent; needs root (CI runs as root).
set -euo pipefail
pkgs=()
command -v dockerd >/dev/null && [ -x /usr/bin/docker ] || pkgs+=(docker.io)
command -v debootstrap >/dev/null || pkgs+=(debootstrap)
[ -x /usr/bin/chromium ] || pkgs+=(chromium)  # headless browser: tests/test_report_html.py renders report.html
# SLURM test cluster (scripts/slurm/): Debian's slurm + munge + accounting (slurmdbd on MariaDB-core, not the
# full mariadb-server, which upgrades perl-base)
for p in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge slurmdbd:slurmdbd \
         mariadbd:mariadb-server-core mariadb:mariadb-client-core; do
  command -v "${p%%:*}" >/dev/null || [ -x "/usr/sbin/${p%%:*}" ] || pkgs+=("${p#*:}")
done
if [ ${#pkgs[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: need root to install: ${pkgs[*]} (Docker/SLURM tests will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
