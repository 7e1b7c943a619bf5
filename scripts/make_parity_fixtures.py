#!/usr/bin/env python3
"""Build tiny random-weight Hugging Face checkpoints plus reference outputs.

Usage: make_parity_fixtures.py OUTDIR

This is the numerical oracle for ttft's Rust re-implementation of the
transformer architectures. For every fixture it writes

    OUTDIR/<name>/config.json            (transformers save_pretrained)
    OUTDIR/<name>/model.safetensors      (float32 weights)
    OUTDIR/<name>/generation_config.json (if transformers writes one)
    OUTDIR/<name>/reference.safetensors  input_ids i64[12], logits f32[12,V],
                                         greedy i64[8], greedy_logits f32[8,V]
    OUTDIR/<name>/reference_bf16.safetensors  the same from transformers in bfloat16: logits
                                         f32[12,V], greedy i64[8], greedy_margins f32[8],
                                         greedy_logits f32[8,V], bf16_vs_f32 f32[1]
    OUTDIR/<name>/oracle.json            provenance + quirks exercised

and finally OUTDIR/manifest.json (written last; it marks a complete run).

Reference outputs are computed from the checkpoint as re-loaded from disk, in
float32 with the eager attention implementation. `greedy` is a plain argmax
loop using the KV cache (no EOS stop, no logits processors); it is checked
against a cache-free recompute of the whole sequence at every step.
`greedy_logits[i]` are the logits that chose `greedy[i]` (row 0 is the last
prompt position, rows 1.. come from single-token decode steps with the cache),
so the decode path can be compared numerically, not only by argmax.

The run is skipped when OUTDIR/manifest.json already records this script's
sha256 and the installed transformers version.
"""

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

PROMPT_LEN = 12
GREEDY_LEN = 8
VOCAB = 256
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
MAX_POS = 64
INIT_RANGE = 0.2
# Special ids: all inside the vocabulary; prompt ids are drawn from [3, VOCAB).
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
# Norm weights and biases start as constants (1 / 0); perturb every 1-D
# parameter by N(0, ONE_D_NOISE) so that norm scales and biases matter.
ONE_D_NOISE = 0.1


def common(**kw):
    base = dict(
        vocab_size=VOCAB,
        max_position_embeddings=MAX_POS,
        initializer_range=INIT_RANGE,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    base.update(kw)
    return base


def decoder(**kw):
    """Sizes shared by the llama-like families."""
    base = common(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
    )
    base.update(kw)
    return base


def fixtures():
    """(name, config class name, config kwargs, quirks)."""
    head_dim = HIDDEN // HEADS  # 16
    phi3_rot_half = int(head_dim * 0.5) // 2  # rotary dims / 2 = 4
    return [
        (
            "llama",
            "LlamaConfig",
            decoder(
                tie_word_embeddings=False,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 10000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    # head_dim 16, theta 1e4: wavelengths 6.3, 19.9, 62.8, ...
                    # -> one unscaled (< 32/4), one smoothed, the rest /factor.
                    "original_max_position_embeddings": 32,
                },
            ),
            ["gqa", "untied_lm_head", "rope_llama3"],
        ),
        (
            "llama_tied",
            "LlamaConfig",
            decoder(
                num_key_value_heads=HEADS,
                tie_word_embeddings=True,
                attention_bias=True,
                mlp_bias=False,
                rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
            ),
            ["mha", "tied_lm_head", "attention_bias_qkvo", "rope_linear"],
        ),
        (
            "qwen2",
            "Qwen2Config",
            decoder(
                tie_word_embeddings=True,
                use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            ["gqa", "qkv_bias", "tied_lm_head"],
        ),
        (
            "qwen3",
            "Qwen3Config",
            decoder(
                head_dim=32,
                tie_word_embeddings=False,
                use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            ["gqa", "qk_norm", "head_dim_32_ne_hidden_over_heads", "untied_lm_head"],
        ),
        (
            "gemma",
            "GemmaConfig",
            decoder(
                head_dim=32,
                hidden_act="gelu_pytorch_tanh",
                tie_word_embeddings=True,
            ),
            [
                "gqa",
                "tied_lm_head",
                "head_dim_32_ne_hidden_over_heads",
                "gelu_pytorch_tanh",
                "rmsnorm_one_plus_weight",
                "embed_scale_sqrt_hidden",
            ],
        ),
        (
            "gemma2",
            "Gemma2Config",
            decoder(
                num_hidden_layers=4,
                head_dim=16,
                query_pre_attn_scalar=24,
                hidden_activation="gelu_pytorch_tanh",
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"] * 2,
                attn_logit_softcapping=10.0,
                final_logit_softcapping=8.0,
                tie_word_embeddings=True,
            ),
            [
                "gqa",
                "tied_lm_head",
                "sliding_window_4_alternating",
                "attn_logit_softcapping",
                "final_logit_softcapping",
                "query_pre_attn_scalar_24_ne_head_dim_16",
                "sandwich_norms",
                "rmsnorm_one_plus_weight",
                "embed_scale_sqrt_hidden",
            ],
        ),
        (
            "gemma3",
            "Gemma3TextConfig",
            decoder(
                num_hidden_layers=4,
                head_dim=32,
                query_pre_attn_scalar=24,
                hidden_activation="gelu_pytorch_tanh",
                sliding_window=4,
                # layer_types is authoritative; the legacy pattern int is only
                # echoed into config.json as `_sliding_window_pattern`.
                sliding_window_pattern=4,
                layer_types=["sliding_attention"] * 3 + ["full_attention"],
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0},
                },
                tie_word_embeddings=True,
            ),
            [
                "gqa",
                "tied_lm_head",
                "qk_norm",
                "sliding_window_4_layers_0_2_full_layer_3",
                "rope_local_theta_1e4_default",
                "rope_global_theta_1e6_linear_2",
                "query_pre_attn_scalar_24_ne_head_dim_32",
                "sandwich_norms",
                "rmsnorm_one_plus_weight",
                "embed_scale_sqrt_hidden",
            ],
        ),
        (
            "gpt2",
            "GPT2Config",
            common(
                n_embd=HIDDEN,
                n_layer=2,
                n_head=HEADS,
                n_inner=INTERMEDIATE,
                n_positions=MAX_POS,
                tie_word_embeddings=True,
            ),
            ["conv1d_weights_in_out", "fused_c_attn", "learned_positions", "layernorm", "gelu_new", "tied_lm_head"],
        ),
        (
            "gpt_neox",
            "GPTNeoXConfig",
            common(
                hidden_size=HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=HEADS,
                intermediate_size=INTERMEDIATE,
                rotary_pct=0.25,
                rotary_emb_base=10000,
                use_parallel_residual=True,
                attention_bias=True,
                tie_word_embeddings=False,
            ),
            ["fused_qkv_per_head_interleaved", "partial_rotary_0.25", "parallel_residual", "untied_lm_head", "gelu_erf"],
        ),
        (
            "gpt_neox_seq",
            "GPTNeoXConfig",
            common(
                hidden_size=HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=HEADS,
                intermediate_size=INTERMEDIATE,
                rotary_pct=0.25,
                rotary_emb_base=10000,
                use_parallel_residual=False,
                attention_bias=True,
                tie_word_embeddings=False,
            ),
            ["fused_qkv_per_head_interleaved", "partial_rotary_0.25", "sequential_residual", "untied_lm_head"],
        ),
        (
            "phi3",
            "Phi3Config",
            decoder(
                num_hidden_layers=2,
                sliding_window=4,
                # Phi3's top-level field wins over the one inside rope_parameters.
                original_max_position_embeddings=8,
                partial_rotary_factor=0.5,
                rope_parameters={
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.5,
                    "original_max_position_embeddings": 8,
                    "short_factor": [1.0, 1.25, 1.5, 2.0][:phi3_rot_half],
                    "long_factor": [1.0, 3.0, 6.0, 12.0][:phi3_rot_half],
                },
                tie_word_embeddings=False,
            ),
            [
                "gqa",
                "fused_qkv_proj",
                "fused_gate_up_proj",
                "partial_rotary_0.5",
                "sliding_window_4_all_layers",
                "rope_longrope_long_factors_prompt_len_gt_original_8",
                "longrope_attention_factor_sqrt2",
                "untied_lm_head",
            ],
        ),
    ]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def perturb_1d(model, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * ONE_D_NOISE)


def greedy_with_cache(model, input_ids):
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = input_ids.unsqueeze(0)
    out = model(input_ids=ids, cache=cache, use_cache=True)
    tokens, margins, rows = [], [], []
    logits = out.logits[0, -1]
    for step in range(GREEDY_LEN):
        rows.append(logits.float())
        top2 = torch.topk(logits, 2)
        tok = int(top2.indices[0])
        tokens.append(tok)
        margins.append(float(top2.values[0] - top2.values[1]))
        if step + 1 == GREEDY_LEN:
            break
        out = model(input_ids=torch.tensor([[tok]]), cache=out.cache, use_cache=True)
        logits = out.logits[0, -1]
    return tokens, margins, torch.stack(rows).contiguous()


def greedy_recompute(model, input_ids):
    import torch

    seq = input_ids.tolist()
    toks, rows = [], []
    for _ in range(GREEDY_LEN):
        logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        rows.append(logits.float())
        tok = int(torch.argmax(logits))
        toks.append(tok)
        seq.append(tok)
    return toks, torch.stack(rows)


def bf16_reference(ckpt, input_ids, logits_f32):
    """transformers in bfloat16 on the same checkpoint: every position's logits (as f32), the
    greedy continuation with the cache and its margins, and how far bf16 logits are from the f32
    ones (`bf16_vs_f32`): the rounding error bf16 itself costs, which bounds how far another bf16
    implementation may be from this one."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="eager", dtype=torch.bfloat16).eval()
    with torch.no_grad():
        logits = m(input_ids=input_ids.unsqueeze(0), use_cache=False).logits[0].float().contiguous()
        greedy, margins, greedy_logits = greedy_with_cache(m, input_ids)
    return {
        "logits": logits,
        "greedy": torch.tensor(greedy, dtype=torch.int64),
        "greedy_margins": torch.tensor(margins, dtype=torch.float32),
        "greedy_logits": greedy_logits,
        "bf16_vs_f32": (logits - logits_f32).abs().max().reshape(1),
    }


def build_one(outdir, name, cls_name, cfg_kwargs, quirks, input_ids):
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    final = outdir / name
    tmp = outdir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)

    config = getattr(transformers, cls_name)(**cfg_kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    perturb_1d(model, seed=1)
    model.eval()
    model.save_pretrained(tmp, safe_serialization=True)

    # The reference comes from the checkpoint as stored, so load/save mapping
    # (tied weights, renamed keys) is covered by the oracle too.
    loaded = AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="eager", dtype=torch.float32)
    loaded.eval()
    with torch.no_grad():
        logits_mem = model(input_ids=input_ids.unsqueeze(0), use_cache=False).logits[0]
        logits = loaded(input_ids=input_ids.unsqueeze(0), use_cache=False).logits[0].float().contiguous()
        if not torch.allclose(logits, logits_mem, atol=1e-5, rtol=0):
            raise SystemExit(f"{name}: reloaded checkpoint disagrees with in-memory model")
        greedy, margins, greedy_logits = greedy_with_cache(loaded, input_ids)
        recompute, recompute_logits = greedy_recompute(loaded, input_ids)
    if greedy != recompute:
        raise SystemExit(f"{name}: KV-cache greedy {greedy} != recompute greedy {recompute}")
    if not torch.allclose(greedy_logits, recompute_logits, atol=1e-4, rtol=0):
        raise SystemExit(f"{name}: KV-cache decode logits disagree with cache-free recompute")
    if min(margins) < 1e-3:
        raise SystemExit(f"{name}: greedy top-2 margin {min(margins):.2e} too small (near tie)")
    if len(set(logits.argmax(-1).tolist())) < 2:
        raise SystemExit(f"{name}: degenerate logits (same argmax at every position)")

    save_file(
        {
            "input_ids": input_ids.to(torch.int64).contiguous(),
            "logits": logits,
            "greedy": torch.tensor(greedy, dtype=torch.int64),
            "greedy_logits": greedy_logits,
        },
        str(tmp / "reference.safetensors"),
    )
    bf16 = bf16_reference(tmp, input_ids, logits)
    save_file(bf16, str(tmp / "reference_bf16.safetensors"))
    oracle = {
        "model_type": loaded.config.model_type,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "quirks": quirks,
        "architecture": type(loaded).__name__,
        "seed": 0,
        "one_d_param_noise": ONE_D_NOISE,
        "greedy_min_top2_margin": round(min(margins), 6),
        "bf16_vs_f32_max_abs_logit": round(float(bf16["bf16_vs_f32"]), 6),
    }
    (tmp / "oracle.json").write_text(json.dumps(oracle, indent=2) + "\n")

    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return greedy, min(margins)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    outdir = Path(sys.argv[1])
    script_sha = sha256_file(Path(__file__).resolve())

    import transformers

    manifest_path = outdir / "manifest.json"
    if manifest_path.exists():
        try:
            prev = json.loads(manifest_path.read_text())
        except ValueError:
            prev = {}
        if (
            prev.get("script_sha256") == script_sha
            and prev.get("transformers_version") == transformers.__version__
            and all((outdir / n / "reference.safetensors").exists() for n in prev.get("fixtures", []))
        ):
            print(f"parity fixtures up to date in {outdir}")
            return 0

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    outdir.mkdir(parents=True, exist_ok=True)
    if manifest_path.exists():
        manifest_path.unlink()

    input_ids = torch.randint(3, VOCAB, (PROMPT_LEN,), generator=torch.Generator().manual_seed(1234))
    names = []
    for name, cls_name, cfg_kwargs, quirks in fixtures():
        t0 = time.monotonic()
        greedy, margin = build_one(outdir, name, cls_name, cfg_kwargs, quirks, input_ids)
        names.append(name)
        print(f"{name:13s} ok  greedy={greedy}  min_margin={margin:.3f}  ({time.monotonic() - t0:.1f}s)", flush=True)

    manifest = {
        "fixtures": names,
        "script_sha256": script_sha,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "prompt_len": PROMPT_LEN,
        "greedy_len": GREEDY_LEN,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
