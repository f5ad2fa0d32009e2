//! `dllm-rl train --config run.toml [--resume]`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::cli::TrainArgs;
use crate::train::config::TrainConfig;
use crate::train::Trainer;

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let cfg = TrainConfig::from_file(&args.config)?;
    let total = cfg.run.total_steps;
    // Under torchrun or srun: this rank of the job (Gloo on CPUs, NCCL on GPUs).
    let timeout = std::time::Duration::from_secs(cfg.distributed.timeout_s);
    let world = dllm_dist::World::from_env(tch::Cuda::is_available(), timeout).context("joining the job's ranks")?;
    let main = world.is_main();
    let mut trainer = Trainer::new(cfg, args.resume, world)?;
    // Ctrl-C: finish the current step, checkpoint, stop. A second Ctrl-C kills.
    install_sigint();
    let stop: &AtomicBool = &STOP;
    // Rank 0 alone shows progress and step lines.
    let bar = if main { crate::telemetry::progress_bar(total as u64, "{bar:30} step {pos}/{len} {msg} [{elapsed}]") } else { indicatif::ProgressBar::hidden() };
    bar.set_position(trainer.state.step as u64);
    trainer.run(stop, &mut |step, m| {
        if !main {
            return;
        }
        let line = crate::train::step_line(m);
        bar.set_position(step as u64 + 1);
        bar.set_message(line.clone());
        bar.suspend(|| tracing::info!("step {step}: {line}"));
    })?;
    bar.finish_and_clear();
    if main {
        println!("run {} at step {}; store: {}", trainer.cfg.run.name, trainer.state.step, trainer.store.path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_sft(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let cfg = crate::train::sft::SftConfig::from_file(&args.config)?;
    let timeout = std::time::Duration::from_secs(cfg.distributed.timeout_s);
    let world = dllm_dist::World::from_env(tch::Cuda::is_available(), timeout).context("joining the job's ranks")?;
    if world.size > 1 {
        tracing::info!("rank {} of {} ({}, {:?})", world.rank, world.size, world.launcher, world.backend());
    }
    let main = world.is_main();
    let total = cfg.run.total_steps as u64;
    let bar = if main { crate::telemetry::progress_bar(total, "{bar:30} step {pos}/{len} {msg} [{elapsed}]") } else { indicatif::ProgressBar::hidden() };
    let last = crate::train::sft::run_sft(&cfg, args.resume, &world, &mut |step, m| {
        bar.set_position(step as u64 + 1);
        bar.set_message(format!("loss {:.4}", m["loss"].as_f64().unwrap_or(f64::NAN)));
    })?;
    bar.finish_and_clear();
    if main {
        println!("SFT done; final checkpoint: {}", last.display());
    }
    Ok(ExitCode::SUCCESS)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // Only async-signal-safe work here: flip the flag; the second time, exit at once.
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn install_sigint() {
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: installs a handler that only touches an atomic (and may _exit).
    let previous = unsafe { libc::signal(libc::SIGINT, handler as *const () as libc::sighandler_t) };
    if previous == libc::SIG_ERR {
        tracing::warn!("cannot catch Ctrl-C: {}", std::io::Error::last_os_error());
    }
}
