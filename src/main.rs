//! `dllm-rl`: reinforcement learning with verifiable rewards for diffusion language models.
// The binary owns stdout: it is where reports and tables go.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use clap::Parser;

mod audit;
mod cli;
mod commands;
mod store;
mod train;
mod telemetry;

fn main() -> ExitCode {
    // `dllm-rl audit steps RUN | head`: end quietly when the reader goes away, as Unix tools do,
    // instead of panicking on the broken pipe (Rust ignores SIGPIPE by default).
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    telemetry::init(cli.global.verbose, cli.global.quiet);
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dllm-rl: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
