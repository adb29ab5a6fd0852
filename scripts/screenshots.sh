#!/usr/bin/env bash
# PNGs of the Dagster UI for the README (docs/img/): installs Debian chromium if missing, runs `earnopt demo`
# into a fresh data dir (or reuses one: scripts/screenshots.sh --data-dir DIR --reuse), serves it with
# dagster-webserver on a free port and captures the lineage, an earnings_model partition, resource_allocation,
# alerts and the automation page in headless chromium.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
bash scripts/install_chromium.sh
exec python scripts/screenshots.py "$@"
