#!/usr/bin/env bash
# Make a Docker engine reachable for `make docker-test` (CI machines without one): install Debian's
# docker.io when dockerd is missing, and start dockerd when no engine answers. The engine it starts has
# no default bridge and touches no firewall (--bridge=none --iptables=false --ip6tables=false): builds
# and containers use host networking, and every server in them binds 127.0.0.1. It listens on its unix
# socket only. An engine that already answers `docker info` is used as it is.
#   env: DOCKER (CLI, default docker), DOCKERD_LOG (default /var/log/catsdogs-dockerd.log)
set -euo pipefail
DOCKER=${DOCKER:-docker}
LOG=${DOCKERD_LOG:-/var/log/catsdogs-dockerd.log}
SUDO=$([[ "$(id -u)" -eq 0 ]] && echo "" || echo sudo)

if $DOCKER info >/dev/null 2>&1; then
    echo "docker engine: $($DOCKER info --format '{{.ServerVersion}}') already running"
    exit 0
fi
if ! command -v dockerd >/dev/null || ! command -v "$DOCKER" >/dev/null; then
    echo "docker engine: installing docker.io (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker.io
fi
echo "docker engine: starting dockerd (--bridge=none, host networking only; log $LOG)"
# setsid: the daemon outlives this make target (and later CI stages reuse it)
$SUDO setsid dockerd --host=unix:///var/run/docker.sock --bridge=none --iptables=false --ip6tables=false \
    >"$LOG" 2>&1 < /dev/null &
for _ in $(seq 60); do
    if $DOCKER info >/dev/null 2>&1; then
        echo "docker engine: $($DOCKER info --format '{{.ServerVersion}}') ready"
        exit 0
    fi
    sleep 1
done
echo "docker engine: dockerd did not answer within 60 s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2
exit 1
