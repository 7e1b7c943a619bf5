//! GPT-NeoX / Pythia (`model_type: gpt_neox`), mirroring transformers' `modeling_gpt_neox.py`.

use super::common::{act, layer_norm, linear, opt_bool, opt_f64, req_i64};
use super::layers::{Act, Attention, Block, Decoder, Dense, Linear, Mlp};
use super::rope::{rope_spec, Rope};
use super::weights::Weights;
use super::ModelError;
use serde_json::Value;

/// GPT-NeoX's config.json, resolved with `GPTNeoXConfig`'s defaults.
struct Config {
    /// hidden_size.
    hidden: i64,
    /// num_hidden_layers.
    n_layers: i64,
    /// num_attention_heads.
    heads: i64,
    /// intermediate_size.
    inter: i64,
    /// vocab_size.
    vocab: i64,
    /// max_position_embeddings (RoPE scaling needs it).
    max_pos: i64,
    /// layer_norm_eps.
    eps: f64,
    /// hidden_act.
    activation: Act,
    /// attention_bias: bias on query_key_value and dense.
    bias: bool,
    /// use_parallel_residual.
    parallel: bool,
    /// Head dimension.
    d: i64,
}

impl Config {
    /// Read the fields `build` needs.
    fn parse(cfg: &Value) -> Result<Self, ModelError> {
        let hidden = req_i64(cfg, "hidden_size")?;
        let n_layers = req_i64(cfg, "num_hidden_layers")?;
        let heads = req_i64(cfg, "num_attention_heads")?;
        let inter = req_i64(cfg, "intermediate_size")?;
        let vocab = req_i64(cfg, "vocab_size")?;
        let max_pos = cfg
            .get("max_position_embeddings")
            .and_then(Value::as_i64)
            .unwrap_or(2048);
        let eps = opt_f64(cfg, "layer_norm_eps").unwrap_or(1e-5);
        let activation = act(cfg, &["hidden_act"], "gelu")?;
        Ok(Config {
            hidden,
            n_layers,
            heads,
            inter,
            vocab,
            max_pos,
            eps,
            activation,
            bias: opt_bool(cfg, "attention_bias").unwrap_or(true),
            // GPTNeoXLayer: `x + attn(ln1(x)) + mlp(ln2(x))` when use_parallel_residual (default).
            parallel: opt_bool(cfg, "use_parallel_residual").unwrap_or(true),
            d: hidden / heads,
        })
    }
}

/// Build GPT-NeoX from its config.json and checkpoint.
pub fn build(cfg: &Value, w: &Weights) -> Result<Decoder, ModelError> {
    let c = Config::parse(cfg)?;
    // Partial rotary: `rotary_pct` (older configs) / `partial_rotary_factor`, handled by RoPE.
    let rope = Rope::new(&rope_spec(cfg, None)?, c.d, c.max_pos, w.device())?;
    let mut blocks = Vec::new();
    for i in 0..c.n_layers {
        blocks.push(block(&c, w, &format!("gpt_neox.layers.{i}"))?);
    }
    let embed = w.get("gpt_neox.embed_in.weight", &[c.vocab, c.hidden])?;
    // GPTNeoXForCausalLM: separate `embed_out` unless tie_word_embeddings.
    let lm_head = if opt_bool(cfg, "tie_word_embeddings").unwrap_or(false) {
        Linear {
            w: embed.shallow_clone(),
            b: None,
        }
    } else {
        linear(w, "embed_out", c.vocab, c.hidden, false)?
    };
    Ok(Decoder {
        embed,
        embed_scale: None,
        pos_embed: None,
        blocks,
        final_norm: layer_norm(w, "gpt_neox.final_layer_norm", c.hidden, c.eps)?,
        lm_head: Dense::out_in(lm_head),
        final_softcap: None,
        ropes: vec![rope],
        kind: w.kind(),
        whole_layers: false,
    })
}

/// Layer `p` (`gpt_neox.layers.N`).
fn block(c: &Config, w: &Weights, p: &str) -> Result<Block, ModelError> {
    let (hidden, d) = (c.hidden, c.d);
    let qkv = query_key_value(c, w, p)?;
    Ok(Block {
        attn_norm: layer_norm(w, &format!("{p}.input_layernorm"), hidden, c.eps)?,
        attn: Attention {
            qkv: qkv.into(),
            o: linear(w, &format!("{p}.attention.dense"), hidden, hidden, c.bias)?.into(),
            n_heads: c.heads,
            n_kv: c.heads,
            head_dim: d,
            scale: (d as f64).powf(-0.5),
            softcap: None,
            window: None,
            q_norm: None,
            k_norm: None,
            rope: Some(0),
            fused: false,
        },
        post_attn_norm: None,
        mlp_norm: layer_norm(w, &format!("{p}.post_attention_layernorm"), hidden, c.eps)?,
        mlp: Mlp::Plain {
            fc: linear(w, &format!("{p}.mlp.dense_h_to_4h"), c.inter, hidden, true)?.into(),
            proj: linear(w, &format!("{p}.mlp.dense_4h_to_h"), hidden, c.inter, true)?.into(),
            act: c.activation,
        },
        post_mlp_norm: None,
        parallel: c.parallel,
    })
}

/// The fused q/k/v projection of layer `p`, its rows regrouped to [q; k; v].
fn query_key_value(c: &Config, w: &Weights, p: &str) -> Result<Linear, ModelError> {
    let (hidden, heads, d) = (c.hidden, c.heads, c.d);
    // GPTNeoXAttention: `query_key_value(x).view(..., heads, 3 * head_dim).chunk(3, -1)`: the
    // fused rows are interleaved per head [q_h, k_h, v_h]; regrouped here to [q; k; v].
    let qkv = linear(
        w,
        &format!("{p}.attention.query_key_value"),
        3 * hidden,
        hidden,
        c.bias,
    )?;
    let regroup = |t: &tch::Tensor, tail: &[i64]| {
        let mut shape = vec![heads, 3, d];
        shape.extend_from_slice(tail);
        let mut out = vec![3 * hidden];
        out.extend_from_slice(tail);
        t.view(shape.as_slice())
            .transpose(0, 1)
            .contiguous()
            .view(out.as_slice())
    };
    Ok(Linear {
        w: regroup(&qkv.w, &[hidden]),
        b: qkv.b.as_ref().map(|b| regroup(b, &[])),
    })
}
