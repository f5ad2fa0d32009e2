//! `dllm-rl verify`: judge completions (or the tasks' reference solutions) in a sandbox.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use dllm_prompts::read_jsonl;
use dllm_verifier::{Completion, PreparedTask, Task, TaskVerdict, Verifier};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::cli::VerifyArgs;

/// A completion to judge. Other fields are ignored so that what the other commands write can be
/// judged as it is: `generate --out` names the prompt `id` and adds tokens and decode order,
/// `eval --completions` adds its own verdict and reward.
#[derive(Deserialize)]
struct CompletionLine {
    #[serde(alias = "id")]
    task_id: String,
    completion: String,
}

/// One line of `--out`: the verdict's own fields (`task_id` among them) after these two.
#[derive(Serialize)]
struct VerdictLine<'a> {
    /// The 1-based line of what was judged: the completion in the completions file, or under
    /// `--reference` the task in the tasks file; absent for the bundled problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    verdict: &'a str,
    #[serde(flatten)]
    detail: &'a TaskVerdict,
}

/// The real problems bundled with the binary (tests/data/shared, public datasets: see its
/// README), judged when `verify` is given no tasks.
fn bundled_tasks() -> anyhow::Result<Vec<(usize, Task)>> {
    use dllm_prompts::Format;
    let files = [
        (Format::SandboxfusionMbpp, "mbpp.jsonl", include_str!("../../tests/data/shared/sandboxfusion/code_eval_mbpp.jsonl")),
        (Format::RllmLeetcode, "leetcode.json", include_str!("../../tests/data/shared/rllm/leetcode_test.json")),
        (Format::Kodcode, "kodcode-algorithm.json", include_str!("../../tests/data/shared/kodcode/algorithm_100_complete.json")),
        (Format::Kodcode, "kodcode-prefill.json", include_str!("../../tests/data/shared/kodcode/prefill_200_complete.json")),
    ];
    let mut tasks = Vec::new();
    for (format, name, text) in files {
        let imported = dllm_prompts::import_text(format, Path::new(name), text)?;
        tasks.extend(imported.tasks);
    }
    // As `prompts import` does: tests that carry their own solution judge nothing (two of
    // KodCode's demo tasks).
    let trusted = dllm_verifier::harness::TrustedJudge::new(&dllm_verifier::native::default_python());
    let reasons = dllm_prompts::unjudgeable(&tasks, &trusted).context("cannot analyse the bundled tasks' tests")?;
    Ok(tasks.into_iter().zip(reasons).filter(|(_, why)| why.is_none()).map(|(t, _)| (0, t)).collect())
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (tasks, tasks_name): (Vec<(usize, Task)>, String) = match &args.tasks {
        Some(path) => (read_jsonl(path)?, path.display().to_string()),
        None if args.completions.is_none() => (bundled_tasks()?, "the bundled problems".into()),
        None => bail!("--completions needs --tasks"),
    };
    let reference = args.reference || args.tasks.is_none();
    if tasks.is_empty() {
        bail!("{tasks_name}: no tasks");
    }
    let mut index = HashMap::new();
    for (line, task) in &tasks {
        if index.insert(task.id.clone(), index.len()).is_some() {
            bail!("{tasks_name}:{line}: duplicate task id {:?}", task.id);
        }
    }
    let (lines, completions): (Vec<Option<usize>>, Vec<Completion>) = match (&args.completions, reference) {
        (Some(path), false) => {
            let rows: Vec<(usize, CompletionLine)> = read_jsonl(path)?;
            if rows.is_empty() {
                bail!("{}: no completions", path.display());
            }
            let mut out = Vec::with_capacity(rows.len());
            for (line, row) in rows {
                let Some(&task) = index.get(&row.task_id) else {
                    bail!("{}:{line}: task_id {:?} is not in {tasks_name}", path.display(), row.task_id);
                };
                out.push((Some(line), Completion { task, text: row.completion }));
            }
            out.into_iter().unzip()
        }
        (None, true) => {
            let mut out = Vec::new();
            let mut without = Vec::new();
            for (i, (line, task)) in tasks.iter().enumerate() {
                match &task.reference {
                    Some(code) => out.push((args.tasks.is_some().then_some(*line), Completion { task: i, text: code.clone() })),
                    None => without.push(format!("{tasks_name}:{line} ({})", task.id)),
                }
            }
            if out.is_empty() {
                bail!("{tasks_name}: none of the {} tasks has a reference solution; nothing to verify", tasks.len());
            }
            if !without.is_empty() {
                // One line, not one per task: a set without references would bury the summary.
                let more = if without.len() > 3 { format!(" and {} more", without.len() - 3) } else { String::new() };
                let first = without[..without.len().min(3)].join(", ");
                tracing::warn!("{} tasks have no reference solution and are skipped: {first}{more}", without.len());
            }
            out.into_iter().unzip()
        }
        _ => bail!("give either --completions FILE or --reference"),
    };

    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let verifier = Verifier::new(args.backend.into(), jobs).context("cannot start the sandbox")?.with_fail_fast(args.fail_fast);
    let prepared: Vec<PreparedTask> = verifier
        .prepare_all(tasks.into_iter().map(|(_, t)| t).collect())
        .into_iter()
        .collect::<Result<_, _>>()
        .context("cannot prepare the tasks")?;

    let bar = ProgressBar::new(completions.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} verify [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let verdicts = verifier.verify_batch(&prepared, &completions, &|_| bar.inc(1));
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    if let Some(out) = &args.out {
        let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut w = BufWriter::new(file);
        for (line, v) in lines.iter().zip(&verdicts) {
            let row = VerdictLine { line: *line, verdict: v.summary(), detail: v };
            serde_json::to_writer(&mut w, &row)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    print_summary(&verdicts, &prepared, &completions, seconds, verifier.backend_name(), reference);
    let retryable = verdicts.iter().filter(|v| v.sandbox_error).count();
    Ok(if retryable > 0 { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

fn print_summary(
    verdicts: &[TaskVerdict],
    prepared: &[PreparedTask],
    completions: &[Completion],
    seconds: f64,
    backend: &str,
    reference: bool,
) {
    let passed = verdicts.iter().filter(|v| v.all_passed).count();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in verdicts {
        *counts.entry(v.summary()).or_default() += 1;
    }
    let runs: usize = verdicts.iter().map(|v| v.tests.len()).sum();
    let what = if reference { "reference solutions" } else { "completions" };
    println!(
        "{} {what} on {} tasks ({backend}): {passed} passed ({:.1}%)",
        verdicts.len(),
        prepared.len(),
        100.0 * passed as f64 / verdicts.len().max(1) as f64
    );
    let mix: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("verdicts: {}", mix.join(", "));
    println!(
        "{runs} tests in {seconds:.1} s: {:.1} completions/s, {:.1} tests/s",
        verdicts.len() as f64 / seconds,
        runs as f64 / seconds
    );
    for (v, c) in verdicts.iter().zip(completions).filter(|(v, _)| !v.all_passed).take(10) {
        println!("  not passed: {} ({})", prepared[c.task].task.id, verdict_with_detail(v));
    }
}

/// The verdict's name, and what it carries that the name does not say (the exception, the
/// sandbox's or the task's error), on one line: `wrong_answer`, `runtime_error: ZeroDivisionError`.
fn verdict_with_detail(v: &TaskVerdict) -> String {
    use dllm_verifier::TestVerdict;
    let detail = match (&v.task_error, v.tests.iter().find(|t| !t.verdict.passed()).map(|t| &t.verdict)) {
        (Some(reason), _) => Some(reason.as_str()),
        (None, Some(TestVerdict::RuntimeError { exception: text } | TestVerdict::SandboxError { message: text })) => {
            Some(text.as_str())
        }
        _ => None,
    };
    match detail.and_then(|d| d.lines().map(str::trim).find(|l| !l.is_empty())) {
        Some(line) if line.chars().count() > 120 => format!("{}: {}...", v.summary(), line.chars().take(117).collect::<String>()),
        Some(line) => format!("{}: {line}", v.summary()),
        None => v.summary().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use dllm_verifier::{TaskVerdict, TestResult, TestVerdict};

    use super::verdict_with_detail;

    fn verdict(tests: &[TestVerdict]) -> TaskVerdict {
        let results = tests.iter().map(|v| TestResult { verdict: v.clone(), seconds: 0.0, stdout: "".into(), stderr: "".into() });
        TaskVerdict::from_tests("t", Some(dllm_verifier::CodeSource::Fenced), results.collect(), 0.0)
    }

    #[test]
    fn a_verdict_is_named_once_with_only_the_detail_that_adds_something() {
        assert_eq!(verdict_with_detail(&verdict(&[TestVerdict::Passed, TestVerdict::WrongAnswer])), "wrong_answer");
        let raised = verdict(&[TestVerdict::RuntimeError { exception: "ZeroDivisionError".into() }, TestVerdict::NotRun]);
        assert_eq!(verdict_with_detail(&raised), "runtime_error: ZeroDivisionError");
        let broken = verdict(&[TestVerdict::SandboxError { message: "\ncannot fork\nmore".into() }]);
        assert_eq!(verdict_with_detail(&broken), "sandbox_error: cannot fork");
        let task = TaskVerdict { task_error: Some("the tests do not parse".into()), ..verdict(&[TestVerdict::NotRun]) };
        assert_eq!(verdict_with_detail(&task), "task_error: the tests do not parse");
    }
}
