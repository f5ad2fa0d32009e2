//! Tables printed as aligned columns, CSV or JSON: every audit listing goes through here.

use std::fmt::Write as _;

use crate::cli::Format;

/// A cell: numbers stay numbers in JSON and are rounded only for the terminal.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Int(i64),
    Num(f64),
    Text(String),
    Empty,
}

impl Cell {
    fn terminal(&self) -> String {
        match self {
            Cell::Int(i) => i.to_string(),
            Cell::Num(x) => short_number(*x),
            Cell::Text(t) => crate::audit::rollouts::one_line(t, 80),
            Cell::Empty => String::new(),
        }
    }

    fn plain(&self) -> String {
        match self {
            Cell::Int(i) => i.to_string(),
            Cell::Num(x) => x.to_string(),
            Cell::Text(t) => t.clone(),
            Cell::Empty => String::new(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Cell::Int(i) => (*i).into(),
            Cell::Num(x) => serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, serde_json::Value::Number),
            Cell::Text(t) => t.clone().into(),
            Cell::Empty => serde_json::Value::Null,
        }
    }

    /// A JSON scalar as a cell (objects and arrays as their JSON text).
    pub fn from_json(value: Option<&serde_json::Value>) -> Cell {
        match value {
            None | Some(serde_json::Value::Null) => Cell::Empty,
            Some(serde_json::Value::Number(n)) => n.as_i64().map_or_else(|| Cell::Num(n.as_f64().unwrap_or(f64::NAN)), Cell::Int),
            Some(serde_json::Value::String(s)) => Cell::Text(s.clone()),
            Some(other) => Cell::Text(other.to_string()),
        }
    }
}

impl From<i64> for Cell {
    fn from(v: i64) -> Self {
        Cell::Int(v)
    }
}
impl From<f64> for Cell {
    fn from(v: f64) -> Self {
        Cell::Num(v)
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Text(v)
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Text(v.into())
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Self {
        v.map_or(Cell::Empty, Into::into)
    }
}

/// Four significant digits, without exponent noise for everyday magnitudes.
pub fn short_number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table { headers: headers.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        self.rows.push(row);
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.aligned(),
            Format::Csv => self.csv(),
            Format::Json => {
                let rows: Vec<serde_json::Value> = self
                    .rows
                    .iter()
                    .map(|row| serde_json::Value::Object(self.headers.iter().cloned().zip(row.iter().map(Cell::json)).collect()))
                    .collect();
                serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n"
            }
        }
    }

    fn aligned(&self) -> String {
        let cells: Vec<Vec<String>> = self.rows.iter().map(|r| r.iter().map(Cell::terminal).collect()).collect();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| cells.iter().map(|r| r.get(c).map_or(0, |t| t.chars().count())).chain([self.headers[c].len()]).max().unwrap_or(0))
            .collect();
        let numeric: Vec<bool> =
            (0..self.headers.len()).map(|c| self.rows.iter().all(|r| matches!(r.get(c), Some(Cell::Int(_) | Cell::Num(_) | Cell::Empty) | None))).collect();
        let mut out = String::new();
        let line = |out: &mut String, row: &[String]| {
            let parts: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, t)| {
                    let pad = widths[c].saturating_sub(t.chars().count());
                    if numeric[c] { format!("{}{t}", " ".repeat(pad)) } else { format!("{t}{}", " ".repeat(pad)) }
                })
                .collect();
            let _ = writeln!(out, "{}", parts.join("  ").trim_end());
        };
        line(&mut out, &self.headers);
        line(&mut out, &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
        for row in &cells {
            line(&mut out, row);
        }
        out
    }

    fn csv(&self) -> String {
        let quote = |t: &str| {
            if t.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", t.replace('"', "\"\""))
            } else {
                t.to_string()
            }
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.headers.iter().map(|h| quote(h)).collect::<Vec<_>>().join(","));
        for row in &self.rows {
            let _ = writeln!(out, "{}", row.iter().map(|c| quote(&c.plain())).collect::<Vec<_>>().join(","));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_agree_on_the_same_rows() {
        let mut t = Table::new(["step", "reward", "note"]);
        t.push(vec![Cell::Int(0), Cell::Num(0.123456), "a, \"b\"".into()]);
        t.push(vec![Cell::Int(10), Cell::Empty, "x\ny".into()]);
        let aligned = t.render(Format::Table);
        assert_eq!(aligned.lines().nth(2).unwrap(), "   0  0.1235  a, \"b\"");
        assert!(aligned.lines().nth(3).unwrap().ends_with("x⏎y"), "{aligned}");
        assert_eq!(t.render(Format::Csv), "step,reward,note\n0,0.123456,\"a, \"\"b\"\"\"\n10,,\"x\ny\"\n");
        let json: serde_json::Value = serde_json::from_str(&t.render(Format::Json)).unwrap();
        assert_eq!(json[1], serde_json::json!({"step": 10, "reward": null, "note": "x\ny"}));
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(1234.5678), "1235");
        assert_eq!(short_number(0.00012345), "0.0001234");
        assert_eq!(short_number(5e-7), "5.000e-7");
        assert_eq!(short_number(-2.0), "-2");
    }
}
