//! Loading safetensors checkpoints (single file or sharded with `model.safetensors.index.json`)
//! with every tensor checked by name and shape before it is used, so a broken checkpoint fails
//! with the tensor's name instead of a shape error deep inside a matmul.

use super::ModelError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// All tensors of a checkpoint, on the CPU as stored, moved to the device and dtype on `get`.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    files: Vec<PathBuf>,
    device: Device,
    kind: Kind,
}

/// The safetensors files of a checkpoint folder, in shard order.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::file(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::file(&index, "no weight_map"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::file(
        dir,
        "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
    ))
}

impl Weights {
    /// Read every file; tensors are converted lazily in `get`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let files = checkpoint_files(dir)?;
        let mut tensors = HashMap::new();
        for f in &files {
            let list = Tensor::read_safetensors(f).map_err(|e| {
                ModelError::file(
                    f,
                    format!("cannot read safetensors (truncated or corrupt?): {e}"),
                )
            })?;
            tensors.extend(list);
        }
        Ok(Self {
            tensors,
            files,
            device,
            kind,
        })
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn raw(&self, name: &str, shape: &[i64]) -> Result<&Tensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                files: self.file_list(),
            })?;
        if t.size() != shape {
            return Err(ModelError::Shape {
                name: name.to_string(),
                got: t.size(),
                want: shape.to_vec(),
            });
        }
        Ok(t)
    }

    /// Tensor `name`, which must have exactly `shape`, on the device in the compute dtype.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let t = self.raw(name, shape)?;
        Ok(t.f_to_device(self.device)?.f_to_kind(self.kind)?)
    }

    /// Total number of elements in the checkpoint.
    pub fn numel(&self) -> i64 {
        self.tensors.values().map(|t| t.numel() as i64).sum()
    }

    /// The compute dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    fn file_list(&self) -> String {
        self.files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
