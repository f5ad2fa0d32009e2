//! One module per subcommand, each with `run(args) -> anyhow::Result<ExitCode>`.

use std::process::ExitCode;

use crate::cli::Command;

mod bench;
mod bench_dist;
mod bench_generate;
mod bench_model;
mod doctor;
mod eval;
mod generate;
mod model;
mod prompts;
mod quickstart;
mod serve;
mod train;
mod verify;


pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Doctor(args) => doctor::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Prompts(command) => prompts::run(command),
        Command::Generate(args) => generate::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Train(args) => train::run(args),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Sft(args) => train::run_sft(args),
        Command::Model(command) => model::run(command),
        Command::Audit(command) => crate::audit::run(command),
        Command::Bench(crate::cli::BenchCommand::Verify(args)) => bench::run(args),
        Command::Bench(crate::cli::BenchCommand::Model(args)) => bench_model::run(args),
        Command::Bench(crate::cli::BenchCommand::Generate(args)) => bench_generate::run(args),
        Command::Bench(crate::cli::BenchCommand::Dist(args)) => bench_dist::run(args),
    }
}
