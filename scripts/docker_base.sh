#!/usr/bin/env bash
# Build a local stand-in for python:3.11-slim-bookworm when registry images cannot be pulled: a Debian
# bookworm root file system from the Debian archive (debootstrap, minbase) with Debian's python3.11 and a
# venv at /opt/python first on PATH (so `python` and `pip` behave as in the python image: pip installs
# into it, no PEP 668 refusal), imported with `docker import`. Usage: docker_base.sh TAG
#   env: DOCKER (CLI), DEBIAN_MIRROR (default: the host's first deb.debian.org-style URI, else
#        http://deb.debian.org/debian)
set -euo pipefail
TAG=${1:?usage: docker_base.sh TAG}
DOCKER=${DOCKER:-docker}
SUDO=$([[ "$(id -u)" -eq 0 ]] && echo "" || echo sudo)
if [[ -z "${DEBIAN_MIRROR:-}" ]]; then
    DEBIAN_MIRROR=$(awk '/^URIs:/ && $2 ~ /\/debian$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
if ! command -v debootstrap >/dev/null; then
    echo "docker base: installing debootstrap (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends debootstrap
fi
root=$(mktemp -d /tmp/catsdogs-base.XXXXXX)
trap '$SUDO rm -rf "$root"' EXIT
began=$SECONDS
echo "docker base: debootstrap bookworm from $DEBIAN_MIRROR into $root"
$SUDO debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# apt inside the image: the release plus its updates and security fixes, like the python image's sources
security=${DEBIAN_MIRROR%/debian}/debian-security
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$DEBIAN_MIRROR" "$DEBIAN_MIRROR" "$security" | $SUDO tee "$root/etc/apt/sources.list" >/dev/null
$SUDO chroot "$root" python3 -m venv /opt/python
$SUDO chroot "$root" /opt/python/bin/python -m pip --version
$SUDO rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
$SUDO tar -C "$root" --numeric-owner -c . | $DOCKER import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python"]' \
    --message "catsdogs local base: debootstrap bookworm minbase + python3.11 venv" - "$TAG" >/dev/null
echo "docker base: $TAG built in $((SECONDS - began)) s ($($DOCKER image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
