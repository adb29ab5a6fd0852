#!/usr/bin/env bash
# Debian packages the slow tests and benchmarks use, never a binary download:
#   prometheus  the server and promtool (tests and benchmarks of the Prometheus telemetry source).
#   docker.io, busybox-static  a real Docker Engine and a static busybox for the actuator's tests
#               (scripts/docker_engine.sh starts dockerd and builds the test image from /bin/busybox).
# Idempotent and instant when the binaries are already there. CI runs as root; elsewhere sudo is used.
set -euo pipefail
if ! command -v dockerd >/dev/null 2>&1 || ! [ -x /bin/busybox ]; then
  DOCKER_SUDO=""
  if [ "$(id -u)" -ne 0 ]; then DOCKER_SUDO="sudo"; fi
  echo "==> installing Debian docker.io and busybox-static (apt-get)"
  $DOCKER_SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $DOCKER_SUDO apt-get install -y -qq --no-install-recommends docker.io busybox-static >/dev/null
fi
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "==> installing Debian prometheus (apt-get)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service on :9090 where an init system runs; the tests start their own server.
command -v prometheus >/dev/null
command -v promtool >/dev/null
