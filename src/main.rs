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
