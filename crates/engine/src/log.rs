//! One invocation's log: cutting it out of an instance's output stream and framing it as SCF
//! does.
//!
//! An instance's stdout and stderr are one pipe. The shim ends each invocation by writing an
//! end marker, `\0nimbus-end <token> <request id>\n`, where the token is a per-instance secret
//! the shim removes from its environment before user code runs. [`LogCollector`] keeps what
//! comes before the marker (up to a cap) and never the marker itself; the marker may arrive split
//! across reads.
//!
//! ```text
//! START RequestId: <id>
//! <user output, cut at the cap on a character boundary>
//! [nimbus] log truncated: ...          (only when cut)
//! <platform notes, e.g. the timeout>
//! END RequestId: <id>
//! Report RequestId: <id> Duration:12.345ms Memory:128MB MemUsage:9.765625MB
//! ```
//!
//! # Limitations
//!
//! Output written after the marker (a thread or child process the handler left running) is
//! dropped: it belongs to no invocation.

use std::time::Duration;

/// The bytes the shim writes to end an invocation's output.
pub(crate) fn end_marker(token: &str, request_id: &str) -> Vec<u8> {
    format!("\0nimbus-end {token} {request_id}\n").into_bytes()
}

/// Accumulates one invocation's output up to its marker.
#[derive(Debug)]
pub(crate) struct LogCollector {
    marker: Vec<u8>,
    limit: usize,
    kept: Vec<u8>,
    /// Bytes that might be the start of a marker split across reads.
    pending: Vec<u8>,
    truncated: bool,
    marker_seen: bool,
}

impl LogCollector {
    /// Keeps at most `limit` bytes of output that precedes `marker`.
    pub(crate) fn new(marker: Vec<u8>, limit: usize) -> LogCollector {
        LogCollector {
            marker,
            limit,
            kept: Vec::new(),
            pending: Vec::new(),
            truncated: false,
            marker_seen: false,
        }
    }

    /// Ends the output here, as the marker would have: later bytes are ignored. For programs
    /// that write no marker (a custom runtime's `bootstrap`, see `runtime_api.rs`).
    pub(crate) fn end_here(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.keep(&pending);
        self.marker_seen = true;
    }

    /// Whether the end marker has gone by.
    pub(crate) fn marker_seen(&self) -> bool {
        self.marker_seen
    }

    /// Feeds bytes read from the instance's output.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.marker_seen {
            return;
        }
        self.pending.extend_from_slice(bytes);
        if let Some(at) = find(&self.pending, &self.marker) {
            let before = self.pending[..at].to_vec();
            self.keep(&before);
            self.pending.clear();
            self.marker_seen = true;
            return;
        }
        let safe = self
            .pending
            .len()
            .saturating_sub(self.marker.len().saturating_sub(1));
        let settled: Vec<u8> = self.pending.drain(..safe).collect();
        self.keep(&settled);
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The user output gathered so far (as text) and whether it was cut.
    pub(crate) fn finish(mut self) -> (String, bool) {
        let pending = std::mem::take(&mut self.pending);
        self.keep(&pending);
        (
            String::from_utf8_lossy(&self.kept).into_owned(),
            self.truncated,
        )
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The figures of the `Report` line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report {
    pub(crate) duration: Duration,
    pub(crate) memory_mb: u32,
    pub(crate) mem_usage_bytes: u64,
}

/// The user's part of a log, ready to frame.
#[derive(Debug, Default)]
pub(crate) struct Body {
    pub(crate) output: String,
    pub(crate) truncated: bool,
    /// Platform lines placed after the user's output.
    pub(crate) notes: Vec<String>,
}

/// Frames `body` with SCF's platform lines, keeping the whole log within `limit` bytes.
pub(crate) fn frame(request_id: &str, body: Body, report: Report, limit: usize) -> String {
    let start = format!("START RequestId: {request_id}\n");
    let mut tail = String::new();
    for note in &body.notes {
        tail.push_str(note);
        tail.push('\n');
    }
    tail.push_str(&format!("END RequestId: {request_id}\n"));
    tail.push_str(&report_line(request_id, report));

    let notice = format!("[nimbus] log truncated: it exceeded {limit} bytes\n");
    let mut output = body.output;
    if !output.is_empty() && !output.ends_with('\n') {
        output.push('\n');
    }
    let fits = start.len() + output.len() + tail.len() <= limit;
    if body.truncated || !fits {
        let budget = limit.saturating_sub(start.len() + notice.len() + tail.len());
        output.truncate(output.floor_char_boundary(budget));
        if !output.is_empty() && !output.ends_with('\n') {
            // Replace the last character so the notice starts on its own line.
            output.pop();
            output.push('\n');
        }
        output.push_str(&notice);
    }
    let mut log = start;
    log.push_str(&output);
    log.push_str(&tail);
    log
}

fn report_line(request_id: &str, report: Report) -> String {
    let duration_ms = report.duration.as_secs_f64() * 1000.0;
    let usage_mb = report.mem_usage_bytes as f64 / (1024.0 * 1024.0);
    format!(
        "Report RequestId: {request_id} Duration:{duration_ms:.3}ms Memory:{}MB \
         MemUsage:{usage_mb:.6}MB\n",
        report.memory_mb
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector(limit: usize) -> LogCollector {
        LogCollector::new(end_marker("tok", "req"), limit)
    }

    fn report() -> Report {
        Report {
            duration: Duration::from_micros(12_345),
            memory_mb: 128,
            mem_usage_bytes: 10 * 1024 * 1024,
        }
    }

    #[test]
    fn keeps_output_before_marker_only() {
        let mut log = collector(1024);
        log.push(b"hello\n\0nimbus-end tok req\nafter");
        assert!(log.marker_seen());
        assert_eq!(log.finish(), ("hello\n".to_owned(), false));
    }

    #[test]
    fn finds_marker_split_across_reads() {
        let mut log = collector(1024);
        log.push(b"abc\0nimbus-e");
        assert!(!log.marker_seen());
        log.push(b"nd tok r");
        log.push(b"eq\n");
        assert!(log.marker_seen());
        assert_eq!(log.finish().0, "abc");
    }

    #[test]
    fn unmarked_output_ends_where_told() {
        let mut log = LogCollector::new(Vec::new(), 1024);
        log.push(b"init\n");
        log.push(b"handler\n");
        assert!(!log.marker_seen());
        log.end_here();
        log.push(b"later\n");
        assert!(log.marker_seen());
        assert_eq!(log.finish().0, "init\nhandler\n");
    }

    #[test]
    fn marker_of_another_request_is_output() {
        let mut log = collector(1024);
        log.push(b"\0nimbus-end tok other\n");
        assert!(!log.marker_seen());
    }

    #[test]
    fn caps_output_and_flags_truncation() {
        let mut log = collector(4);
        log.push(b"0123456789");
        let (text, truncated) = log.finish();
        assert_eq!(text, "0123");
        assert!(truncated);
    }

    #[test]
    fn frames_log_like_scf() {
        let body = Body {
            output: "hi".to_owned(),
            ..Body::default()
        };
        let log = frame("r1", body, report(), 1 << 20);
        assert_eq!(
            log,
            "START RequestId: r1\nhi\nEND RequestId: r1\n\
             Report RequestId: r1 Duration:12.345ms Memory:128MB MemUsage:10.000000MB\n"
        );
    }

    #[test]
    fn places_notes_before_end_line() {
        let body = Body {
            notes: vec!["timed out".to_owned()],
            ..Body::default()
        };
        let log = frame("r1", body, report(), 1 << 20);
        assert!(log.contains("START RequestId: r1\ntimed out\nEND RequestId: r1\n"));
    }

    #[test]
    fn truncated_log_fits_limit_on_char_boundary() {
        let limit = 300;
        let body = Body {
            output: "é".repeat(400),
            truncated: true,
            notes: Vec::new(),
        };
        let log = frame("r1", body, report(), limit);
        assert!(log.len() <= limit, "{} > {limit}", log.len());
        assert!(log.contains("[nimbus] log truncated"));
        assert!(log.ends_with("MemUsage:10.000000MB\n"));
    }
}
