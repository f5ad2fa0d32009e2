//! Reading the rows of a dataset file: JSONL, a JSON array, either gzip-compressed (`.gz`), or
//! Parquet (how Hugging Face stores datasets), each row as a JSON value with its 1-based row
//! number.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::ImportError;

/// A row, or why it could not be read.
pub type Row = (usize, Result<Value, String>);

pub fn read_rows(path: &Path) -> Result<Vec<Row>, ImportError> {
    let read_err = |source| ImportError::Read { path: path.into(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".parquet") {
        return parquet_rows(path);
    }
    let text = if name.ends_with(".gz") {
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(file).read_to_string(&mut text).map_err(read_err)?;
        text
    } else {
        std::fs::read_to_string(path).map_err(read_err)?
    };
    text_rows(path, &text)
}

/// JSONL (one value per non-blank line) or one JSON array; a leading UTF-8 byte-order mark
/// (written by editors on Windows, not allowed in JSON) is skipped.
pub fn text_rows(path: &Path, text: &str) -> Result<Vec<Row>, ImportError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        let all: Vec<Value> = serde_json::from_str(text).map_err(|source| ImportError::Json { path: path.into(), source })?;
        return Ok(all.into_iter().enumerate().map(|(i, v)| (i + 1, Ok(v))).collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| format!("not valid JSON: {e}"))))
        .collect())
}

fn parquet_rows(path: &Path) -> Result<Vec<Row>, ImportError> {
    use parquet::file::reader::SerializedFileReader;
    let file = std::fs::File::open(path).map_err(|source| ImportError::Read { path: path.into(), source })?;
    let reader = SerializedFileReader::new(file).map_err(|e| ImportError::Parquet { path: path.into(), message: e.to_string() })?;
    Ok(reader
        .into_iter()
        .enumerate()
        .map(|(i, row)| (i + 1, row.map(|r| r.to_json_value()).map_err(|e| format!("unreadable parquet row: {e}"))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let rows = text_rows(Path::new("x.jsonl"), "\u{feff}{\"a\": 1}\n{\"a\": 2}\n").unwrap();
        let got: Vec<(usize, Option<i64>)> = rows.iter().map(|(i, r)| (*i, r.clone().unwrap()["a"].as_i64())).collect();
        assert_eq!(got, [(1, Some(1)), (2, Some(2))]);
        let rows = text_rows(Path::new("x.json"), "\u{feff}[{\"a\": 1}]").unwrap();
        assert_eq!(rows.len(), 1);
    }
}
