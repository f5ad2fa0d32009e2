//! `audit prompts`: each prompt's pass rate over the run — which were learned, which never
//! solved, which forgotten.

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::output::{Cell, Table};
use super::{resolve, Opened, RunInfo};
use crate::cli::{PromptSort, PromptStatus, PromptsArgs};

/// One visit of a prompt: the step it was sampled at and how its samples fared.
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    pub step: i64,
    pub samples: i64,
    pub passed: i64,
    pub reward_mean: Option<f64>,
}

impl Visit {
    pub fn pass_rate(&self) -> f64 {
        self.passed as f64 / self.samples.max(1) as f64
    }
}

#[derive(Debug, Clone)]
pub struct PromptHistory {
    pub prompt_id: String,
    pub source: String,
    pub kind: String,
    pub visits: Vec<Visit>,
}

impl PromptHistory {
    pub fn samples(&self) -> i64 {
        self.visits.iter().map(|v| v.samples).sum()
    }

    pub fn pass_rate(&self) -> f64 {
        self.visits.iter().map(|v| v.passed).sum::<i64>() as f64 / self.samples().max(1) as f64
    }

    pub fn first_solved(&self) -> Option<i64> {
        self.visits.iter().find(|v| v.passed > 0).map(|v| v.step)
    }

    /// Pass rate at the last visit minus at the first.
    pub fn gain(&self) -> f64 {
        match (self.visits.first(), self.visits.last()) {
            (Some(a), Some(b)) => b.pass_rate() - a.pass_rate(),
            _ => 0.0,
        }
    }

    pub fn status(&self) -> PromptStatus {
        let (Some(first), Some(last)) = (self.visits.first(), self.visits.last()) else { return PromptStatus::NeverSolved };
        if self.first_solved().is_none() {
            PromptStatus::NeverSolved
        } else if self.visits.len() == 1 {
            PromptStatus::Once
        } else if last.passed == 0 {
            PromptStatus::Forgotten
        } else if last.pass_rate() > first.pass_rate() {
            PromptStatus::Learned
        } else if last.pass_rate() < first.pass_rate() {
            PromptStatus::Worse
        } else {
            PromptStatus::Stable
        }
    }
}

pub fn status_name(status: PromptStatus) -> &'static str {
    match status {
        PromptStatus::Learned => "learned",
        PromptStatus::NeverSolved => "never solved",
        PromptStatus::Forgotten => "forgotten",
        PromptStatus::Worse => "worse",
        PromptStatus::Stable => "stable",
        PromptStatus::Once => "once",
    }
}

/// Every prompt's visits (current attempt only), by prompt id; rollouts the sandbox could not
/// judge are not counted (training left them out of its groups too).
pub fn load_histories(store: &Opened, run: &RunInfo) -> anyhow::Result<Vec<PromptHistory>> {
    let mut stmt = store.conn.prepare(
        "SELECT prompt_id, step, COUNT(*), SUM(verdict = 'passed'), AVG(reward) FROM rollouts \
         WHERE run_id = ?1 AND superseded = 0 AND verdict != 'sandbox_error' \
         GROUP BY prompt_id, step ORDER BY prompt_id, step",
    )?;
    let rows = stmt.query_map([run.id], |r| {
        Ok((r.get::<_, String>(0)?, Visit { step: r.get(1)?, samples: r.get(2)?, passed: r.get(3)?, reward_mean: r.get(4)? }))
    })?;
    let mut by_prompt: BTreeMap<String, Vec<Visit>> = BTreeMap::new();
    for row in rows {
        let (prompt, visit) = row?;
        by_prompt.entry(prompt).or_default().push(visit);
    }
    let mut meta: BTreeMap<String, (String, String)> = BTreeMap::new();
    if store.has_prompts() {
        let mut stmt = store.conn.prepare("SELECT prompt_id, source, kind FROM prompts WHERE run_id = ?1")?;
        for row in stmt.query_map([run.id], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))? {
            let (id, m) = row?;
            meta.insert(id, m);
        }
    }
    Ok(by_prompt
        .into_iter()
        .map(|(prompt_id, visits)| {
            let (source, kind) = meta.get(&prompt_id).cloned().unwrap_or_default();
            PromptHistory { prompt_id, source, kind, visits }
        })
        .collect())
}

pub fn sort(histories: &mut [PromptHistory], by: PromptSort) {
    let desc = |a: f64, b: f64| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    match by {
        PromptSort::Gain => histories.sort_by(|a, b| desc(a.gain(), b.gain()).then_with(|| a.prompt_id.cmp(&b.prompt_id))),
        PromptSort::PassRate => histories.sort_by(|a, b| desc(a.pass_rate(), b.pass_rate()).then_with(|| a.prompt_id.cmp(&b.prompt_id))),
        PromptSort::FirstSolved => histories.sort_by_key(|h| (h.first_solved().unwrap_or(i64::MAX), h.prompt_id.clone())),
        PromptSort::Samples => histories.sort_by(|a, b| b.samples().cmp(&a.samples()).then_with(|| a.prompt_id.cmp(&b.prompt_id))),
        PromptSort::Id => histories.sort_by(|a, b| a.prompt_id.cmp(&b.prompt_id)),
    }
}

pub fn summary_table(histories: &[PromptHistory]) -> Table {
    let mut table = Table::new(["prompt", "source", "status", "visits", "samples", "pass rate", "first", "last", "gain", "first solved"]);
    for h in histories {
        let rate = |v: Option<&Visit>| v.map_or(Cell::Empty, |v| Cell::Text(format!("{}/{}", v.passed, v.samples)));
        table.push(vec![
            h.prompt_id.clone().into(),
            h.source.clone().into(),
            status_name(h.status()).into(),
            Cell::Int(h.visits.len() as i64),
            Cell::Int(h.samples()),
            Cell::Num(h.pass_rate()),
            rate(h.visits.first()),
            rate(h.visits.last()),
            Cell::Num(h.gain()),
            h.first_solved().into(),
        ]);
    }
    table
}

pub fn prompts(args: &PromptsArgs) -> anyhow::Result<ExitCode> {
    let (store, run) = resolve(&args.run)?;
    let mut histories = load_histories(&store, &run)?;
    if let Some(id) = &args.prompt {
        let Some(h) = histories.iter().find(|h| &h.prompt_id == id) else {
            let near: Vec<&str> = histories.iter().map(|h| h.prompt_id.as_str()).filter(|p| p.contains(id.as_str())).take(5).collect();
            anyhow::bail!("run {} never sampled prompt `{id}`{}", run.name, if near.is_empty() { String::new() } else { format!(" (similar: {})", near.join(", ")) });
        };
        if let Some((text, source, kind)) = store.prompt(run.id, id)? {
            println!("prompt {id} ({source}, {kind}):\n{}\n", super::rollouts::indent(&text));
        }
        println!("status: {}; first solved at step {}", status_name(h.status()), h.first_solved().map_or("never".into(), |s| s.to_string()));
        let mut table = Table::new(["step", "samples", "passed", "pass rate", "reward mean"]);
        for v in &h.visits {
            table.push(vec![Cell::Int(v.step), Cell::Int(v.samples), Cell::Int(v.passed), Cell::Num(v.pass_rate()), v.reward_mean.into()]);
        }
        print!("{}", table.render(args.format));
        return Ok(ExitCode::SUCCESS);
    }
    if histories.is_empty() {
        if run.kind == "sft" {
            anyhow::bail!("run {} is an SFT run: it samples no prompts (see `audit steps` for its loss)", run.name);
        }
        anyhow::bail!("run {} has no rollouts yet", run.name);
    }
    if let Some(status) = args.status {
        histories.retain(|h| h.status() == status);
    }
    sort(&mut histories, args.sort);
    let total = histories.len();
    if args.limit > 0 {
        histories.truncate(args.limit);
    }
    print!("{}", summary_table(&histories).render(args.format));
    if histories.len() < total {
        eprintln!("({} of {total} prompts; --limit 0 for all)", histories.len());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_never_and_forgotten_prompts_are_told_apart() {
        let (_dir, store, run) = crate::audit::fixture::opened();
        let mut h = load_histories(&store, &run).unwrap();
        let by_id = |id: &str| h.iter().find(|p| p.prompt_id == id).unwrap().clone();
        let a = by_id("a");
        assert_eq!(a.visits.iter().map(|v| (v.step, v.passed)).collect::<Vec<_>>(), [(0, 0), (1, 1), (2, 4), (3, 4)]);
        assert_eq!((a.status(), a.first_solved(), a.gain()), (PromptStatus::Learned, Some(1), 1.0));
        assert_eq!(by_id("b").status(), PromptStatus::NeverSolved);
        assert_eq!((by_id("c").status(), by_id("c").first_solved()), (PromptStatus::Forgotten, Some(0)));
        assert_eq!(by_id("c").source, "src-c");
        sort(&mut h, PromptSort::Gain);
        assert_eq!(h.iter().map(|p| p.prompt_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        sort(&mut h, PromptSort::FirstSolved);
        assert_eq!(h.iter().map(|p| p.prompt_id.as_str()).collect::<Vec<_>>(), ["c", "a", "b"]);
    }
}
