//! The execution report: DataHub's `infos`/`errors` lines and the summary text GMS shows in the UI
//! (`reference/peer-executor.md` §2.4), and capping it under the GMS payload limit (§2.5, done
//! better: the tail of the logs is kept and the structured report goes first).

use std::collections::VecDeque;

use chrono::{Timelike, Utc};

use crate::pyfmt::{json_dumps_indent2, pformat_report};
use crate::status::Status;

/// Lines kept of the child's output (DataHub's `max_log_lines`).
pub const MAX_LOG_LINES: usize = 2000;
/// Characters kept of one output line.
pub const MAX_LINE_CHARS: usize = 4096;
/// DataHub's default `ACRYL_EXECUTOR_GMS_PAYLOAD_MAX_LENGTH`.
pub const DEFAULT_PAYLOAD_MAX_LENGTH: usize = 15_368_520;

/// `infos` and `errors` of one execution, with DataHub's timestamps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionReport {
    pub exec_id: String,
    pub infos: Vec<String>,
    pub errors: Vec<String>,
}

impl ExecutionReport {
    pub fn new(exec_id: &str) -> Self {
        ExecutionReport { exec_id: exec_id.to_owned(), ..Default::default() }
    }

    pub fn info(&mut self, msg: impl AsRef<str>) {
        let line = format!("{} INFO: {}", timestamp(), msg.as_ref());
        tracing::info!(exec_id = %self.exec_id, "{line}");
        self.infos.push(line);
    }

    pub fn error(&mut self, msg: impl AsRef<str>) {
        let line = format!("{} ERROR: {}", timestamp(), msg.as_ref());
        tracing::error!(exec_id = %self.exec_id, "{line}");
        self.errors.push(line);
    }
}

/// Python's `str(datetime.utcnow())`: microseconds omitted when zero.
pub fn timestamp() -> String {
    let now = Utc::now();
    if now.nanosecond() / 1000 == 0 {
        now.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        now.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

/// The child's output, kept as DataHub's `LogHolder` does: the last lines, each cut to a length.
#[derive(Debug, Clone, Default)]
pub struct LogTail {
    lines: VecDeque<String>,
    dropped: bool,
}

impl LogTail {
    /// Adds one (already masked) line without its newline.
    pub fn push(&mut self, line: &str) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // A line of at most MAX_LINE_CHARS bytes has at most that many characters.
        let cut = if line.len() <= MAX_LINE_CHARS { None } else { line.char_indices().nth(MAX_LINE_CHARS) };
        let mut l = String::with_capacity(line.len().min(MAX_LINE_CHARS * 4) + 17);
        match cut {
            Some((cut, _)) => {
                l.push_str(&line[..cut]);
                l.push_str(" [...truncated]");
            }
            None => l.push_str(line),
        }
        l.push('\n');
        if self.lines.len() == MAX_LOG_LINES {
            self.lines.pop_front();
            self.dropped = true;
        }
        self.lines.push_back(l);
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The text DataHub shows: the lines, prefixed when earlier ones were dropped.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.dropped {
            s.push_str("[earlier logs truncated...]\n");
        }
        for l in &self.lines {
            s.push_str(l);
        }
        s
    }
}

/// The parts of a completion report, rendered by [`render_report`].
#[derive(Debug, Clone)]
pub struct ReportParts<'a> {
    pub task_name: &'a str,
    pub status: Status,
    pub report: &'a ExecutionReport,
    pub structured: Option<&'a str>,
    pub logs: &'a str,
}

/// DataHub's summary text (`ExecutionResult.get_summary`).
fn summary(parts: &ReportParts<'_>, structured: Option<&str>, logs: &str) -> String {
    let verdict = match parts.status {
        Status::Failure => "Execution finished with errors.",
        Status::Cancelled => "Execution was cancelled by request.",
        Status::Timeout => "Execution timed out.",
        Status::Running | Status::Success => "Execution finished successfully!",
    };
    let mut s = format!("~~~~ Execution Summary - {} ~~~~\n{verdict}\n", parts.task_name);
    s.push_str(&pformat_report(&parts.report.exec_id, &parts.report.infos, &parts.report.errors));
    s.push_str("\n\n");
    if let Some(sr) = structured {
        s.push_str("~~~~ Ingestion Report ~~~~\n");
        match serde_json::from_str::<serde_json::Value>(sr) {
            Ok(v) => s.push_str(&json_dumps_indent2(&v)),
            Err(_) => s.push_str(sr),
        }
        s.push_str("\n\n");
    }
    s.push_str("~~~~ Ingestion Logs ~~~~\n");
    s.push_str(logs);
    s.push('\n');
    s
}

/// Renders the report under `max_chars` characters. Returns the report and the structured report
/// that still fits. The structured report is dropped first; then the head of the logs; the status
/// never depends on the size.
pub fn render_report(parts: &ReportParts<'_>, max_chars: usize) -> (String, Option<String>) {
    let full = summary(parts, parts.structured, parts.logs);
    let sr_len = parts.structured.map(|s| s.chars().count()).unwrap_or(0);
    if full.chars().count() + sr_len <= max_chars {
        return (full, parts.structured.map(str::to_owned));
    }
    let mut prefix = String::new();
    if parts.structured.is_some() {
        prefix = format!(
            "WARNING: {} report and structured report exceeded the combined limit of {max_chars} chars, so the structured report was removed.\n",
            parts.report.exec_id
        );
    }
    let without_logs = summary(parts, None, "");
    let fixed = prefix.chars().count() + without_logs.chars().count();
    let log_chars = parts.logs.chars().count();
    if fixed + log_chars <= max_chars {
        return (format!("{prefix}{}", summary(parts, None, parts.logs)), None);
    }
    let note = format!(
        "WARNING: {} report exceeded limit of {max_chars} chars; the head of the logs was cut to keep the tail.\n",
        parts.report.exec_id
    );
    let marker = "[earlier logs truncated to fit the GMS payload limit...]\n";
    let budget = max_chars.saturating_sub(fixed + note.chars().count() + marker.chars().count());
    let tail = char_tail(parts.logs, budget);
    let text = format!("{note}{prefix}{}", summary(parts, None, &format!("{marker}{tail}")));
    // Only a pathological summary (huge infos) gets here still too long: keep its tail too.
    if text.chars().count() > max_chars {
        return (char_tail(&text, max_chars).to_owned(), None);
    }
    (text, None)
}

/// The last `n` characters of `s`.
pub fn char_tail(s: &str, n: usize) -> &str {
    let total = s.chars().count();
    if total <= n {
        return s;
    }
    match s.char_indices().nth(total - n) {
        Some((i, _)) => &s[i..],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ExecutionReport {
        ExecutionReport {
            exec_id: "e1".into(),
            infos: vec!["2026-12-03 18:07:17.369057 INFO: Starting execution for task with name=RUN_INGEST".into()],
            errors: vec![],
        }
    }

    #[test]
    fn summary_has_datahubs_sections() {
        let r = report();
        let parts = ReportParts {
            task_name: "RUN_INGEST",
            status: Status::Success,
            report: &r,
            structured: Some(r#"{"cli": {"v": 1}}"#),
            logs: "line 1\n",
        };
        let (text, sr) = render_report(&parts, DEFAULT_PAYLOAD_MAX_LENGTH);
        assert_eq!(sr.as_deref(), Some(r#"{"cli": {"v": 1}}"#));
        assert_eq!(
            text,
            "~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished successfully!\n{'exec_id': 'e1', 'infos': ['2026-12-03 18:07:17.369057 INFO: Starting execution for task with name=RUN_INGEST'], 'errors': []}\n\n~~~~ Ingestion Report ~~~~\n{\n  \"cli\": {\n    \"v\": 1\n  }\n}\n\n~~~~ Ingestion Logs ~~~~\nline 1\n\n"
        );
    }

    #[test]
    fn capping_drops_the_structured_report_then_keeps_the_log_tail() {
        let r = report();
        let logs: String = (0..5000).map(|i| format!("log line {i}\n")).collect();
        let sr = format!("{{\"big\": \"{}\"}}", "x".repeat(1000));
        let parts = ReportParts {
            task_name: "RUN_INGEST",
            status: Status::Failure,
            report: &r,
            structured: Some(&sr),
            logs: &logs,
        };
        let (text, kept) = render_report(&parts, 20_000);
        assert!(kept.is_none());
        assert!(text.chars().count() <= 20_000);
        assert!(text.contains("structured report was removed"));
        assert!(text.contains("log line 4999\n"), "tail kept");
        assert!(!text.contains("log line 1\n"), "head dropped");
        assert!(text.starts_with("WARNING: e1 report exceeded limit"));
    }

    #[test]
    fn log_tail_keeps_the_last_lines_and_cuts_long_ones() {
        let mut t = LogTail::default();
        for i in 0..(MAX_LOG_LINES + 5) {
            t.push(&format!("l{i}"));
        }
        t.push(&"é".repeat(MAX_LINE_CHARS + 10));
        let text = t.text();
        assert!(text.starts_with("[earlier logs truncated...]\nl6\n"));
        assert!(text.ends_with(" [...truncated]\n"));
    }
}
