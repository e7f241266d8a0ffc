#!/usr/bin/env bash
# Set up (first run only) and serve the demo config: simulated engines, SQLite ledger.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p var
cat >&2 <<'MSG'

  Gateway on http://127.0.0.1:8000 (demo keys: client sk-demo-key, admin sk-demo-admin). Try:

  curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Authorization: Bearer sk-demo-key' \
       -H 'Content-Type: application/json' \
       -d '{"model": "qwen3-8b", "messages": [{"role": "user", "content": "Hello!"}]}'

MSG
exec .venv/bin/gateway serve --config config/demo.yaml "$@"
