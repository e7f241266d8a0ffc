#!/usr/bin/env bash
# Set up (first run only, redis-server included) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-redis
# The real-engine tier (tests/realengines) needs vLLM's CPU build, llama-server and the tiny
# model: installed once, cached under ~/.cache/gateway, seconds when warm.
# REALENGINES=0 skips the install and the tier (the fast tier, for quick loops).
if [ "${REALENGINES:-1}" = 0 ]; then
  exec .venv/bin/python -m pytest -m "not realengine" "$@"
fi
bash scripts/realengines/setup.sh >/dev/null
exec .venv/bin/python -m pytest "$@"
