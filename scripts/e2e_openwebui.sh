#!/usr/bin/env bash
# Open WebUI end to end through the gateway, in a real (headless) browser.
#
#   scripts/e2e_openwebui.sh install   # one-off: Open WebUI + Playwright into var/e2e/venv (2-6 min, ~3.1 GB)
#   scripts/e2e_openwebui.sh run       # gateway (demo config) + Open WebUI + Chromium, ~1-3 min
#   scripts/e2e_openwebui.sh           # both (install is skipped when already done)
#   scripts/e2e_openwebui.sh run --gateway-url http://127.0.0.1:8000   # a gateway already running
#   (after `run`, arguments go to the driver: scripts/e2e_openwebui.py --help)
#   scripts/e2e_openwebui.sh load-timeout  # how long Open WebUI waits for a loading model (~8 min;
#                                          # arguments: scripts/owui_load_timeout.py --help)
#
# Cost: the install downloads Open WebUI 0.12.x and its dependencies from PyPI
# (2-6 min depending on the network, ~3.1 GB in var/e2e/venv; torch comes from the
# local CPU wheel, without it pip would pull several GB of CUDA packages). A run takes
# ~1-3 min on 2 cores, most of it Open WebUI's first start; every step is bounded
# (E2E_TIMEOUT, default 900 s, for the whole run). Too heavy for CI: run it by hand.
#
# Everything lives under var/e2e/ (git-ignored): the venv, a fresh Open WebUI
# DATA_DIR and working directory per run, logs. Screenshots go to docs/screenshots/.
# The driver starts the gateway and Open WebUI itself and stops them by PID.
#
# Never runs `playwright install` (it downloads a browser build and fails here):
# Playwright drives Debian's chromium through executable_path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
E2E_DIR="${E2E_DIR:-$ROOT/var/e2e}"
VENV="$E2E_DIR/venv"
OWUI_VERSION="${OWUI_VERSION:-0.12.4}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"
PYTHON="${PYTHON:-python3.11}"
GATEWAY_PY="${GATEWAY_PY:-$ROOT/.venv/bin/python}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
E2E_TIMEOUT="${E2E_TIMEOUT:-900}"
MARKER="$VENV/.e2e-installed"
WANT="open-webui==$OWUI_VERSION torch==$TORCH_VERSION playwright==$PLAYWRIGHT_VERSION"

log() { printf '[e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# A local CPU torch wheel, looked for where pip's find-links point (pip config or
# PIP_FIND_LINKS), then /opt/wheels. Prints the path, or nothing.
find_torch_wheel() {
    local dirs d w
    dirs="${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true) /opt/wheels"
    for d in $dirs; do
        d="${d#file://}"
        [ -d "$d" ] || continue
        for w in "$d"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl "$d"/torch-"$TORCH_VERSION"-cp311-*.whl; do
            [ -f "$w" ] && { echo "$w"; return 0; }
        done
    done
    return 0
}

do_install() {
    if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ]; then
        log "Open WebUI already installed in $VENV ($WANT)"
        return 0
    fi
    mkdir -p "$E2E_DIR"
    local t0=$SECONDS
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip wheel

    # torch first, from the local CPU wheel: open-webui depends on it (through
    # sentence-transformers) and pip would otherwise choose the CUDA build.
    local wheel
    wheel="$(find_torch_wheel)"
    if [ -n "$wheel" ]; then
        log "torch from local wheel $wheel"
        "$VENV/bin/pip" install --no-cache-dir "$wheel"
    else
        log "WARNING: no local CPU wheel for torch $TORCH_VERSION; asking the registry (may pull CUDA packages, GBs)"
        "$VENV/bin/pip" install --no-cache-dir "torch==$TORCH_VERSION"
    fi

    log "open-webui $OWUI_VERSION and playwright $PLAYWRIGHT_VERSION (several minutes)"
    # Keep the torch we just installed: the constraint stops pip from replacing it.
    echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >"$E2E_DIR/constraints.txt"
    "$VENV/bin/pip" install --no-cache-dir -c "$E2E_DIR/constraints.txt" \
        "open-webui==$OWUI_VERSION" "playwright==$PLAYWRIGHT_VERSION"

    # The driver imports only playwright; check both are importable now rather than mid-run.
    "$VENV/bin/python" -c 'import playwright.sync_api, open_webui' >/dev/null
    echo "$WANT" >"$MARKER"
    log "installed in $((SECONDS - t0)) s, $(du -sh "$VENV" | cut -f1) in $VENV"
}

ensure_chromium() {
    if [ -x "$CHROMIUM" ]; then
        return 0
    fi
    log "installing Debian's chromium (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    [ -x "$CHROMIUM" ] || { log "no chromium at $CHROMIUM"; exit 1; }
}

# Run a driver under `timeout LIMIT`, its output also in LOGFILE: bounded_driver LIMIT LOGFILE argv...
# timeout sends SIGTERM first: the driver turns it into SystemExit and stops its children
# by PID. timeout runs in its own process group, so Ctrl-C at the terminal would not reach
# it: the trap forwards INT/TERM to it (it relays them to the driver).
bounded_driver() {
    local limit="$1" logfile="$2"
    shift 2
    timeout --kill-after=30 "$limit" "$@" > >(tee "$logfile") 2>&1 &
    local pid=$! rc=0
    trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
    wait "$pid" || rc=$?
    # A trapped signal interrupts `wait`: wait again until the driver has cleaned up.
    while kill -0 "$pid" 2>/dev/null; do
        rc=0
        wait "$pid" || rc=$?
    done
    trap - INT TERM
    return "$rc"
}

check_installed() {
    [ -f "$MARKER" ] || { log "Open WebUI is not installed: run '$0 install' first"; exit 1; }
    [ -x "$GATEWAY_PY" ] || { log "no gateway interpreter at $GATEWAY_PY (create $ROOT/.venv)"; exit 1; }
    ensure_chromium
    mkdir -p "$E2E_DIR"
}

do_run() {
    check_installed
    mkdir -p "$ROOT/docs/screenshots"
    log "running the driver (bounded to ${E2E_TIMEOUT}s); log: $E2E_DIR/e2e.log"
    local rc=0
    bounded_driver "$E2E_TIMEOUT" "$E2E_DIR/e2e.log" "$VENV/bin/python" "$ROOT/scripts/e2e_openwebui.py" \
        --root "$ROOT" \
        --work-dir "$E2E_DIR" \
        --gateway-python "$GATEWAY_PY" \
        --open-webui "$VENV/bin/open-webui" \
        --chromium "$CHROMIUM" \
        --screenshots "$ROOT/docs/screenshots" \
        --deadline "$((E2E_TIMEOUT - 60))" \
        "$@" || rc=$?
    log "driver exit status $rc (0 pass, 1 a check failed, 2 set-up failed, 124 timed out)"
    return "$rc"
}

# The load-timeout measurement: on-demand pools with slow simulated start-ups behind
# several Open WebUI instances (scripts/owui_load_timeout.py). LOAD_TIMEOUT_LIMIT bounds it.
do_load_timeout() {
    check_installed
    local limit="${LOAD_TIMEOUT_LIMIT:-1200}" rc=0
    log "measuring Open WebUI's tolerance of model loads (bounded to ${limit}s); log: $E2E_DIR/load-timeout.log"
    bounded_driver "$limit" "$E2E_DIR/load-timeout.log" "$VENV/bin/python" "$ROOT/scripts/owui_load_timeout.py" \
        --root "$ROOT" \
        --work-dir "$E2E_DIR" \
        --gateway-python "$GATEWAY_PY" \
        --open-webui "$VENV/bin/open-webui" \
        --chromium "$CHROMIUM" \
        "$@" || rc=$?
    log "load-timeout exit status $rc (0 measured, 2 set-up failed, 124 timed out)"
    return "$rc"
}

case "${1:-all}" in
    install) do_install ;;
    run) shift; do_run "$@" ;;
    load-timeout) shift; do_load_timeout "$@" ;;
    all) do_install && do_run ;;
    -h | --help) sed -n '2,23p' "$0" ;;
    *) echo "usage: $0 [install|run|load-timeout|all]" >&2; exit 2 ;;
esac
