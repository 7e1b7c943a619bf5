#!/usr/bin/env bash
# Does ttft add anything to what it measures? (a benchmark, not a test: it prints ratios, asserts nothing)
#
#  1. inproc prefill vs llama-bench: for each long data prompt, ttft's in-process prefill_ms (median)
#     against llama-bench's prompt-processing time for the same number of tokens, same threads,
#     batch 2048 / micro-batch 512, same llama.cpp commit and ggml flags. Goal: ratio <= 1.02.
#  2. api overhead: median of TTFT - server prompt_ms per prompt set. Goal: <= 2 ms at p50.
#
# The two measurements never overlap in time (OpenMP threads busy-wait: sharing the cores would
# distort both). Environment: RUNS (default 5), THREADS (default: all cores).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-5}
THREADS=${THREADS:-$(nproc)}

./scripts/setup.sh --tools >/dev/null  # llama-bench
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/ttft
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

"$BIN" --backend inproc,api --prompts short=data/short_prompts.txt --prompts long=data/long_prompts.txt \
  --runs "$RUNS" --warmup 2 --max-new-tokens 1 --threads "$THREADS" --out "$OUT" --no-progress >/dev/null
JSON=$(ls "$OUT"/ttft-*.json)

counts=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join(sorted({str(r["prompt_tokens"]) for r in d["runs"] if r["runner"] == "inproc" and r["prompt_type"] == "long" and r["ok"]}, key=int)))
' "$JSON")

BENCH="$OUT/llama-bench.jsonl"
for n in $counts; do
  vendor/bin/llama-bench -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p "$n" -n 0 -r "$RUNS" \
    -t "$THREADS" -b 2048 -ub 512 -o jsonl >>"$BENCH" 2>/dev/null
done

python3 - "$JSON" "$BENCH" "$THREADS" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
bench = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
threads = sys.argv[3]
runs = [r for r in d["runs"] if r["ok"]]
print(f"ttft {d['environment']['ttft_version']}, llama.cpp {d['environment']['llama_cpp_commit'][:8]}, "
      f"{d['environment']['cpu']}, {threads} threads, {len(runs)} timed runs")
print()
print("1. inproc prefill vs llama-bench prompt processing (same token count, medians)")
print(f"{'tokens':>7} {'inproc prefill ms':>18} {'llama-bench pp ms':>18} {'ratio':>7}")
ratios = []
for b in bench:
    n = b["n_prompt"]
    pre = [r["prefill_ms"] for r in runs if r["runner"] == "inproc" and r["prompt_tokens"] == n]
    bench_ms = statistics.median(b["samples_ns"]) / 1e6
    ours = statistics.median(pre)
    ratios.append(ours / bench_ms)
    print(f"{n:>7} {ours:>18.2f} {bench_ms:>18.2f} {ours / bench_ms:>7.3f}")
print(f"{'all':>7} {'':>18} {'':>18} {statistics.median(ratios):>7.3f}  (median ratio; goal <= 1.02)")
print()
print("2. api: TTFT - server prompt_ms (the table's 'API overhead'), and what is left of it after the")
print("   server's own tokenization (outside prompt_ms; estimated by inproc tokenize_ms of the same prompt)")
print(f"{'set':>7} {'p50 ms':>8} {'p90 ms':>8} {'min ms':>8} {'tokenize p50':>13} {'HTTP+rest p50':>14} {'TTFT p50 ms':>12}")
def p90(v):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
for s in ["short", "long"]:
    api = [r for r in runs if r["runner"] == "api" and r["prompt_type"] == s]
    tok = {}
    for r in runs:
        if r["runner"] == "inproc" and r["prompt_type"] == s:
            tok.setdefault(r["prompt_idx"], []).append(r["tokenize_ms"])
    ov = [r["api_overhead_ms"] for r in api]
    rest = [r["api_overhead_ms"] - statistics.median(tok[r["prompt_idx"]]) for r in api]
    toks = [statistics.median(v) for v in tok.values()]
    print(f"{s:>7} {statistics.median(ov):>8.2f} {p90(ov):>8.2f} {min(ov):>8.2f} {statistics.median(toks):>13.2f}"
          f" {statistics.median(rest):>14.2f} {statistics.median([r['ttft_ms'] for r in api]):>12.2f}")
print("goal: p50 <= 2 ms")
PY
