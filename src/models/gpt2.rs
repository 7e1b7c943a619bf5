//! GPT-2 (`model_type: gpt2`), mirroring transformers' `modeling_gpt2.py`.

use super::common::{act, layer_norm, opt_bool, opt_f64, opt_i64, req_i64};
use super::layers::{Attention, Block, Decoder, Dense, Linear, Mlp};
use super::weights::Weights;
use super::ModelError;
use serde_json::Value;

/// GPT-2's Conv1D stores its weight as [in, out] (`x @ W + b`): already the [`Dense`] layout.
fn conv1d(w: &Weights, name: &str, inp: i64, out: i64) -> Result<Dense, ModelError> {
    Ok(Dense {
        wt: w.get(&format!("{name}.weight"), &[inp, out])?.contiguous(),
        b: Some(w.get(&format!("{name}.bias"), &[out])?),
    })
}

/// Build GPT-2 from its config.json and checkpoint.
pub fn build(cfg: &Value, w: &Weights) -> Result<Decoder, ModelError> {
    let hidden = req_i64(cfg, "n_embd")?;
    let n_layers = req_i64(cfg, "n_layer")?;
    let heads = req_i64(cfg, "n_head")?;
    let vocab = req_i64(cfg, "vocab_size")?;
    let n_pos = req_i64(cfg, "n_positions")?;
    let inner = opt_i64(cfg, "n_inner").unwrap_or(4 * hidden);
    let eps = opt_f64(cfg, "layer_norm_epsilon").unwrap_or(1e-5);
    let activation = act(cfg, &["activation_function"], "gelu_new")?;
    let d = hidden / heads;
    // Checkpoints saved from GPT2LMHeadModel prefix everything with `transformer.`; the original
    // OpenAI conversion does not.
    let p = if w.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    // GPT2Attention: scores / sqrt(head_dim) when scale_attn_weights (default), and additionally
    // / (layer_idx + 1) when scale_attn_by_inverse_layer_idx.
    let scale_weights = opt_bool(cfg, "scale_attn_weights").unwrap_or(true);
    let by_layer = opt_bool(cfg, "scale_attn_by_inverse_layer_idx").unwrap_or(false);

    let mut blocks = Vec::new();
    for i in 0..n_layers {
        let b = format!("{p}h.{i}");
        let mut scale = if scale_weights {
            (d as f64).powf(-0.5)
        } else {
            1.0
        };
        if by_layer {
            scale /= (i + 1) as f64;
        }
        blocks.push(Block {
            attn_norm: layer_norm(w, &format!("{b}.ln_1"), hidden, eps)?,
            attn: Attention {
                // c_attn output is [q; k; v], each hidden wide.
                qkv: conv1d(w, &format!("{b}.attn.c_attn"), hidden, 3 * hidden)?,
                o: conv1d(w, &format!("{b}.attn.c_proj"), hidden, hidden)?,
                n_heads: heads,
                n_kv: heads,
                head_dim: d,
                scale,
                softcap: None,
                window: None,
                q_norm: None,
                k_norm: None,
                rope: None,
            },
            post_attn_norm: None,
            mlp_norm: layer_norm(w, &format!("{b}.ln_2"), hidden, eps)?,
            mlp: Mlp::Plain {
                fc: conv1d(w, &format!("{b}.mlp.c_fc"), hidden, inner)?,
                proj: conv1d(w, &format!("{b}.mlp.c_proj"), inner, hidden)?,
                act: activation,
            },
            post_mlp_norm: None,
            parallel: false,
        });
    }
    let embed = w.get(&format!("{p}wte.weight"), &[vocab, hidden])?;
    // GPT2LMHeadModel ties lm_head to wte unless tie_word_embeddings is false.
    let tie = opt_bool(cfg, "tie_word_embeddings").unwrap_or(true);
    let lm_head = if tie {
        Linear {
            w: embed.shallow_clone(),
            b: None,
        }
    } else {
        Linear {
            w: w.get("lm_head.weight", &[vocab, hidden])?,
            b: None,
        }
    };
    Ok(Decoder {
        embed,
        embed_scale: None,
        // Learned absolute positions (wpe), added to the token embeddings.
        pos_embed: Some(w.get(&format!("{p}wpe.weight"), &[n_pos, hidden])?),
        blocks,
        final_norm: layer_norm(w, &format!("{p}ln_f"), hidden, eps)?,
        lm_head,
        final_softcap: None,
        ropes: Vec::new(),
        kind: w.kind(),
    })
}
