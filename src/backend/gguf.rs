//! GGUF checks through llama.cpp's own GGUF reader (metadata only, no tensor data), so a truncated
//! or corrupt model file is refused with a clear message before anything is timed, instead of a
//! llama.cpp abort or a failure half-way through the benchmark.

use super::OpenError;
use std::ffi::{CStr, CString};
use std::path::Path;

/// What the header says about a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// Tensors described.
    pub n_tensors: i64,
    /// Bytes the file must have to hold every tensor the header describes.
    pub required_bytes: u64,
    /// Bytes the file has.
    pub file_bytes: u64,
    /// Layers, widths and vocabulary from the metadata, when the header has them.
    pub dims: Option<GgufDims>,
    /// Tensor bytes a prefill reads once: every tensor but the token embedding table when an
    /// `output.weight` LM head exists (then the table is only looked up, row by row).
    pub weight_bytes: u64,
}

/// The metadata the prefill-FLOPs formula needs (`{arch}.block_count` etc.).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GgufDims {
    /// `{arch}.block_count`.
    pub n_layers: u32,
    /// `{arch}.embedding_length`.
    pub d_model: u32,
    /// `{arch}.attention.head_count` × `{arch}.attention.key_length` (default d_model / heads).
    pub d_attn: u32,
    /// Entries of `tokenizer.ggml.tokens`.
    pub vocab: u32,
    /// No `output.weight` tensor: llama.cpp uses the token embeddings as the LM head.
    pub tied: bool,
}

/// The bytes a prefill of `path` reads (see [`GgufInfo::weight_bytes`]).
pub fn weight_bytes(path: &Path) -> Option<u64> {
    inspect(path).ok().map(|i| i.weight_bytes)
}

/// The model shape of `path` for prefill FLOPs, with llama.cpp's parameter count.
pub fn model_shape(path: &Path, n_params: f64) -> Option<crate::report::flops::ModelShape> {
    let d = inspect(path).ok()?.dims?;
    let embedding = f64::from(d.vocab) * f64::from(d.d_model);
    Some(crate::report::flops::ModelShape::from_counts(
        n_params, d.n_layers, d.d_model, d.d_attn, d.vocab, embedding, d.tied,
    ))
}

/// A u32 metadata value (None when absent or of another type: ggml aborts on a type mismatch).
///
/// # Safety
/// `ctx` must be a valid gguf_context.
unsafe fn get_u32(ctx: *const llama_cpp_sys_2::gguf_context, key: &str) -> Option<u32> {
    let key = CString::new(key).ok()?;
    let id = llama_cpp_sys_2::gguf_find_key(ctx, key.as_ptr());
    (id >= 0 && llama_cpp_sys_2::gguf_get_kv_type(ctx, id) == llama_cpp_sys_2::GGUF_TYPE_UINT32)
        .then(|| llama_cpp_sys_2::gguf_get_val_u32(ctx, id))
}

/// The dims of an open GGUF whose architecture is `arch`.
///
/// # Safety
/// `ctx` must be a valid gguf_context.
unsafe fn dims(ctx: *const llama_cpp_sys_2::gguf_context, arch: &str) -> Option<GgufDims> {
    let n_layers = get_u32(ctx, &format!("{arch}.block_count"))?;
    let d_model = get_u32(ctx, &format!("{arch}.embedding_length"))?;
    let heads = get_u32(ctx, &format!("{arch}.attention.head_count")).filter(|h| *h > 0)?;
    let head_dim = get_u32(ctx, &format!("{arch}.attention.key_length")).unwrap_or(d_model / heads);
    let tokens = CString::new("tokenizer.ggml.tokens").ok()?;
    let id = llama_cpp_sys_2::gguf_find_key(ctx, tokens.as_ptr());
    if id < 0 || llama_cpp_sys_2::gguf_get_kv_type(ctx, id) != llama_cpp_sys_2::GGUF_TYPE_ARRAY {
        return None;
    }
    let vocab = u32::try_from(llama_cpp_sys_2::gguf_get_arr_n(ctx, id)).ok()?;
    let output = CString::new("output.weight").ok()?;
    let tied = llama_cpp_sys_2::gguf_find_tensor(ctx, output.as_ptr()) < 0;
    Some(GgufDims {
        n_layers,
        d_model,
        d_attn: heads * head_dim,
        vocab,
        tied,
    })
}

/// See [`GgufInfo::weight_bytes`].
///
/// # Safety
/// `ctx` must be a valid gguf_context with `n` tensors.
unsafe fn read_bytes(ctx: *const llama_cpp_sys_2::gguf_context, n: i64) -> u64 {
    let name = |i| CStr::from_ptr(llama_cpp_sys_2::gguf_get_tensor_name(ctx, i)).to_bytes();
    let untied = (0..n).any(|i| name(i) == b"output.weight");
    (0..n)
        .filter(|&i| !(untied && name(i) == b"token_embd.weight"))
        .map(|i| llama_cpp_sys_2::gguf_get_tensor_size(ctx, i) as u64)
        .sum()
}

/// Parse the header of `path` and check the file is long enough for its tensors.
pub fn inspect(path: &Path) -> Result<GgufInfo, OpenError> {
    super::inproc::quiet_llama_logs();
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| OpenError::Model(format!("GGUF model {}: {e}", path.display())))?
        .len();
    let c_path = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| OpenError::Model(format!("{}: path contains a NUL byte", path.display())))?;
    let params = llama_cpp_sys_2::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: valid C string; with no_alloc the reader only parses the header.
    let ctx = unsafe { llama_cpp_sys_2::gguf_init_from_file(c_path.as_ptr(), params) };
    if ctx.is_null() {
        return Err(OpenError::Model(format!(
            "{} has a GGUF magic but its header cannot be parsed (corrupt or truncated file): re-download it",
            path.display()
        )));
    }
    // SAFETY: ctx is a valid gguf_context until gguf_free below.
    let info = unsafe {
        let key = CString::new("general.architecture").expect("static");
        let id = llama_cpp_sys_2::gguf_find_key(ctx, key.as_ptr());
        let architecture = (id >= 0).then(|| {
            CStr::from_ptr(llama_cpp_sys_2::gguf_get_val_str(ctx, id))
                .to_string_lossy()
                .into_owned()
        });
        let n_tensors = llama_cpp_sys_2::gguf_get_n_tensors(ctx);
        let data = llama_cpp_sys_2::gguf_get_data_offset(ctx) as u64;
        let end = (0..n_tensors)
            .map(|i| {
                llama_cpp_sys_2::gguf_get_tensor_offset(ctx, i) as u64
                    + llama_cpp_sys_2::gguf_get_tensor_size(ctx, i) as u64
            })
            .max()
            .unwrap_or(0);
        let dims = architecture.as_deref().and_then(|a| dims(ctx, a));
        let weight_bytes = read_bytes(ctx, n_tensors);
        llama_cpp_sys_2::gguf_free(ctx);
        GgufInfo {
            architecture,
            n_tensors,
            required_bytes: data + end,
            file_bytes,
            dims,
            weight_bytes,
        }
    };
    if info.file_bytes < info.required_bytes {
        return Err(OpenError::Model(format!(
            "{} is truncated: {} bytes, but its {} tensors need {} (re-download it or run scripts/setup.sh)",
            path.display(),
            info.file_bytes,
            info.n_tensors,
            info.required_bytes
        )));
    }
    Ok(info)
}
