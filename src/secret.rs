//! API keys: read from the environment or a file (never from a flag value, which would land in
//! shell history and `ps`), and impossible to print by accident: `Debug` and `Display` redact.

use std::fmt;
use std::path::Path;

/// A credential that only [`Secret::expose`] reveals.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value (trimmed; empty values are no key at all).
    pub fn new(value: &str) -> Option<Self> {
        let v = value.trim();
        (!v.is_empty()).then(|| Secret(v.to_string()))
    }

    /// The value, for the one place that sends it (the Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Where the key came from, for the report (never the key itself).
pub fn api_key(file: Option<&Path>) -> Result<Option<(Secret, String)>, String> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("--api-key-file {}: {e}", f.display()))?;
        return match Secret::new(&text) {
            Some(s) => Ok(Some((s, format!("file {}", f.display())))),
            None => Err(format!("--api-key-file {}: the file is empty", f.display())),
        };
    }
    for var in ["TTFT_API_KEY", "OPENAI_API_KEY"] {
        if let Some(s) = std::env::var(var).ok().and_then(|v| Secret::new(&v)) {
            return Ok(Some((s, format!("environment variable {var}"))));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serde_never_show_the_value() {
        let s = Secret::new(" sk-very-secret \n").unwrap();
        assert_eq!(s.expose(), "sk-very-secret");
        assert!(!format!("{s:?} {s}").contains("very-secret"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert!(Secret::new("  ").is_none());
    }

    #[test]
    fn key_file_wins_and_empty_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("key");
        std::fs::write(&f, "abc\n").unwrap();
        let (k, from) = api_key(Some(&f)).unwrap().unwrap();
        assert_eq!(k.expose(), "abc");
        assert!(from.contains("key"));
        std::fs::write(&f, "").unwrap();
        assert!(api_key(Some(&f)).unwrap_err().contains("empty"));
    }
}
