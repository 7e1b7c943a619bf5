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
        llama_cpp_sys_2::gguf_free(ctx);
        GgufInfo {
            architecture,
            n_tensors,
            required_bytes: data + end,
            file_bytes,
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
