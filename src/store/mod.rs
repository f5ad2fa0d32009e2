//! The run store: one SQLite file per run directory (WAL, so `dllm-rl audit`, `sqlite3` or
//! Datasette can read while a run writes). One writer thread owns the connection and commits
//! whatever has queued in one transaction, so logging thousands of rollouts per step costs a
//! few fsyncs, not thousands; callers never wait for the disk except on [`RunStore::flush`].
//!
//! Today `dllm-rl eval --store` writes here; resuming, checkpoints and read-only opening are for
//! `train` and `audit`, which build on this module next (they are tested below).
#![cfg_attr(not(test), allow(dead_code))]

mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use serde::Serialize;

pub use schema::MIGRATIONS;

/// A cause is the error's `source`, not part of its message: `dllm-rl` prints the chain (`{:#}`),
/// which would say it twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}")]
    Sqlite { path: PathBuf, source: SqliteCause },
    #[error("{path}: schema version {found} is newer than this program's {known}; upgrade dllm-rl")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("the run store's writer thread has stopped (an earlier write failed: see the log)")]
    WriterGone,
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What SQLite said, once. rusqlite's error repeats its message in its own source (the same
/// words after an error code), and for a file it cannot open appends the path that
/// [`StoreError::Sqlite`] already names: `x: unable to open database file: x: Error code 14:
/// unable to open database file` was one failure.
#[derive(Debug)]
pub struct SqliteCause(String);

impl SqliteCause {
    fn new(path: &Path, e: &rusqlite::Error) -> Self {
        let text = e.to_string();
        let text = text.strip_suffix(&format!(": {}", path.display())).unwrap_or(&text);
        SqliteCause(text.to_string())
    }
}

impl std::fmt::Display for SqliteCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqliteCause {}

/// The error of an SQLite call on the store at `path`.
fn sql_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |e| StoreError::Sqlite { path: path.into(), source: SqliteCause::new(path, &e) }
}

/// Opens (creating if needed) and migrates a store for writing.
fn open_writable(path: &Path) -> Result<Connection> {
    let sql = sql_error(path);
    let mut conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).map_err(sql)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(sql)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Applies the migrations this database lacks, each in its own transaction.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let sql = sql_error(path);
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew { path: path.into(), found: version, known });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
        tx.execute_batch(migration).map_err(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(())
}

/// Opens a store for reading only (never blocks the writer).
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let sql = sql_error(path);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
    Ok(conn)
}

pub(crate) fn now() -> String {
    // RFC 3339 in UTC from the system clock, without a date crate.
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// One sampled completion as the store keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutRecord {
    pub step: i64,
    pub prompt_id: String,
    pub sample: i64,
    pub seed: u64,
    pub completion: String,
    pub tokens: i64,
    pub step_map: Vec<i64>,
    /// The text of each completion token (aligned with the start of `step_map`); empty when
    /// unknown.
    pub pieces: Vec<String>,
    pub reward: Option<f64>,
    pub reward_components: Option<serde_json::Value>,
    pub verdict: String,
    pub hack_signals: serde_json::Value,
    pub tests: Vec<TestRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestRecord {
    pub verdict: String,
    pub seconds: f64,
    pub stdout: String,
    pub stderr: String,
}

impl TestRecord {
    /// One record per test of a verdict.
    pub fn from_verdict(verdict: &dllm_verifier::TaskVerdict) -> Vec<TestRecord> {
        verdict
            .tests
            .iter()
            .map(|t| TestRecord { verdict: t.verdict.name().into(), seconds: t.seconds, stdout: t.stdout.clone(), stderr: t.stderr.clone() })
            .collect()
    }
}

/// A prompt as the model saw it.
#[derive(Debug, Clone, Serialize)]
pub struct PromptRecord {
    pub prompt_id: String,
    pub source: String,
    pub kind: String,
    pub text: String,
}

enum Message {
    Step { step: i64, metrics: serde_json::Value },
    Prompts(Vec<PromptRecord>),
    Rollouts(Vec<RolloutRecord>),
    Checkpoint { step: i64, path: String },
    Status(&'static str),
    Flush(mpsc::Sender<Result<(), String>>),
}

/// The writing side of one run's store.
pub struct RunStore {
    pub path: PathBuf,
    /// Resume count: 0 for a fresh run, +1 per resume (steps and rollouts carry it).
    pub attempt: i64,
    tx: Option<mpsc::Sender<Message>>,
    writer: Option<JoinHandle<()>>,
    /// False on the ranks of a data-parallel run other than 0: rank 0 alone writes the store,
    /// the others' messages go nowhere.
    writes: bool,
}

impl RunStore {
    /// The store handle of a rank that does not write (rank 0 writes `path`): every message is
    /// accepted and dropped.
    pub fn written_elsewhere(path: &Path) -> Self {
        RunStore { path: path.into(), attempt: 0, tx: None, writer: None, writes: false }
    }

    /// Starts a run `name` (kind `train` / `sft`), recording its resolved config.
    /// Creates (or migrates) the store at `path` without starting a run: a command that writes
    /// its run only at the end finds out at the start that it could not.
    pub fn prepare(path: &Path) -> Result<()> {
        open_writable(path).map(drop)
    }

    pub fn create(path: &Path, name: &str, kind: &str, config: &serde_json::Value) -> Result<Self> {
        let conn = open_writable(path)?;
        let sql = sql_error(path);
        conn.execute(
            "INSERT INTO runs (name, kind, status, config, code_version, started_at) VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
            params![name, kind, serde_json::to_string(config)?, env!("CARGO_PKG_VERSION"), now()],
        )
        .map_err(sql)?;
        let run_id = conn.last_insert_rowid();
        Ok(Self::start(path, conn, run_id, 0))
    }

    /// Reopens run `name` to resume it from the checkpoint of step `checkpoint_step`: its steps
    /// and rollouts after that step are marked superseded (kept, not deleted) and new rows carry
    /// the next attempt number.
    pub fn resume(path: &Path, name: &str, checkpoint_step: i64) -> Result<Self> {
        let mut conn = open_writable(path)?;
        let sql = sql_error(path);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql)?;
        let run_id: i64 = tx.query_row("SELECT id FROM runs WHERE name = ?1", [name], |r| r.get(0)).map_err(sql)?;
        let attempt: i64 =
            tx.query_row("SELECT COALESCE(MAX(attempt), -1) + 1 FROM steps WHERE run_id = ?1", [run_id], |r| r.get(0)).map_err(sql)?;
        for table in ["steps", "rollouts"] {
            tx.execute(&format!("UPDATE {table} SET superseded = 1 WHERE run_id = ?1 AND step > ?2"), params![run_id, checkpoint_step])
                .map_err(sql)?;
        }
        tx.execute("UPDATE runs SET status = 'running', ended_at = NULL WHERE id = ?1", [run_id]).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(Self::start(path, conn, run_id, attempt))
    }

    fn start(path: &Path, conn: Connection, run_id: i64, attempt: i64) -> Self {
        let (tx, rx) = mpsc::channel();
        let store_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("run-store".into())
            .spawn(move || writer_loop(conn, rx, run_id, attempt, &store_path))
            .expect("spawning the run-store writer thread");
        RunStore { path: path.into(), attempt, tx: Some(tx), writer: Some(writer), writes: true }
    }

    fn send(&self, message: Message) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        self.tx.as_ref().ok_or(StoreError::WriterGone)?.send(message).map_err(|_| StoreError::WriterGone)
    }

    pub fn log_step(&self, step: i64, metrics: serde_json::Value) -> Result<()> {
        self.send(Message::Step { step, metrics })
    }

    /// Records prompts; one already recorded for this run is left as it is.
    pub fn log_prompts(&self, prompts: Vec<PromptRecord>) -> Result<()> {
        self.send(Message::Prompts(prompts))
    }

    pub fn log_rollouts(&self, rollouts: Vec<RolloutRecord>) -> Result<()> {
        self.send(Message::Rollouts(rollouts))
    }

    pub fn log_checkpoint(&self, step: i64, path: &Path) -> Result<()> {
        self.send(Message::Checkpoint { step, path: path.display().to_string() })
    }

    pub fn set_status(&self, status: &'static str) -> Result<()> {
        self.send(Message::Status(status))
    }

    /// Passes `outcome` on; an error first marks the run `failed`, best effort: the error being
    /// returned matters more than a store that cannot say so.
    pub fn failed_on_error<T, E>(&self, outcome: std::result::Result<T, E>) -> std::result::Result<T, E> {
        if outcome.is_err() {
            let _ = self.set_status("failed");
            let _ = self.flush();
        }
        outcome
    }

    /// Waits until everything sent so far is committed.
    pub fn flush(&self) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel();
        self.send(Message::Flush(tx))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Sqlite { path: self.path.clone(), source: SqliteCause(e) }),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

impl Drop for RunStore {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Messages that may wait unwritten while another process holds the store (a reader's
/// `BEGIN EXCLUSIVE`, a backup): past this many, the store is given up and the run fails.
const BACKLOG_LIMIT: usize = 20_000;
/// How long the writer waits for a lock before it keeps the batch and tries again later;
/// the run itself never waits on a locked store.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_millis(500);
/// A store locked for longer than this is worth a warning (and one per such period after).
const LOCKED_WARNING: Duration = Duration::from_secs(60);
/// After the run has ended (the channel closed), how long the writer keeps trying.
const LAST_WRITE_PATIENCE: Duration = Duration::from_secs(600);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Writes what is queued, one transaction per batch. A store another process holds locked is
/// not an error: the batch stays in memory (bounded by [`BACKLOG_LIMIT`]), flushes answer at
/// once, and the writer tries again every moment, warning while it lasts; any other error is
/// sticky and every later flush reports it.
fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Message>, run_id: i64, attempt: i64, path: &Path) {
    let _ = conn.busy_timeout(WRITER_BUSY_TIMEOUT);
    let mut failure: Option<String> = None;
    let mut pending: Vec<Message> = Vec::new();
    let mut locked_since: Option<std::time::Instant> = None;
    let mut warned_at: Option<std::time::Instant> = None;
    let mut closed = false;
    loop {
        let mut flushes = Vec::new();
        let mut take = |m: Message, pending: &mut Vec<Message>| match m {
            Message::Flush(reply) => flushes.push(reply),
            other => pending.push(other),
        };
        if pending.is_empty() && !closed {
            match rx.recv() {
                Ok(m) => take(m, &mut pending),
                Err(_) => closed = true,
            }
        }
        // Everything already queued goes into the same transaction.
        loop {
            match rx.try_recv() {
                Ok(m) => take(m, &mut pending),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if pending.is_empty() {
            for reply in flushes {
                let _ = reply.send(failure.clone().map_or(Ok(()), Err));
            }
            if closed {
                return;
            }
            continue;
        }
        let result = write_batch(&mut conn, &pending, run_id, attempt);
        match result {
            Ok(()) => {
                if let Some(since) = locked_since.take() {
                    tracing::info!("{}: the run store is writable again after {:.0} s", path.display(), since.elapsed().as_secs_f64());
                }
                pending.clear();
            }
            Err(e) if is_busy(&e) && failure.is_none() => {
                let since = *locked_since.get_or_insert_with(std::time::Instant::now);
                if pending.len() > BACKLOG_LIMIT {
                    tracing::error!("{}: the run store has been locked by another process for {:.0} s; {} messages wait, more than {BACKLOG_LIMIT}: giving up", path.display(), since.elapsed().as_secs_f64(), pending.len());
                    failure = Some(format!("locked by another process for {:.0} s with {} messages waiting", since.elapsed().as_secs_f64(), pending.len()));
                    pending.clear();
                } else if closed && since.elapsed() > LAST_WRITE_PATIENCE {
                    tracing::error!("{}: the run store stayed locked; {} messages not written", path.display(), pending.len());
                    return;
                } else {
                    if since.elapsed() >= LOCKED_WARNING && warned_at.is_none_or(|w| w.elapsed() >= LOCKED_WARNING) {
                        tracing::warn!("{}: the run store has been locked by another process for {:.0} s; {} messages wait in memory (the run goes on)", path.display(), since.elapsed().as_secs_f64(), pending.len());
                        warned_at = Some(std::time::Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Err(e) => {
                tracing::error!("{}: writing the run store failed: {e}", path.display());
                failure = Some(e.to_string());
                pending.clear();
            }
        }
        for reply in flushes {
            let _ = reply.send(failure.clone().map_or(Ok(()), Err));
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[Message], run_id: i64, attempt: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for message in batch {
        match message {
            Message::Step { step, metrics } => {
                tx.prepare_cached("INSERT OR REPLACE INTO steps (run_id, step, attempt, at, metrics) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![run_id, step, attempt, now(), metrics.to_string()])?;
            }
            Message::Prompts(prompts) => {
                for p in prompts {
                    tx.prepare_cached("INSERT OR IGNORE INTO prompts (run_id, prompt_id, source, kind, text) VALUES (?1, ?2, ?3, ?4, ?5)")?
                        .execute(params![run_id, p.prompt_id, p.source, p.kind, p.text])?;
                }
            }
            Message::Rollouts(rollouts) => {
                for r in rollouts {
                    tx.prepare_cached(
                        "INSERT INTO rollouts (run_id, step, attempt, prompt_id, sample, seed, completion, tokens, step_map, \
                         reward, reward_components, verdict, hack_signals, pieces) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    )?
                    .execute(params![
                        run_id,
                        r.step,
                        attempt,
                        r.prompt_id,
                        r.sample,
                        r.seed.to_string(),
                        r.completion,
                        r.tokens,
                        serde_json::to_string(&r.step_map).unwrap_or_else(|_| "[]".into()),
                        r.reward,
                        r.reward_components.as_ref().map(|c| c.to_string()),
                        r.verdict,
                        r.hack_signals.to_string(),
                        (!r.pieces.is_empty()).then(|| serde_json::to_string(&r.pieces).unwrap_or_else(|_| "[]".into())),
                    ])?;
                    let rollout_id = tx.last_insert_rowid();
                    for (i, t) in r.tests.iter().enumerate() {
                        tx.prepare_cached(
                            "INSERT INTO test_results (rollout_id, test, verdict, seconds, stdout, stderr) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![rollout_id, i as i64, t.verdict, t.seconds, t.stdout, t.stderr])?;
                    }
                }
            }
            Message::Checkpoint { step, path } => {
                tx.prepare_cached("INSERT OR REPLACE INTO checkpoints (run_id, step, path, at) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![run_id, step, path, now()])?;
            }
            Message::Status(status) => {
                let ended = (*status != "running").then(now);
                tx.prepare_cached("UPDATE runs SET status = ?1, ended_at = ?2 WHERE id = ?3")?.execute(params![status, ended, run_id])?;
            }
            Message::Flush(_) => {}
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(step: i64, sample: i64) -> RolloutRecord {
        RolloutRecord {
            step,
            prompt_id: "mbpp/11".into(),
            sample,
            seed: u64::MAX - sample as u64,
            completion: "```python\ndef f(): pass\n```".into(),
            tokens: 9,
            step_map: vec![0, 2, 1],
            pieces: vec!["```".into(), "python".into(), "\n".into()],
            reward: Some(1.0),
            reward_components: Some(serde_json::json!([{"name": "pass_all", "value": 1.0}])),
            verdict: "passed".into(),
            hack_signals: serde_json::json!([]),
            tests: vec![TestRecord { verdict: "passed".into(), seconds: 0.01, stdout: String::new(), stderr: String::new() }],
        }
    }

    /// A reader holding the store (`BEGIN EXCLUSIVE` in `sqlite3`, a backup) used to fail the
    /// run with `database is locked` and lose the step: now the writes wait in memory, the
    /// run's flushes do not block, and everything lands once the lock is gone.
    #[test]
    fn a_store_locked_by_another_process_delays_writes_and_loses_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sqlite");
        let store = RunStore::create(&path, "r", "train", &serde_json::json!({})).unwrap();
        store.log_step(0, serde_json::json!({"reward_mean": 0.0})).unwrap();
        store.flush().unwrap();
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let started = std::time::Instant::now();
        for step in 1..4 {
            store.log_rollouts((0..2).map(|s| rollout(step, s)).collect()).unwrap();
            store.log_step(step, serde_json::json!({"reward_mean": step as f64})).unwrap();
            store.flush().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the run waited {:?} on a locked store", started.elapsed());
        std::thread::sleep(Duration::from_millis(1500));
        holder.execute_batch("COMMIT").unwrap();
        store.log_checkpoint(3, Path::new("ckpt/step-3")).unwrap();
        store.flush().unwrap();
        let reader = open_read_only(&path).unwrap();
        let steps: i64 = reader.query_row("SELECT COUNT(*) FROM steps", [], |r| r.get(0)).unwrap();
        let rollouts: i64 = reader.query_row("SELECT COUNT(*) FROM rollouts", [], |r| r.get(0)).unwrap();
        let checkpoints: i64 = reader.query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0)).unwrap();
        assert_eq!((steps, rollouts, checkpoints), (4, 6, 1));
    }

    #[test]
    fn writes_are_batched_readable_while_running_and_resume_marks_superseded_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sqlite");
        let store = RunStore::create(&path, "r1", "train", &serde_json::json!({"optim": {"lr": 5e-7}})).unwrap();
        for step in 0..4 {
            store.log_rollouts((0..3).map(|s| rollout(step, s)).collect()).unwrap();
            store.log_step(step, serde_json::json!({"reward_mean": step as f64 / 4.0})).unwrap();
        }
        store.log_checkpoint(1, Path::new("ckpt/step-1")).unwrap();
        store.flush().unwrap();
        // A reader sees it all while the writer is open (WAL).
        let reader = open_read_only(&path).unwrap();
        let (steps, rollouts, tests): (i64, i64, i64) = reader
            .query_row(
                "SELECT (SELECT COUNT(*) FROM steps), (SELECT COUNT(*) FROM rollouts), (SELECT COUNT(*) FROM test_results)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((steps, rollouts, tests), (4, 12, 12));
        let reward: f64 = reader.query_row("SELECT metrics ->> '$.reward_mean' FROM steps WHERE step = 3", [], |r| r.get(0)).unwrap();
        assert_eq!(reward, 0.75);
        let seed: String = reader.query_row("SELECT seed FROM rollouts LIMIT 1", [], |r| r.get(0)).unwrap();
        assert_eq!(seed, u64::MAX.to_string(), "u64 seeds are kept exactly");
        drop(store);

        // Crash after step 3, resume from the step-1 checkpoint: steps 2 and 3 are superseded.
        let store = RunStore::resume(&path, "r1", 1).unwrap();
        assert_eq!(store.attempt, 1);
        store.log_step(2, serde_json::json!({"reward_mean": 0.9})).unwrap();
        store.set_status("finished").unwrap();
        store.flush().unwrap();
        let rows: Vec<(i64, i64, i64)> = reader
            .prepare("SELECT step, attempt, superseded FROM steps ORDER BY step, attempt")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows, vec![(0, 0, 0), (1, 0, 0), (2, 0, 1), (2, 1, 0), (3, 0, 1)]);
        let status: String = reader.query_row("SELECT status FROM runs", [], |r| r.get(0)).unwrap();
        assert_eq!(status, "finished");
    }

    #[test]
    fn an_error_marks_the_run_failed_and_is_passed_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let store = RunStore::create(&path, "r1", "sft", &serde_json::json!({})).unwrap();
        let status = || -> String { open_read_only(&path).unwrap().query_row("SELECT status FROM runs", [], |r| r.get(0)).unwrap() };
        assert_eq!(store.failed_on_error(Ok::<u8, &str>(3)), Ok(3));
        store.flush().unwrap();
        assert_eq!(status(), "running");
        assert_eq!(store.failed_on_error(Err::<u8, &str>("step 4 failed")), Err("step 4 failed"));
        assert_eq!(status(), "failed");
    }

    #[test]
    fn an_sqlite_failure_is_said_once() {
        let dir = tempfile::tempdir().unwrap();
        let chain = |e: StoreError| format!("{:#}", anyhow::Error::new(e));
        // A folder where the file should be; then a run name already taken (a constraint).
        let err = chain(RunStore::create(dir.path(), "r", "eval", &serde_json::json!({})).err().unwrap());
        assert_eq!(err, format!("{}: unable to open database file", dir.path().display()));
        let path = dir.path().join("run.sqlite");
        drop(RunStore::create(&path, "r", "eval", &serde_json::json!({})).unwrap());
        let err = chain(RunStore::create(&path, "r", "eval", &serde_json::json!({})).err().unwrap());
        assert_eq!(err, format!("{}: UNIQUE constraint failed: runs.name", path.display()));
    }

    #[test]
    fn a_newer_schema_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = RunStore::create(&path, "r", "train", &serde_json::json!({})).err().unwrap();
        assert!(err.to_string().contains("schema version 99 is newer"), "{err}");
    }

    #[test]
    fn a_version_1_store_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO runs (name, kind, status, config, code_version, started_at) VALUES ('old', 'train', 'finished', '{}', '0.0', 'x')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO rollouts (run_id, step, attempt, prompt_id, sample, seed, completion, tokens, step_map, verdict) \
             VALUES (1, 0, 0, 'p', 0, '1', 'c', 1, '[0]', 'passed')",
            [],
        )
        .unwrap();
        drop(conn);
        let store = RunStore::create(&path, "new", "train", &serde_json::json!({})).unwrap();
        store.log_prompts(vec![PromptRecord { prompt_id: "p".into(), source: "s".into(), kind: "call".into(), text: "hi".into() }]).unwrap();
        store.log_rollouts(vec![rollout(0, 0)]).unwrap();
        store.flush().unwrap();
        let reader = open_read_only(&path).unwrap();
        let version: i64 = reader.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let pieces: Vec<Option<String>> =
            reader.prepare("SELECT pieces FROM rollouts ORDER BY id").unwrap().query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(pieces, vec![None, Some(r#"["```","python","\n"]"#.to_string())]);
        let text: String = reader.query_row("SELECT text FROM prompts WHERE run_id = 2", [], |r| r.get(0)).unwrap();
        assert_eq!(text, "hi");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
