#!/usr/bin/env bash
# Install the peers the benchmarks compare the gateway with (issue #13), idempotently:
#   - vllm-router and sglang-router (Rust routers, PyPI wheels) in their own venv under
#     ${GATEWAY_BENCH_PEERS:-~/.cache/gateway/bench-peers}, outside the clone;
#   - nginx (Debian package nginx-light) for a plain reverse proxy. The package's own
#     service is stopped and disabled: the benchmark runs its own nginx on 127.0.0.1
#     with a temporary config and stops it by PID.
# Re-running is cheap: nothing is reinstalled when the pinned versions are present.
#
#   ./scripts/bench-peers.sh            # install (or check) everything
#   ./scripts/bench-peers.sh --print    # print where the binaries are, install nothing
set -euo pipefail

VLLM_ROUTER_VERSION=0.1.17
SGLANG_ROUTER_VERSION=0.3.2
PEERS=${GATEWAY_BENCH_PEERS:-$HOME/.cache/gateway/bench-peers}
VENV=$PEERS/venv

if [[ ${1:-} == --print ]]; then
  echo "venv: $VENV"
  echo "vllm-router: $(ls "$VENV"/bin/vllm-router 2>/dev/null || echo missing)"
  echo "sglang-router: $(ls "$VENV"/bin/sglang-router 2>/dev/null || echo missing)"
  echo "nginx: $(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || echo missing)"
  exit 0
fi

mkdir -p "$PEERS"
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
want="vllm-router==$VLLM_ROUTER_VERSION sglang-router==$SGLANG_ROUTER_VERSION"
have=$("$VENV"/bin/python -m pip freeze 2>/dev/null | tr '\n' ' ')
missing=0
for w in $want; do
  [[ " $have " == *" $w "* ]] || missing=1
done
if (( missing )); then
  # Their own venv: the routers' dependencies (fastapi, uvicorn...) must not touch the
  # project's venv, whose versions the gateway is measured with.
  "$VENV"/bin/python -m pip install -q $want
fi
"$VENV"/bin/python -m pip freeze | grep -iE '^(vllm-router|sglang-router)=='

if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "nginx is missing and this is not root: install nginx-light (apt-get install -y nginx-light)" >&2
    exit 1
  fi
  # policy-rc.d 101: the package must not start its service on install.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null
fi
# Whatever the package set up must not keep a system nginx running beside ours.
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
fi
if [[ -f /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
  /usr/sbin/nginx -s quit || true
fi
echo "nginx: $(/usr/sbin/nginx -v 2>&1)"
