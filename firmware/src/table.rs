//! The one table renderer for people (a leaf): column widths from the
//! content, numbers right-aligned, two spaces between columns, no trailing
//! blanks. Every human-readable listing of the CLI and the query output goes
//! through it (the streaming flow listing of `query` keeps fixed widths, since
//! it cannot look ahead).

use std::io::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows of cells under headers.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are blank, extra cells are dropped).
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.0.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut dyn Write| -> io::Result<()> {
            let mut s = String::new();
            for (i, c) in cells.enumerate() {
                let pad = widths[i].saturating_sub(c.chars().count());
                let last = i + 1 == n;
                match self.headers[i].1 {
                    Align::Right => {
                        s.extend(std::iter::repeat_n(' ', pad));
                        s.push_str(c);
                    }
                    Align::Left => {
                        s.push_str(c);
                        if !last {
                            s.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
                if !last {
                    s.push_str("  ");
                }
            }
            writeln!(out, "{}", s.trim_end())
        };
        line(&mut self.headers.iter().map(|h| h.0.as_str()), out)?;
        for r in &self.rows {
            line(&mut r.iter().map(String::as_str), out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_the_content() {
        let mut t = Table::new(&[("Name", Align::Left), ("Flows", Align::Right), ("Note", Align::Left)]);
        t.row(vec!["a".into(), "1".into(), "x".into()]);
        t.row(vec!["[2001:db8::1]:2055".into(), "123456".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap_or_default();
        let text = String::from_utf8(out).unwrap_or_default();
        assert_eq!(
            text,
            "Name                 Flows  Note\n\
             a                        1  x\n\
             [2001:db8::1]:2055  123456\n"
        );
    }
}
