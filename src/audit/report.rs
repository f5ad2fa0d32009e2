//! `audit report`: one self-contained HTML page (inline SVG and CSS, no scripts, no network)
//! that answers "did reward rise, and why?" at a glance.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use dllm_rollout::order::{html_escape, html_pre};

use super::charts::{lines, paired_bars, stacked, Series};
use super::hacks::findings;
use super::history::{load_histories, status_name, PromptHistory};
use super::output::short_number;
use super::rollouts::{load_rollouts, load_tests, Filter, RolloutRow};
use super::steps::{load_steps, StepRow};
use super::{resolve, Opened, RunInfo};
use crate::cli::{PromptStatus, ReportArgs};

/// Per-step aggregates of the rollouts.
#[derive(Debug, Default, Clone)]
struct StepStats {
    step: i64,
    samples: f64,
    reward_mean: f64,
    reward_std: f64,
    pass_rate: f64,
    tokens_mean: f64,
    tokens_std: f64,
}

/// Rewards and pass rates over the judged rollouts: one the sandbox failed on twice has no
/// reward and no verdict on the completion, and training left it out of its step's metrics.
fn step_stats(store: &Opened, run: &RunInfo) -> anyhow::Result<Vec<StepStats>> {
    let mut stmt = store.conn.prepare(
        "SELECT step, COUNT(*), AVG(COALESCE(reward, 0)), AVG(COALESCE(reward, 0) * COALESCE(reward, 0)), AVG(verdict = 'passed'), \
         AVG(tokens), AVG(tokens * tokens) FROM rollouts \
         WHERE run_id = ?1 AND superseded = 0 AND verdict != 'sandbox_error' GROUP BY step ORDER BY step",
    )?;
    let rows = stmt.query_map([run.id], |r| {
        let (mean, square): (f64, f64) = (r.get(2)?, r.get(3)?);
        let (tmean, tsquare): (f64, f64) = (r.get(5)?, r.get(6)?);
        Ok(StepStats {
            step: r.get(0)?,
            samples: r.get::<_, i64>(1)? as f64,
            reward_mean: mean,
            reward_std: (square - mean * mean).max(0.0).sqrt(),
            pass_rate: r.get(4)?,
            tokens_mean: tmean,
            tokens_std: (tsquare - tmean * tmean).max(0.0).sqrt(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Named series of fractions, one value per step.
type Layers = Vec<(String, Vec<f64>)>;

/// Verdict fractions per step: (steps, [(verdict, fractions)]), most common verdicts first.
fn verdict_mix(store: &Opened, run: &RunInfo) -> anyhow::Result<(Vec<f64>, Layers)> {
    let mut stmt = store.conn.prepare("SELECT step, verdict, COUNT(*) FROM rollouts WHERE run_id = ?1 AND superseded = 0 GROUP BY step, verdict")?;
    let mut counts: BTreeMap<i64, BTreeMap<String, f64>> = BTreeMap::new();
    for row in stmt.query_map([run.id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))? {
        let (step, verdict, n) = row?;
        counts.entry(step).or_default().insert(verdict, n as f64);
    }
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    for by in counts.values() {
        for (v, n) in by {
            *totals.entry(v.clone()).or_default() += n;
        }
    }
    let mut verdicts: Vec<String> = totals.keys().cloned().collect();
    verdicts.sort_by(|a, b| totals[b].partial_cmp(&totals[a]).unwrap_or(std::cmp::Ordering::Equal));
    // At most 7 layers: the rest together as "other".
    let shown: Vec<String> = verdicts.iter().take(7).cloned().collect();
    let steps: Vec<f64> = counts.keys().map(|s| *s as f64).collect();
    let mut layers: Layers = shown.iter().map(|v| (v.clone(), Vec::new())).collect();
    let mut other = Vec::new();
    for by in counts.values() {
        let total: f64 = by.values().sum();
        for (name, values) in &mut layers {
            values.push(by.get(name).copied().unwrap_or(0.0) / total);
        }
        other.push(by.iter().filter(|(v, _)| !shown.contains(v)).map(|(_, n)| n).sum::<f64>() / total);
    }
    if other.iter().any(|o| *o > 0.0) {
        layers.push(("other".into(), other));
    }
    Ok((steps, layers))
}

/// Fractions of prompts per step whose samples all / some / none passed.
fn solve_fractions(histories: &[PromptHistory]) -> Vec<Series> {
    let mut by_step: BTreeMap<i64, [f64; 3]> = BTreeMap::new();
    for h in histories {
        for v in &h.visits {
            let slot = if v.passed == v.samples { 0 } else if v.passed > 0 { 1 } else { 2 };
            by_step.entry(v.step).or_default()[slot] += 1.0;
        }
    }
    ["all samples pass", "some pass", "none pass"]
        .iter()
        .enumerate()
        .map(|(i, name)| Series::line(name, by_step.iter().map(|(s, c)| (*s as f64, c[i] / c.iter().sum::<f64>().max(1.0))).collect()))
        .collect()
}

/// Pass rate per group (source or kind) in the first and second half of the run's steps.
fn halves(histories: &[PromptHistory], key: impl Fn(&PromptHistory) -> String) -> Vec<(String, f64, f64)> {
    let steps: Vec<i64> = histories.iter().flat_map(|h| h.visits.iter().map(|v| v.step)).collect();
    let (lo, hi) = (steps.iter().copied().min().unwrap_or(0), steps.iter().copied().max().unwrap_or(0));
    let middle = lo + (hi - lo + 1) / 2;
    let mut groups: BTreeMap<String, [f64; 4]> = BTreeMap::new();
    for h in histories {
        let g = groups.entry(key(h)).or_default();
        for v in &h.visits {
            let half = if v.step < middle { 0 } else { 2 };
            g[half] += v.passed as f64;
            g[half + 1] += v.samples as f64;
        }
    }
    groups.into_iter().map(|(name, g)| (if name.is_empty() { "(unknown)".into() } else { name }, g[0] / g[1].max(1.0), g[2] / g[3].max(1.0))).collect()
}

fn metric_series(steps: &[StepRow], key: &str) -> Option<Series> {
    let points: Vec<(f64, f64)> = steps.iter().filter_map(|s| s.number(key).map(|v| (s.step as f64, v))).collect();
    (!points.is_empty()).then(|| Series::line(key, points))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1340px;color:#222}\
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}\
.meta{color:#555;font-size:13px}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));gap:12px}\
figure{margin:0;border:1px solid #e4e4e4;border-radius:6px;padding:4px;background:#fff}\
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}pre{font-size:13px;line-height:1.45;white-space:pre-wrap;margin:4px 0}\
.rollout{border:1px solid #e4e4e4;border-radius:6px;padding:6px 10px;margin:10px 0}.ok{color:#2a7}.bad{color:#c33}";

fn figure(svg: anyhow::Result<String>) -> String {
    match svg {
        Ok(svg) => format!("<figure>{svg}</figure>\n"),
        Err(e) => format!("<figure><p>chart not drawn: {}</p></figure>\n", html_escape(&e.to_string())),
    }
}

fn prompt_table(title: &str, histories: &[&PromptHistory]) -> String {
    let mut out = format!("<h3>{}</h3>\n<table><tr><th>prompt</th><th>source</th><th>status</th><th>first</th><th>last</th><th>pass rate</th><th>first solved</th></tr>\n", html_escape(title));
    for h in histories {
        let visit = |v: Option<&super::history::Visit>| v.map_or(String::new(), |v| format!("{}/{} (step {})", v.passed, v.samples, v.step));
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            html_escape(&h.prompt_id),
            html_escape(&h.source),
            status_name(h.status()),
            visit(h.visits.first()),
            visit(h.visits.last()),
            short_number(h.pass_rate()),
            h.first_solved().map_or("never".into(), |s| s.to_string())
        );
    }
    if histories.is_empty() {
        out.push_str("<tr><td colspan=7>none</td></tr>\n");
    }
    out.push_str("</table>\n");
    out
}

fn rollout_card(store: &Opened, r: &RolloutRow, why: &str) -> anyhow::Result<String> {
    let tests = load_tests(store, r.id)?;
    let passed = tests.iter().filter(|t| t.verdict == "passed").count();
    let class = if r.verdict == "passed" { "ok" } else { "bad" };
    let mut out = format!(
        "<div class=rollout><b>rollout {}</b> · {} · step {} · prompt {} · reward {} · <span class={class}>{}</span> ({passed}/{} tests)\n",
        r.id,
        html_escape(why),
        r.step,
        html_escape(&r.prompt_id),
        r.reward.map_or("none".into(), short_number),
        html_escape(&r.verdict),
        tests.len()
    );
    if let Some((text, _, _)) = store.prompt(r.run_id, &r.prompt_id)? {
        let _ = write!(out, "<details><summary>prompt</summary><pre>{}</pre></details>", html_escape(&text));
    }
    match r.decode_order() {
        Some(pieces) => out.push_str(&html_pre(&pieces)),
        None => {
            let _ = write!(out, "<pre>{}</pre>", html_escape(&r.completion));
        }
    }
    out.push_str("</div>\n");
    Ok(out)
}

pub fn render(store: &Opened, run: &RunInfo, samples: usize) -> anyhow::Result<String> {
    let steps = load_steps(store, run)?;
    let stats = step_stats(store, run)?;
    let histories = load_histories(store, run)?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>dllm-rl audit: {name}</title><style>{STYLE}</style></head><body>\n\
         <h1>Run {name}</h1><p class=meta>{kind} · {status} · {n} steps · {rollouts} rollouts · {prompts} prompts · started {started}{ended} · dllm-rl {version} · store {store}</p>\n",
        name = html_escape(&run.name),
        kind = html_escape(&run.kind),
        status = html_escape(&run.status),
        n = steps.len(),
        rollouts = stats.iter().map(|s| s.samples).sum::<f64>(),
        prompts = histories.len(),
        started = html_escape(&run.started_at),
        ended = run.ended_at.as_ref().map_or(String::new(), |e| format!(", ended {}", html_escape(e))),
        version = html_escape(&run.code_version),
        store = html_escape(&store.path.display().to_string()),
    );
    // Single steps are noisy: compare the means of the first and last tenth of the run.
    let window = (stats.len() / 10).max(1);
    let first_last = |f: fn(&StepStats) -> f64| {
        if stats.is_empty() {
            return "–".to_string();
        }
        let mean = |rows: &[StepStats]| rows.iter().map(f).sum::<f64>() / rows.len() as f64;
        format!("{} → {}", short_number(mean(&stats[..window])), short_number(mean(&stats[stats.len() - window..])))
    };
    let _ = writeln!(
        html,
        "<p>Reward {}; pass rate {} (means of the first and last {window} step{}).</p>",
        first_last(|s| s.reward_mean),
        first_last(|s| s.pass_rate),
        if window == 1 { "" } else { "s" }
    );

    html.push_str("<h2>Learning</h2><div class=grid>\n");
    let xs = |f: &dyn Fn(&StepStats) -> f64| stats.iter().map(|s| (s.step as f64, f(s))).collect::<Vec<_>>();
    let reward = Series {
        name: "reward mean (band: ± 1 std over samples)".into(),
        points: xs(&|s| s.reward_mean),
        band: stats.iter().map(|s| (s.step as f64, s.reward_mean - s.reward_std, s.reward_mean + s.reward_std)).collect(),
    };
    html.push_str(&figure(lines("Reward per step", "reward", &[reward, Series::line("pass rate", xs(&|s| s.pass_rate))], false)));
    html.push_str(&figure(lines("Prompts whose samples all / some / none pass", "fraction of prompts", &solve_fractions(&histories), true)));
    let length = Series {
        name: "tokens per completion (band: ± 1 std)".into(),
        points: xs(&|s| s.tokens_mean),
        band: stats.iter().map(|s| (s.step as f64, (s.tokens_mean - s.tokens_std).max(0.0), s.tokens_mean + s.tokens_std)).collect(),
    };
    html.push_str(&figure(lines("Response length", "tokens", &[length], false)));
    let (vsteps, layers) = verdict_mix(store, run)?;
    html.push_str(&figure(stacked("Verdicts over time", &vsteps, &layers)));
    html.push_str("</div>\n<h2>Optimisation</h2><div class=grid>\n");
    for (title, key) in [("Loss", "loss"), ("Clip fraction", "clip_fraction"), ("Approximate KL (old ‖ new)", "approx_kl"), ("Gradient norm (before clipping)", "grad_norm")] {
        match metric_series(&steps, key) {
            Some(series) => html.push_str(&figure(lines(title, key, &[series], false))),
            None => {
                let _ = writeln!(html, "<figure><p>{title}: not recorded by this run</p></figure>");
            }
        }
    }
    let stage_keys: std::collections::BTreeSet<String> =
        steps.iter().flat_map(|s| s.metrics.keys().filter(|k| k.starts_with("seconds.") && *k != "seconds.total").cloned()).collect();
    let stages: Vec<Series> = stage_keys.iter().filter_map(|k| metric_series(&steps, k).map(|mut s| { s.name = k.trim_start_matches("seconds.").into(); s })).collect();
    if !stages.is_empty() {
        html.push_str(&figure(lines("Seconds per stage", "seconds", &stages, false)));
    }
    html.push_str("</div>\n<h2>Prompts</h2><div class=grid>\n");
    html.push_str(&figure(paired_bars("Pass rate by source", ("first half of the run", "second half"), &halves(&histories, |h| h.source.clone()))));
    html.push_str(&figure(paired_bars("Pass rate by kind", ("first half of the run", "second half"), &halves(&histories, |h| h.kind.clone()))));
    html.push_str("</div>\n");
    let mut improved: Vec<&PromptHistory> = histories.iter().filter(|h| h.gain() > 0.0).collect();
    improved.sort_by(|a, b| b.gain().partial_cmp(&a.gain()).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.prompt_id.cmp(&b.prompt_id)));
    improved.truncate(10);
    html.push_str(&prompt_table("Most improved (pass rate at the last visit minus the first)", &improved));
    let never: Vec<&PromptHistory> = histories.iter().filter(|h| h.status() == PromptStatus::NeverSolved).take(20).collect();
    let never_total = histories.iter().filter(|h| h.status() == PromptStatus::NeverSolved).count();
    html.push_str(&prompt_table(&format!("Never solved ({never_total} prompts; first 20)"), &never));

    let found = findings(store, run, 0.75)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &found {
        *counts.entry(f.signal.as_str()).or_default() += 1;
    }
    let _ = write!(
        html,
        "<h2>Possible reward hacks</h2><p>{}</p>\n<table><tr><th>rollout</th><th>step</th><th>prompt</th><th>signal</th><th>passed</th><th>reason</th></tr>\n",
        if found.is_empty() { "Nothing suspicious.".to_string() } else { counts.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(" · ") }
    );
    for f in found.iter().take(15) {
        let _ = writeln!(
            html,
            "<tr><td class=n>{}</td><td class=n>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.rollout.map_or(String::new(), |r| r.to_string()),
            f.step,
            html_escape(&f.prompt_id),
            html_escape(&f.signal),
            if f.passed { "yes" } else { "no" },
            html_escape(&f.reason)
        );
    }
    html.push_str("</table>\n");

    html.push_str("<h2>Sample rollouts in decode order</h2><p>Each token is coloured by the denoising step that wrote it: blue early, red late; grey: padding filled after the answer. Hover a token for its step.</p>\n");
    let mut shown = 0;
    let last_step = stats.last().map(|s| s.step);
    let mut picks: Vec<(RolloutRow, String)> = Vec::new();
    for h in improved.iter().take(samples.div_ceil(2)) {
        if let Some(r) = load_rollouts(store, Some(run.id), &Filter { prompt: Some(h.prompt_id.clone()), verdicts: vec!["passed".into()], ..Filter::default() })?.pop() {
            picks.push((r, "a most improved prompt, its latest passing sample".into()));
        }
    }
    if let Some(step) = last_step {
        for r in load_rollouts(store, Some(run.id), &Filter { step: Some(step), ..Filter::default() })?.into_iter().take(samples.saturating_sub(picks.len())) {
            picks.push((r, "from the last step".into()));
        }
    }
    for (r, why) in picks.iter().take(samples) {
        html.push_str(&rollout_card(store, r, why)?);
        shown += 1;
    }
    if shown == 0 {
        html.push_str("<p>No rollouts recorded.</p>\n");
    }
    html.push_str("</body></html>\n");
    Ok(html)
}

pub fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let (store, run) = resolve(&args.run)?;
    let html = render(&store, &run, args.samples)?;
    std::fs::write(&args.out, html).with_context(|| format!("writing {}", args.out.display()))?;
    println!("report for run {}: {}", run.name, args.out.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollouts_the_sandbox_could_not_judge_count_in_no_rate() {
        let (dir, store, run) = crate::audit::fixture::opened();
        let (before, histories) = (step_stats(&store, &run).unwrap(), crate::audit::history::load_histories(&store, &run).unwrap());
        // Two more samples of prompt a at step 0, unjudged: no reward, verdict sandbox_error.
        rusqlite::Connection::open(dir.path().join("store.sqlite"))
            .unwrap()
            .execute(
                "INSERT INTO rollouts (run_id, step, attempt, superseded, prompt_id, sample, seed, completion, tokens, step_map, reward, verdict) \
                 SELECT run_id, step, attempt, superseded, prompt_id, sample + 100, seed, completion, tokens, step_map, NULL, 'sandbox_error' \
                 FROM rollouts WHERE run_id = ?1 AND step = 0 AND prompt_id = 'a' AND superseded = 0 LIMIT 2",
                [run.id],
            )
            .unwrap();
        let after = step_stats(&store, &run).unwrap();
        assert_eq!((after[0].samples, after[0].reward_mean, after[0].pass_rate), (before[0].samples, before[0].reward_mean, before[0].pass_rate));
        let visits = |h: &[crate::audit::history::PromptHistory]| h.iter().find(|p| p.prompt_id == "a").unwrap().visits[0].samples;
        assert_eq!(visits(&crate::audit::history::load_histories(&store, &run).unwrap()), visits(&histories));
    }

    #[test]
    fn the_report_is_self_contained_and_has_every_chart() {
        let (_dir, store, run) = crate::audit::fixture::opened();
        let html = render(&store, &run, 4).unwrap();
        // The SVG namespace is a name, not a fetch; nothing else may point outside the file.
        let outside = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!outside.contains("<script") && !outside.contains("http://") && !outside.contains("https://") && !outside.contains("<link"), "self-contained");
        for title in ["Reward per step", "Verdicts over time", "Response length", "loss", "Pass rate by source", "Seconds per stage"] {
            assert!(html.contains(&format!(">\n{title}\n</text>")), "missing chart {title}");
        }
        assert_eq!(html.matches("<svg").count(), 8, "reward, solves, length, verdicts, loss, stages, pass rate by source and by kind");
        assert!(html.contains("Clip fraction: not recorded by this run"));
        assert!(html.contains("exits: 4") && html.contains("pass_rate_jump: 1"));
        assert!(html.contains("title=\"step 4\""), "decode-order colouring");
        let (_, layers) = verdict_mix(&store, &run).unwrap();
        for i in 0..4 {
            let total: f64 = layers.iter().map(|l| l.1[i]).sum();
            assert!((total - 1.0).abs() < 1e-9);
        }
    }
}
