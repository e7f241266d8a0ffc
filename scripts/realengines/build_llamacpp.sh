#!/usr/bin/env bash
# Idempotent build of llama.cpp's llama-server from the llama-cpp-python sdist (a PyPI
# package that vendors the whole llama.cpp tree), cached outside the clone and keyed by
# version. Prints the cache directory on stdout (binary: bin/llama-server, sources: src/).
set -euo pipefail
LCP_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${GATEWAY_CACHE:-$HOME/.cache/gateway}
DIR=$CACHE/llama.cpp-$LCP_VERSION
STAMP=$DIR/.gateway-built
PY=${PYTHON:-python3}
JOBS=${BUILD_JOBS:-2}

if [ -f "$STAMP" ] && [ -x "$DIR/bin/llama-server" ]; then
  echo "$DIR"
  exit 0
fi
log() { echo "build_llamacpp: $*" >&2; }
start=$(date +%s)
mkdir -p "$DIR/dl"
if [ ! -d "$DIR/src" ]; then
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$DIR/dl" "llama-cpp-python==$LCP_VERSION" >&2
  tmp=$(mktemp -d "$DIR/unpack.XXXX")
  tar -xzf "$(ls "$DIR"/dl/*.tar.gz | head -1)" -C "$tmp"
  mv "$(ls -d "$tmp"/*/vendor/llama.cpp | head -1)" "$DIR/src"
  rm -rf "$tmp"
fi
cmake -S "$DIR/src" -B "$DIR/build" -G Ninja \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF >"$DIR/cmake.log" 2>&1 || { cat "$DIR/cmake.log" >&2; exit 1; }
cmake --build "$DIR/build" --target llama-server -j "$JOBS" >"$DIR/build.log" 2>&1 \
  || { tail -50 "$DIR/build.log" >&2; exit 1; }
mkdir -p "$DIR/bin"
cp "$DIR/build/bin/llama-server" "$DIR/bin/llama-server.tmp"
mv "$DIR/bin/llama-server.tmp" "$DIR/bin/llama-server"
touch "$STAMP"
log "built in $(( $(date +%s) - start )) s"
echo "$DIR"
