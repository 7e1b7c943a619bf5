#!/usr/bin/env bash
# hf prefill vs PyTorch transformers eager prefill, f32 and bf16, every kernel path of ttft's,
# with each prefill's roofline fraction (a benchmark, not a test: it prints, asserts nothing).
#
# Same checkpoint (the exported SmolLM2 by default), CPU, same thread count, same prompts and
# token ids. ttft's hf prefill (forward over the prompt, logits of the last position) is timed by
# ttft itself, as a settings grid `--hf-kernels auto,onednn,mkl --dtype f32,bf16` in one run (auto
# is what a plain run takes: ttft's AVX-512 kernels where the CPU runs them, else oneDNN);
# transformers (attn_implementation="eager") is timed here the way generate() runs a prefill:
# model(ids, past_key_values=DynamicCache(), logits_to_keep=1). The two are interleaved: ROUNDS
# rounds of (ttft grid, transformers f32 and bf16), medians over every round's runs, so a drift
# of the machine hits both sides alike.
# Ratio = hf prefill / transformers eager prefill in the same dtype (issue goals: f32 <= 0.35 on
# the short prompts, <= 0.8 on the long ones). GFLOP/s counts the same useful work for
# both: 2 * tokens * non-embedding weights + causal attention + the LM head for one position.
# Roofline = ttft's bound for the prefill (max(weight bytes / bandwidth, FLOPs / peak), from
# `ttft roofline`) over the achieved prefill time.
# Environment: MODEL (checkpoint folder), RUNS (per round, default 5), ROUNDS (default 2),
# THREADS (default: all cores), DTYPES (default "f32 bf16").
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct-hf}
RUNS=${RUNS:-5}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-$(nproc)}
DTYPES=${DTYPES:-f32 bf16}

./scripts/setup.sh >/dev/null 2>&1
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/ttft
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$BIN" roofline --threads "$THREADS"

.venv/bin/python - "$BIN" "$OUT" "$MODEL" "$RUNS" "$ROUNDS" "$THREADS" "$DTYPES" <<'PY'
import glob, json, os, statistics, subprocess, sys, time
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

binary, out, model_dir = sys.argv[1], sys.argv[2], sys.argv[3]
runs, rounds, threads = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
dtypes = sys.argv[7].split()
torch.set_num_threads(threads)
kinds = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

def ttft_round(i):
    d = os.path.join(out, f"round{i}")
    os.makedirs(d)
    subprocess.run([binary, "--backend", "hf", "--hf-model", model_dir, "--device", "cpu",
                    "--threads", str(threads), "--dtype", ",".join(dtypes), "--hf-kernels", "auto,onednn,mkl",
                    "--prompts", "short=data/short_prompts.txt", "--prompts", "long=data/long_prompts.txt",
                    "--runs", str(runs), "--warmup", "2", "--max-new-tokens", "1", "--out", d,
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.load(open(glob.glob(os.path.join(d, "ttft-*.json"))[0]))

def timed(fn, reps):
    for _ in range(2):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); out.append((time.perf_counter() - t0) * 1e3)
    return out

tok = AutoTokenizer.from_pretrained(model_dir)
models = {dt: AutoModelForCausalLM.from_pretrained(model_dir, dtype=kinds[dt], attn_implementation="eager").eval()
          for dt in dtypes}
cfg = next(iter(models.values())).config
m0 = next(iter(models.values()))
emb = m0.get_input_embeddings().weight.numel()
nonemb = sum(p.numel() for p in m0.parameters()) - emb
if not cfg.tie_word_embeddings:
    nonemb -= m0.get_output_embeddings().weight.numel()
head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
def flops(n):
    attn = 2 * 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * n * (n + 1) / 2
    return 2 * n * nonemb + attn + 2 * cfg.hidden_size * cfg.vocab_size

ours = {}      # (point, set, idx) -> [prefill_ms]
roof = {}      # (point, set, idx) -> [roofline fraction per round]
texts = {}     # (set, idx) -> (text, tokens)
theirs = {}    # (dtype, set, idx) -> [ms]
first = {}     # (point, set, idx) -> {greedy first token ids}
report = None
for i in range(rounds):
    report = ttft_round(i)
    for r in report["runs"]:
        if r["ok"]:
            key = (r["point"], r["prompt_type"], r["prompt_idx"])
            ours.setdefault(key, []).append(r["prefill_ms"])
            texts[(r["prompt_type"], r["prompt_idx"])] = (r["prompt_text"], r["prompt_tokens"])
            first.setdefault(key, set()).add(r.get("first_token_id"))
    for s in report["summary"]:
        if s.get("prompt_idx") is not None and s.get("roofline_fraction") is not None:
            roof.setdefault((s["point"], s["prompt_type"], s["prompt_idx"]), []).append(s["roofline_fraction"])
    with torch.inference_mode():
        for (ptype, idx), (text, n) in texts.items():
            ids = tok(text, return_tensors="pt").input_ids
            assert ids.shape[1] == n, (ids.shape[1], n)
            for dt, m in models.items():
                fn = lambda: m(ids, cache=DynamicCache(config=cfg), use_cache=True, logits_to_keep=1)
                theirs.setdefault((dt, ptype, idx), []).extend(timed(fn, runs))

def point(dt, k):
    # The grid labels points by the axes that vary: dtype first, then hf_kernels.
    parts = []
    if len(dtypes) > 1: parts.append(f"dtype={dt}")
    parts.append(f"hf_kernels={k}")
    return " ".join(parts)

rl = report["environment"]["roofline"]
resolved = {b["point"]: b["info"].get("hf_kernels") for b in report["backends"] if b.get("info")}
print(f"model {model_dir} ({cfg.model_type}), CPU, {threads} threads, torch {torch.__version__}, "
      f"{rounds} interleaved rounds x {runs} runs; roofline: read {rl.get('read_gbs', 0):.1f} GB/s, "
      f"f32 {rl.get('f32_gflops', 0):.0f} GFLOP/s, bf16 {rl.get('bf16_gflops') or 0:.0f} GFLOP/s")
kernels = ("auto", "onednn", "mkl")
ratios = {}
# A kernel path this CPU cannot run for a dtype (oneDNN bf16 without AVX512BW/VL/DQ) has failed
# rows only: nan in the table, left out of the medians.
nan = float("nan")
med = lambda dt, k, p, i: statistics.median(ours[(point(dt, k), p, i)]) if (point(dt, k), p, i) in ours else nan
def median_of(xs):
    xs = [x for x in xs if x == x]
    return f"{statistics.median(xs):.3f}" if xs else "-"
for dt in dtypes:
    auto = resolved.get(point(dt, "auto"), "?")
    print(f"\n{dt} (auto = {auto}): {'prompt':>8} {'tokens':>6} {'auto ms':>8} {'onednn':>8} {'mkl':>8} "
          f"{'tf eager':>9} {'auto/tf':>7} {'onednn/tf':>9} {'mkl/tf':>7} {'auto GF/s':>9} {'tf GF/s':>8} {'roofline':>8}")
    for (ptype, idx), (text, n) in sorted(texts.items(), key=lambda kv: (kv[0][0] != "short", kv[0][1])):
        ms = {k: med(dt, k, ptype, idx) for k in kernels}
        tf = statistics.median(theirs[(dt, ptype, idx)])
        fr = roof.get((point(dt, "auto"), ptype, idx))
        for k in kernels:
            ratios.setdefault((dt, ptype, k), []).append(ms[k] / tf)
        f = flops(n)
        print(f"{'':>{len(dt) + len(auto) + 11}} {ptype + '#' + str(idx):>8} {n:>6} {ms['auto']:>8.2f} {ms['onednn']:>8.2f} "
              f"{ms['mkl']:>8.2f} {tf:>9.2f} {ms['auto'] / tf:>7.3f} {ms['onednn'] / tf:>9.3f} {ms['mkl'] / tf:>7.3f} "
              f"{f / ms['auto'] / 1e6:>9.1f} {f / tf / 1e6:>8.1f} {statistics.median(fr) if fr else float('nan'):>8.2f}")
print()
for dt in dtypes:
    for ptype in ("short", "long"):
        print(f"median hf/transformers eager, {dt} {ptype}: "
              + ", ".join(f"{k} {median_of(ratios[(dt, ptype, k)])}" for k in kernels))
if "f32" in dtypes and "bf16" in dtypes:
    for ptype in ("short", "long"):
        sp = [med("f32", "auto", p, i) / med("bf16", "auto", p, i) for (p, i) in texts if p == ptype]
        print(f"hf bf16 speed-up over f32 (auto kernels), {ptype}: median {statistics.median(sp):.2f}x")
    a, b = point("f32", "auto"), point("bf16", "auto")
    differ = [(p, i, sorted(first[(a, p, i)]), sorted(first[(b, p, i)]))
              for (p, i) in sorted(texts) if first[(a, p, i)] != first[(b, p, i)]]
    print(f"greedy first token, bf16 vs f32: {len(texts) - len(differ)}/{len(texts)} prompts agree"
          + "".join(f"; {p}#{i}: f32 {x} bf16 {y}" for p, i, x, y in differ))
PY
