#!/usr/bin/env bash
# A Docker Engine for the actuator's tests, and the local image they run. Idempotent:
#   - an engine that already answers (DOCKER_HOST or /var/run/docker.sock) is used as is;
#   - otherwise dockerd is started in the background (root only), pidfile and log in $EARNOPT_DOCKERD_DIR
#     (default /tmp/earnopt-dockerd); if it cannot start with its defaults (no iptables, no overlayfs in a
#     sandbox) it is retried with --iptables=false --bridge=none --storage-driver=vfs (the tests use --network none);
#   - the image earnopt/busybox:local is built from Debian's static /bin/busybox with `docker import`.
#     There is no registry: nothing is pulled.
# scripts/install_system_deps.sh installs docker.io and busybox-static.
set -euo pipefail
IMAGE="${EARNOPT_TEST_IMAGE:-earnopt/busybox:local}"
STATE="${EARNOPT_DOCKERD_DIR:-/tmp/earnopt-dockerd}"
DOCKER="$(command -v docker || true)"
[ -n "$DOCKER" ] || { echo "docker CLI not installed (run scripts/install_system_deps.sh)" >&2; exit 1; }

answers() { "$DOCKER" version >/dev/null 2>&1; }

start_dockerd() {  # extra flags as arguments; returns 0 once the engine answers
  if [ -f "$STATE/dockerd.pid" ] && kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null; then
    kill "$(cat "$STATE/dockerd.pid")" 2>/dev/null || true  # ours, not answering: replace it
    sleep 2
  fi
  nohup dockerd --host=unix:///var/run/docker.sock --pidfile="$STATE/dockerd.pid" --data-root="$STATE/data" \
    --exec-root="$STATE/exec" "$@" >>"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    answers && return 0
    kill -0 $! 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

if ! answers; then
  if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix:///var/run/docker.sock" ]; then
    echo "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd for another endpoint" >&2; exit 1
  fi
  [ "$(id -u)" -eq 0 ] || { echo "no Docker Engine answers and dockerd needs root to start" >&2; exit 1; }
  command -v dockerd >/dev/null 2>&1 || { echo "dockerd not installed (run scripts/install_system_deps.sh)" >&2; exit 1; }
  mkdir -p "$STATE"
  echo "==> starting dockerd (log: $STATE/dockerd.log)"
  if ! start_dockerd; then
    echo "==> dockerd did not start with its defaults; retrying with --iptables=false --bridge=none --storage-driver=vfs"
    start_dockerd --iptables=false --bridge=none --storage-driver=vfs || {
      echo "dockerd failed to start; last log lines:" >&2; tail -n 25 "$STATE/dockerd.log" >&2; exit 1; }
  fi
fi

if ! "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  [ -x /bin/busybox ] || { echo "/bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }
  ROOTFS="$(mktemp -d)"
  trap 'rm -rf "$ROOTFS"' EXIT
  mkdir -p "$ROOTFS/bin"
  cp /bin/busybox "$ROOTFS/bin/busybox"
  for applet in sh sleep true cat; do ln -s busybox "$ROOTFS/bin/$applet"; done
  tar -C "$ROOTFS" -c . | "$DOCKER" import -c 'CMD ["/bin/sleep", "86400"]' - "$IMAGE" >/dev/null
  echo "==> built $IMAGE from /bin/busybox"
fi
