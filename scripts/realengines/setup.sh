#!/usr/bin/env bash
# Everything the real-engine tests need, idempotent and cached outside the clone
# (default ~/.cache/gateway, keyed by version): vLLM's CPU build in its own venv and
# llama.cpp's llama-server built from source (in parallel: the cold path is their sum
# otherwise), then the deterministic tiny models (Qwen3: HF directory + GGUF; Whisper: HF directory).
# Writes $GATEWAY_CACHE/realengines.env (shell syntax) and prints it.
# A warm run takes seconds: each step checks its stamp first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export GATEWAY_CACHE=${GATEWAY_CACHE:-$HOME/.cache/gateway}
mkdir -p "$GATEWAY_CACHE/logs"
start=$(date +%s)

bash "$HERE/install_vllm.sh" >"$GATEWAY_CACHE/logs/vllm.path" 2>"$GATEWAY_CACHE/logs/install_vllm.log" &
vllm_pid=$!
bash "$HERE/build_llamacpp.sh" >"$GATEWAY_CACHE/logs/llama.path" 2>"$GATEWAY_CACHE/logs/build_llamacpp.log" &
llama_pid=$!
fail=0
wait "$vllm_pid" || { echo "realengines: vLLM install failed:" >&2; tail -30 "$GATEWAY_CACHE/logs/install_vllm.log" >&2; fail=1; }
wait "$llama_pid" || { echo "realengines: llama.cpp build failed:" >&2; tail -30 "$GATEWAY_CACHE/logs/build_llamacpp.log" >&2; fail=1; }
[ "$fail" = 0 ] || exit 1
VLLM_VENV=$(cat "$GATEWAY_CACHE/logs/vllm.path")
LLAMA_DIR=$(cat "$GATEWAY_CACHE/logs/llama.path")

# The model is keyed by the maker's own content: any change to it makes a new model.
maker="$HERE/make_tiny_model.py"
key=$(sha256sum "$maker" | cut -c1-12)
MODEL_DIR=$GATEWAY_CACHE/tiny-model-$key
if [ ! -f "$MODEL_DIR/.gateway-built" ]; then
  rm -rf "$MODEL_DIR.tmp"
  "$VLLM_VENV/bin/python" "$maker" --out "$MODEL_DIR.tmp" --llama-src "$LLAMA_DIR/src" \
    >"$GATEWAY_CACHE/logs/make_tiny_model.log" 2>&1 \
    || { tail -40 "$GATEWAY_CACHE/logs/make_tiny_model.log" >&2; exit 1; }
  touch "$MODEL_DIR.tmp/.gateway-built"
  rm -rf "$MODEL_DIR"
  mv "$MODEL_DIR.tmp" "$MODEL_DIR"
fi

# The tiny Whisper for /v1/audio/transcriptions, keyed the same way.
whisper_maker="$HERE/make_tiny_whisper.py"
wkey=$(sha256sum "$whisper_maker" | cut -c1-12)
WHISPER_DIR=$GATEWAY_CACHE/tiny-whisper-$wkey
if [ ! -f "$WHISPER_DIR/.gateway-built" ]; then
  rm -rf "$WHISPER_DIR.tmp"
  "$VLLM_VENV/bin/python" "$whisper_maker" --out "$WHISPER_DIR.tmp" \
    >"$GATEWAY_CACHE/logs/make_tiny_whisper.log" 2>&1 \
    || { tail -40 "$GATEWAY_CACHE/logs/make_tiny_whisper.log" >&2; exit 1; }
  touch "$WHISPER_DIR.tmp/.gateway-built"
  rm -rf "$WHISPER_DIR"
  mv "$WHISPER_DIR.tmp" "$WHISPER_DIR"
fi

env_file=$GATEWAY_CACHE/realengines.env
cat >"$env_file.tmp" <<ENV
REALENGINES_VLLM=$VLLM_VENV/bin/vllm
REALENGINES_VLLM_PYTHON=$VLLM_VENV/bin/python
REALENGINES_LLAMA_SERVER=$LLAMA_DIR/bin/llama-server
REALENGINES_MODEL_HF=$MODEL_DIR/hf
REALENGINES_MODEL_GGUF=$MODEL_DIR/tiny.gguf
REALENGINES_MODEL_EXPECT=$MODEL_DIR/expect.json
REALENGINES_WHISPER_HF=$WHISPER_DIR/hf
REALENGINES_WHISPER_EXPECT=$WHISPER_DIR/expect.json
ENV
mv "$env_file.tmp" "$env_file"
echo "realengines: ready in $(( $(date +%s) - start )) s; $env_file:" >&2
cat "$env_file"
