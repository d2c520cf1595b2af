#!/usr/bin/env bash
# A private docker engine for the test suite (tests/e2e/test_compose.py), and the base image
# where no image registry is reachable.
#
#   deploy/ci-docker.sh start     start dockerd on a private socket and data root; prints
#                                 `export DOCKER_HOST=...` (eval it)
#   deploy/ci-docker.sh base      make sure the Dockerfile's base image exists: the official
#                                 one if it can be pulled, else Debian bookworm built with
#                                 debootstrap --variant=minbase and loaded with `docker import`
#                                 (prints the image name to use as the Dockerfile's BASE)
#   deploy/ci-docker.sh stop      stop that dockerd and remove everything it made: containers,
#                                 images, networks, volumes, its data root, bridge and chains
#
# Nothing here touches a docker engine the machine already runs: the socket, data root,
# exec root and bridge are this script's own (TOM_CI_DOCKER_DIR, default /var/lib/tom-ci-docker).
# Needs root and Debian's docker.io, docker-compose and debootstrap (.ci/run installs them).
set -euo pipefail

DIR=${TOM_CI_DOCKER_DIR:-/var/lib/tom-ci-docker}
SOCK=${TOM_CI_DOCKER_SOCK:-/run/tom-ci-docker.sock}
BRIDGE=tomci0
BRIDGE_CIDR=${TOM_CI_DOCKER_BIP:-172.31.250.1/24}
# the debootstrap tarball is kept between runs on the same machine (about 60 MB)
CACHE=${TOM_CI_DOCKER_CACHE:-/var/cache/tom-ci-docker}
# The Dockerfile's base: python:3.11-slim is Debian bookworm; the local stand-in is the same
# Debian release with its python3 (3.11).
OFFICIAL_BASE=python:3.11-slim
LOCAL_BASE=tom-base:bookworm
OWN_HOST="unix://$SOCK"

log() { echo "ci-docker: $*" >&2; }

start() {
  export DOCKER_HOST=$OWN_HOST
  if docker info >/dev/null 2>&1; then
    log "dockerd already answers on $SOCK"
  else
    mkdir -p "$DIR/root" "$DIR/exec"
    # a bridge of our own, so the engine never touches docker0 of another engine
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
      ip link add "$BRIDGE" type bridge
      ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
      ip link set "$BRIDGE" up
    fi
    nohup dockerd -H "$DOCKER_HOST" --data-root "$DIR/root" --exec-root "$DIR/exec" \
      --pidfile "$DIR/dockerd.pid" --storage-driver overlay2 --bridge "$BRIDGE" \
      --default-address-pool base=172.31.0.0/17,size=24 \
      >"$DIR/dockerd.log" 2>&1 &
    for _ in $(seq 1 120); do
      docker info >/dev/null 2>&1 && break
      sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
      log "dockerd did not start; its log:"
      tail -n 30 "$DIR/dockerd.log" >&2
      exit 1
    fi
    log "dockerd $(cat "$DIR/dockerd.pid") on $SOCK"
  fi
  echo "export DOCKER_HOST=$DOCKER_HOST"
}

mirror() {
  # the Debian mirror apt is configured with (deb822 or one-line sources)
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
      grep -v security | head -n1 || true)
  [ -n "$m" ] || m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
                     awk '{print $2}' | grep -v security | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

base() {
  # the engine DOCKER_HOST names (this script's own if unset)
  export DOCKER_HOST=${DOCKER_HOST:-$OWN_HOST}
  if docker image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 ||
     timeout 60 docker pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
    echo "$OFFICIAL_BASE"
    return
  fi
  if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    local tarball="$CACHE/bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
      log "no image registry: building $LOCAL_BASE with debootstrap (a few minutes)"
      mkdir -p "$CACHE"
      local rootfs
      rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -n 20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
      mv "$tarball.tmp" "$tarball"
      rm -rf "$rootfs"
    fi
    docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' "$tarball" "$LOCAL_BASE" >/dev/null
  fi
  echo "$LOCAL_BASE"
}

stop() {
  export DOCKER_HOST=$OWN_HOST
  if docker info >/dev/null 2>&1; then
    docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker system prune -af --volumes >/dev/null 2>&1 || true
  fi
  if [ -s "$DIR/dockerd.pid" ]; then
    local pid
    pid=$(cat "$DIR/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # containerd started by dockerd stops with it; remove what the engine left in the kernel
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  for br in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | grep '^br-' || true); do
    # compose networks of this engine: their addresses are in our 172.31.0.0/17 pool
    if ip -4 addr show "$br" | grep -q 'inet 172\.31\.'; then ip link del "$br" || true; fi
  done
  # the DOCKER chains are shared by every engine on the host: only when no other dockerd runs
  if command -v iptables >/dev/null && ! pgrep -x dockerd >/dev/null; then
    for table in filter nat; do
      iptables -t "$table" -S 2>/dev/null | grep -E -- '-A (DOCKER|FORWARD|PREROUTING|OUTPUT|POSTROUTING).*(tomci0|172\.31\.|DOCKER)' |
        sed 's/^-A/-D/' | while read -r rule; do
          # shellcheck disable=SC2086
          iptables -t "$table" $rule 2>/dev/null || true
        done
      for chain in DOCKER-USER DOCKER-ISOLATION-STAGE-2 DOCKER-ISOLATION-STAGE-1 DOCKER; do
        iptables -t "$table" -F "$chain" 2>/dev/null || true
        iptables -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  fi
  umount -R "$DIR/exec" 2>/dev/null || true
  for m in $(awk '{print $2}' /proc/mounts | grep "^$DIR" | sort -r); do umount -l "$m" || true; done
  rm -rf "$DIR" "$SOCK"
  log "stopped; $DIR removed"
}

case "${1:-}" in
  start) start ;;
  base) base ;;
  stop) stop ;;
  *) echo "usage: $0 start|base|stop" >&2; exit 2 ;;
esac
