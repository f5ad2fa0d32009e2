//! `dllm-rl`: reinforcement learning with verifiable rewards for diffusion language models.
// The binary owns stdout: it is where reports and tables go.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use clap::Parser;

mod audit;
mod cli;
mod commands;
mod serve;
mod store;
mod train;
mod telemetry;

fn main() -> ExitCode {
    // Output that cannot be written ends the command with one line, not a panic's backtrace; a
    // reader that went away (`dllm-rl audit steps RUN | head`) ends it quietly, as Unix tools
    // end. (Not by restoring SIGPIPE's default: a write to a sandbox or judge process that
    // died would then kill the verifier, and a candidate can make its own process die.)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or_default();
        if let Some(cause) = message.strip_prefix("failed printing to stdout: ") {
            output_failed(cause.contains("Broken pipe"), cause);
        }
        default_hook(info);
    }));
    let cli = cli::Cli::parse();
    telemetry::init(cli.global.verbose, cli.global.quiet);
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            let io = err.chain().find_map(|e| e.downcast_ref::<std::io::Error>());
            if let Some(e) = io.filter(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
                output_failed(true, &e.to_string());
            }
            eprintln!("dllm-rl: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Ends the process after its standard output failed: quietly with 141 (a shell's status for
/// SIGPIPE) when the reader went away, else with one line and status 1.
fn output_failed(closed: bool, cause: &str) -> ! {
    if !closed {
        eprintln!("dllm-rl: error: cannot write the output: {cause}");
    }
    std::process::exit(if closed { 141 } else { 1 });
}
