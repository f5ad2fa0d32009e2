//! `dllm-rl prompts ...`: import and curate task sets. Every curation step writes the tasks it
//! keeps and a manifest with one decision per task.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use dllm_prompts::curate::{self, Curated, Decision};
use dllm_prompts::{import_file, Task};
use serde_json::Value;

use dllm_prompts::read_jsonl;
use crate::cli::{
    CurateIo, DecontaminateArgs, DedupeArgs, DifficultyArgs, ImportArgs, MixArgs, MixKeyArg, PromptsCommand, SplitArgs, StatsArgs,
    ValidateArgs, WindowArgs,
};

pub fn run(command: PromptsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PromptsCommand::Import(args) => import(args),
        PromptsCommand::Validate(args) => validate(args),
        PromptsCommand::Dedupe(args) => dedupe(args),
        PromptsCommand::Decontaminate(args) => decontaminate(args),
        PromptsCommand::Difficulty(args) => difficulty(args),
        PromptsCommand::Window(args) => window(args),
        PromptsCommand::Mix(args) => mix(args),
        PromptsCommand::Split(args) => split(args),
        PromptsCommand::Stats(args) => stats(args),
    }
}

/// One JSON value per line; gzip-compressed when the name ends in `.gz`, as every reader expects.
fn write_jsonl<T: serde::Serialize>(path: &Path, items: impl IntoIterator<Item = T>) -> anyhow::Result<usize> {
    let mut w = curate::TextWriter::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut n = 0;
    for item in items {
        serde_json::to_writer(&mut w, &item).with_context(|| format!("writing {}", path.display()))?;
        w.write_all(b"\n").with_context(|| format!("writing {}", path.display()))?;
        n += 1;
    }
    w.finish().with_context(|| format!("writing {}", path.display()))?;
    Ok(n)
}

/// Refuses an output path that is one of the inputs: the output is created (truncated) before
/// anything is known about the rows, so `--out raw.jsonl raw.jsonl` would destroy the dataset.
/// Paths are compared canonically (`./a.jsonl`, `a.jsonl` and a symlink to it are one file); an
/// output that does not exist yet cannot be an input.
fn refuse_out_among_inputs(out: &Path, inputs: &[PathBuf]) -> anyhow::Result<()> {
    let Ok(out_canonical) = std::fs::canonicalize(out) else { return Ok(()) };
    for input in inputs {
        if std::fs::canonicalize(input).is_ok_and(|i| i == out_canonical) {
            bail!("--out {} is also an input ({}); write to another file", out.display(), input.display());
        }
    }
    Ok(())
}

fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    refuse_out_among_inputs(&args.out, &args.inputs)?;
    let format: dllm_prompts::Format = args.format.into();
    let mut tasks = Vec::new();
    let mut bad = 0;
    // Every other command refuses a repeated id, so the first task with an id is kept and later
    // ones skipped here (the same file given twice, or a dataset that repeats rows).
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut places = Vec::new();
    let mut repeats = 0usize;
    for input in &args.inputs {
        let imported = import_file(format, input)?;
        for err in &imported.errors {
            if args.strict {
                bail!("{err}");
            }
            eprintln!("skipped: {err}");
        }
        bad += imported.errors.len();
        tracing::debug!("{}: {} tasks, {} bad rows", input.display(), imported.tasks.len(), imported.errors.len());
        for (task, row) in imported.tasks.into_iter().zip(imported.rows) {
            let here = format!("{}:{row}", input.display());
            match seen.get(&task.id) {
                Some(first) => {
                    repeats += 1;
                    // One line per repeat would bury the bad rows when a whole file is repeated.
                    if repeats <= 5 {
                        eprintln!("skipped: {here}: task id {:?} already imported from {first}", task.id);
                    }
                }
                None => {
                    seen.insert(task.id.clone(), here.clone());
                    tasks.push(task);
                    places.push(here);
                }
            }
        }
    }
    if repeats > 5 {
        eprintln!("skipped: {} more repeated task ids", repeats - 5);
    }
    // Tests that can fail no completion (a test file carrying its own solution) would reward
    // anything: they are no tasks.
    let trusted = dllm_verifier::harness::TrustedJudge::new(&dllm_verifier::native::default_python());
    let reasons = dllm_prompts::unjudgeable(&tasks, &trusted).context("cannot analyse the tasks' tests")?;
    let mut unjudgeable = 0usize;
    let mut kept = Vec::with_capacity(tasks.len());
    for ((task, here), reason) in tasks.into_iter().zip(&places).zip(reasons) {
        match reason {
            Some(why) => {
                unjudgeable += 1;
                if args.strict {
                    bail!("{here}: task {:?}: {why}", task.id);
                }
                eprintln!("skipped: {here}: task {:?}: {why}", task.id);
            }
            None => kept.push(task),
        }
    }
    let tasks = kept;
    bad += unjudgeable;
    if tasks.is_empty() {
        // An empty task file looks like success to the next step; say why instead, and leave
        // whatever --out held alone.
        bail!(
            "no tasks imported from {} {} file(s) ({bad} rows skipped); {} not written",
            args.inputs.len(),
            format.name(),
            args.out.display()
        );
    }
    write_jsonl(&args.out, &tasks)?;
    println!(
        "{} tasks written to {} (from {} {} file(s); {bad} rows skipped, {repeats} repeated ids skipped)",
        tasks.len(),
        args.out.display(),
        args.inputs.len(),
        format.name()
    );
    Ok(ExitCode::SUCCESS)
}

/// Canonical tasks from several files; a repeated id is an error naming both places.
fn read_tasks(inputs: &[PathBuf]) -> anyhow::Result<Vec<Task>> {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut tasks = Vec::new();
    for path in inputs {
        for (line, task) in read_jsonl::<Task>(path)? {
            let here = format!("{}:{line}", path.display());
            if let Some(first) = seen.insert(task.id.clone(), here.clone()) {
                bail!("{here}: task id {:?} already at {first} (`dllm-rl prompts dedupe` drops repeated ids)", task.id);
            }
            tasks.push(task);
        }
    }
    Ok(tasks)
}

/// Canonical tasks from several files, repeated ids and all (for `dedupe`, which drops them).
fn read_tasks_with_repeats(inputs: &[PathBuf]) -> anyhow::Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for path in inputs {
        tasks.extend(read_jsonl::<Task>(path)?.into_iter().map(|(_, t)| t));
    }
    Ok(tasks)
}

/// `a.jsonl, b.jsonl` for messages.
fn show_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// `valid.jsonl` (or `valid.jsonl.gz`) → `valid.manifest.jsonl`.
fn manifest_path(out: &Path) -> PathBuf {
    let plain = out.to_string_lossy().strip_suffix(".gz").map_or_else(|| out.to_path_buf(), PathBuf::from);
    let stem = plain.file_stem().map_or_else(|| "out".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}.manifest.jsonl"))
}

/// The checks of [`refuse_out_among_inputs`] for a curation step's output and its manifest.
fn refuse_curate_io_clash(io: &CurateIo) -> anyhow::Result<()> {
    refuse_out_among_inputs(&io.out, &io.inputs)?;
    refuse_out_among_inputs(&manifest_path(&io.out), &io.inputs)
}

fn finish(step: &str, io: &CurateIo, before: usize, curated: &Curated) -> anyhow::Result<ExitCode> {
    if before == 0 {
        bail!("{step}: no tasks in {}; {} not written", show_paths(&io.inputs), io.out.display());
    }
    let manifest = manifest_path(&io.out);
    write_jsonl(&manifest, &curated.decisions)?;
    let dropped = curated.dropped_by_reason();
    let reasons: Vec<String> = dropped.iter().map(|(r, n)| format!("{r} {n}")).collect();
    if curated.kept.is_empty() {
        // An empty task file looks like success to the next step: fail, say why, and leave
        // --out alone (the manifest is written: it has every task's reason).
        bail!(
            "{step}: all {before} tasks dropped ({}); decisions in {}, {} not written",
            reasons.join(", "),
            manifest.display(),
            io.out.display()
        );
    }
    write_jsonl(&io.out, &curated.kept)?;
    let flagged = curated.decisions.iter().filter(|d| d.kept && d.reason.starts_with("flagged")).count();
    println!(
        "{step}: {before} in, {} kept{}, {} dropped{}; tasks in {}, decisions in {}",
        curated.kept.len(),
        if flagged > 0 { format!(" ({flagged} flagged)") } else { String::new() },
        before - curated.kept.len(),
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
        io.out.display(),
        manifest.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    refuse_curate_io_clash(&args.io)?;
    let tasks = read_tasks(&args.io.inputs)?;
    let before = tasks.len();
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let verifier = dllm_verifier::Verifier::new(args.backend.into(), jobs).context("starting the sandbox")?;
    let bar = crate::telemetry::progress_bar(before as u64, "{bar:30} {pos}/{len} references, {elapsed}");
    let cfg = curate::validate::ValidateConfig { min_tests: args.min_tests, keep_unverified: args.keep_unverified, flag_only: args.flag_only };
    let curated = curate::validate::validate(tasks, &verifier, cfg, &|| bar.inc(1));
    bar.finish_and_clear();
    finish("validate", &args.io, before, &curated)
}

fn dedupe(args: DedupeArgs) -> anyhow::Result<ExitCode> {
    refuse_curate_io_clash(&args.io)?;
    if !(0.0..=1.0).contains(&args.threshold) {
        bail!("--threshold {} is not in [0, 1]", args.threshold);
    }
    let tasks = read_tasks_with_repeats(&args.io.inputs)?;
    let before = tasks.len();
    let cfg = curate::dedupe::DedupeConfig { threshold: args.threshold, shingle: args.shingle, ..Default::default() };
    finish("dedupe", &args.io, before, &curate::dedupe::dedupe(tasks, cfg))
}

/// Evaluation problems as (id, text) from any file `decontaminate --against` accepts.
fn read_against(args: &DecontaminateArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for path in &args.against {
        if let Some(format) = args.against_format {
            let imported = import_file(format.into(), path)?;
            out.extend(imported.tasks.into_iter().map(|t| (t.id, t.prompt.unwrap_or_default())));
            continue;
        }
        let mut text = String::new();
        dllm_prompts::open_text(path)?.read_to_string(&mut text).with_context(|| format!("cannot read {}", path.display()))?;
        let rows: Vec<(usize, Value)> = if text.trim_start().starts_with('[') {
            let all: Vec<Value> = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
            all.into_iter().enumerate().map(|(i, v)| (i + 1, v)).collect()
        } else {
            read_jsonl::<Value>(path)?
        };
        for (line, row) in rows {
            let text = ["prompt", "question", "content", "problem", "text"]
                .iter()
                .find_map(|k| row.get(*k).and_then(Value::as_str))
                .with_context(|| format!("{}:{line}: no `prompt` (or question, content, problem, text) field", path.display()))?;
            let id = ["id", "task_id"]
                .iter()
                .find_map(|k| row.get(*k))
                .map_or_else(|| format!("{}:{line}", path.display()), |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
            out.push((id, text.to_owned()));
        }
    }
    Ok(out)
}

fn decontaminate(args: DecontaminateArgs) -> anyhow::Result<ExitCode> {
    refuse_curate_io_clash(&args.io)?;
    let against = read_against(&args)?;
    let tasks = read_tasks(&args.io.inputs)?;
    let before = tasks.len();
    let cfg = curate::decontaminate::DecontaminateConfig { ngram: args.ngram, min_overlap: args.min_overlap.max(1), common: args.common };
    tracing::info!("{} evaluation problems", against.len());
    finish("decontaminate", &args.io, before, &curate::decontaminate::decontaminate(tasks, &against, cfg))
}

fn read_rates(path: &Path) -> anyhow::Result<HashMap<String, curate::difficulty::PassRate>> {
    let mut rates = HashMap::new();
    let mut lines: HashMap<String, usize> = HashMap::new();
    for (line, rate) in read_jsonl::<curate::difficulty::PassRate>(path)? {
        // Two rates for one task (two eval runs concatenated): which one counts is not ours to guess.
        if let Some(first) = lines.insert(rate.task_id.clone(), line) {
            bail!("{}:{line}: task {:?} already has a pass rate at line {first}", path.display(), rate.task_id);
        }
        rates.insert(rate.task_id.clone(), rate);
    }
    Ok(rates)
}

fn difficulty(args: DifficultyArgs) -> anyhow::Result<ExitCode> {
    refuse_curate_io_clash(&args.io)?;
    if args.min > args.max {
        bail!("--min {} is above --max {}", args.min, args.max);
    }
    let rates = read_rates(&args.rates)?;
    let tasks = read_tasks(&args.io.inputs)?;
    let before = tasks.len();
    let cfg = curate::difficulty::DifficultyConfig { min: args.min, max: args.max, keep_unrated: args.keep_unrated };
    finish("difficulty", &args.io, before, &curate::difficulty::difficulty(tasks, &rates, cfg))
}

fn window(args: WindowArgs) -> anyhow::Result<ExitCode> {
    refuse_curate_io_clash(&args.io)?;
    if let (Some(start), Some(end)) = (&args.start_date, &args.end_date) {
        if start > end {
            bail!("--start-date {start} is after --end-date {end}");
        }
    }
    let tasks = read_tasks(&args.io.inputs)?;
    let before = tasks.len();
    let cfg = curate::window::WindowConfig { start: args.start_date, end: args.end_date, keep_undated: args.keep_undated };
    finish("window", &args.io, before, &curate::window::window(tasks, &cfg))
}

/// `name=0.5` pairs; errors name the bad item. A name given twice is an error (the two would
/// otherwise be merged or one silently lost).
fn parse_pairs(items: &[String], flag: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut pairs: Vec<(String, f64)> = Vec::with_capacity(items.len());
    for item in items {
        let (name, value) = item.split_once('=').with_context(|| format!("{flag} {item:?}: expected NAME=FRACTION"))?;
        let value: f64 = value.trim().parse().with_context(|| format!("{flag} {item:?}: {value:?} is not a number"))?;
        if value.is_nan() || value < 0.0 {
            bail!("{flag} {item:?}: fractions must not be negative");
        }
        let name = name.trim();
        if pairs.iter().any(|(n, _)| n == name) {
            bail!("{flag} {item:?}: {name:?} is given twice");
        }
        pairs.push((name.to_owned(), value));
    }
    Ok(pairs)
}

/// A part of `split` names its file `<OUT>/<name>.jsonl`, so it must be a plain file stem:
/// `../x` would write outside OUT, and `split.manifest` would overwrite the manifest.
fn check_part_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        bail!("--part {name:?}: a part name is the stem of its file: letters, digits, '_' and '-' only");
    }
    Ok(())
}

fn mix(args: MixArgs) -> anyhow::Result<ExitCode> {
    refuse_curate_io_clash(&args.io)?;
    let targets: BTreeMap<String, f64> = parse_pairs(&args.target, "--target")?.into_iter().collect();
    if targets.values().sum::<f64>() <= 0.0 {
        bail!("--target: the proportions sum to zero");
    }
    let key = match args.by {
        MixKeyArg::Source => curate::mix::MixKey::Source,
        MixKeyArg::Kind => curate::mix::MixKey::Kind,
        MixKeyArg::SourceKind => curate::mix::MixKey::SourceKind,
    };
    let tasks = read_tasks(&args.io.inputs)?;
    let before = tasks.len();
    // A target with no task would silently skew the mix (or, without --total, empty it).
    let present: std::collections::BTreeSet<String> = tasks.iter().map(|t| key.of(t)).collect();
    if let Some(absent) = targets.keys().find(|g| !present.contains(*g)) {
        let present: Vec<&str> = present.iter().map(String::as_str).collect();
        bail!(
            "--target {absent}: no task in {} has it (by {:?}, these are present: {})",
            show_paths(&args.io.inputs),
            args.by,
            present.join(", ")
        );
    }
    let curated = curate::mix::mix(tasks, key, &targets, args.total, args.seed);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in &curated.kept {
        *counts.entry(key.of(t)).or_default() += 1;
    }
    let total = curated.kept.len().max(1) as f64;
    for (g, n) in &counts {
        println!("  {g}: {n} ({:.1}%, target {:.1}%)", 100.0 * *n as f64 / total, 100.0 * targets[g] / targets.values().sum::<f64>());
    }
    finish("mix", &args.io, before, &curated)
}

fn split(args: SplitArgs) -> anyhow::Result<ExitCode> {
    let parts = parse_pairs(&args.part, "--part")?;
    for (name, _) in &parts {
        check_part_name(name)?;
        refuse_out_among_inputs(&args.out.join(format!("{name}.jsonl")), &args.inputs)?;
    }
    refuse_out_among_inputs(&args.out.join("split.manifest.jsonl"), &args.inputs)?;
    if parts.iter().map(|p| p.1).sum::<f64>() <= 0.0 {
        bail!("--part: the fractions sum to zero");
    }
    let tasks = read_tasks(&args.inputs)?;
    if tasks.is_empty() {
        bail!("split: no tasks in {}; nothing written", show_paths(&args.inputs));
    }
    refuse_parts_of_an_earlier_split(&args.out, &parts)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let (out, decisions): (BTreeMap<String, Vec<Task>>, Vec<Decision>) = curate::split::split(tasks, &parts, args.seed);
    for (name, tasks) in &out {
        let path = args.out.join(format!("{name}.jsonl"));
        write_jsonl(&path, tasks)?;
        println!("  {name}: {} tasks in {}", tasks.len(), path.display());
    }
    write_jsonl(&args.out.join("split.manifest.jsonl"), &decisions)?;
    Ok(ExitCode::SUCCESS)
}

/// A folder that holds an earlier split with other part names: its parts would stay beside
/// the new ones and overlap them (an old `test.jsonl` sharing tasks with a new `valid.jsonl`).
fn refuse_parts_of_an_earlier_split(out: &Path, parts: &[(String, f64)]) -> anyhow::Result<()> {
    if !out.join("split.manifest.jsonl").exists() {
        return Ok(());
    }
    let mut stale: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("cannot read {}", out.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".jsonl")).map(str::to_owned))
        .filter(|stem| stem != "split.manifest" && !parts.iter().any(|(name, _)| name == stem))
        .collect();
    stale.sort();
    if !stale.is_empty() {
        bail!(
            "{} holds an earlier split with other parts ({}); remove them or choose another --out",
            out.display(),
            stale.iter().map(|s| format!("{s}.jsonl")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let tasks = read_tasks(&args.inputs)?;
    let rates = args.rates.as_deref().map(read_rates).transpose()?;
    let s = curate::stats::stats(&tasks, rates.as_ref());
    println!("{} tasks, {} with a reference solution", s.tasks, s.with_reference);
    let line = |title: &str, cells: Vec<String>| println!("{title:<16} {}", cells.join(", "));
    let cells = |pairs: &mut dyn Iterator<Item = (&String, &usize)>| pairs.map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>();
    line("by source:", cells(&mut s.by_source.iter()));
    line("by kind:", cells(&mut s.by_kind.iter()));
    line("by tests:", cells(&mut s.by_test_count.iter().map(|(k, v)| (k, v))));
    if let Some(t) = &s.tests {
        println!("{:<16} min {}, median {}, p90 {}, max {}", "tests per task:", t.min, t.median, t.p90, t.max);
    }
    if let Some(p) = &s.prompt_chars {
        println!("{:<16} min {}, median {}, p90 {}, max {}", "prompt chars:", p.min, p.median, p.p90, p.max);
    }
    if let Some(hist) = &s.pass_rate {
        line("pass rate:", cells(&mut hist.iter().map(|(k, v)| (k, v))));
    }
    if let Some(r) = &s.released {
        println!("{:<16} {} to {}, {} dated, {} undated", "released:", r.first, r.last, r.dated, r.undated);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&s)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_with_two_pass_rates_is_an_error_naming_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.jsonl");
        let line = |id: &str, solved: usize| format!("{{\"task_id\": \"{id}\", \"samples\": 4, \"passed\": {solved}}}\n");
        std::fs::write(&path, line("a", 1) + &line("b", 2)).unwrap();
        assert_eq!(read_rates(&path).unwrap().len(), 2);
        std::fs::write(&path, line("a", 1) + &line("b", 2) + &line("a", 3)).unwrap();
        let err = read_rates(&path).unwrap_err().to_string();
        assert!(err.contains("rates.jsonl:3") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn part_names_are_plain_unique_file_stems() {
        let pairs = |items: &[&str]| parse_pairs(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "--part");
        assert_eq!(pairs(&["train=0.9", " valid = 0.1"]).unwrap(), [("train".to_owned(), 0.9), ("valid".to_owned(), 0.1)]);
        let err = pairs(&["a=0.5", "a=0.5"]).unwrap_err().to_string();
        assert!(err.contains("\"a\" is given twice"), "{err}");
        for bad in ["../evil", "a/b", "", ".hidden", "split.manifest", "x y"] {
            assert!(check_part_name(bad).is_err(), "{bad:?}");
        }
        for good in ["train", "valid-1", "test_A"] {
            assert!(check_part_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_gz_output_is_gzip_compressed_and_reads_back() {
        // `--out x.jsonl.gz` wrote plain text under a .gz name, which every reader then refused.
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("kept.jsonl.gz");
        let rows = [serde_json::json!({"id": "a"}), serde_json::json!({"id": "b"})];
        assert_eq!(write_jsonl(&gz, &rows).unwrap(), 2);
        assert!(std::fs::read(&gz).unwrap().starts_with(&[0x1f, 0x8b]));
        let back: Vec<(usize, Value)> = read_jsonl(&gz).unwrap();
        assert_eq!(back.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), rows);
        assert_eq!(manifest_path(&gz), dir.path().join("kept.manifest.jsonl"));
        let plain = dir.path().join("kept.jsonl");
        write_jsonl(&plain, &rows).unwrap();
        assert!(std::fs::read_to_string(&plain).unwrap().starts_with("{\"id\":\"a\"}\n"));
    }
}
