//! Prompt files: one prompt per line, blank lines ignored.
//!
//! Prompts are validated before any timing starts, so a bad file costs nothing already measured.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// A named set of prompts ("short", "long", or the stem of a `--prompts` or `--dataset` file).
#[derive(Debug, Clone, Default)]
pub struct PromptSet {
    /// Name shown in the "Prompt Type" column.
    pub name: String,
    /// File the prompts came from (recorded in the report).
    pub path: PathBuf,
    /// The prompts, in file order.
    pub prompts: Vec<String>,
    /// Timed runs of each prompt, when not `--runs` (synthetic sets: one run per distinct prompt).
    pub repeat: Option<u32>,
    /// A prompt for the untimed warm-up runs, when not the set's first (synthetic sets).
    pub warmup: Option<String>,
    /// Per-request facts of a `--dataset` set (None for prompt files and synthetic sets).
    pub dataset: Option<DatasetMeta>,
}

/// What a `--dataset` line adds to its prompt, by prompt index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetMeta {
    /// The line each prompt came from, from 1.
    pub lines: Vec<usize>,
    /// The line's `output_tokens` (that request's max new tokens), when it has one.
    pub output_tokens: Vec<Option<u32>>,
}

impl PromptSet {
    /// Max new tokens of prompt `idx`: its dataset line's `output_tokens`, else `default`
    /// (`--max-new-tokens`).
    pub fn max_new_tokens(&self, idx: usize, default: u32) -> u32 {
        self.dataset
            .as_ref()
            .and_then(|d| d.output_tokens.get(idx).copied().flatten())
            .unwrap_or(default)
    }

    /// Where prompt `idx` came from, for messages: `FILE line N` for a dataset, else the file.
    pub fn origin(&self, idx: usize) -> String {
        match self.dataset.as_ref().and_then(|d| d.lines.get(idx)) {
            Some(line) => format!("{} line {line}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    /// Whether the set's prompts are interchangeable draws of one distribution (synthetic
    /// exact-length texts, a fresh one per run, so no cache can serve them): then the set, not
    /// each prompt, is the case its statistics describe.
    pub fn is_one_case(&self) -> bool {
        self.repeat.is_some()
    }
}

/// Why a prompt file cannot be used.
#[derive(Debug, Error)]
pub enum PromptError {
    /// The file does not exist or cannot be read.
    #[error("prompt file {path}: {source} (pass another file with --prompts)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not UTF-8 text.
    #[error(
        "prompt file {path} is not UTF-8 text (invalid byte at offset {offset}); save it as UTF-8"
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// Only blank lines.
    #[error("prompt file {path} has no prompts (one prompt per line, blank lines are ignored)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Split file text into prompts: one per line, surrounding whitespace trimmed, blank lines skipped.
pub fn parse_prompts(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Read and validate one prompt file.
pub fn load_prompt_set(name: &str, path: &Path) -> Result<PromptSet, PromptError> {
    let bytes = std::fs::read(path).map_err(|source| PromptError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| PromptError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    let prompts = parse_prompts(&text);
    if prompts.is_empty() {
        return Err(PromptError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(PromptSet {
        name: name.to_string(),
        path: path.to_path_buf(),
        prompts,
        repeat: None,
        warmup: None,
        dataset: None,
    })
}

/// The set name for a `--prompts` argument: `NAME=FILE` gives NAME; a bare FILE gives its stem
/// without a trailing `_prompts` (so `data/long_prompts.txt` is "long").
pub fn split_prompt_arg(arg: &str) -> (String, PathBuf) {
    if let Some((name, file)) = arg.split_once('=') {
        if !name.is_empty() && !name.contains('/') {
            return (name.to_string(), PathBuf::from(file));
        }
    }
    let path = PathBuf::from(arg);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_string());
    let name = stem.strip_suffix("_prompts").unwrap_or(&stem).to_string();
    (name, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn blank_lines_are_skipped_and_lines_trimmed() {
        let p = parse_prompts("first\n\n   \n  second  \r\nthird");
        assert_eq!(p, ["first", "second", "third"]);
    }

    #[test]
    fn empty_missing_and_non_utf8_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n  \n").unwrap();
        let e = load_prompt_set("x", &empty).unwrap_err();
        assert!(matches!(e, PromptError::Empty { .. }));
        assert!(e.to_string().contains("empty.txt"));

        let missing = dir.path().join("missing.txt");
        let e = load_prompt_set("x", &missing).unwrap_err();
        assert!(matches!(e, PromptError::Read { .. }));
        assert!(e.to_string().contains("missing.txt"));

        let bin = dir.path().join("bin.txt");
        std::fs::File::create(&bin)
            .unwrap()
            .write_all(b"ok line\n\xff\xfe")
            .unwrap();
        let e = load_prompt_set("x", &bin).unwrap_err();
        assert!(matches!(e, PromptError::NotUtf8 { offset: 8, .. }), "{e}");
    }

    #[test]
    fn prompt_set_names_come_from_arg_or_stem() {
        assert_eq!(split_prompt_arg("data/long_prompts.txt").0, "long");
        assert_eq!(split_prompt_arg("my.txt").0, "my");
        let (n, p) = split_prompt_arg("code=prompts/code.txt");
        assert_eq!(n, "code");
        assert_eq!(p, PathBuf::from("prompts/code.txt"));
    }

    #[test]
    fn data_prompt_files_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for f in ["data/short_prompts.txt", "data/long_prompts.txt"] {
            let set = load_prompt_set("x", &root.join(f)).unwrap();
            assert!(set.prompts.len() >= 3, "{f}");
        }
    }
}
