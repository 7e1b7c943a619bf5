//! Construction shared by the Llama-family architectures (Llama, Mistral, Qwen 2/3, Gemma 1/2/3,
//! Phi-3): they differ only in the switches of [`LlamaLike`], which each architecture file sets
//! from its own config.json struct, commenting every quirk where it turns it on.

use super::layers::{Act, Attention, Block, Decoder, Dense, Linear, Mlp, Norm};
use super::rope::{rope_spec, Rope};
use super::weights::Weights;
use super::ModelError;
use serde_json::Value;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Per-layer attention kind (transformers' `config.layer_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerType {
    /// Attends to every earlier position.
    Full,
    /// Attends to the last `sliding_window` positions.
    Sliding,
}

impl LayerType {
    /// Parse transformers' names.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "full_attention" => Ok(LayerType::Full),
            "sliding_attention" => Ok(LayerType::Sliding),
            other => Err(ModelError::Config(format!(
                "unsupported layer type `{other}`"
            ))),
        }
    }

    /// The key of this layer type in a nested `rope_parameters`.
    pub fn rope_key(self) -> &'static str {
        match self {
            LayerType::Full => "full_attention",
            LayerType::Sliding => "sliding_attention",
        }
    }
}

/// `layer_types` from config.json if present, else `default(i)` for each layer.
pub fn layer_types(
    cfg: &Value,
    n_layers: i64,
    default: impl Fn(i64) -> LayerType,
) -> Result<Vec<LayerType>, ModelError> {
    match cfg.get("layer_types").and_then(Value::as_array) {
        Some(a) => {
            if a.len() as i64 != n_layers {
                return Err(ModelError::Config(format!(
                    "layer_types has {} entries for {n_layers} layers",
                    a.len()
                )));
            }
            a.iter()
                .map(|v| LayerType::parse(v.as_str().unwrap_or("")))
                .collect()
        }
        None => Ok((0..n_layers).map(default).collect()),
    }
}

/// The plain, resolved configuration of a Llama-family model.
#[derive(Debug, Clone)]
pub struct LlamaLike {
    /// Hidden size.
    pub hidden: i64,
    /// Layers.
    pub n_layers: i64,
    /// Query heads.
    pub n_heads: i64,
    /// KV heads.
    pub n_kv: i64,
    /// Head dimension.
    pub head_dim: i64,
    /// MLP intermediate size.
    pub inter: i64,
    /// Vocabulary size.
    pub vocab: i64,
    /// Norm epsilon.
    pub eps: f64,
    /// MLP activation.
    pub act: Act,
    /// max_position_embeddings (RoPE scaling needs it).
    pub max_pos: i64,
    /// LM head shares the embedding matrix.
    pub tie: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on MLP projections.
    pub mlp_bias: bool,
    /// RMSNorm of q and k per head.
    pub qk_norm: bool,
    /// Gemma's `(1 + weight)` RMSNorm.
    pub norm_one_plus: bool,
    /// Gemma's sqrt(hidden) embedding scale.
    pub embed_scale: bool,
    /// Gemma 2/3 norms after attention and MLP.
    pub sandwich: bool,
    /// Attention score multiplier.
    pub scale: f64,
    /// Attention logit soft-cap.
    pub attn_softcap: Option<f64>,
    /// Final logit soft-cap.
    pub final_softcap: Option<f64>,
    /// Attention kind per layer.
    pub layer_types: Vec<LayerType>,
    /// Window of sliding layers.
    pub sliding_window: Option<i64>,
    /// Nested `rope_parameters` per layer type (Gemma 3).
    pub rope_per_layer_type: bool,
    /// Phi-3: q/k/v in one `qkv_proj` and gate/up in one `gate_up_proj`.
    pub fused_projections: bool,
}

/// A linear layer `name` ([out, in] weight, optional [out] bias) as stored by HF.
pub fn linear(
    w: &Weights,
    name: &str,
    out: i64,
    inp: i64,
    bias: bool,
) -> Result<Linear, ModelError> {
    Ok(Linear {
        w: w.get(&format!("{name}.weight"), &[out, inp])?,
        b: if bias {
            Some(w.get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        },
    })
}

/// An nn.LayerNorm of dimension `d` named `name` (weight and bias).
pub fn layer_norm(w: &Weights, name: &str, d: i64, eps: f64) -> Result<Norm, ModelError> {
    Ok(Norm::Layer {
        w: w.get(&format!("{name}.weight"), &[d])?,
        b: w.get(&format!("{name}.bias"), &[d])?,
        eps,
    })
}

/// An RMSNorm of dimension `d` named `name`.
pub fn rms(w: &Weights, name: &str, d: i64, eps: f64, one_plus: bool) -> Result<Norm, ModelError> {
    let key = format!("{name}.weight");
    Ok(if one_plus {
        // `self.weight.float()`: the weight as the model's dtype holds it (rounded to bf16 in a
        // bf16 model), widened to f32 only for the multiply.
        Norm::RmsOnePlus {
            w1: w.get(&key, &[d])?.to_kind(Kind::Float) + 1.0,
            eps,
            fused: false,
        }
    } else {
        Norm::Rms {
            w: w.get(&key, &[d])?,
            eps,
            fused: None,
        }
    })
}

/// Build the decoder from checkpoint tensors named like transformers' `LlamaForCausalLM`
/// (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`, ..., `model.norm`, `lm_head`).
pub fn build(cfg: &Value, c: &LlamaLike, w: &Weights) -> Result<Decoder, ModelError> {
    let embed = w.get("model.embed_tokens.weight", &[c.vocab, c.hidden])?;
    let (ropes, rope_of) = ropes(cfg, c, w.device())?;
    let mut blocks = Vec::with_capacity(c.n_layers as usize);
    for i in 0..c.n_layers {
        let lt = c.layer_types[i as usize];
        blocks.push(block(c, w, &format!("model.layers.{i}"), lt, rope_of[&lt])?);
    }
    let lm_head = lm_head(c, w, &embed)?;
    Ok(Decoder {
        embed,
        embed_scale: c.embed_scale.then(|| (c.hidden as f64).sqrt()),
        pos_embed: None,
        blocks,
        final_norm: rms(w, "model.norm", c.hidden, c.eps, c.norm_one_plus)?,
        lm_head: Dense::out_in(lm_head),
        final_softcap: c.final_softcap,
        ropes,
        kind: w.kind(),
        whole_layers: false,
    })
}

/// The model's RoPE table and the index into it of each layer type.
///
/// One RoPE for the whole model, or one per layer type when the config nests
/// `rope_parameters` by layer type (Gemma 3: local base on sliding layers).
fn ropes(
    cfg: &Value,
    c: &LlamaLike,
    device: Device,
) -> Result<(Vec<Rope>, HashMap<LayerType, usize>), ModelError> {
    let mut ropes = Vec::new();
    let mut rope_of = HashMap::new();
    for lt in &c.layer_types {
        if rope_of.contains_key(lt) {
            continue;
        }
        if c.rope_per_layer_type || ropes.is_empty() {
            let spec = rope_spec(cfg, c.rope_per_layer_type.then(|| lt.rope_key()))?;
            ropes.push(Rope::new(&spec, c.head_dim, c.max_pos, device)?);
        }
        rope_of.insert(*lt, ropes.len() - 1);
    }
    Ok((ropes, rope_of))
}

/// Decoder layer `p` (`model.layers.N`) of type `lt`, using RoPE number `rope`.
fn block(
    c: &LlamaLike,
    w: &Weights,
    p: &str,
    lt: LayerType,
    rope: usize,
) -> Result<Block, ModelError> {
    let attn = attention(c, w, p, lt, rope)?;
    let mlp = mlp(c, w, p)?;
    let norm = |name: &str| rms(w, &format!("{p}.{name}"), c.hidden, c.eps, c.norm_one_plus);
    Ok(if c.sandwich {
        Block {
            attn_norm: norm("input_layernorm")?,
            attn,
            post_attn_norm: Some(norm("post_attention_layernorm")?),
            mlp_norm: norm("pre_feedforward_layernorm")?,
            mlp,
            post_mlp_norm: Some(norm("post_feedforward_layernorm")?),
            parallel: false,
        }
    } else {
        Block {
            attn_norm: norm("input_layernorm")?,
            attn,
            post_attn_norm: None,
            mlp_norm: norm("post_attention_layernorm")?,
            mlp,
            post_mlp_norm: None,
            parallel: false,
        }
    })
}

/// The self-attention of layer `p`: fused q/k/v, output projection, optional q/k norms.
fn attention(
    c: &LlamaLike,
    w: &Weights,
    p: &str,
    lt: LayerType,
    rope: usize,
) -> Result<Attention, ModelError> {
    let (h, kv, d) = (c.n_heads, c.n_kv, c.head_dim);
    let qkv = qkv_proj(c, w, p)?;
    Ok(Attention {
        qkv: qkv.into(),
        o: linear(
            w,
            &format!("{p}.self_attn.o_proj"),
            c.hidden,
            h * d,
            c.o_bias,
        )?
        .into(),
        n_heads: h,
        n_kv: kv,
        head_dim: d,
        scale: c.scale,
        softcap: c.attn_softcap,
        window: if lt == LayerType::Sliding {
            c.sliding_window
        } else {
            None
        },
        q_norm: qk_norm(c, w, &format!("{p}.self_attn.q_norm"))?,
        k_norm: qk_norm(c, w, &format!("{p}.self_attn.k_norm"))?,
        rope: Some(rope),
        fused: false,
    })
}

/// The per-head RMSNorm `name` of q or k when the model has one (`qk_norm`).
fn qk_norm(c: &LlamaLike, w: &Weights, name: &str) -> Result<Option<Norm>, ModelError> {
    Ok(if c.qk_norm {
        Some(rms(w, name, c.head_dim, c.eps, c.norm_one_plus)?)
    } else {
        None
    })
}

/// The q/k/v projection of layer `p` as one [`Linear`] with rows [q; k; v].
fn qkv_proj(c: &LlamaLike, w: &Weights, p: &str) -> Result<Linear, ModelError> {
    let (h, kv, d) = (c.n_heads, c.n_kv, c.head_dim);
    if c.fused_projections {
        return linear(
            w,
            &format!("{p}.self_attn.qkv_proj"),
            (h + 2 * kv) * d,
            c.hidden,
            c.qkv_bias,
        );
    }
    // Separate q/k/v checkpoints tensors, fused here into one matmul.
    let q = linear(
        w,
        &format!("{p}.self_attn.q_proj"),
        h * d,
        c.hidden,
        c.qkv_bias,
    )?;
    let k = linear(
        w,
        &format!("{p}.self_attn.k_proj"),
        kv * d,
        c.hidden,
        c.qkv_bias,
    )?;
    let v = linear(
        w,
        &format!("{p}.self_attn.v_proj"),
        kv * d,
        c.hidden,
        c.qkv_bias,
    )?;
    Ok(Linear {
        w: Tensor::cat(&[&q.w, &k.w, &v.w], 0),
        b: match (q.b, k.b, v.b) {
            (Some(a), Some(b), Some(cc)) => Some(Tensor::cat(&[&a, &b, &cc], 0)),
            _ => None,
        },
    })
}

/// The gated MLP of layer `p`.
fn mlp(c: &LlamaLike, w: &Weights, p: &str) -> Result<Mlp, ModelError> {
    let gate_up = gate_up_proj(c, w, p)?;
    Ok(Mlp::Gated {
        gate_up: gate_up.into(),
        down: linear(
            w,
            &format!("{p}.mlp.down_proj"),
            c.hidden,
            c.inter,
            c.mlp_bias,
        )?
        .into(),
        act: c.act,
        fused: false,
    })
}

/// The gate and up projections of layer `p` as one [`Linear`] with rows [gate; up].
fn gate_up_proj(c: &LlamaLike, w: &Weights, p: &str) -> Result<Linear, ModelError> {
    if c.fused_projections {
        return linear(
            w,
            &format!("{p}.mlp.gate_up_proj"),
            2 * c.inter,
            c.hidden,
            c.mlp_bias,
        );
    }
    let g = linear(
        w,
        &format!("{p}.mlp.gate_proj"),
        c.inter,
        c.hidden,
        c.mlp_bias,
    )?;
    let u = linear(
        w,
        &format!("{p}.mlp.up_proj"),
        c.inter,
        c.hidden,
        c.mlp_bias,
    )?;
    Ok(Linear {
        w: Tensor::cat(&[&g.w, &u.w], 0),
        b: match (g.b, u.b) {
            (Some(a), Some(b)) => Some(Tensor::cat(&[&a, &b], 0)),
            _ => None,
        },
    })
}

/// The LM head: `lm_head`, or the embedding matrix itself when tied.
fn lm_head(c: &LlamaLike, w: &Weights, embed: &Tensor) -> Result<Linear, ModelError> {
    // Tied head (tie_word_embeddings): the LM head is the embedding matrix itself.
    if c.tie {
        Ok(Linear {
            w: embed.shallow_clone(),
            b: None,
        })
    } else {
        linear(w, "lm_head", c.vocab, c.hidden, false)
    }
}

/// Read a required integer field of config.json.
pub fn req_i64(cfg: &Value, key: &str) -> Result<i64, ModelError> {
    cfg.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| ModelError::Config(format!("missing or non-integer `{key}`")))
}

/// An optional integer field (null counts as absent).
pub fn opt_i64(cfg: &Value, key: &str) -> Option<i64> {
    cfg.get(key).and_then(Value::as_i64)
}

/// An optional float field (null counts as absent).
pub fn opt_f64(cfg: &Value, key: &str) -> Option<f64> {
    cfg.get(key).and_then(Value::as_f64)
}

/// An optional bool field.
pub fn opt_bool(cfg: &Value, key: &str) -> Option<bool> {
    cfg.get(key).and_then(Value::as_bool)
}

/// The activation named by `keys` (first present wins), or `default`.
pub fn act(cfg: &Value, keys: &[&str], default: &str) -> Result<Act, ModelError> {
    let name = keys
        .iter()
        .find_map(|k| cfg.get(*k).and_then(Value::as_str))
        .unwrap_or(default);
    Act::parse(name).ok_or_else(|| ModelError::Config(format!("unsupported activation `{name}`")))
}

/// The fields every Llama-family config shares, with Llama's defaults.
pub fn base(cfg: &Value) -> Result<LlamaLike, ModelError> {
    let hidden = req_i64(cfg, "hidden_size")?;
    let n_heads = req_i64(cfg, "num_attention_heads")?;
    let n_layers = req_i64(cfg, "num_hidden_layers")?;
    let head_dim = opt_i64(cfg, "head_dim").unwrap_or(hidden / n_heads);
    let n_kv = opt_i64(cfg, "num_key_value_heads").unwrap_or(n_heads);
    if n_heads % n_kv != 0 {
        return Err(ModelError::Config(format!(
            "num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}"
        )));
    }
    Ok(LlamaLike {
        hidden,
        n_layers,
        n_heads,
        n_kv,
        head_dim,
        inter: req_i64(cfg, "intermediate_size")?,
        vocab: req_i64(cfg, "vocab_size")?,
        eps: opt_f64(cfg, "rms_norm_eps").unwrap_or(1e-6),
        act: act(cfg, &["hidden_act"], "silu")?,
        max_pos: opt_i64(cfg, "max_position_embeddings").unwrap_or(2048),
        tie: opt_bool(cfg, "tie_word_embeddings").unwrap_or(false),
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        norm_one_plus: false,
        embed_scale: false,
        sandwich: false,
        scale: (head_dim as f64).powf(-0.5),
        attn_softcap: None,
        final_softcap: None,
        layer_types: vec![LayerType::Full; n_layers as usize],
        sliding_window: None,
        rope_per_layer_type: false,
        fused_projections: false,
    })
}
