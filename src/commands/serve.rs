//! `dllm-rl serve`: the verifier as a SandboxFusion-compatible HTTP service (see `crate::serve`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use dllm_verifier::{NativeConfig, NativeSandbox, Sandbox, Verifier, WasmConfig, WasmSandbox};

use crate::cli::{BackendArg, ServeArgs};
use crate::serve::api::{Caps, Service};
use crate::serve::App;

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the token file {}", path.display()))?;
            let token = text.trim().to_owned();
            if token.is_empty() {
                bail!("the token file {} is empty", path.display());
            }
            Some(token)
        }
        None => None,
    };
    // Code execution open to a network is remote code execution for anyone on it.
    if token.is_none() && !args.listen.ip().is_loopback() {
        bail!("--listen {} is beyond loopback: give --token-file so that only holders of the token can run code", args.listen);
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let sandbox: Arc<dyn Sandbox> = match args.backend {
        BackendArg::Native => Arc::new(NativeSandbox::new(NativeConfig::default()).context("cannot start the native sandbox")?),
        BackendArg::Wasm => {
            // Instance slots for every worker, with room for slots still being reset (as `Verifier::new`).
            let config = WasmConfig { max_concurrent_runs: 2 * jobs as u32 + 4, ..WasmConfig::default() };
            Arc::new(WasmSandbox::new(config).context("cannot start the wasm sandbox")?)
        }
    };
    let verifier = Verifier::with_sandbox(sandbox.clone(), jobs).context("cannot start the verifier")?;
    let caps = Caps {
        body_bytes: args.max_body_bytes,
        code_bytes: args.max_code_bytes,
        stdin_bytes: args.max_stdin_bytes,
        run_timeout_s: args.max_run_timeout,
    };
    let backend = sandbox.name();
    let app = App::new(Service::new(sandbox, verifier, caps), token, jobs, args.queue);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr().context("cannot read the listening address")?;
        // One line on stdout, so that a script (or a test that asked for port 0) learns the address.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
        drop(out);
        tracing::info!("serving the {backend} sandbox with {jobs} workers and {} queued requests at most", args.queue);
        crate::serve::serve(listener, app, shutdown_signal()).await.context("the server failed")?;
        tracing::info!("stopped: every request in flight was answered");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM (what `kill`, systemd and Kubernetes send).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without the handler SIGTERM still ends the process, only not gracefully.
            Err(e) => {
                tracing::warn!("cannot handle SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: no new connections; finishing the requests in flight");
}
