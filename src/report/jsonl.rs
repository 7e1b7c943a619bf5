//! JSON lines: one complete JSON object per finished run, appended and flushed immediately, so an
//! interrupted or crashed benchmark leaves every finished run machine-readable on disk.

use crate::bench::record::RunRecord;
use std::io::Write;
use std::path::Path;

/// An append-only JSON-lines file.
pub struct JsonlSink {
    file: std::fs::File,
}

impl JsonlSink {
    /// Append to an already created file (the one `OutputNames::claim` opened).
    pub fn new(file: std::fs::File) -> Self {
        Self { file }
    }

    /// Create the file (never over an existing one).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            file: super::outputs::create_new(path)?,
        })
    }

    /// Append one record as a line and flush it.
    pub fn append(&mut self, r: &RunRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }
}
