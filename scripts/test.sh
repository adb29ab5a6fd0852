#!/usr/bin/env bash
# Command 2: run the whole test suite with coverage (creates .venv and installs if needed).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec python -m pytest --cov=earnopt_assets --cov-report=term-missing:skip-covered --cov-fail-under=85 "$@"
