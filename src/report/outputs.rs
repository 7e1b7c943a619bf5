//! Output files: every name is made here, from one stem per run, and no file is ever written over.
//! Two runs started in the same second into one folder get `ttft-STAMP` and `ttft-STAMP-2`: the
//! stem is claimed by creating its JSON-lines file with `create_new`, which only one process can
//! win, and every other file of the run is created the same way.
//!
//! The finished-report formats sit behind [`Exporter`]: one file per format, all rendered from the
//! same [`Document`], so they cannot disagree.

use super::env::Environment;
use super::Report;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Create `path` for writing; an existing file is an error, never truncated.
pub fn create_new(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Write `bytes` to a new file at `path`.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_new(path)?.write_all(bytes)
}

/// The names of one run's files: `DIR/ttft-STAMP[-N].EXT`.
#[derive(Debug, Clone)]
pub struct OutputNames {
    dir: PathBuf,
    stem: String,
}

/// Suffixes tried after the bare stamp before giving up.
const MAX_SUFFIX: u32 = 1000;

impl OutputNames {
    /// Claim a stem in `dir` for a run started at `stamp` (`%Y%m%d-%H%M%S`), returning the names
    /// and the claimed JSON-lines file, opened for writing.
    pub fn claim(dir: &Path, stamp: &str) -> std::io::Result<(Self, File)> {
        for n in 1..=MAX_SUFFIX {
            let stem = if n == 1 {
                format!("ttft-{stamp}")
            } else {
                format!("ttft-{stamp}-{n}")
            };
            let names = Self {
                dir: dir.to_path_buf(),
                stem,
            };
            match create_new(&names.file("jsonl")) {
                Ok(f) => return Ok((names, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!(
            "{MAX_SUFFIX} runs of ttft-{stamp} already in {}",
            dir.display()
        )))
    }

    /// `DIR/STEM.EXT`.
    pub fn file(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.stem))
    }

    /// `DIR/STEM-PART.EXT` (server logs, plots).
    pub fn part(&self, part: &str, ext: &str) -> PathBuf {
        let safe: String = part
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{}-{safe}.{ext}", self.stem))
    }
}

/// What every exporter renders from.
pub struct Document<'a> {
    /// The measurements.
    pub report: &'a Report,
    /// The machine.
    pub env: &'a Environment,
    /// The resolved settings with the warnings, as recorded.
    pub settings: &'a serde_json::Value,
    /// RFC 3339 start time.
    pub started_at: &'a str,
    /// Show the TTFT parts.
    pub breakdown: bool,
    /// One row per prompt.
    pub per_prompt: bool,
}

/// One finished-report format.
pub trait Exporter {
    /// What it is, for messages ("JSON", "Markdown").
    fn label(&self) -> &'static str;
    /// Its bytes.
    fn render(&self, doc: &Document) -> Vec<u8>;
}

/// The JSON document.
pub struct JsonExporter;

impl Exporter for JsonExporter {
    fn label(&self) -> &'static str {
        "JSON"
    }
    fn render(&self, doc: &Document) -> Vec<u8> {
        super::json::render(doc.report, doc.env, doc.settings, doc.started_at)
    }
}

/// The Markdown summary.
pub struct MarkdownExporter;

impl Exporter for MarkdownExporter {
    fn label(&self) -> &'static str {
        "Markdown"
    }
    fn render(&self, doc: &Document) -> Vec<u8> {
        super::markdown::render(doc.report, doc.breakdown, doc.per_prompt)
    }
}

/// Render `exporter` and write it to a new file at `path`.
pub fn export(exporter: &dyn Exporter, doc: &Document, path: &Path) -> Result<(), String> {
    write_new(path, &exporter.render(doc)).map_err(|e| {
        format!(
            "cannot write the {} {}: {e}",
            exporter.label(),
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_in_the_same_second_gets_a_suffix_and_nothing_is_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let (a, _fa) = OutputNames::claim(d.path(), "20260101-000000").unwrap();
        let (b, _fb) = OutputNames::claim(d.path(), "20260101-000000").unwrap();
        assert!(a.file("json").ends_with("ttft-20260101-000000.json"));
        assert!(b.file("json").ends_with("ttft-20260101-000000-2.json"));
        assert!(b
            .part("bars-long/x", "svg")
            .ends_with("ttft-20260101-000000-2-bars-long_x.svg"));
        write_new(&a.file("csv"), b"x").unwrap();
        assert!(write_new(&a.file("csv"), b"y").is_err());
        assert_eq!(std::fs::read(a.file("csv")).unwrap(), b"x");
    }
}
