//! A whole decoder layer in one shim call (`shim/layer.cpp`) where the layer is Llama-shaped
//! and every part of it already runs on ttft's CPU kernels (f32 or bf16): RMS norms, fused
//! q/k/v and gate/up panels, full-width RoPE, plain causal attention, SiLU. The same kernels as
//! the layer-by-layer path in the same order, so the output is bit-identical to it (the test
//! over every parity fixture checks); what goes is the libtorch dispatch between them (an
//! 8-token SmolLM2 f32 forward here: 9.11 -> 8.83 ms, `shim/layer.cpp` says how measured).
//! Anything else (f16, soft-caps, windows that bite, q/k norms, post norms, parallel
//! residuals, GPT-2's learned positions) keeps the layer-by-layer path.

use super::layers::{Block, LayerCache, Mlp};
use super::onednn::shim_call;
use std::ffi::c_char;
use tch::{Kind, Tensor};
use torch_sys::C_tensor;

/// `TtftLayer` in `shim/layer.cpp`: borrowed tensor handles and the layer's shapes.
#[repr(C)]
struct LayerArgs {
    attn_norm: *const C_tensor,
    qkv: *const C_tensor,
    qkv_bias: *const C_tensor,
    o: *const C_tensor,
    o_bias: *const C_tensor,
    mlp_norm: *const C_tensor,
    gate_up: *const C_tensor,
    gate_up_bias: *const C_tensor,
    down: *const C_tensor,
    down_bias: *const C_tensor,
    attn_eps: f64,
    mlp_eps: f64,
    scale: f64,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    inter: i64,
    one_plus: i32,
}

extern "C" {
    fn ttft_dense_layer(
        l: *const LayerArgs,
        x: *const C_tensor,
        cos: *const C_tensor,
        sin: *const C_tensor,
        past_k: *const C_tensor,
        past_v: *const C_tensor,
        k_out: *mut *mut C_tensor,
        v_out: *mut *mut C_tensor,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
}

fn ptr(t: Option<&Tensor>) -> *const C_tensor {
    t.map_or(std::ptr::null(), |t| t.as_ptr())
}

/// The shim's description of `b`, borrowing its tensors, when the whole layer can run in one
/// call for a sequence of `s` keys; None where some part of it needs the layer-by-layer path.
fn args(b: &Block, s: i64) -> Option<LayerArgs> {
    let a = &b.attn;
    let plain_attention = a.fused
        && a.softcap.is_none()
        && a.q_norm.is_none()
        && a.k_norm.is_none()
        && a.window.is_none_or(|w| s <= w);
    if !plain_attention || b.parallel || b.post_attn_norm.is_some() || b.post_mlp_norm.is_some() {
        return None;
    }
    let Mlp::Gated {
        gate_up,
        down,
        fused: true,
        ..
    } = &b.mlp
    else {
        return None;
    };
    let (n1, attn_eps, one_plus) = b.attn_norm.fused_rms()?;
    let (n2, mlp_eps, one_plus2) = b.mlp_norm.fused_rms()?;
    let ((qkv, qkv_b, _), (o, o_b, _)) = (a.qkv.panels()?, a.o.panels()?);
    let ((gu, gu_b, gu_out), (dn, dn_b, _)) = (gate_up.panels()?, down.panels()?);
    if one_plus != one_plus2 {
        return None;
    }
    Some(LayerArgs {
        attn_norm: n1.as_ptr(),
        qkv: qkv.as_ptr(),
        qkv_bias: ptr(qkv_b),
        o: o.as_ptr(),
        o_bias: ptr(o_b),
        mlp_norm: n2.as_ptr(),
        gate_up: gu.as_ptr(),
        gate_up_bias: ptr(gu_b),
        down: dn.as_ptr(),
        down_bias: ptr(dn_b),
        attn_eps,
        mlp_eps,
        scale: a.scale,
        heads: a.n_heads,
        kv_heads: a.n_kv,
        head_dim: a.head_dim,
        inter: gu_out / 2,
        one_plus: i32::from(one_plus),
    })
}

/// x [1, t, hidden] through the whole of `b` in one call, with the keys and values appended to
/// `cache`; None (nothing done, `cache` untouched) where the layer needs the layer-by-layer
/// path.
pub fn forward(
    b: &Block,
    x: &Tensor,
    cos_sin: Option<&(Tensor, Tensor)>,
    cache: &mut LayerCache,
    past: i64,
) -> Option<Tensor> {
    let (cos, sin) = cos_sin?;
    let size = x.size();
    let full_rope = cos.size().get(1) == Some(&b.attn.head_dim);
    let dtype = matches!(x.kind(), Kind::Float | Kind::BFloat16);
    if size.len() != 3 || size[0] != 1 || !dtype || !full_rope {
        return None;
    }
    let l = args(b, past + size[1])?;
    let x = x.contiguous();
    let (pk, pv) = match cache.as_ref() {
        Some((k, v)) => (k.as_ptr(), v.as_ptr()),
        None => (std::ptr::null(), std::ptr::null()),
    };
    let (mut k, mut v) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: every tensor `l` points to is borrowed from `b`, and x, cos, sin and the cache
    // outlive the call; the shim checks shapes and dtypes, and on success hands us two new heap
    // tensors in k and v.
    let y = shim_call(|err, len| unsafe {
        ttft_dense_layer(
            &l,
            x.as_ptr(),
            cos.as_ptr(),
            sin.as_ptr(),
            pk,
            pv,
            &mut k,
            &mut v,
            err,
            len,
        )
    })
    .unwrap_or_else(|e| panic!("dense layer: {e}"));
    // SAFETY: set by the shim on success, each a heap tensor that is now ours alone.
    *cache = Some(unsafe { (Tensor::from_ptr(k), Tensor::from_ptr(v)) });
    Some(y)
}

/// Whether `b` runs as one call (for a short sequence, where a sliding window cannot bite).
pub fn runs_whole(b: &Block) -> bool {
    args(b, 1).is_some()
}
