//! `dllm-rl audit`: answers about a run from its SQLite store, read-only (a run in progress keeps
//! writing undisturbed: WAL readers never block the writer).
//!
//! - [`RunSelector`](crate::cli::RunSelector) → [`Opened`] store + [`RunInfo`]: a run folder, a
//!   store file, or a run name looked up in every `store.sqlite` under a folder;
//! - `steps`, `prompts`, `rollouts` (+ `show`), `hacks`: tables in [`output::Table`];
//! - `report`: one HTML page with SVG charts ([`charts`]); `export`: JSONL / CSV / Parquet.
//!
//! Steps and rollouts superseded by a resume are left out everywhere: the audit describes the
//! run as it finally went.

mod charts;
mod export;
mod hacks;
mod history;
mod output;
mod report;
mod rollouts;
mod steps;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use rusqlite::{Connection, OptionalExtension};

use crate::cli::{AuditCommand, RunSelector};
use crate::store::{open_read_only, MIGRATIONS};

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Runs(args) => steps::runs(&args),
        AuditCommand::Steps(args) => steps::steps(&args),
        AuditCommand::Prompts(args) => history::prompts(&args),
        AuditCommand::Rollouts(args) => rollouts::list(&args),
        AuditCommand::Show(args) => rollouts::show(&args),
        AuditCommand::Hacks(args) => hacks::hacks(&args),
        AuditCommand::Report(args) => report::report(&args),
        AuditCommand::Export(args) => export::export(&args),
    }
}

/// A store opened for reading.
pub struct Opened {
    pub conn: Connection,
    pub path: PathBuf,
    /// Schema version (`PRAGMA user_version`): older stores lack some columns.
    pub version: i64,
}

/// A run's row of the `runs` table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInfo {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub config: serde_json::Value,
    pub code_version: String,
    pub started_at: String,
    pub ended_at: Option<String>,
}

/// Opens a store read-only, refusing what is not one (by its schema version).
pub fn open(path: &Path) -> anyhow::Result<Opened> {
    if !path.is_file() {
        bail!("{}: no such run store", path.display());
    }
    let conn = open_read_only(path)?;
    let version: i64 = match conn.pragma_query_value(None, "user_version", |r| r.get(0)) {
        Ok(version) => version,
        // SQLite's own words ("file is not a database", twice: message and code) add nothing.
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
            bail!("{}: not an SQLite database (a run store is the store.sqlite in a run's folder)", path.display())
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{}: cannot read", path.display()))),
    };
    let known = MIGRATIONS.len() as i64;
    if version == 0 {
        bail!("{}: not a dllm-rl run store (schema version 0: no run was ever written to it)", path.display());
    }
    if version > known {
        bail!("{}: schema version {version} is newer than this dllm-rl's {known}; upgrade dllm-rl to audit it", path.display());
    }
    Ok(Opened { conn, path: path.to_path_buf(), version })
}

/// The store files a path names: the file itself, a run folder's `store.sqlite`, or every
/// `store.sqlite` up to four folders below.
pub fn find_stores(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    if !root.is_dir() {
        bail!("{}: no such file or folder", root.display());
    }
    let mut found = Vec::new();
    let mut pending = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && depth < 4 && name != "checkpoints" && name != ".git" && name != "target" {
                pending.push((path, depth + 1));
            } else if name == "store.sqlite" {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Opens the stores [`find_stores`] found under `root`. A file the user named (`root` itself)
/// must be a run store: anything else is an error, not an empty table. Stores found by search
/// that cannot be read are skipped with a warning, so that one stray file does not hide every
/// other run under a folder.
pub fn open_each(root: &Path, paths: &[PathBuf]) -> anyhow::Result<Vec<Opened>> {
    if root.is_file() {
        return Ok(vec![open(root)?]);
    }
    Ok(paths
        .iter()
        .filter_map(|path| match open(path) {
            Ok(opened) => Some(opened),
            Err(e) => {
                tracing::warn!("skipping {e:#}");
                None
            }
        })
        .collect())
}

impl Opened {
    pub fn runs(&self) -> anyhow::Result<Vec<RunInfo>> {
        let mut stmt = self.conn.prepare("SELECT id, name, kind, status, config, code_version, started_at, ended_at FROM runs ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(RunInfo {
                id: r.get(0)?,
                name: r.get(1)?,
                kind: r.get(2)?,
                status: r.get(3)?,
                config: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                code_version: r.get(5)?,
                started_at: r.get(6)?,
                ended_at: r.get(7)?,
            })
        })?;
        rows.collect::<Result<_, _>>().with_context(|| format!("{}: reading runs", self.path.display()))
    }

    /// Whether the store has the `prompts` table and `rollouts.pieces` (schema 2).
    pub fn has_prompts(&self) -> bool {
        self.version >= 2
    }

    /// The prompt text, source and kind a run recorded (schema 2 on).
    pub fn prompt(&self, run: i64, prompt_id: &str) -> anyhow::Result<Option<(String, String, String)>> {
        if !self.has_prompts() {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row("SELECT text, source, kind FROM prompts WHERE run_id = ?1 AND prompt_id = ?2", rusqlite::params![run, prompt_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?)
    }
}

/// Resolves a run selector to its store and run.
pub fn resolve(selector: &RunSelector) -> anyhow::Result<(Opened, RunInfo)> {
    let as_path = Path::new(&selector.run);
    if as_path.exists() {
        let file = if as_path.is_dir() { as_path.join("store.sqlite") } else { as_path.to_path_buf() };
        if !file.is_file() {
            bail!("{}: a folder without store.sqlite (a run folder holds one)", as_path.display());
        }
        let opened = open(&file)?;
        let mut runs = opened.runs()?;
        return match runs.len() {
            0 => bail!("{}: the store holds no run", file.display()),
            1 => Ok((opened, runs.remove(0))),
            _ => bail!(
                "{}: the store holds {} runs ({}); name one: `--db {} RUN`",
                file.display(),
                runs.len(),
                runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
                file.display()
            ),
        };
    }
    let stores = find_stores(&selector.db)?;
    if stores.is_empty() {
        bail!("no run folder or store file `{}`, and no store.sqlite under {} to look the name up in", selector.run, selector.db.display());
    }
    let mut matches = Vec::new();
    let mut known = Vec::new();
    for opened in open_each(&selector.db, &stores)? {
        for run in opened.runs()? {
            if run.name == selector.run || run.id.to_string() == selector.run {
                matches.push((opened.path.clone(), run));
            } else {
                known.push(format!("{} ({})", run.name, opened.path.display()));
            }
        }
    }
    match matches.len() {
        0 => bail!("no run named `{}` under {}; runs there: {}", selector.run, selector.db.display(), if known.is_empty() { "none".into() } else { known.join(", ") }),
        1 => {
            let (path, run) = matches.remove(0);
            Ok((open(&path)?, run))
        }
        _ => bail!(
            "`{}` names runs in several stores ({}); pass the store file or run folder instead",
            selector.run,
            matches.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A small run store written through the real writer, for the audit's unit tests.
    use std::path::Path;

    use crate::cli::RunSelector;
    use crate::store::{PromptRecord, RolloutRecord, RunStore, TestRecord};

    /// The run of [`write`] in a fresh folder, opened as the audit commands open it (keep the
    /// folder alive while using the store).
    pub fn opened() -> (tempfile::TempDir, super::Opened, super::RunInfo) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        write(&path);
        let (store, run) = super::resolve(&RunSelector { run: path.display().to_string(), db: dir.path().into() }).unwrap();
        (dir, store, run)
    }

    /// Run "toy": prompts a (learned at step 2), b (never solved), c (solved then forgotten);
    /// 4 samples each, steps 0..=3; step 3 of attempt 0 superseded by a resume from step 2.
    pub fn write(path: &Path) {
        let store = RunStore::create(path, "toy", "train", &serde_json::json!({"optim": {"lr": 1e-4}})).unwrap();
        store
            .log_prompts(
                ["a", "b", "c"]
                    .iter()
                    .map(|p| PromptRecord { prompt_id: (*p).into(), source: format!("src-{p}"), kind: "call".into(), text: format!("write {p}") })
                    .collect(),
            )
            .unwrap();
        let passes = |prompt: &str, step: i64| -> usize {
            match prompt {
                "a" => [0, 1, 4, 4][step as usize],
                "b" => 0,
                _ => [3, 2, 0, 0][step as usize],
            }
        };
        let rollout = |prompt: &str, step: i64, sample: i64, passed: bool| RolloutRecord {
            step,
            prompt_id: prompt.into(),
            sample,
            seed: 7,
            completion: if prompt == "b" && sample == 0 { "```python\nimport sys\nsys.exit(0)\n```".into() } else { format!("```python\ndef {prompt}(x):\n    return x\n```") },
            tokens: 5,
            step_map: vec![3, 0, 1, 2, 4, -1],
            pieces: vec!["def".into(), " ".into(), prompt.into(), "(x)".into(), ":".into()],
            reward: Some(if passed { 1.0 } else { 0.0 }),
            reward_components: Some(serde_json::json!([{"name": "tests", "value": if passed { 1.0 } else { 0.0 }, "weight": 1.0}])),
            verdict: if passed { "passed".into() } else { "wrong_answer".into() },
            hack_signals: if prompt == "b" && sample == 0 { serde_json::json!([{"name": "exits", "reason": "`sys.exit(0)`"}]) } else { serde_json::json!([]) },
            tests: vec![TestRecord { verdict: if passed { "passed".into() } else { "wrong_answer".into() }, seconds: 0.01, stdout: "out".into(), stderr: String::new() }],
        };
        for step in 0..4 {
            let mut records = Vec::new();
            for p in ["a", "b", "c"] {
                for s in 0..4 {
                    records.push(rollout(p, step, s, (s as usize) < passes(p, step)));
                }
            }
            store.log_rollouts(records).unwrap();
            store.log_step(step, serde_json::json!({"reward_mean": step as f64 / 10.0, "loss": 0.5, "seconds": {"update": 1.0, "rollout": 2.0}})).unwrap();
        }
        store.log_checkpoint(2, Path::new("ckpt")).unwrap();
        store.set_status("interrupted").unwrap();
        drop(store);
        let store = RunStore::resume(path, "toy", 2).unwrap();
        let mut records = Vec::new();
        for p in ["a", "b", "c"] {
            for s in 0..4 {
                records.push(rollout(p, 3, s, (s as usize) < passes(p, 3)));
            }
        }
        store.log_rollouts(records).unwrap();
        store.log_step(3, serde_json::json!({"reward_mean": 0.35, "loss": 0.4, "seconds": {"update": 1.0, "rollout": 2.0}})).unwrap();
        store.set_status("finished").unwrap();
        store.flush().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_resolve_by_folder_file_and_name_with_errors_that_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("runs/toy");
        std::fs::create_dir_all(&run_dir).unwrap();
        fixture::write(&run_dir.join("store.sqlite"));
        let by = |run: &str| resolve(&RunSelector { run: run.into(), db: dir.path().into() });
        assert_eq!(by(run_dir.to_str().unwrap()).unwrap().1.name, "toy");
        assert_eq!(by(run_dir.join("store.sqlite").to_str().unwrap()).unwrap().1.name, "toy");
        assert_eq!(by("toy").unwrap().1.name, "toy");
        let err = by("nope").err().unwrap().to_string();
        assert!(err.contains("no run named `nope`") && err.contains("toy"), "{err}");

        let missing = open(&dir.path().join("missing.sqlite")).err().unwrap().to_string();
        assert!(missing.contains("no such run store"), "{missing}");
        let empty = dir.path().join("empty.sqlite");
        Connection::open(&empty).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        let err = open(&empty).err().unwrap().to_string();
        assert!(err.contains("not a dllm-rl run store"), "{err}");
        let newer = dir.path().join("newer.sqlite");
        Connection::open(&newer).unwrap().pragma_update(None, "user_version", 999).unwrap();
        let err = open(&newer).err().unwrap().to_string();
        assert!(err.contains("schema version 999 is newer"), "{err}");
    }

    #[test]
    fn a_named_file_must_be_a_store_but_a_stray_one_found_by_search_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("runs/toy")).unwrap();
        fixture::write(&dir.path().join("runs/toy/store.sqlite"));
        let stray = dir.path().join("runs/bad/store.sqlite");
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::write(&stray, "{\"id\": \"t\"}\n").unwrap();
        let found = find_stores(dir.path()).unwrap();
        assert_eq!(open_each(dir.path(), &found).unwrap().len(), 1);
        let err = open_each(&stray, &find_stores(&stray).unwrap()).err().unwrap();
        assert_eq!(format!("{err:#}"), format!("{}: not an SQLite database (a run store is the store.sqlite in a run's folder)", stray.display()));
    }
}
