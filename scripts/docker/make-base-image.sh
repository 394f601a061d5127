#!/usr/bin/env bash
# Make the Dockerfile's base image without any registry: a minimal Debian bookworm root filesystem from the
# Debian mirror (debootstrap), imported into the daemon at $DOCKER_HOST as TAG. Skips when TAG already exists.
#   DOCKER_HOST=unix:///tmp/pgps-dockerd/docker.sock scripts/docker/make-base-image.sh local/debian:bookworm
# Mirror: $DEBIAN_MIRROR, else the first bookworm URI of this machine's apt sources, else deb.debian.org.
set -euo pipefail
tag=${1:-local/debian:bookworm}
client=/usr/bin/docker; [ -x "$client" ] || client=docker
if "$client" image inspect "$tag" >/dev/null 2>&1; then echo "make-base-image: $tag exists"; exit 0; fi
command -v debootstrap >/dev/null || { echo "make-base-image: debootstrap not installed" >&2; exit 3; }
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$( { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/{print $2}';
              cat /etc/apt/sources.list 2>/dev/null | awk '$1=="deb"{print $2}'; } \
            | grep -v -e security -e '^$' | head -n1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
work=$(mktemp -d "${TMPDIR:-/tmp}/pgps-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; exit 4; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" --numeric-owner -c . | "$client" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["bash"]' - "$tag"
echo "make-base-image: imported $tag from $mirror"
