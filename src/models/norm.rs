//! Normalisation layers: LlamaRMSNorm, GemmaRMSNorm (`1 + w`) and LayerNorm, each as
//! transformers computes it, the RMS forms optionally through ttft's one-pass kernel
//! ([`super::layer_ops::rms_norm`], same roundings).

use tch::{Kind, Tensor};

/// Normalisation layers.
#[derive(Debug)]
pub enum Norm {
    /// LlamaRMSNorm: normalise in f32, cast back, then multiply by the weight.
    Rms {
        /// Weight [d].
        w: Tensor,
        /// Epsilon inside the rsqrt.
        eps: f64,
        /// The weight widened to f32 for ttft's fused kernel, when [`Norm::use_fused`] chose it.
        fused: Option<Tensor>,
    },
    /// GemmaRMSNorm: normalise in f32 and multiply by `(1 + weight)` in f32, then cast back.
    /// `w1` holds `1 + weight` in f32, precomputed at load.
    RmsOnePlus {
        /// `1 + weight`, f32.
        w1: Tensor,
        /// Epsilon inside the rsqrt.
        eps: f64,
        /// Whether ttft's fused kernel runs it.
        fused: bool,
    },
    /// nn.LayerNorm with weight and bias.
    Layer {
        /// Weight [d].
        w: Tensor,
        /// Bias [d].
        b: Tensor,
        /// Epsilon.
        eps: f64,
    },
}

impl Norm {
    /// Normalise over the last axis.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some((w, eps, one_plus)) = self.fused_rms() {
            return super::layer_ops::rms_norm(x, w, eps, one_plus)
                .unwrap_or_else(|e| panic!("rms norm: {e}"));
        }
        match self {
            Norm::Rms { w, eps, .. } => {
                let xf = x.to_kind(Kind::Float);
                let var = xf.square().mean_dim(-1, true, Kind::Float);
                w * (xf * (var + *eps).rsqrt()).to_kind(x.kind())
            }
            Norm::RmsOnePlus { w1, eps, .. } => {
                let xf = x.to_kind(Kind::Float);
                let var = xf.square().mean_dim(-1, true, Kind::Float);
                (xf * (var + *eps).rsqrt() * w1).to_kind(x.kind())
            }
            Norm::Layer { w, b, eps } => {
                let d = *x.size().last().expect("non-scalar");
                x.layer_norm([d], Some(w), Some(b), *eps, false)
            }
        }
    }

    /// The f32 weight, epsilon and Gemma flag (`1 + w` already in the weight) of an RMS norm
    /// that runs through ttft's kernel; None for any other norm.
    pub fn fused_rms(&self) -> Option<(&Tensor, f64, bool)> {
        match self {
            Norm::Rms {
                fused: Some(wf),
                eps,
                ..
            } => Some((wf, *eps, false)),
            Norm::RmsOnePlus {
                w1,
                eps,
                fused: true,
            } => Some((w1, *eps, true)),
            _ => None,
        }
    }

    /// Run RMS norms through ttft's one-pass kernel (`onednn::rms_norm`) or libtorch's ops.
    /// LayerNorm is one libtorch op already.
    pub fn use_fused(&mut self, on: bool) {
        match self {
            Norm::Rms { w, fused, .. } => *fused = on.then(|| w.to_kind(Kind::Float)),
            Norm::RmsOnePlus { fused, .. } => *fused = on,
            Norm::Layer { .. } => {}
        }
    }
}
