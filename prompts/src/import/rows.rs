//! Reading the rows of a dataset file: JSONL, a JSON array, either gzip-compressed (`.gz`), or
//! Parquet (how Hugging Face stores datasets), each row as a JSON value with its 1-based row
//! number.

use std::io::{BufRead, BufReader, Read};
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
    let mut text = String::new();
    open_text(path)?.read_to_string(&mut text).map_err(read_err)?;
    text_rows(path, &text)
}

/// Opens a text file, decompressed when its name ends in `.gz` (any case), so that every command
/// reading JSONL reads what `prompts import` reads. A `.gz` file that does not start with gzip's
/// magic bytes is [`ImportError::NotGzip`]: the decoder itself only says "invalid gzip header"
/// or, for a short file, "unexpected end of file". A leading UTF-8 byte-order mark (written by
/// editors on Windows, not allowed in JSON) is skipped.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>, ImportError> {
    let read_err = |source| ImportError::Read { path: path.into(), source };
    let mut file = BufReader::new(std::fs::File::open(path).map_err(read_err)?);
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut text: Box<dyn BufRead> = if !name.ends_with(".gz") {
        Box::new(file)
    } else if file.fill_buf().map_err(read_err)?.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        return Err(ImportError::NotGzip { path: path.into() });
    };
    if text.fill_buf().map_err(read_err)?.starts_with("\u{feff}".as_bytes()) {
        text.consume(3);
    }
    Ok(text)
}

/// Reads a JSONL file (gzip-compressed when its name ends in `.gz`, as [`open_text`] reads it)
/// into `(1-based line, record)` pairs, blank lines skipped, integers beyond 64 bits kept exact
/// ([`dllm_verifier::exact_json`]). A bad record is an error naming the file and line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>, ImportError> {
    let mut items = Vec::new();
    for (i, line) in open_text(path)?.lines().enumerate() {
        let line = line.map_err(|source| ImportError::ReadLine { path: path.into(), line: i + 1, source })?;
        if line.trim().is_empty() {
            continue;
        }
        let item = dllm_verifier::exact_json::from_str(&line).map_err(|source| ImportError::Record { path: path.into(), line: i + 1, source })?;
        items.push((i + 1, item));
    }
    Ok(items)
}

/// JSONL (one value per non-blank line) or one JSON array; a leading UTF-8 byte-order mark
/// (written by editors on Windows, not allowed in JSON) is skipped.
pub fn text_rows(path: &Path, text: &str) -> Result<Vec<Row>, ImportError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        let all: Vec<Value> = dllm_verifier::exact_json::from_str(text).map_err(|source| ImportError::Json { path: path.into(), source })?;
        return Ok(all.into_iter().enumerate().map(|(i, v)| (i + 1, Ok(v))).collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, dllm_verifier::exact_json::from_str(l).map_err(|e| format!("not valid JSON: {e}"))))
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

    #[test]
    fn gz_files_are_decompressed_and_a_false_gz_is_named() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("t.jsonl.GZ");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
        enc.write_all(b"{\"a\": 1}\n").unwrap();
        enc.finish().unwrap();
        let mut text = String::new();
        open_text(&gz).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"a\": 1}\n");
        for (name, bytes) in [("plain.gz", &b"{\"a\": 1}\n"[..]), ("empty.gz", b""), ("one.gz", b"\x1f")] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = open_text(&path).err().unwrap().to_string();
            assert_eq!(err, format!("{}: not gzip-compressed, although its name ends in .gz", path.display()));
        }
    }
}
