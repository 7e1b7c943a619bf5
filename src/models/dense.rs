//! Projections: `Linear` as the checkpoint holds it and `Dense` as it runs, its weight laid out
//! once at load for the kernel that will multiply by it (MKL or oneDNN, `--hf-kernels`).

use super::onednn::{self, Kernels};
use tch::Tensor;
/// `y = x W^T + b`, W stored [out, in] as in HF checkpoints (GPT-2's Conv1D is transposed at load).
#[derive(Debug)]
pub struct Linear {
    /// Weight [out, in].
    pub w: Tensor,
    /// Optional bias [out].
    pub b: Option<Tensor>,
}

impl Linear {
    /// Apply to x [..., in].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }
}

/// A projection as it runs: the weight in the layout its kernel wants, chosen once at load
/// ([`Dense::use_kernels`]), so no forward pass pays for a re-layout.
#[derive(Debug)]
pub struct Dense {
    w: Weight,
    /// Optional bias [out].
    pub b: Option<Tensor>,
}

/// The layouts a [`Dense`] weight can be kept in.
#[derive(Debug)]
enum Weight {
    /// [out, in] as HF stores it, through `linear`: the LM head when it is the embedding table
    /// itself (no copy for the MKL path).
    OutIn(Tensor),
    /// [in, out] contiguous: the GEMM runs without a transposed operand, so MKL skips re-packing
    /// the whole weight on every call (about 20 % off short-prompt prefill), identical results.
    InOut(Tensor),
    /// oneDNN's blocked layout, packed once from [out, in] ([`onednn::pack`]): short
    /// prompts run about 2× faster than with MKL's small-M sgemm here (bench-hf-prefill.sh).
    Packed {
        /// The packed weight (an opaque oneDNN tensor).
        w: Tensor,
        /// Output features.
        out: i64,
    },
    /// Panels of 32 output columns, [ceil(out/32), in, 32] ([`onednn::pack_panels`]) for ttft's
    /// AVX-512 kernels (bf16: [ceil(out/32), ceil(in/2), 32, 2], input pairs side by side): the
    /// weight streams at the memory's read rate when rows are few.
    Panels {
        /// The panels, zero-padded past `out`.
        w: Tensor,
        /// Output features.
        out: i64,
        /// The bias widened to f32 at load (the kernels add it in f32 before rounding).
        b32: Option<Tensor>,
    },
}

impl From<Linear> for Dense {
    fn from(l: Linear) -> Self {
        Dense::in_out(l.w.tr().contiguous(), l.b)
    }
}

impl Dense {
    /// A weight already stored [in, out] (GPT-2's Conv1D).
    pub fn in_out(wt: Tensor, b: Option<Tensor>) -> Self {
        Dense {
            w: Weight::InOut(wt),
            b,
        }
    }

    /// Keep the HF layout [out, in]: for an LM head that shares the embedding's tensor.
    pub fn out_in(l: Linear) -> Self {
        Dense {
            w: Weight::OutIn(l.w),
            b: l.b,
        }
    }

    /// Apply to x [..., in].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match &self.w {
            Weight::OutIn(w) => x.linear(w, self.b.as_ref()),
            Weight::InOut(wt) => {
                let y = x.matmul(wt);
                match &self.b {
                    Some(b) => y + b,
                    None => y,
                }
            }
            Weight::Packed { w, out } => as_rows(x, *out, |rows| {
                onednn::linear(rows, w, self.b.as_ref())
                    .unwrap_or_else(|e| panic!("oneDNN linear [-> {out}]: {e}"))
            }),
            Weight::Panels { w, out, b32 } => as_rows(x, *out, |rows| {
                onednn::panel_linear(&rows.contiguous(), w, b32.as_ref(), *out)
                    .unwrap_or_else(|e| panic!("panel linear [-> {out}]: {e}"))
            }),
        }
    }

    /// The panel weight (f32 or bf16), its f32 bias and its output count, when the weight is
    /// laid out for ttft's kernels (what `shim/layer.cpp` runs a whole layer on).
    pub fn panels(&self) -> Option<(&Tensor, Option<&Tensor>, i64)> {
        match &self.w {
            Weight::Panels { w, b32, out } => Some((w, b32.as_ref(), *out)),
            _ => None,
        }
    }

    /// The weight [out, in] in dense form, whatever the layout (a view where it can be).
    fn out_in_weight(&self) -> Option<Tensor> {
        match &self.w {
            Weight::OutIn(w) => Some(w.shallow_clone()),
            Weight::InOut(wt) => Some(wt.tr().contiguous()),
            Weight::Packed { .. } | Weight::Panels { .. } => None,
        }
    }

    /// Lay the weight out for `kernels` (packing copies it; the dense copy is then dropped
    /// unless another tensor, the embedding table, still holds it). `rows` is oneDNN's hint of
    /// how many rows the layer will see (0: any).
    pub fn use_kernels(&mut self, kernels: Kernels, rows: i64) -> Result<(), tch::TchError> {
        match kernels {
            // MKL runs the layout the loader made.
            Kernels::Mkl => {}
            Kernels::Onednn => {
                if let Some(w) = self.out_in_weight() {
                    let out = w.size()[0];
                    self.w = Weight::Packed {
                        w: onednn::pack(&w.contiguous(), rows)?,
                        out,
                    };
                }
            }
            Kernels::Avx512 => {
                if let Some(w) = self.out_in_weight() {
                    let out = w.size()[0];
                    self.w = Weight::Panels {
                        w: onednn::pack_panels(&w)?,
                        out,
                        b32: self.b.as_ref().map(|b| b.to_kind(tch::Kind::Float)),
                    };
                }
            }
        }
        Ok(())
    }

    /// Bytes of the weight and bias as stored (what one pass over the layer reads).
    pub fn bytes(&self) -> f64 {
        let of = |t: &Tensor| t.numel() as f64 * t.kind().elt_size_in_bytes() as f64;
        let w = match &self.w {
            Weight::OutIn(w) | Weight::InOut(w) => of(w),
            // A oneDNN tensor reports its logical shape and dtype: the same bytes unpadded.
            Weight::Packed { w, .. } => of(w),
            // The zero columns that pad the last panel are streamed too.
            Weight::Panels { w, .. } => of(w),
        };
        w + self.b.as_ref().map_or(0.0, of)
    }
}

/// Run a 2-D kernel on x [..., in] as [rows, in] and give the result x's leading shape.
fn as_rows(x: &Tensor, out: i64, f: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
    let mut shape = x.size();
    let inp = *shape.last().expect("non-scalar input");
    let y = f(&x.reshape([-1, inp]));
    *shape.last_mut().expect("non-scalar input") = out;
    y.reshape(shape)
}
