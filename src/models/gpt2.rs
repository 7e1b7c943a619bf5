//! GPT-2 (`model_type: gpt2`), mirroring transformers' `modeling_gpt2.py`.

use super::common::{act, layer_norm, opt_bool, opt_f64, opt_i64, req_i64};
use super::layers::{Act, Attention, Block, Decoder, Dense, Linear, Mlp};
use super::weights::Weights;
use super::ModelError;
use serde_json::Value;

/// GPT-2's Conv1D stores its weight as [in, out] (`x @ W + b`): already the [`Dense`] layout.
fn conv1d(w: &Weights, name: &str, inp: i64, out: i64) -> Result<Dense, ModelError> {
    Ok(Dense::in_out(
        w.get(&format!("{name}.weight"), &[inp, out])?.contiguous(),
        Some(w.get(&format!("{name}.bias"), &[out])?),
    ))
}

/// GPT-2's config.json, resolved with `GPT2Config`'s defaults.
struct Config {
    /// n_embd.
    hidden: i64,
    /// n_layer.
    n_layers: i64,
    /// n_head.
    heads: i64,
    /// vocab_size.
    vocab: i64,
    /// n_positions (rows of wpe).
    n_pos: i64,
    /// MLP width (n_inner, default 4 * n_embd).
    inner: i64,
    /// layer_norm_epsilon.
    eps: f64,
    /// activation_function.
    activation: Act,
    /// Head dimension.
    d: i64,
    /// Divide scores by sqrt(head_dim).
    scale_weights: bool,
    /// Additionally divide scores by (layer_idx + 1).
    by_layer: bool,
    /// lm_head is wte.
    tie: bool,
}

impl Config {
    /// Read the fields `build` needs.
    fn parse(cfg: &Value) -> Result<Self, ModelError> {
        let hidden = req_i64(cfg, "n_embd")?;
        let n_layers = req_i64(cfg, "n_layer")?;
        let heads = req_i64(cfg, "n_head")?;
        let vocab = req_i64(cfg, "vocab_size")?;
        let n_pos = req_i64(cfg, "n_positions")?;
        let inner = opt_i64(cfg, "n_inner").unwrap_or(4 * hidden);
        let eps = opt_f64(cfg, "layer_norm_epsilon").unwrap_or(1e-5);
        let activation = act(cfg, &["activation_function"], "gelu_new")?;
        Ok(Config {
            hidden,
            n_layers,
            heads,
            vocab,
            n_pos,
            inner,
            eps,
            activation,
            d: hidden / heads,
            // GPT2Attention: scores / sqrt(head_dim) when scale_attn_weights (default), and
            // additionally / (layer_idx + 1) when scale_attn_by_inverse_layer_idx.
            scale_weights: opt_bool(cfg, "scale_attn_weights").unwrap_or(true),
            by_layer: opt_bool(cfg, "scale_attn_by_inverse_layer_idx").unwrap_or(false),
            // GPT2LMHeadModel ties lm_head to wte unless tie_word_embeddings is false.
            tie: opt_bool(cfg, "tie_word_embeddings").unwrap_or(true),
        })
    }

    /// The attention score multiplier of layer `i`.
    fn scale(&self, i: i64) -> f64 {
        let mut scale = if self.scale_weights {
            (self.d as f64).powf(-0.5)
        } else {
            1.0
        };
        if self.by_layer {
            scale /= (i + 1) as f64;
        }
        scale
    }
}

/// Build GPT-2 from its config.json and checkpoint.
pub fn build(cfg: &Value, w: &Weights) -> Result<Decoder, ModelError> {
    let c = Config::parse(cfg)?;
    // Checkpoints saved from GPT2LMHeadModel prefix everything with `transformer.`; the original
    // OpenAI conversion does not.
    let p = if w.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let mut blocks = Vec::new();
    for i in 0..c.n_layers {
        blocks.push(block(&c, w, &format!("{p}h.{i}"), i)?);
    }
    let embed = w.get(&format!("{p}wte.weight"), &[c.vocab, c.hidden])?;
    let lm_head = if c.tie {
        Linear {
            w: embed.shallow_clone(),
            b: None,
        }
    } else {
        Linear {
            w: w.get("lm_head.weight", &[c.vocab, c.hidden])?,
            b: None,
        }
    };
    Ok(Decoder {
        embed,
        embed_scale: None,
        // Learned absolute positions (wpe), added to the token embeddings.
        pos_embed: Some(w.get(&format!("{p}wpe.weight"), &[c.n_pos, c.hidden])?),
        blocks,
        final_norm: layer_norm(w, &format!("{p}ln_f"), c.hidden, c.eps)?,
        lm_head: Dense::out_in(lm_head),
        final_softcap: None,
        ropes: Vec::new(),
        kind: w.kind(),
        whole_layers: false,
    })
}

/// Layer `i`, its tensors named `b` (`[transformer.]h.N`).
fn block(c: &Config, w: &Weights, b: &str, i: i64) -> Result<Block, ModelError> {
    let hidden = c.hidden;
    Ok(Block {
        attn_norm: layer_norm(w, &format!("{b}.ln_1"), hidden, c.eps)?,
        attn: Attention {
            // c_attn output is [q; k; v], each hidden wide.
            qkv: conv1d(w, &format!("{b}.attn.c_attn"), hidden, 3 * hidden)?,
            o: conv1d(w, &format!("{b}.attn.c_proj"), hidden, hidden)?,
            n_heads: c.heads,
            n_kv: c.heads,
            head_dim: c.d,
            scale: c.scale(i),
            softcap: None,
            window: None,
            q_norm: None,
            k_norm: None,
            rope: None,
            fused: false,
        },
        post_attn_norm: None,
        mlp_norm: layer_norm(w, &format!("{b}.ln_2"), hidden, c.eps)?,
        mlp: Mlp::Plain {
            fc: conv1d(w, &format!("{b}.mlp.c_fc"), hidden, c.inner)?,
            proj: conv1d(w, &format!("{b}.mlp.c_proj"), c.inner, hidden)?,
            act: c.activation,
        },
        post_mlp_norm: None,
        parallel: false,
    })
}
