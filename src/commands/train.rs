//! `dllm-rl train --config run.toml [--resume]`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

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
    // Ctrl-C or SIGTERM: finish the current step, checkpoint, stop. A second one kills.
    install_signal_handlers();
    // Rank 0 alone shows progress and step lines.
    let bar = if main { crate::telemetry::progress_bar(total as u64, "{bar:30} step {pos}/{len} {msg} [{elapsed}]") } else { indicatif::ProgressBar::hidden() };
    bar.set_position(trainer.state.step as u64);
    trainer.run(&STOP, &CHECKPOINT_NOW, &mut |step, m| {
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
    // Stopped by a signal: exit as a shell reports it (130 for SIGINT, 143 for SIGTERM), so
    // that a scheduler sees the job was interrupted, not finished.
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(ExitCode::SUCCESS),
        signal => Ok(ExitCode::from((128 + signal) as u8)),
    }
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
/// The signal that asked for the stop (its exit status is 128 + it, as a shell reports).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
static CHECKPOINT_NOW: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: flip the flag, say so; the second time, exit at once.
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
    let note = b"dllm-rl: stopping after this step, with a checkpoint (the same signal again stops at once)\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is static.
    unsafe { libc::write(2, note.as_ptr().cast(), note.len()) };
}

extern "C" fn on_checkpoint_signal(_: libc::c_int) {
    CHECKPOINT_NOW.store(true, Ordering::SeqCst);
}

/// Ctrl-C (SIGINT) and SIGTERM (what `timeout`, SLURM and Kubernetes send) stop the run after
/// the current step with a checkpoint; SIGUSR1 (SLURM's `--signal=B:USR1@120`) writes a
/// checkpoint after the current step and goes on.
fn install_signal_handlers() {
    let stop = on_stop_signal as extern "C" fn(libc::c_int);
    let checkpoint = on_checkpoint_signal as extern "C" fn(libc::c_int);
    for (signal, handler, name) in [
        (libc::SIGINT, stop as *const () as libc::sighandler_t, "SIGINT"),
        (libc::SIGTERM, stop as *const () as libc::sighandler_t, "SIGTERM"),
        (libc::SIGUSR1, checkpoint as *const () as libc::sighandler_t, "SIGUSR1"),
    ] {
        // SAFETY: installs handlers that only touch atomics (and may write(2) or _exit).
        let previous = unsafe { libc::signal(signal, handler) };
        if previous == libc::SIG_ERR {
            tracing::warn!("cannot catch {name}: {}", std::io::Error::last_os_error());
        }
    }
}
