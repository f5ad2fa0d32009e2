//! `audit rollouts` (list and filter) and `audit show` (one rollout in full).

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;
use dllm_rollout::order::{ansi, printable, Piece};
use rusqlite::{params_from_iter, OptionalExtension};

use super::output::{Cell, Table};
use super::{find_stores, open, resolve, Opened};
use crate::cli::{Colour, RolloutsArgs, ShowArgs};

/// A rollout row as the audit reads it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolloutRow {
    pub id: i64,
    pub run_id: i64,
    pub step: i64,
    pub attempt: i64,
    pub prompt_id: String,
    pub sample: i64,
    pub seed: String,
    pub completion: String,
    pub tokens: i64,
    pub step_map: Vec<i64>,
    /// Empty when the store predates schema 2.
    pub pieces: Vec<String>,
    pub reward: Option<f64>,
    pub reward_components: serde_json::Value,
    pub verdict: String,
    pub hack_signals: Vec<Signal>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    pub name: String,
    #[serde(default)]
    pub reason: String,
}

impl RolloutRow {
    /// The completion's tokens with the step that wrote each, when the store has them.
    pub fn decode_order(&self) -> Option<Vec<Piece>> {
        (!self.pieces.is_empty()).then(|| self.pieces.iter().cloned().zip(self.step_map.iter().copied().chain(std::iter::repeat(-1))).collect())
    }
}

/// Filters for [`load_rollouts`]; `None` / empty: no filter.
#[derive(Debug, Default)]
pub struct Filter {
    pub step: Option<i64>,
    pub prompt: Option<String>,
    pub verdicts: Vec<String>,
    pub min_reward: Option<f64>,
    pub max_reward: Option<f64>,
    pub flagged: bool,
    /// Only rollouts that passed or carry a signal (what `hacks` looks at).
    pub passed_or_flagged: bool,
    pub id: Option<i64>,
    /// 0: no limit.
    pub limit: usize,
}

const COLUMNS: &str = "id, run_id, step, attempt, prompt_id, sample, seed, completion, tokens, step_map, reward, reward_components, verdict, hack_signals";

/// Rollouts of run `run` (current attempt only), oldest first.
pub fn load_rollouts(store: &Opened, run: Option<i64>, filter: &Filter) -> anyhow::Result<Vec<RolloutRow>> {
    let pieces = if store.has_prompts() { "pieces" } else { "NULL" };
    let mut sql = format!("SELECT {COLUMNS}, {pieces} FROM rollouts WHERE 1 = 1");
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    let mut add = |clause: &str, value: rusqlite::types::Value| {
        values.push(value);
        sql.push_str(&format!(" AND {clause} ?{}", values.len()));
    };
    if let Some(run) = run {
        add("superseded = 0 AND run_id =", run.into());
    }
    if let Some(id) = filter.id {
        add("id =", id.into());
    }
    if let Some(step) = filter.step {
        add("step =", step.into());
    }
    if let Some(prompt) = &filter.prompt {
        add("prompt_id =", prompt.clone().into());
    }
    if let Some(r) = filter.min_reward {
        add("reward >=", r.into());
    }
    if let Some(r) = filter.max_reward {
        add("reward <=", r.into());
    }
    if !filter.verdicts.is_empty() {
        let marks: Vec<String> = filter
            .verdicts
            .iter()
            .map(|v| {
                values.push(v.trim().to_string().into());
                format!("?{}", values.len())
            })
            .collect();
        sql.push_str(&format!(" AND verdict IN ({})", marks.join(", ")));
    }
    if filter.flagged {
        sql.push_str(" AND json_array_length(hack_signals) > 0");
    }
    if filter.passed_or_flagged {
        sql.push_str(" AND (verdict = 'passed' OR json_array_length(hack_signals) > 0)");
    }
    sql.push_str(" ORDER BY id");
    if filter.limit > 0 {
        sql.push_str(&format!(" LIMIT {}", filter.limit));
    }
    let mut stmt = store.conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(values), |r| {
        let json = |i: usize| -> rusqlite::Result<Option<String>> { r.get(i) };
        Ok(RolloutRow {
            id: r.get(0)?,
            run_id: r.get(1)?,
            step: r.get(2)?,
            attempt: r.get(3)?,
            prompt_id: r.get(4)?,
            sample: r.get(5)?,
            seed: r.get(6)?,
            completion: r.get(7)?,
            tokens: r.get(8)?,
            step_map: json(9)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
            reward: r.get(10)?,
            reward_components: json(11)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(serde_json::Value::Null),
            verdict: r.get(12)?,
            hack_signals: json(13)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
            pieces: json(14)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Text on one line, at most `max` characters (newlines shown as ⏎).
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = printable(text).replace("\r\n", "⏎").replace(['\n', '\r'], "⏎").replace('\t', " ");
    if flat.chars().count() > max {
        flat.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    } else {
        flat
    }
}

pub fn indent(text: &str) -> String {
    printable(text).lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

pub fn list(args: &RolloutsArgs) -> anyhow::Result<ExitCode> {
    let (store, run) = resolve(&args.run)?;
    let filter = Filter {
        step: args.step,
        prompt: args.prompt.clone(),
        verdicts: args.verdict.clone(),
        min_reward: args.min_reward,
        max_reward: args.max_reward,
        flagged: args.flagged,
        passed_or_flagged: false,
        id: None,
        limit: args.limit,
    };
    let rows = load_rollouts(&store, Some(run.id), &filter)?;
    let mut table = Table::new(["id", "step", "prompt", "sample", "reward", "verdict", "tokens", "signals", "completion"]);
    for r in &rows {
        table.push(vec![
            Cell::Int(r.id),
            Cell::Int(r.step),
            r.prompt_id.clone().into(),
            Cell::Int(r.sample),
            r.reward.into(),
            r.verdict.clone().into(),
            Cell::Int(r.tokens),
            r.hack_signals.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(",").into(),
            // Whole in CSV and JSON; the terminal table shortens it to one line.
            r.completion.clone().into(),
        ]);
    }
    print!("{}", table.render(args.format));
    if rows.is_empty() {
        eprintln!("no rollouts of run {} match", run.name);
    } else if args.limit > 0 && rows.len() == args.limit {
        eprintln!("(first {} matches; --limit 0 for all)", rows.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// One test's row of `test_results`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestRow {
    pub test: i64,
    pub verdict: String,
    pub seconds: f64,
    pub stdout: String,
    pub stderr: String,
}

pub fn load_tests(store: &Opened, rollout: i64) -> anyhow::Result<Vec<TestRow>> {
    let mut stmt = store.conn.prepare("SELECT test, verdict, seconds, stdout, stderr FROM test_results WHERE rollout_id = ?1 ORDER BY test")?;
    let rows = stmt.query_map([rollout], |r| Ok(TestRow { test: r.get(0)?, verdict: r.get(1)?, seconds: r.get(2)?, stdout: r.get(3)?, stderr: r.get(4)? }))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let stores = find_stores(&args.db)?;
    let mut found = None;
    for path in &stores {
        let store = open(path)?;
        let exists: Option<i64> = store.conn.query_row("SELECT id FROM rollouts WHERE id = ?1", [args.rollout], |r| r.get(0)).optional()?;
        if exists.is_some() {
            if found.is_some() {
                bail!("rollout {} exists in several stores under {}; pass --db with the store file or run folder", args.rollout, args.db.display());
            }
            found = Some(store);
        }
    }
    let Some(store) = found else {
        bail!("no rollout {} in {}", args.rollout, if stores.is_empty() { format!("{} (no store.sqlite there)", args.db.display()) } else { stores.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ") });
    };
    let r = load_rollouts(&store, None, &Filter { id: Some(args.rollout), ..Filter::default() })?.remove(0);
    let run = store.runs()?.into_iter().find(|run| run.id == r.run_id).map(|run| run.name).unwrap_or_default();
    let colour = match args.colour {
        Colour::Always => true,
        Colour::Never => false,
        Colour::Auto => std::io::stdout().is_terminal(),
    };
    println!("rollout {} · run {run} · step {} (attempt {}) · prompt {} · sample {} · seed {}", r.id, r.step, r.attempt, r.prompt_id, r.sample, r.seed);
    match store.prompt(r.run_id, &r.prompt_id)? {
        Some((text, source, kind)) => println!("\n── prompt ({source}, {kind})\n{}", indent(&text)),
        None => println!("\n── prompt: not in this store (written before schema 2)"),
    }
    match (colour, r.decode_order()) {
        (true, Some(pieces)) => {
            println!("\n── completion ({} tokens), coloured by the denoising step that wrote each token:", r.tokens);
            print!("{}", ansi(&pieces));
        }
        (false, Some(pieces)) => {
            println!("\n── completion ({} tokens)\n{}", r.tokens, indent(&r.completion));
            let order: Vec<String> = pieces.iter().map(|(t, s)| format!("{s}:{}", one_line(t, 12))).collect();
            println!("\n── decode order (step:token)\n    {}", order.join(" "));
        }
        (_, None) => println!("\n── completion ({} tokens)\n{}", r.tokens, indent(&r.completion)),
    }
    let tests = load_tests(&store, r.id)?;
    let passed = tests.iter().filter(|t| t.verdict == "passed").count();
    println!("\n── verdict {} · tests {passed}/{} passed", r.verdict, tests.len());
    for t in &tests {
        println!("  #{:<3} {:<14} {:.3} s", t.test, t.verdict, t.seconds);
        for (name, text) in [("stdout", &t.stdout), ("stderr", &t.stderr)] {
            if !text.trim().is_empty() {
                println!("       {name}: {}", one_line(text.trim(), 100));
            }
        }
    }
    println!("\n── reward {}", r.reward.map_or("none (sandbox failure)".into(), |x| x.to_string()));
    if let Some(parts) = r.reward_components.as_array() {
        for p in parts {
            let get = |k: &str| p.get(k).map(|v| v.as_str().map_or_else(|| v.to_string(), String::from)).unwrap_or_default();
            println!("  {:<18} value {:<8} weight {:<6} {}", get("name"), get("value"), get("weight"), get("reason"));
        }
    }
    if r.hack_signals.is_empty() {
        println!("\n── hack signals: none");
    } else {
        println!("\n── hack signals");
        for s in &r.hack_signals {
            println!("  {}: {}", s.name, s.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_combine_and_superseded_rows_are_hidden() {
        let (_dir, store, run) = crate::audit::fixture::opened();
        let all = load_rollouts(&store, Some(run.id), &Filter::default()).unwrap();
        assert_eq!(all.len(), 48, "4 steps x 3 prompts x 4 samples; the superseded step 3 left out");
        assert!(all.iter().filter(|r| r.step == 3).all(|r| r.attempt == 1));
        let some = load_rollouts(&store, Some(run.id), &Filter { step: Some(1), verdicts: vec!["passed".into()], ..Filter::default() }).unwrap();
        assert_eq!(some.iter().map(|r| r.prompt_id.as_str()).collect::<Vec<_>>(), ["a", "c", "c"]);
        let flagged = load_rollouts(&store, Some(run.id), &Filter { flagged: true, min_reward: Some(0.0), ..Filter::default() }).unwrap();
        assert_eq!(flagged.len(), 4);
        assert_eq!(flagged[0].hack_signals[0].name, "exits");
        let order = flagged[0].decode_order().unwrap();
        assert_eq!(order[2], ("b".to_string(), 1));
        assert_eq!(one_line("a\nb\tc", 4), "a⏎b…");
    }
}
