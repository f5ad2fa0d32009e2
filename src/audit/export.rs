//! `audit export`: a run's rollouts, steps, prompts or test results as JSONL, CSV or Parquet
//! (for pandas, DuckDB, Datasette). JSON-valued columns (step maps, reward components, hack
//! signals) are exported as JSON text in CSV and Parquet, as JSON in JSONL; a step's metrics
//! become one column each in CSV and Parquet (`seconds.update`), stay one object in JSONL.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::basic::{ConvertedType, Repetition, Type as PhysicalType};
use parquet::schema::types::Type as ParquetType;

use super::output::{Cell, Table};
use super::{resolve, Opened, RunInfo};
use crate::cli::{ExportArgs, ExportFormat, ExportTable, Format};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Type {
    Int,
    Float,
    Text,
    /// Text holding JSON: a value in JSONL.
    Json,
}

/// The columns of each table and the SQL that reads them (current attempt only).
fn query(table: ExportTable, store: &Opened) -> (Vec<(&'static str, Type)>, String) {
    use Type::*;
    match table {
        ExportTable::Rollouts => {
            let pieces = if store.has_prompts() { "pieces" } else { "NULL" };
            (
                vec![
                    ("id", Int), ("step", Int), ("attempt", Int), ("prompt_id", Text), ("sample", Int), ("seed", Text), ("completion", Text),
                    ("tokens", Int), ("reward", Float), ("verdict", Text), ("reward_components", Json), ("hack_signals", Json), ("step_map", Json),
                    ("pieces", Json),
                ],
                format!(
                    "SELECT id, step, attempt, prompt_id, sample, seed, completion, tokens, reward, verdict, reward_components, hack_signals, \
                     step_map, {pieces} FROM rollouts WHERE run_id = ?1 AND superseded = 0 ORDER BY id"
                ),
            )
        }
        ExportTable::Steps => (
            vec![("step", Int), ("attempt", Int), ("at", Text), ("metrics", Json)],
            "SELECT step, attempt, at, metrics FROM steps WHERE run_id = ?1 AND superseded = 0 ORDER BY step".into(),
        ),
        ExportTable::Prompts => (
            vec![("prompt_id", Text), ("source", Text), ("kind", Text), ("text", Text)],
            if store.has_prompts() {
                "SELECT prompt_id, source, kind, text FROM prompts WHERE run_id = ?1 ORDER BY prompt_id".into()
            } else {
                "SELECT DISTINCT prompt_id, '', '', '' FROM rollouts WHERE run_id = ?1 ORDER BY prompt_id".into()
            },
        ),
        ExportTable::Tests => (
            vec![("rollout_id", Int), ("step", Int), ("prompt_id", Text), ("test", Int), ("verdict", Text), ("seconds", Float), ("stdout", Text), ("stderr", Text)],
            "SELECT t.rollout_id, r.step, r.prompt_id, t.test, t.verdict, t.seconds, t.stdout, t.stderr FROM test_results t \
             JOIN rollouts r ON r.id = t.rollout_id WHERE r.run_id = ?1 AND r.superseded = 0 ORDER BY t.rollout_id, t.test"
                .into(),
        ),
    }
}

/// A column's values, `None` for SQL NULL.
enum Values {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

struct Columns {
    names: Vec<String>,
    types: Vec<Type>,
    values: Vec<Values>,
    rows: usize,
}

fn read(store: &Opened, run: &RunInfo, table: ExportTable) -> anyhow::Result<Columns> {
    let (columns, sql) = query(table, store);
    let mut values: Vec<Values> = columns
        .iter()
        .map(|(_, t)| match t {
            Type::Int => Values::Int(Vec::new()),
            Type::Float => Values::Float(Vec::new()),
            Type::Text | Type::Json => Values::Text(Vec::new()),
        })
        .collect();
    let mut stmt = store.conn.prepare(&sql)?;
    let mut rows = stmt.query([run.id])?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        for (i, column) in values.iter_mut().enumerate() {
            match column {
                Values::Int(v) => v.push(row.get(i)?),
                Values::Float(v) => v.push(row.get(i)?),
                Values::Text(v) => v.push(row.get(i)?),
            }
        }
        n += 1;
    }
    Ok(Columns { names: columns.iter().map(|c| c.0.to_string()).collect(), types: columns.iter().map(|c| c.1).collect(), values, rows: n })
}

impl Columns {
    /// The steps table with its `metrics` object spread into one column per (dotted) key:
    /// numbers as floats, anything else as text.
    fn spread_metrics(self) -> Columns {
        let Some(m) = self.names.iter().position(|n| *n == "metrics") else { return self };
        let Values::Text(texts) = &self.values[m] else { return self };
        let rows: Vec<std::collections::BTreeMap<String, serde_json::Value>> = texts
            .iter()
            .map(|t| {
                let mut flat = std::collections::BTreeMap::new();
                if let Some(value) = t.as_deref().and_then(|t| serde_json::from_str(t).ok()) {
                    super::steps::flatten("", &value, &mut flat);
                }
                flat
            })
            .collect();
        let keys: std::collections::BTreeSet<String> = rows.iter().flat_map(|r| r.keys().cloned()).collect();
        let mut names: Vec<String> = Vec::new();
        let mut types = Vec::new();
        let mut values = Vec::new();
        for (c, (name, values_c)) in self.names.iter().zip(self.values).enumerate() {
            if c != m {
                names.push(name.clone());
                types.push(self.types[c]);
                values.push(values_c);
            }
        }
        for key in keys {
            let numeric = rows.iter().all(|r| r.get(&key).is_none_or(|v| v.is_number() || v.is_null()));
            names.push(key.clone());
            if numeric {
                types.push(Type::Float);
                values.push(Values::Float(rows.iter().map(|r| r.get(&key).and_then(serde_json::Value::as_f64)).collect()));
            } else {
                types.push(Type::Text);
                values.push(Values::Text(rows.iter().map(|r| r.get(&key).map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))).collect()));
            }
        }
        Columns { names, types, values, rows: self.rows }
    }

    fn cell(&self, column: usize, row: usize) -> Cell {
        match &self.values[column] {
            Values::Int(v) => v[row].into(),
            Values::Float(v) => v[row].into(),
            Values::Text(v) => v[row].clone().into(),
        }
    }

    fn json_row(&self, row: usize) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for (c, name) in self.names.iter().enumerate() {
            let value = match (&self.values[c], self.types[c]) {
                (Values::Int(v), _) => v[row].map_or(serde_json::Value::Null, Into::into),
                (Values::Float(v), _) => v[row].and_then(serde_json::Number::from_f64).map_or(serde_json::Value::Null, serde_json::Value::Number),
                (Values::Text(v), Type::Json) => v[row].as_deref().map_or(serde_json::Value::Null, |t| serde_json::from_str(t).unwrap_or_else(|_| t.into())),
                (Values::Text(v), _) => v[row].clone().map_or(serde_json::Value::Null, Into::into),
            };
            object.insert(name.clone(), value);
        }
        serde_json::Value::Object(object)
    }

    fn write_parquet(&self, file: std::fs::File, table: &str) -> anyhow::Result<()> {
        // Built, not parsed from text: metric names come from the run (`pass@1`, a source
        // named `lcb(v5)` or `taco apps`), and the schema language would misread them.
        let fields = self
            .names
            .iter()
            .zip(&self.types)
            .map(|(name, t)| {
                let (physical, converted) = match t {
                    Type::Int => (PhysicalType::INT64, ConvertedType::NONE),
                    Type::Float => (PhysicalType::DOUBLE, ConvertedType::NONE),
                    Type::Text | Type::Json => (PhysicalType::BYTE_ARRAY, ConvertedType::UTF8),
                };
                let field = ParquetType::primitive_type_builder(name, physical)
                    .with_repetition(Repetition::OPTIONAL)
                    .with_converted_type(converted)
                    .build()?;
                Ok(Arc::new(field))
            })
            .collect::<parquet::errors::Result<Vec<_>>>()?;
        let schema = Arc::new(ParquetType::group_type_builder(table).with_fields(fields).build()?);
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build());
        let mut writer = SerializedFileWriter::new(file, schema, props)?;
        let mut group = writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            // Definition level 1: present; 0: NULL (values hold only the present ones).
            fn split<T: Clone, U>(v: &[Option<T>], f: impl Fn(&T) -> U) -> (Vec<U>, Vec<i16>) {
                (v.iter().flatten().map(f).collect(), v.iter().map(|x| i16::from(x.is_some())).collect())
            }
            match &self.values[index] {
                Values::Int(v) => {
                    let (values, levels) = split(v, |x| *x);
                    column.typed::<Int64Type>().write_batch(&values, Some(&levels), None)?;
                }
                Values::Float(v) => {
                    let (values, levels) = split(v, |x| *x);
                    column.typed::<DoubleType>().write_batch(&values, Some(&levels), None)?;
                }
                Values::Text(v) => {
                    let (values, levels) = split(v, |x| ByteArray::from(x.as_str()));
                    column.typed::<ByteArrayType>().write_batch(&values, Some(&levels), None)?;
                }
            }
            column.close()?;
            index += 1;
        }
        group.close()?;
        writer.close()?;
        Ok(())
    }
}

pub fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let (store, run) = resolve(&args.run)?;
    let table_name = match args.table {
        ExportTable::Rollouts => "rollouts",
        ExportTable::Steps => "steps",
        ExportTable::Prompts => "prompts",
        ExportTable::Tests => "tests",
    };
    let mut columns = read(&store, &run, args.table)?;
    if args.table == ExportTable::Steps && args.format != ExportFormat::Jsonl {
        columns = columns.spread_metrics();
    }
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) if args.format != ExportFormat::Parquet => {
            Box::new(std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?))
        }
        Some(_) => Box::new(std::io::sink()),
        None if args.format == ExportFormat::Parquet => bail!("Parquet is binary: pass --out FILE.parquet"),
        None => Box::new(std::io::stdout().lock()),
    };
    match args.format {
        ExportFormat::Jsonl => {
            for row in 0..columns.rows {
                writeln!(out, "{}", columns.json_row(row))?;
            }
        }
        ExportFormat::Csv => {
            let mut table = Table::new(columns.names.iter().cloned());
            for row in 0..columns.rows {
                table.push((0..columns.names.len()).map(|c| columns.cell(c, row)).collect());
            }
            out.write_all(table.render(Format::Csv).as_bytes())?;
        }
        ExportFormat::Parquet => {
            let path = args.out.as_ref().context("Parquet needs --out")?;
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            if let Err(e) = columns.write_parquet(file, table_name) {
                // No empty or half-written file left under the name asked for.
                let _ = std::fs::remove_file(path);
                return Err(e.context(format!("writing {}", path.display())));
            }
        }
    }
    out.flush()?;
    if let Some(path) = &args.out {
        eprintln!("{} {table_name} rows of run {} written to {}", columns.rows, run.name, path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn every_format_carries_the_same_rows() {
        let (dir, store, run) = crate::audit::fixture::opened();
        let columns = read(&store, &run, ExportTable::Rollouts).unwrap();
        assert_eq!(columns.rows, 48);
        let row = columns.json_row(0);
        assert_eq!(row["step_map"], serde_json::json!([3, 0, 1, 2, 4, -1]), "JSON columns stay JSON in JSONL");
        assert_eq!(row["reward_components"][0]["name"], "tests");

        let file = dir.path().join("rollouts.parquet");
        columns.write_parquet(std::fs::File::create(&file).unwrap(), "rollouts").unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 48);
        let first = reader.get_row_iter(None).unwrap().next().unwrap().unwrap();
        let json = first.to_json_value();
        assert_eq!(json["prompt_id"], "a");
        assert_eq!(json["verdict"], "wrong_answer");

        let tests = read(&store, &run, ExportTable::Tests).unwrap();
        assert_eq!(tests.rows, 48);
        let steps = read(&store, &run, ExportTable::Steps).unwrap();
        assert_eq!(steps.json_row(3)["metrics"]["reward_mean"], 0.35);
        let spread = steps.spread_metrics();
        assert_eq!(spread.names, ["step", "attempt", "at", "loss", "reward_mean", "seconds.rollout", "seconds.update"]);
        assert_eq!(spread.cell(4, 3), Cell::Num(0.35));
    }

    #[test]
    fn column_names_the_schema_language_would_misread_are_written() {
        // Per-source metrics of an eval run: the source's name is part of the column's.
        let names = ["step", "pass@1.taco apps", "pass@1.lcb(v5)", "a;b", "note"];
        let columns = Columns {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            types: vec![Type::Int, Type::Float, Type::Float, Type::Float, Type::Text],
            values: vec![
                Values::Int(vec![Some(0)]),
                Values::Float(vec![Some(0.5)]),
                Values::Float(vec![None]),
                Values::Float(vec![Some(1.0)]),
                Values::Text(vec![Some("x".into())]),
            ],
            rows: 1,
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("steps.parquet");
        columns.write_parquet(std::fs::File::create(&file).unwrap(), "steps").unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
        let json = reader.get_row_iter(None).unwrap().next().unwrap().unwrap().to_json_value();
        assert_eq!((json["pass@1.taco apps"].as_f64(), json["a;b"].as_f64(), json["note"].as_str()), (Some(0.5), Some(1.0), Some("x")));
    }
}
