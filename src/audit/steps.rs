//! `audit runs` and `audit steps`: the runs of a store and their step metrics.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;

use super::output::{Cell, Table};
use super::{find_stores, open_each, resolve, Opened, RunInfo};
use crate::cli::{RunsArgs, StepsArgs};

/// One step's metrics, nested objects flattened to dotted keys (`seconds.update`).
#[derive(Debug, Clone)]
pub struct StepRow {
    pub step: i64,
    pub attempt: i64,
    pub at: String,
    pub metrics: BTreeMap<String, serde_json::Value>,
}

impl StepRow {
    pub fn number(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).and_then(serde_json::Value::as_f64)
    }
}

pub fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// The run's steps, current attempt only, in order.
pub fn load_steps(store: &Opened, run: &RunInfo) -> anyhow::Result<Vec<StepRow>> {
    let mut stmt = store.conn.prepare("SELECT step, attempt, at, metrics FROM steps WHERE run_id = ?1 AND superseded = 0 ORDER BY step, attempt")?;
    let rows = stmt.query_map([run.id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)))?;
    let mut steps: Vec<StepRow> = Vec::new();
    for row in rows {
        let (step, attempt, at, metrics) = row?;
        let value: serde_json::Value = serde_json::from_str(&metrics).with_context(|| format!("step {step}: metrics are not JSON"))?;
        let mut flat = BTreeMap::new();
        flatten("", &value, &mut flat);
        // A step written twice in one attempt (it cannot be, but a hand-edited store could):
        // the later row wins.
        if steps.last().is_some_and(|s| s.step == step) {
            steps.pop();
        }
        steps.push(StepRow { step, attempt, at, metrics: flat });
    }
    Ok(steps)
}

/// The short names users type for the main metrics.
pub fn metric_key(name: &str) -> &str {
    match name {
        "reward" => "reward_mean",
        "pass_rate" | "pass-rate" => "solve_mean",
        "kl" => "approx_kl",
        "clip" => "clip_fraction",
        other => other,
    }
}

const DEFAULT_METRICS: [&str; 11] = [
    "reward_mean",
    "solve_mean",
    "solve_all",
    "solve_none",
    "response_tokens_mean",
    "loss",
    "clip_fraction",
    "approx_kl",
    "grad_norm",
    "lr",
    "seconds.total",
];

pub fn runs(args: &RunsArgs) -> anyhow::Result<ExitCode> {
    let stores = find_stores(&args.db)?;
    if stores.is_empty() {
        anyhow::bail!("no store.sqlite under {} (pass --db FILE for a store with another name)", args.db.display());
    }
    let mut table = Table::new(["store", "run", "kind", "status", "steps", "best reward", "last reward", "started", "duration"]);
    for store in open_each(&args.db, &stores)? {
        for run in store.runs()? {
            let steps = load_steps(&store, &run)?;
            let rewards: Vec<f64> = steps.iter().filter_map(|s| s.number("reward_mean")).collect();
            let best = rewards.iter().copied().fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
            let last_at = run.ended_at.clone().or_else(|| steps.last().map(|s| s.at.clone()));
            table.push(vec![
                store.path.display().to_string().into(),
                run.name.clone().into(),
                run.kind.clone().into(),
                run.status.clone().into(),
                Cell::Int(steps.len() as i64),
                best.into(),
                rewards.last().copied().into(),
                run.started_at.clone().into(),
                last_at.and_then(|end| duration(&run.started_at, &end)).into(),
            ]);
        }
    }
    print!("{}", table.render(args.format));
    Ok(ExitCode::SUCCESS)
}

/// Seconds since 1970 of an RFC 3339 UTC time as the store writes it (`2026-11-27T03:24:10Z`).
pub fn epoch_seconds(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant), the inverse of the store's formatter.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn duration(start: &str, end: &str) -> Option<String> {
    let s = epoch_seconds(end)? - epoch_seconds(start)?;
    Some(if s >= 3600 { format!("{}h{:02}m", s / 3600, s % 3600 / 60) } else { format!("{}m{:02}s", s / 60, s % 60) })
}

/// The steps table: `step` then the chosen metrics.
pub fn steps_table(steps: &[StepRow], wanted: &[String]) -> anyhow::Result<Table> {
    let present: std::collections::BTreeSet<&str> = steps.iter().flat_map(|s| s.metrics.keys().map(String::as_str)).collect();
    let columns: Vec<String> = if wanted.is_empty() {
        let main: Vec<String> = DEFAULT_METRICS.iter().filter(|m| present.contains(**m)).map(|m| (*m).to_string()).collect();
        if main.len() >= 2 { main } else { present.iter().map(|m| (*m).to_string()).collect() }
    } else {
        let mut columns = Vec::new();
        for name in wanted {
            let key = metric_key(name.trim());
            if !present.contains(key) {
                anyhow::bail!(
                    "no metric `{name}` in this run's steps; it has: {}",
                    present.iter().copied().collect::<Vec<_>>().join(", ")
                );
            }
            columns.push(key.to_string());
        }
        columns
    };
    // Which attempt wrote a step matters only once the run was resumed.
    let resumed = steps.iter().any(|s| s.attempt > 0);
    let lead: &[&str] = if resumed { &["step", "attempt"] } else { &["step"] };
    let mut table = Table::new(lead.iter().map(|h| (*h).to_string()).chain(columns.iter().cloned()));
    for s in steps {
        let mut row = vec![Cell::Int(s.step)];
        if resumed {
            row.push(Cell::Int(s.attempt));
        }
        row.extend(columns.iter().map(|c| Cell::from_json(s.metrics.get(c))));
        table.push(row);
    }
    Ok(table)
}

pub fn steps(args: &StepsArgs) -> anyhow::Result<ExitCode> {
    let (store, run) = resolve(&args.run)?;
    let steps = load_steps(&store, &run)?;
    if steps.is_empty() {
        anyhow::bail!("run {} has no steps yet", run.name);
    }
    print!("{}", steps_table(&steps, &args.metrics)?.render(args.format));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Format, RunSelector};

    #[test]
    fn steps_skip_superseded_rows_and_name_missing_metrics() {
        let (_dir, store, run) = crate::audit::fixture::opened();
        let steps = load_steps(&store, &run).unwrap();
        assert_eq!(steps.iter().map(|s| (s.step, s.attempt)).collect::<Vec<_>>(), [(0, 0), (1, 0), (2, 0), (3, 1)]);
        assert_eq!(steps[3].number("reward_mean"), Some(0.35), "the resumed attempt's step 3");
        let table = steps_table(&steps, &["reward".into(), "seconds.update".into()]).unwrap();
        assert_eq!(table.headers, ["step", "attempt", "reward_mean", "seconds.update"]);
        let csv = table.render(Format::Csv);
        assert_eq!(csv.lines().last().unwrap(), "3,1,0.35,1");
        let err = steps_table(&steps, &["entropy".into()]).err().unwrap().to_string();
        assert!(err.contains("no metric `entropy`") && err.contains("seconds.rollout"), "{err}");
    }

    #[test]
    fn a_run_in_progress_is_read_while_its_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let writer = crate::store::RunStore::create(&path, "live", "train", &serde_json::json!({})).unwrap();
        writer.log_step(0, serde_json::json!({"reward_mean": 0.1})).unwrap();
        writer.flush().unwrap();
        let (store, run) = resolve(&RunSelector { run: path.display().to_string(), db: dir.path().into() }).unwrap();
        assert_eq!(run.status, "running");
        assert_eq!(load_steps(&store, &run).unwrap().len(), 1);
        // The reader keeps its connection open; the writer still commits, and the reader sees it.
        writer.log_step(1, serde_json::json!({"reward_mean": 0.2})).unwrap();
        writer.flush().unwrap();
        assert_eq!(load_steps(&store, &run).unwrap().len(), 2);
    }

    #[test]
    fn store_times_round_trip() {
        let t = crate::store::now();
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((epoch_seconds(&t).unwrap() - secs).abs() <= 2, "{t}");
        assert_eq!(duration("2026-11-27T03:00:00Z", "2026-11-27T04:05:09Z").unwrap(), "1h05m");
        assert_eq!(epoch_seconds("2024-03-01T00:00:00Z").unwrap() - epoch_seconds("2024-02-28T00:00:00Z").unwrap(), 2 * 86_400);
    }
}
