#!/usr/bin/env bash
# The prepared GPU check: one call on a lent machine with one NVIDIA GPU, CUDA's compiler, CMake and
# Python with PyTorch + transformers, no internet and no model files.
#
#   scripts/gpu-check.sh          # GPU: llama.cpp built with -DGGML_CUDA=ON, all layers offloaded
#   scripts/gpu-check.sh --cpu    # CPU fallback: the same steps without CUDA, a smaller model
#
# Steps: build llama-server, llama-bench and llama-quantize from the llama.cpp sources; create a
# random-weight Llama-architecture checkpoint with transformers (about 1 B parameters on the GPU
# path); convert it to GGUF F16 with the tree's own converter and quantize it to Q4_K_M; then run
# `ttft --backend api` (exact-length prompts of 128/512/2048 tokens, with the fit) and llama-bench
# (prompt processing tokens/s) on both files.
#
# Environment:
#   LLAMA_SRC      llama.cpp tree (default: gpu-carry/llama.cpp, else the sdist tree in the cache)
#   TTFT_BIN       ttft binary (default: gpu-carry/ttft, else target/release/ttft)
#   TOKENIZER_DIR  a tokenizer.json + tokenizer_config.json for the model (default: the exported
#                  SmolLM2 checkpoint, or gpu-carry/tokenizer)
#   PY             python with torch and transformers (default: .venv/bin/python, else python3)
#   CUDA_ARCH      CMAKE_CUDA_ARCHITECTURES (default: native)
#   WORK           scratch folder (default: a new temp folder)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
pick() { for p in "$@"; do [ -e "$p" ] && { echo "$p"; return; }; done; echo "$1"; }
LLAMA_SRC=${LLAMA_SRC:-$(pick "$ROOT/gpu-carry/llama.cpp" "${TTFT_CACHE:-$HOME/.cache/ttft}/src/llama_cpp_python-0.3.28/vendor/llama.cpp")}
TTFT_BIN=${TTFT_BIN:-$(pick "$ROOT/gpu-carry/ttft" "${CARGO_TARGET_DIR:-$ROOT/target}/release/ttft")}
TOKENIZER_DIR=${TOKENIZER_DIR:-$(pick "$ROOT/gpu-carry/tokenizer" "$ROOT/models/SmolLM2-135M-Instruct-hf")}
PY=${PY:-$(pick "$ROOT/.venv/bin/python" python3)}
WORK=${WORK:-$(mktemp -d)}
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT"
t0=$(date +%s)
say() { printf '[gpu-check %4ds] %s\n' $(( $(date +%s) - t0 )) "$*"; }
for f in "$LLAMA_SRC/CMakeLists.txt" "$TTFT_BIN" "$TOKENIZER_DIR/tokenizer.json"; do
  [ -e "$f" ] || { echo "gpu-check: missing $f" >&2; exit 2; }
done
say "mode $MODE; llama.cpp $LLAMA_SRC; work $WORK"
[ "$MODE" = gpu ] && { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; nvcc --version | tail -1 || true; }

# 1. llama.cpp tools (same CPU flags as the project's builds; CUDA on the GPU path).
flags=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=ON
       -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
       -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
       -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON)
NGL=0
if [ "$MODE" = gpu ]; then
  flags+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-native}")
  NGL=999
fi
cmake -S "$LLAMA_SRC" -B "$WORK/build" "${flags[@]}" > "$WORK/cmake.log" 2>&1 || { tail -20 "$WORK/cmake.log"; exit 1; }
cmake --build "$WORK/build" -j "$(nproc)" --target llama-server llama-bench llama-quantize >> "$WORK/cmake.log" 2>&1 \
  || { tail -30 "$WORK/cmake.log"; exit 1; }
BIN=$WORK/build/bin
say "built llama-server, llama-bench, llama-quantize"

# 2. A random-weight Llama checkpoint (about 1.1 B parameters on the GPU path, ~50 M on the CPU one).
"$PY" - "$MODE" "$TOKENIZER_DIR" "$WORK/hf" <<'PYEOF'
import shutil, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
mode, tok_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
import json
vocab = len(json.load(open(f"{tok_dir}/tokenizer.json"))["model"]["vocab"])
vocab = max(vocab, 1 + max(t["id"] for t in json.load(open(f"{tok_dir}/tokenizer.json")).get("added_tokens", [{"id": 0}])))
size = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
            num_key_value_heads=4) if mode == "gpu" else dict(hidden_size=512, intermediate_size=1536,
            num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False,
                  bos_token_id=None, eos_token_id=2, **size)
torch.manual_seed(0)
with torch.device("cpu"):
    m = LlamaForCausalLM(cfg).to(torch.float16)
print(f"random Llama: {sum(p.numel() for p in m.parameters()) / 1e9:.2f} B parameters, vocab {vocab}")
m.save_pretrained(out, safe_serialization=True)
for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
    try:
        shutil.copy(f"{tok_dir}/{f}", out)
    except FileNotFoundError:
        pass
PYEOF
say "checkpoint written"

# 3. GGUF F16 with the tree's converter, then Q4_K_M with its quantizer.
PYTHONPATH="$LLAMA_SRC/gguf-py" "$PY" "$LLAMA_SRC/convert_hf_to_gguf.py" "$WORK/hf" --outtype f16 \
  --outfile "$WORK/model-f16.gguf" > "$WORK/convert.log" 2>&1 || { tail -20 "$WORK/convert.log"; exit 1; }
"$BIN/llama-quantize" "$WORK/model-f16.gguf" "$WORK/model-q4_k_m.gguf" Q4_K_M > "$WORK/quantize.log" 2>&1 \
  || { tail -20 "$WORK/quantize.log"; exit 1; }
say "GGUF F16 and Q4_K_M ready ($(du -h "$WORK/model-f16.gguf" | cut -f1), $(du -h "$WORK/model-q4_k_m.gguf" | cut -f1))"

# 4. ttft (api backend, exact-length prompts) and llama-bench on both files.
for q in f16 q4_k_m; do
  m="$WORK/model-$q.gguf"
  say "ttft --backend api on $q"
  # A tree without git metadata builds as commit "unknown": the commit check is waived here.
  "$TTFT_BIN" --backend api --gguf "$m" --server-bin "$BIN/llama-server" --allow-commit-mismatch \
    --prompt-tokens 128,512,2048 --ctx-size 4096 --n-gpu-layers "$NGL" --runs 3 --warmup 1 \
    --max-new-tokens 4 --breakdown --no-progress --out "$OUT/$q" | grep -v '^Plot:'
  say "llama-bench on $q"
  "$BIN/llama-bench" -m "$m" -p 128,512,2048 -n 0 -ngl "$NGL" -r 3 -o md 2>/dev/null
done
say "done; reports in $OUT"
