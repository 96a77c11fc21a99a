//! Plain-text tables: columns padded to their widest cell, numbers right-aligned.

/// A table with a header row.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    left_only: bool,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
            left_only: false,
        }
    }

    /// Aligns every cell to the left (tables of mixed text and numbers).
    pub fn left_aligned(mut self) -> Table {
        self.left_only = true;
        self
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with two spaces between columns; cells that look like numbers are
    /// right-aligned.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let numeric = |s: &str| {
            let t = s.trim_end_matches(['x', '%', 's']);
            !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || ",.-".contains(c))
        };
        let line = |cells: &[String], header: bool| {
            let mut out = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width.saturating_sub(cell.chars().count());
                if i > 0 {
                    out.push_str("  ");
                }
                if !header && !self.left_only && numeric(cell) {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    if i + 1 < columns {
                        out.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.trim_end().to_owned()
        };
        let mut text = line(&self.header, true);
        text.push('\n');
        let rule: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
        text.push_str(&"-".repeat(rule));
        text.push('\n');
        for row in &self.rows {
            text.push_str(&line(row, false));
            text.push('\n');
        }
        text
    }
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    if !rounded.is_finite() {
        return "-".to_owned();
    }
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Milliseconds with a precision that suits the value.
pub fn millis(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_numbers_align_right() {
        let mut t = Table::new(&["mode", "q/s"]);
        t.row(vec!["pooled".into(), thousands(12345.6)]);
        t.row(vec!["unpooled".into(), thousands(98.0)]);
        let expected = format!(
            "mode      q/s\n{}\npooled    12,346\nunpooled      98\n",
            "-".repeat(16)
        );
        assert_eq!(t.render(), expected);
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(millis(0.0421), "0.042");
    }
}
