//! Incremental Server-Sent-Events parser.
//!
//! HTTP delivers the stream in arbitrary chunks: an event can be split across chunks, and one chunk
//! can carry several events. TTFT is "first event carrying token text", so the parser must hand out
//! each event the moment its terminating blank line arrives, never later. It is fed bytes and
//! returns complete events; it holds at most one unfinished line, bounded by `max_line` so a server
//! that never sends a newline cannot exhaust memory.

use thiserror::Error;

/// One complete SSE event: the `data:` lines joined with `\n`, and the `event:` name if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Value of the `event:` field (absent for plain `data:` streams such as llama-server's).
    pub event: Option<String>,
    /// The payload: all `data:` lines of the event joined by `\n`.
    pub data: String,
}

impl SseEvent {
    /// OpenAI-style streams end with a literal `[DONE]` payload instead of closing silently.
    pub fn is_done(&self) -> bool {
        self.data.trim() == "[DONE]"
    }
}

/// Why a byte stream is not a well-formed event stream.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SseError {
    /// One line grew beyond the bound without a newline.
    #[error("SSE line longer than {0} bytes without a newline")]
    LineTooLong(usize),
    /// A line is not valid UTF-8 (SSE is defined as UTF-8 text).
    #[error("SSE stream contains invalid UTF-8")]
    InvalidUtf8,
}

/// Streaming parser state. Feed it with [`SseParser::push`]; call [`SseParser::finish`] at the end
/// of the body to flush an event that was not followed by a blank line.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<String>,
    event: Option<String>,
    max_line: usize,
}

/// Default bound on one SSE line: generous for long token payloads, small enough to be harmless.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl SseParser {
    /// A parser that rejects any single line longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            event: None,
            max_line,
        }
    }

    /// Feed the next chunk of the body; returns the events completed by it, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(ev) = self.take_line(&line)? {
                    out.push(ev);
                }
            } else {
                if self.line.len() >= self.max_line {
                    return Err(SseError::LineTooLong(self.max_line));
                }
                self.line.push(b);
            }
        }
        Ok(out)
    }

    /// The body ended: return a final event that had no terminating blank line, if any.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            if let Some(ev) = self.take_line(&line)? {
                return Ok(Some(ev));
            }
        }
        Ok(self.dispatch())
    }

    fn take_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::InvalidUtf8)?;
        if line.starts_with(':') {
            return Ok(None); // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            _ => {} // id:, retry: and unknown fields carry nothing we measure
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if self.data.is_empty() {
            self.event = None;
            return None;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        Some(SseEvent {
            event: self.event.take(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser, chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut v = Vec::new();
        for c in chunks {
            v.extend(p.push(c).unwrap());
        }
        v.extend(p.finish().unwrap());
        v
    }

    #[test]
    fn event_split_across_chunks_is_emitted_once_complete() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"cont").unwrap().is_empty());
        assert!(p.push(b"ent\":\" Pa").unwrap().is_empty());
        assert!(p.push(b"ris\"}\n").unwrap().is_empty());
        let ev = p.push(b"\n").unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "{\"content\":\" Paris\"}");
    }

    #[test]
    fn several_events_in_one_chunk_keep_order() {
        let mut p = SseParser::default();
        let ev = p
            .push(b"data: a\n\ndata: b\r\n\r\ndata: [DONE]\n\n")
            .unwrap();
        let data: Vec<_> = ev.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["a", "b", "[DONE]"]);
        assert!(ev[2].is_done());
        assert!(!ev[0].is_done());
    }

    #[test]
    fn error_event_name_and_multiline_data_are_kept() {
        let mut p = SseParser::default();
        let ev = all(
            &mut p,
            &[b"event: error\ndata: {\"error\":\n", b"data: 1}\n\n"],
        );
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event.as_deref(), Some("error"));
        assert_eq!(ev[0].data, "{\"error\":\n1}");
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let mut p = SseParser::default();
        let ev = all(&mut p, &[b": keep-alive\n\nid: 7\nretry: 10\ndata:x\n\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "x");
    }

    #[test]
    fn last_event_without_blank_line_is_flushed_by_finish() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: tail").unwrap().is_empty());
        assert_eq!(p.finish().unwrap().unwrap().data, "tail");
    }

    #[test]
    fn overlong_line_is_an_error_not_unbounded_memory() {
        let mut p = SseParser::new(16);
        assert_eq!(p.push(&[b'a'; 17]), Err(SseError::LineTooLong(16)));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: \xff\xfe\n"), Err(SseError::InvalidUtf8));
    }

    #[test]
    fn utf8_split_between_chunks_is_fine() {
        let mut p = SseParser::default();
        let bytes = "data: é\n\n".as_bytes();
        let ev = all(&mut p, &[&bytes[..7], &bytes[7..]]);
        assert_eq!(ev[0].data, "é");
    }
}
