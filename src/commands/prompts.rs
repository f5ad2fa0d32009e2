//! `dllm-rl prompts ...`: import and curate task sets.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use dllm_prompts::import_file;

use crate::cli::{ImportArgs, PromptsCommand};

pub fn run(command: PromptsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PromptsCommand::Import(args) => import(args),
    }
}

fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let format: dllm_prompts::Format = args.format.into();
    let mut tasks = Vec::new();
    let mut bad = 0;
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
        tasks.extend(imported.tasks);
    }
    let file = File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut w = BufWriter::new(file);
    for task in &tasks {
        serde_json::to_writer(&mut w, task)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    println!("{} tasks written to {} ({} as {}; {bad} rows skipped)", tasks.len(), args.out.display(), args.inputs.len(), format.name());
    Ok(ExitCode::SUCCESS)
}
