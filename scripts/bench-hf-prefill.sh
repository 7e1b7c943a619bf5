#!/usr/bin/env bash
# hf prefill vs PyTorch transformers eager prefill (a benchmark, not a test: it prints, asserts nothing).
#
# Same checkpoint (the exported SmolLM2 by default), f32, CPU, same thread count, same prompts and
# token ids. ttft's hf prefill (forward over the prompt, logits of the last position) is timed by
# ttft itself; transformers is timed here with attn_implementation="eager" in two forms:
#   generate-style: model(ids, past_key_values=DynamicCache(), logits_to_keep=1)  (what generate runs)
#   plain forward:  model(ids)                                                    (logits everywhere)
# Ratio = hf prefill / transformers prefill (goal <= 0.8). GFLOP/s counts the same useful work for
# both: 2 * tokens * non-embedding weights + causal attention + the LM head for one position.
# Environment: MODEL (checkpoint folder), RUNS (default 5), THREADS (default: all cores).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct-hf}
RUNS=${RUNS:-5}
THREADS=${THREADS:-$(nproc)}

./scripts/setup.sh >/dev/null 2>&1
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/ttft
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

"$BIN" --backend hf --hf-model "$MODEL" --dtype f32 --device cpu --threads "$THREADS" \
  --prompts short=data/short_prompts.txt --prompts long=data/long_prompts.txt \
  --runs "$RUNS" --warmup 2 --max-new-tokens 1 --out "$OUT" --no-progress >/dev/null

.venv/bin/python - "$OUT"/ttft-*.json "$MODEL" "$RUNS" "$THREADS" <<'PY'
import json, statistics, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

report, model_dir, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
d = json.load(open(report))
ours = {}
for r in d["runs"]:
    if r["ok"]:
        ours.setdefault((r["prompt_type"], r["prompt_idx"]), []).append(r)

tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
cfg = model.config
emb = model.get_input_embeddings().weight.numel()
nonemb = sum(p.numel() for p in model.parameters()) - emb
if not cfg.tie_word_embeddings:
    nonemb -= model.get_output_embeddings().weight.numel()
head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
def flops(n):
    attn = 2 * 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * n * (n + 1) / 2
    return 2 * n * nonemb + attn + 2 * cfg.hidden_size * cfg.vocab_size

def timed(fn, reps):
    for _ in range(2):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)

print(f"model {model_dir} ({cfg.model_type}), f32, CPU, {threads} threads, torch {torch.__version__}, "
      f"libtorch in ttft {d['backends'][0]['info'].get('libtorch_version')}")
print(f"{'prompt':>8} {'tokens':>6} {'hf ms':>9} {'tf gen ms':>10} {'tf fwd ms':>10} {'ratio gen':>9} {'ratio fwd':>9} "
      f"{'hf GF/s':>8} {'tf GF/s':>8}")
rg, rf = [], []
with torch.inference_mode():
    for (ptype, idx), rows in sorted(ours.items(), key=lambda kv: (kv[0][0] != "short", kv[0][1])):
        text = rows[0]["prompt_text"]
        ids = tok(text, return_tensors="pt").input_ids
        n = ids.shape[1]
        assert n == rows[0]["prompt_tokens"], (n, rows[0]["prompt_tokens"])
        hf = statistics.median(r["prefill_ms"] for r in rows)
        gen = timed(lambda: model(ids, past_key_values=DynamicCache(config=cfg), use_cache=True, logits_to_keep=1), runs)
        fwd = timed(lambda: model(ids, use_cache=False), runs)
        rg.append(hf / gen); rf.append(hf / fwd)
        f = flops(n)
        print(f"{ptype + '#' + str(idx):>8} {n:>6} {hf:>9.2f} {gen:>10.2f} {fwd:>10.2f} {hf / gen:>9.3f} {hf / fwd:>9.3f} "
              f"{f / hf / 1e6:>8.1f} {f / gen / 1e6:>8.1f}")
print(f"median ratio hf / transformers eager: generate-style {statistics.median(rg):.3f}, plain forward "
      f"{statistics.median(rf):.3f}  (goal <= 0.8)")
PY
