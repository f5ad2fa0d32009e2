//! `dllm-rl eval`: sample G completions per task, judge them, report unbiased pass@k.
//!
//! Generation and verification overlap: each decoded batch goes to a verifier thread (which
//! runs the sandbox pool) while the next batch decodes.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context};
use dllm_prompts::RenderConfig;
use dllm_rewards::{Judged, RewardConfig};
use dllm_rollout::{generate, rollout_seed, Request, SpecialIds};
use dllm_verifier::{Completion, PreparedTask, Task, TaskVerdict, Verifier};

use super::generate::load_policy;
use dllm_prompts::read_jsonl;
use crate::cli::EvalArgs;
use crate::store::{PromptRecord, RolloutRecord, RunStore, TestRecord};
use crate::train::chat_text;

/// Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k),
/// as the numerically stable product.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n < k {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// One judged completion.
struct Judgement {
    task: usize,
    sample: usize,
    text: String,
    tokens: usize,
    verdict: TaskVerdict,
    reward: Option<dllm_rewards::Reward>,
}

#[derive(Debug, Default, serde::Serialize)]
struct Group {
    tasks: usize,
    samples: usize,
    solved_samples: usize,
    pass_at_k: BTreeMap<usize, f64>,
}

#[derive(Debug, serde::Serialize)]
struct Summary {
    model: String,
    tasks_file: String,
    samples_per_task: usize,
    overall: Group,
    by_source: BTreeMap<String, Group>,
    by_kind: BTreeMap<String, Group>,
    seconds: f64,
}

/// The `[data.render]` table of a train or SFT config; other sections are not read.
fn prompt_format(path: &std::path::Path) -> anyhow::Result<RenderConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
    match doc.get("data").and_then(|d| d.get("render")) {
        Some(render) => render.clone().try_into().with_context(|| format!("{}: [data.render]", path.display())),
        None => bail!("{}: no [data.render] section to take the prompt format from", path.display()),
    }
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let mut tasks: Vec<Task> = read_jsonl::<Task>(&args.tasks)?.into_iter().map(|(_, t)| t).collect();
    if let Some(limit) = args.limit {
        tasks.truncate(limit);
    }
    if tasks.is_empty() {
        bail!("{}: no tasks", args.tasks.display());
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let cfg = args.sampler.config()?;
    // The run is written after generating and judging: a store that cannot be written must say
    // so now, not after the work is done.
    if let Some(path) = &args.store {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        RunStore::prepare(path)?;
    }
    let (model, tokenizer) = load_policy(&args.model, args.lora.as_deref())?;
    let special = SpecialIds::from_config(&model.config, &tokenizer.stop_ids)?;
    let render = match &args.prompt_format {
        Some(path) => prompt_format(path)?,
        None => RenderConfig::default(),
    };
    let requests = tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            let prompt = tokenizer.encode(&chat_text(&render.render(task)?))?;
            let seeds = (0..args.samples as u64).map(|s| rollout_seed(args.sampler.seed, 0, i as u64, s)).collect();
            Ok(Request { prompt, seeds })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let verifier = Verifier::new(args.backend.into(), jobs).context("starting the sandbox")?.with_fail_fast(args.fail_fast);
    // Tasks whose tests cannot even be prepared fail every sample (with the reason: the chain,
    // since the error's message only names the task).
    let prepared: Vec<Result<PreparedTask, String>> =
        verifier.prepare_all(tasks.clone()).into_iter().map(|r| r.map_err(|e| format!("{:#}", anyhow::Error::new(e)))).collect();
    let rewards = RewardConfig::default();

    let bar = crate::telemetry::progress_bar((tasks.len() * args.samples) as u64, "{bar:30} {pos}/{len} completions judged, {elapsed}");
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<Vec<(usize, usize, String, usize)>>();
    // Seeds and decode orders, for the run store.
    // (task, sample) -> (seed, step map, token pieces).
    type Order = (u64, Vec<i64>, Vec<String>);
    let mut orders: std::collections::HashMap<(usize, usize), Order> = std::collections::HashMap::new();
    let judged: Vec<Judgement> = std::thread::scope(|scope| -> anyhow::Result<Vec<Judgement>> {
        let verifying = scope.spawn(|| {
            let ready: Vec<PreparedTask> = prepared.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
            let slot: Vec<Option<usize>> = {
                let mut next = 0;
                prepared.iter().map(|p| p.is_ok().then(|| { next += 1; next - 1 })).collect()
            };
            let mut out = Vec::new();
            for batch in rx {
                let runnable: Vec<&(usize, usize, String, usize)> = batch.iter().filter(|c| slot[c.0].is_some()).collect();
                let completions: Vec<Completion> =
                    runnable.iter().map(|c| Completion { task: slot[c.0].unwrap_or(0), text: c.2.clone() }).collect();
                let verdicts = verifier.verify_batch(&ready, &completions, &|_| bar.inc(1));
                let mut verdicts = verdicts.into_iter();
                for (task, sample, text, tokens) in batch {
                    let verdict = match &prepared[task] {
                        Ok(_) => verdicts.next().unwrap_or_else(|| TaskVerdict::from_tests(&tasks[task].id, None, vec![], 0.0)),
                        Err(reason) => {
                            bar.inc(1);
                            let mut v = TaskVerdict::from_tests(&tasks[task].id, None, vec![], 0.0);
                            v.task_error = Some(reason.clone());
                            v
                        }
                    };
                    let reward = rewards.reward(&Judged { completion: &text, tokens, verdict: &verdict }).ok();
                    out.push(Judgement { task, sample, text, tokens, verdict, reward });
                }
            }
            out
        });
        generate(&model, &cfg, &requests, &special, args.sampler.batching, args.sampler.batch_size, &mut |batch, _, _| {
            for r in batch {
                // Token pieces only serve the run store: none without --store.
                let pieces = if args.store.is_some() { tokenizer.pieces(r.completion(&special.stop)) } else { Vec::new() };
                orders.insert((r.request, r.sample), (r.seed, r.step_map.clone(), pieces));
            }
            let texts = batch
                .iter()
                .map(|r| {
                    let completion = r.completion(&special.stop);
                    let text = tokenizer.decode(completion, true).unwrap_or_default();
                    (r.request, r.sample, text, completion.len())
                })
                .collect();
            let _ = tx.send(texts);
        })?;
        drop(tx);
        verifying.join().map_err(|_| anyhow::anyhow!("the verifier thread panicked"))
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    // Per task: samples and solves.
    let mut per_task = vec![(0usize, 0usize); tasks.len()];
    for j in &judged {
        per_task[j.task].0 += 1;
        per_task[j.task].1 += usize::from(j.verdict.all_passed);
    }
    let ks: Vec<usize> = args.k.iter().copied().filter(|&k| k >= 1 && k <= args.samples).collect();
    let add = |group: &mut Group, (n, c): (usize, usize)| {
        group.tasks += 1;
        group.samples += n;
        group.solved_samples += c;
        for &k in &ks {
            *group.pass_at_k.entry(k).or_default() += pass_at_k(n, c, k);
        }
    };
    let mut overall = Group::default();
    let mut by_source: BTreeMap<String, Group> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, Group> = BTreeMap::new();
    for (task, &counts) in tasks.iter().zip(&per_task) {
        add(&mut overall, counts);
        add(by_source.entry(task.source.clone().unwrap_or_else(|| "-".into())).or_default(), counts);
        add(by_kind.entry(task.kind().into()).or_default(), counts);
    }
    for g in std::iter::once(&mut overall).chain(by_source.values_mut()).chain(by_kind.values_mut()) {
        let tasks = g.tasks.max(1) as f64;
        g.pass_at_k.values_mut().for_each(|v| *v /= tasks);
    }

    if let Some(path) = &args.per_task {
        let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        for (task, &(n, c)) in tasks.iter().zip(&per_task) {
            let line = serde_json::json!({
                "task_id": task.id, "source": task.source, "kind": task.kind(),
                "samples": n, "passed": c, "pass_rate": c as f64 / n.max(1) as f64,
            });
            writeln!(file, "{line}")?;
        }
    }
    if let Some(path) = &args.completions {
        let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut sorted: Vec<&Judgement> = judged.iter().collect();
        sorted.sort_by_key(|j| (j.task, j.sample));
        for j in sorted {
            let line = serde_json::json!({
                "task_id": tasks[j.task].id, "sample": j.sample, "completion": j.text,
                "verdict": j.verdict.summary(), "reward": j.reward.as_ref().map(|r| r.total), "detail": j.verdict,
            });
            writeln!(file, "{line}")?;
        }
    }

    let summary = Summary {
        model: args.model.display().to_string(),
        tasks_file: args.tasks.display().to_string(),
        samples_per_task: args.samples,
        overall,
        by_source,
        by_kind,
        seconds,
    };
    let header: String = ks.iter().map(|k| format!(" pass@{k} |")).collect();
    println!("| group | tasks | samples solved |{header}");
    println!("|---|---|---|{}", "---|".repeat(ks.len()));
    let row = |name: &str, g: &Group| {
        let cells: String = ks.iter().map(|k| format!(" {:.1}% |", 100.0 * g.pass_at_k.get(k).copied().unwrap_or(f64::NAN))).collect();
        println!("| {name} | {} | {}/{} |{cells}", g.tasks, g.solved_samples, g.samples);
    };
    row("all", &summary.overall);
    for (name, g) in &summary.by_source {
        row(&format!("source {name}"), g);
    }
    for (name, g) in &summary.by_kind {
        row(&format!("kind {name}"), g);
    }
    tracing::info!("{} completions generated and judged in {seconds:.1} s", judged.len());
    // The summary first: it survives a store that fails.
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.store {
        // Process ids repeat (each container starts again at 1): the start time goes first.
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let name = format!("eval-{started}-{}", std::process::id());
        let config = serde_json::json!({"model": summary.model, "tasks": summary.tasks_file, "samples": args.samples, "sampler": cfg});
        let store = RunStore::create(path, &name, "eval", &config)?;
        let prompts = tasks
            .iter()
            .zip(&requests)
            .map(|(t, r)| PromptRecord {
                prompt_id: t.id.clone(),
                source: t.source.clone().unwrap_or_default(),
                kind: t.kind().into(),
                text: tokenizer.decode(&r.prompt, false).unwrap_or_default(),
            })
            .collect();
        store.log_prompts(prompts)?;
        let records = judged
            .iter()
            .map(|j| {
                let (seed, step_map, pieces) = orders.get(&(j.task, j.sample)).cloned().unwrap_or_default();
                RolloutRecord {
                    step: 0,
                    prompt_id: tasks[j.task].id.clone(),
                    sample: j.sample as i64,
                    seed,
                    completion: j.text.clone(),
                    tokens: j.tokens as i64,
                    step_map,
                    pieces,
                    reward: j.reward.as_ref().map(|r| r.total),
                    reward_components: j.reward.as_ref().and_then(|r| serde_json::to_value(&r.components).ok()),
                    verdict: j.verdict.summary().into(),
                    hack_signals: serde_json::Value::Array(vec![]),
                    tests: TestRecord::from_verdict(&j.verdict),
                }
            })
            .collect();
        store.log_rollouts(records)?;
        store.log_step(0, serde_json::to_value(&summary)?)?;
        store.set_status("finished")?;
        store.flush()?;
        println!("run {name} recorded in {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::pass_at_k;

    #[test]
    fn pass_at_k_by_hand() {
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        // 1 - C(7,5)/C(10,5) = 1 - 21/252.
        assert!((pass_at_k(10, 3, 5) - (1.0 - 21.0 / 252.0)).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 6, 5), 1.0);
        assert!(pass_at_k(3, 1, 5).is_nan());
    }
}
