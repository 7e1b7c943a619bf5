//! Rotary position embeddings, mirroring transformers' `modeling_rope_utils.py`
//! (`ROPE_INIT_FUNCTIONS`): default, linear, dynamic, llama3, yarn and longrope.
//!
//! Parameters come from config.json in either layout: transformers 5 writes `rope_parameters`
//! (possibly nested per layer type, e.g. Gemma 3's `full_attention` / `sliding_attention`),
//! older checkpoints have `rope_theta` + `rope_scaling` (+ Gemma 3's `rope_local_base_freq`).

use super::ModelError;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// The resolved RoPE parameters for one layer type.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    /// "default", "linear", "dynamic", "llama3", "yarn" or "longrope".
    pub rope_type: String,
    /// Base wavelength.
    pub theta: f64,
    /// Fraction of the head dimension that is rotated (GPT-NeoX `rotary_pct`, Phi-3).
    pub partial_rotary_factor: f64,
    /// The rope_parameters / rope_scaling object (factor, low/high_freq_factor, ...).
    pub params: Value,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Resolve the RoPE spec of `layer_type` (None for models with one RoPE).
pub fn rope_spec(cfg: &Value, layer_type: Option<&str>) -> Result<RopeSpec, ModelError> {
    // GPT-NeoX before transformers 5 names the base `rotary_emb_base`.
    let top_theta = num(cfg, "rope_theta").or_else(|| num(cfg, "rotary_emb_base"));
    let top_partial = num(cfg, "partial_rotary_factor").or_else(|| num(cfg, "rotary_pct"));
    let mut params = match cfg.get("rope_parameters").filter(|v| v.is_object()) {
        Some(rp) => match layer_type.and_then(|lt| rp.get(lt)) {
            Some(nested) => nested.clone(),
            None => rp.clone(),
        },
        None => {
            let mut p = cfg
                .get("rope_scaling")
                .filter(|v| v.is_object())
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            // Gemma 3 before transformers 5: sliding layers use the local base, default rope.
            if layer_type == Some("sliding_attention") {
                if let Some(local) = num(cfg, "rope_local_base_freq") {
                    p = serde_json::json!({ "rope_type": "default", "rope_theta": local });
                }
            }
            p
        }
    };
    let rope_type = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let theta = num(&params, "rope_theta").or(top_theta).unwrap_or(10_000.0);
    let partial = num(&params, "partial_rotary_factor")
        .or(top_partial)
        .unwrap_or(1.0);
    // Phi-3 keeps original_max_position_embeddings at the top level; it wins (standardize_rope_params).
    if let (Some(o), Some(obj)) = (
        cfg.get("original_max_position_embeddings"),
        params.as_object_mut(),
    ) {
        if matches!(rope_type.as_str(), "llama3" | "yarn" | "longrope") {
            obj.insert("original_max_position_embeddings".into(), o.clone());
        }
    }
    Ok(RopeSpec {
        rope_type,
        theta,
        partial_rotary_factor: partial,
        params,
    })
}

/// Precomputed inverse frequencies for one RoPE variant.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
    /// Longrope: (long-factor frequencies, original max positions); used when the sequence so far
    /// exceeds the original length, exactly like transformers' `longrope_frequency_update`.
    long: Option<(Tensor, i64)>,
    /// Dynamic NTK: recomputed past max_position_embeddings.
    dynamic: Option<(f64, f64, i64)>,
    /// Multiplies cos and sin (yarn / longrope attention factor).
    pub attention_scaling: f64,
    /// Rotated dimensions (the rest of the head passes through).
    pub rotary_dim: i64,
}

fn base_inv_freq(theta: f64, dim: i64) -> Vec<f64> {
    (0..dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f64 / dim as f64))
        .collect()
}

fn to_tensor(v: &[f64], device: Device) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&f).to_device(device)
}

fn factors(params: &Value, key: &str) -> Result<Vec<f64>, ModelError> {
    params
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .ok_or_else(|| ModelError::Config(format!("longrope needs `{key}`")))
}

/// Linear (position interpolation): every frequency divided by `factor`.
fn scale_linear(inv: &mut [f64], factor: Option<f64>) -> Result<(), ModelError> {
    let f = factor.ok_or_else(|| ModelError::Config("linear rope needs `factor`".into()))?;
    inv.iter_mut().for_each(|x| *x /= f);
    Ok(())
}

/// Dynamic NTK: (theta, factor, max_pos) for recomputing the base in [`Rope::cos_sin`].
fn dynamic_params(
    theta: f64,
    factor: Option<f64>,
    max_pos: i64,
) -> Result<(f64, f64, i64), ModelError> {
    let f = factor.ok_or_else(|| ModelError::Config("dynamic rope needs `factor`".into()))?;
    Ok((theta, f, max_pos))
}

/// Llama 3 scaling of `inv` in place; `old` is the original context length.
fn scale_llama3(inv: &mut [f64], p: &Value, factor: Option<f64>, old: i64) {
    // _compute_llama3_parameters: low frequencies divided by factor, high kept,
    // smooth interpolation in between.
    let f = factor.unwrap_or(8.0);
    let lo = num(p, "low_freq_factor").unwrap_or(1.0);
    let hi = num(p, "high_freq_factor").unwrap_or(4.0);
    let old = old as f64;
    let (lo_wl, hi_wl) = (old / lo, old / hi);
    for x in inv.iter_mut() {
        let wl = 2.0 * std::f64::consts::PI / *x;
        let scaled = if wl > lo_wl { *x / f } else { *x };
        let medium = wl >= hi_wl && wl <= lo_wl;
        *x = if medium {
            let s = (old / wl - lo) / (hi - lo);
            (1.0 - s) * scaled / f + s * scaled
        } else {
            scaled
        };
    }
}

/// YaRN scaling of `inv` (rotary dimension `dim`) in place; `o` is the original context
/// length. Returns the attention scaling of cos and sin.
fn scale_yarn(
    inv: &mut [f64],
    spec: &RopeSpec,
    dim: i64,
    factor: Option<f64>,
    o: i64,
    max_pos: i64,
) -> f64 {
    let p = &spec.params;
    let f = factor.unwrap_or(max_pos as f64 / o as f64);
    let mscale = |s: f64, m: f64| {
        if s <= 1.0 {
            1.0
        } else {
            0.1 * m * s.ln() + 1.0
        }
    };
    let attention_scaling = match (
        num(p, "attention_factor"),
        num(p, "mscale"),
        num(p, "mscale_all_dim"),
    ) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => mscale(f, m) / mscale(f, ma),
        _ => mscale(f, 1.0),
    };
    let beta_fast = num(p, "beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0);
    let beta_slow = num(p, "beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0);
    let truncate = p.get("truncate").and_then(Value::as_bool).unwrap_or(true);
    let corr = |rot: f64| {
        (dim as f64 * (o as f64 / (rot * 2.0 * std::f64::consts::PI)).ln())
            / (2.0 * spec.theta.ln())
    };
    let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let mut high = high.min(dim as f64 - 1.0);
    if low == high {
        high += 0.001;
    }
    for (i, x) in inv.iter_mut().enumerate() {
        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
        let extra = 1.0 - ramp;
        *x = (*x / f) * (1.0 - extra) + *x * extra;
    }
    attention_scaling
}

/// What longrope adds to the base frequencies.
struct LongRope {
    /// Short-factor frequencies (the ones used up to the original length).
    inv: Vec<f64>,
    /// Long-factor frequencies on the device, and the original max positions.
    long: (Tensor, i64),
    /// Multiplies cos and sin.
    attention_scaling: f64,
}

/// Longrope (Phi-3): short and long per-dimension factors of the base frequencies.
fn longrope(
    spec: &RopeSpec,
    dim: i64,
    factor: Option<f64>,
    orig: Option<i64>,
    max_pos: i64,
    device: Device,
) -> Result<LongRope, ModelError> {
    let p = &spec.params;
    let o = orig.ok_or_else(|| {
        ModelError::Config("longrope needs `original_max_position_embeddings`".into())
    })?;
    let short = factors(p, "short_factor")?;
    let longf = factors(p, "long_factor")?;
    let f = factor.unwrap_or(max_pos as f64 / o as f64);
    let attention_scaling = num(p, "attention_factor").unwrap_or(if f <= 1.0 {
        1.0
    } else {
        (1.0 + f.ln() / (o as f64).ln()).sqrt()
    });
    let base = base_inv_freq(spec.theta, dim);
    if short.len() != base.len() || longf.len() != base.len() {
        return Err(ModelError::Config(format!(
            "longrope factors must have {} entries (rotary dim / 2)",
            base.len()
        )));
    }
    let inv = base.iter().zip(&short).map(|(b, s)| b / s).collect();
    let l: Vec<f64> = base.iter().zip(&longf).map(|(b, s)| b / s).collect();
    Ok(LongRope {
        inv,
        long: (to_tensor(&l, device), o),
        attention_scaling,
    })
}

impl Rope {
    /// Build the frequencies for `spec` with `head_dim` and the model's `max_position_embeddings`.
    pub fn new(
        spec: &RopeSpec,
        head_dim: i64,
        max_pos: i64,
        device: Device,
    ) -> Result<Self, ModelError> {
        let dim = (head_dim as f64 * spec.partial_rotary_factor) as i64;
        let p = &spec.params;
        let factor = num(p, "factor");
        let orig = num(p, "original_max_position_embeddings").map(|x| x as i64);
        let mut inv = base_inv_freq(spec.theta, dim);
        let mut attention_scaling = 1.0;
        let mut long = None;
        let mut dynamic = None;
        match spec.rope_type.as_str() {
            "default" => {}
            "linear" => scale_linear(&mut inv, factor)?,
            "dynamic" => dynamic = Some(dynamic_params(spec.theta, factor, max_pos)?),
            "llama3" => scale_llama3(&mut inv, p, factor, orig.unwrap_or(max_pos)),
            "yarn" => {
                let o = orig.unwrap_or(max_pos);
                attention_scaling = scale_yarn(&mut inv, spec, dim, factor, o, max_pos);
            }
            "longrope" => {
                let lr = longrope(spec, dim, factor, orig, max_pos, device)?;
                inv = lr.inv;
                attention_scaling = lr.attention_scaling;
                long = Some(lr.long);
            }
            other => {
                return Err(ModelError::Config(format!(
                    "unsupported rope type `{other}` (supported: default, linear, dynamic, llama3, yarn, longrope)"
                )))
            }
        }
        Ok(Self {
            inv_freq: to_tensor(&inv, device),
            long,
            dynamic,
            attention_scaling,
            rotary_dim: dim,
        })
    }

    /// cos and sin, shape [t, rotary_dim], for positions `past..past + t`, computed in f32 and cast
    /// to `kind` (as transformers does under disabled autocast).
    pub fn cos_sin(&self, past: i64, t: i64, kind: Kind) -> (Tensor, Tensor) {
        let seq_len = past + t;
        let device = self.inv_freq.device();
        let inv = match (&self.long, &self.dynamic) {
            (Some((l, orig)), _) if seq_len > *orig => l.shallow_clone(),
            (_, Some((theta, f, max_pos))) if seq_len > *max_pos => {
                let dim = self.rotary_dim as f64;
                let base = theta
                    * ((f * seq_len as f64 / *max_pos as f64) - (f - 1.0)).powf(dim / (dim - 2.0));
                to_tensor(&base_inv_freq(base, self.rotary_dim), device)
            }
            _ => self.inv_freq.shallow_clone(),
        };
        let pos = Tensor::arange_start(past, past + t, (Kind::Float, device));
        let freqs = pos.unsqueeze(1) * inv.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let cos = (emb.cos() * self.attention_scaling).to_kind(kind);
        let sin = (emb.sin() * self.attention_scaling).to_kind(kind);
        (cos, sin)
    }
}

/// `x * cos + rotate_half(x) * sin` on the first `cos.size(-1)` dims of the last axis of
/// x [b, h, t, d]; the remaining dims pass through (partial rotary).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let d = x.size()[3];
    let rot = cos.size()[1];
    let cos = cos.view([1, 1, -1, rot]);
    let sin = sin.view([1, 1, -1, rot]);
    let xr = x.narrow(3, 0, rot);
    let half = rot / 2;
    let rotated = Tensor::cat(&[&(-xr.narrow(3, half, half)), &xr.narrow(3, 0, half)], 3);
    let out = &xr * &cos + rotated * &sin;
    if rot == d {
        out
    } else {
        Tensor::cat(&[&out, &x.narrow(3, rot, d - rot)], 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v4_and_v5_layouts_resolve_the_same() {
        let v4 = json!({"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}});
        let v5 = json!({"rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}});
        let a = rope_spec(&v4, None).unwrap();
        let b = rope_spec(&v5, None).unwrap();
        assert_eq!((a.rope_type.as_str(), a.theta), ("linear", 500000.0));
        assert_eq!((b.rope_type.as_str(), b.theta), ("linear", 500000.0));
    }

    #[test]
    fn gemma3_layer_types_pick_their_own_rope() {
        let v5 = json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}});
        assert_eq!(
            rope_spec(&v5, Some("sliding_attention")).unwrap().theta,
            1e4
        );
        assert_eq!(
            rope_spec(&v5, Some("full_attention")).unwrap().rope_type,
            "linear"
        );
        let v4 = json!({"rope_theta": 1e6, "rope_local_base_freq": 1e4});
        assert_eq!(
            rope_spec(&v4, Some("sliding_attention")).unwrap().theta,
            1e4
        );
        assert_eq!(rope_spec(&v4, Some("full_attention")).unwrap().theta, 1e6);
    }

    #[test]
    fn default_frequencies_match_the_formula() {
        let spec = rope_spec(&json!({"rope_theta": 10000.0}), None).unwrap();
        let r = Rope::new(&spec, 8, 64, Device::Cpu).unwrap();
        let (cos, sin) = r.cos_sin(3, 1, Kind::Float);
        // position 3, pair 1: angle = 3 / 10000^(2/8)
        let angle = 3.0f64 / 10000f64.powf(0.25);
        assert!((cos.double_value(&[0, 1]) - angle.cos()).abs() < 1e-6);
        assert!((sin.double_value(&[0, 5]) - angle.sin()).abs() < 1e-6);
    }
}
