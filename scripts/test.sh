#!/usr/bin/env bash
# Set up (first run only, redis-server included) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-redis
exec .venv/bin/python -m pytest "$@"
