//! [`Report`]: the figures of one scenario as a table, printed or written as Markdown.

use std::fmt::Write as _;
use std::time::Duration;

/// One figure: what was measured, its value, and the target it is held to (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// The measured value, formatted.
    pub value: String,
    /// The target, formatted (`-` if none).
    pub target: String,
    /// Whether the value meets the target (`None`: no target).
    pub pass: Option<bool>,
}

/// The figures of one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Scenario number and title, e.g. `1. Database restart under load`.
    pub title: String,
    /// What was done, in one or two sentences.
    pub setup: String,
    /// The figures.
    pub rows: Vec<Row>,
    /// Remarks (what fell short and why).
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report.
    pub fn new(title: impl Into<String>, setup: impl Into<String>) -> Report {
        Report {
            title: title.into(),
            setup: setup.into(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A figure without a target.
    pub fn info(&mut self, figure: impl Into<String>, value: impl ToString) -> &mut Self {
        self.rows.push(Row {
            figure: figure.into(),
            value: value.to_string(),
            target: "-".into(),
            pass: None,
        });
        self
    }

    /// A figure held to a target.
    pub fn check(
        &mut self,
        figure: impl Into<String>,
        value: impl ToString,
        target: impl Into<String>,
        pass: bool,
    ) -> &mut Self {
        self.rows.push(Row {
            figure: figure.into(),
            value: value.to_string(),
            target: target.into(),
            pass: Some(pass),
        });
        self
    }

    /// Adds a remark.
    pub fn note(&mut self, note: impl Into<String>) -> &mut Self {
        self.notes.push(note.into());
        self
    }

    /// Whether every figure with a target meets it.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.pass != Some(false))
    }

    /// The figures that miss their target.
    pub fn failures(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.pass == Some(false)).collect()
    }

    /// The report as Markdown: a heading, the setup, a table, the notes.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### {}\n", self.title);
        let _ = writeln!(out, "{}\n", self.setup);
        let _ = writeln!(out, "| figure | value | target | |");
        let _ = writeln!(out, "|---|---|---|---|");
        for r in &self.rows {
            let mark = match r.pass {
                Some(true) => "ok",
                Some(false) => "**MISSED**",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                cell(&r.figure),
                cell(&r.value),
                cell(&r.target),
                mark
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {}", n.replace('\n', " "));
            }
        }
        out
    }

    /// The report as aligned plain text for the terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {}", self.title);
        let w0 = self.rows.iter().map(|r| r.figure.len()).max().unwrap_or(0);
        let w1 = self.rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
        let w2 = self.rows.iter().map(|r| r.target.len()).max().unwrap_or(0);
        for r in &self.rows {
            let mark = match r.pass {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            };
            let _ = writeln!(
                out,
                "  {:w0$}  {:>w1$}  {:w2$}  {mark}",
                r.figure, r.value, r.target
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// An optional duration in milliseconds, `never` when absent.
pub fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_owned(), ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_marks_missed_targets_and_escapes_pipes() {
        let mut r = Report::new("1. T", "setup");
        r.check("a|b", 3, "<= 2", false).info("c", "x");
        let md = r.markdown();
        assert!(md.contains("| a\\|b | 3 | <= 2 | **MISSED** |"), "{md}");
        assert!(md.contains("| c | x | - |  |"), "{md}");
        assert!(!r.passed());
        assert_eq!(r.failures().len(), 1);
    }
}
