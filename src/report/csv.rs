//! CSV with the seed's columns first (prompt_type, prompt_idx, prompt_text, runner, output_preview,
//! ttft in seconds with -1.0 on failure), then one column per measured part in milliseconds.
//! Rows are written and flushed one by one as runs finish, so an interrupted benchmark keeps every
//! finished run on disk.

use crate::bench::record::RunRecord;
use std::io::Write;
use std::path::Path;

/// Column names, in order.
pub const COLUMNS: &[&str] = &[
    "prompt_type",
    "prompt_idx",
    "prompt_text",
    "runner",
    "output_preview",
    "ttft",
    "run_idx",
    "ok",
    "error",
    "prompt_tokens",
    "tokenize_ms",
    "prefill_ms",
    "first_sample_ms",
    "detokenize_ms",
    "server_prompt_ms",
    "server_prompt_n",
    "cache_n",
    "api_overhead_ms",
    "generated_tokens",
    "decode_ms_per_token",
    "e2e_ms",
    "first_token",
    "flags",
    "point",
    "first_token_id",
    "connect_ms",
    "connection",
    "stop_reason",
    "max_new_tokens",
    "depth",
    "cached_tokens",
    "turn",
    "send_lateness_ms",
];

/// Characters of generated text kept in `output_preview`.
pub const PREVIEW_CHARS: usize = 60;

/// Quote a field when it holds a comma, quote or line break (RFC 4180), doubling inner quotes.
pub fn escape(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// A free-text cell (prompt, output, error): spreadsheet programs execute cells that start with
/// `=`, `+`, `-` or `@` as formulas, so such text gets a leading `'`; then RFC 4180 escaping.
pub fn text_cell(field: &str) -> String {
    if field.starts_with(['=', '+', '-', '@']) {
        escape(&format!("'{field}"))
    } else {
        escape(field)
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_default()
}

/// The header line.
pub fn header() -> String {
    COLUMNS.join(",") + "\n"
}

/// One record as a CSV line.
pub fn row(r: &RunRecord) -> String {
    let m = r.measurement.as_ref();
    // A one-line preview (line breaks shown as spaces); the full text is in the JSON.
    let preview: String = m
        .map(|m| {
            m.output
                .chars()
                .take(PREVIEW_CHARS)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        })
        .unwrap_or_default();
    let fields = [
        escape(&r.prompt.set),
        r.prompt.idx.to_string(),
        text_cell(&r.prompt_text),
        r.runner.to_string(),
        text_cell(&preview),
        m.map(|m| format!("{:.6}", m.ttft_ms / 1e3))
            .unwrap_or_else(|| "-1.0".to_string()),
        r.run_idx.to_string(),
        r.ok.to_string(),
        text_cell(r.error.as_deref().unwrap_or("")),
        opt(m.and_then(|m| m.prompt_tokens)),
        ms(m.and_then(|m| m.tokenize_ms)),
        ms(m.and_then(|m| m.prefill_ms)),
        ms(m.and_then(|m| m.first_sample_ms)),
        ms(m.and_then(|m| m.detokenize_ms)),
        ms(m.and_then(|m| m.server_prompt_ms)),
        opt(m.and_then(|m| m.server_prompt_n)),
        opt(m.and_then(|m| m.cache_n)),
        ms(m.and_then(|m| m.api_overhead_ms)),
        opt(m.map(|m| m.generated_tokens)),
        ms(m.and_then(|m| m.decode_ms_per_token)),
        ms(m.map(|m| m.e2e_ms)),
        // Control characters shown escaped ("\n"), so the first token stays readable on one line.
        text_cell(
            &m.map(|m| m.first_token.escape_debug().to_string())
                .unwrap_or_default(),
        ),
        escape(&r.flags.join(";")),
        escape(&r.point),
        opt(m.and_then(|m| m.first_token_id)),
        ms(m.and_then(|m| m.connect_ms)),
        escape(m.and_then(|m| m.connection.as_deref()).unwrap_or("")),
        escape(m.and_then(|m| m.stop_reason.as_deref()).unwrap_or("")),
        r.max_new_tokens.to_string(),
        r.depth.to_string(),
        opt(m.and_then(|m| m.cached_tokens)),
        opt(r.turn),
        // Open-loop load runs: how late the send went out (ttft and e2e count from the schedule).
        ms(m.and_then(|m| m.send_lateness_ms)),
    ];
    fields.join(",") + "\n"
}

/// An append-only CSV file, flushed after every row.
pub struct CsvSink {
    file: std::fs::File,
}

impl CsvSink {
    /// Create the file (never over an existing one) and write the header.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut file = super::outputs::create_new(path)?;
        file.write_all(header().as_bytes())?;
        file.flush()?;
        Ok(Self { file })
    }

    /// Append one row and flush it to the OS.
    pub fn append(&mut self, r: &RunRecord) -> std::io::Result<()> {
        self.file.write_all(row(r).as_bytes())?;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, Measurement};

    #[test]
    fn escaping_quotes_commas_and_newlines() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a,b"), "\"a,b\"");
        assert_eq!(escape("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(escape("two\nlines"), "\"two\nlines\"");
        assert_eq!(escape("cr\rhere"), "\"cr\rhere\"");
    }

    #[test]
    fn formula_like_text_is_neutralised() {
        assert_eq!(text_cell("=1+1"), "'=1+1");
        assert_eq!(text_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(text_cell("-2, then"), "\"'-2, then\"");
        assert_eq!(text_cell("fine"), "fine");
    }

    fn record(ok: bool) -> RunRecord {
        let id = crate::bench::record::PromptId::new("short", 2);
        let ctx = crate::bench::record::RunContext {
            prompt: &id,
            text: "Hello, \"world\"\nbye",
            runner: BackendKind::Api,
            point: "",
            max_new_tokens: 10,
            depth: 0,
            turn: None,
        };
        if !ok {
            return RunRecord::failure(&ctx, 1, "HTTP 500: boom");
        }
        let m = Measurement {
            ttft_ms: 1234.5,
            prompt_tokens: Some(7),
            cache_n: Some(0),
            output: " Paris, France\n".into(),
            first_token: " Paris".into(),
            first_token_id: Some(7042),
            send_lateness_ms: Some(0.25),
            ..Measurement::default()
        };
        RunRecord::success(&ctx, 1, m, vec![])
    }

    #[test]
    fn rows_have_one_field_per_column_and_seed_ttft_semantics() {
        let ok = row(&record(true));
        assert!(ok.starts_with(
            "short,2,\"Hello, \"\"world\"\"\nbye\",api,\" Paris, France \",1.234500,"
        ));
        assert!(ok.ends_with(",7042,,,,10,0,,,0.250\n"), "{ok}");
        let bad = row(&record(false));
        assert!(bad.contains(",-1.0,1,false,HTTP 500: boom,"), "{bad}");
        // A parser that honours quotes sees exactly COLUMNS.len() fields.
        for line in [ok, bad] {
            let mut n = 1;
            let mut quoted = false;
            for c in line.trim_end_matches('\n').chars() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => n += 1,
                    _ => {}
                }
            }
            assert_eq!(n, COLUMNS.len());
        }
    }
}
