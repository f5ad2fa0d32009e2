//! Log output: `tracing` to stderr, level from `-v`/`-q` unless `RUST_LOG` is set.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: escape codes in a log file or a CI log are noise.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// A progress bar on stderr with an indicatif template (`{bar:30} {pos}/{len} ...`). Without a
/// terminal (a log file, a scheduler's output) there is no bar: the same line, with the rate
/// and the time left, is logged every `DLLM_PROGRESS_INTERVAL_S` seconds (default 30) and once
/// at the end, so a long job never sits silent in a log.
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        let style = indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        return indicatif::ProgressBar::new(len).with_style(style);
    }
    let line = format!("{} ({{per_sec}}, {{eta}} left)", without_bar(template).trim());
    let style = indicatif::ProgressStyle::with_template(&line).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let interval = std::env::var("DLLM_PROGRESS_INTERVAL_S").ok().and_then(|v| v.parse().ok()).unwrap_or(30.0);
    let target = indicatif::ProgressDrawTarget::term_like(Box::new(LogLines { interval: Duration::from_secs_f64(interval), state: Mutex::default() }));
    indicatif::ProgressBar::with_draw_target(Some(len), target).with_style(style)
}

/// The template without its `{bar...}` field (and the space after it).
fn without_bar(template: &str) -> String {
    match template.find("{bar") {
        Some(start) => {
            let end = template[start..].find('}').map_or(template.len(), |e| start + e + 1);
            let rest = template[end..].strip_prefix(' ').unwrap_or(&template[end..]);
            format!("{}{}", &template[..start], rest)
        }
        None => template.to_string(),
    }
}

/// An indicatif "terminal" that turns redraws into log lines, at most one per interval; the
/// last line drawn is logged when the bar goes away if it was not already.
#[derive(Debug)]
struct LogLines {
    interval: Duration,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    last_logged: Option<Instant>,
    pending: Option<String>,
}

impl LogLines {
    fn line(&self, s: &str) {
        let s = s.trim();
        if s.is_empty() {
            return;
        }
        let Ok(mut state) = self.state.lock() else { return };
        let due = state.last_logged.is_none_or(|t| t.elapsed() >= self.interval);
        if due {
            tracing::info!("{s}");
            state.last_logged = Some(Instant::now());
            state.pending = None;
        } else {
            state.pending = Some(s.to_string());
        }
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        if let Some(line) = self.state.get_mut().ok().and_then(|s| s.pending.take()) {
            tracing::info!("{line}");
        }
    }
}

impl indicatif::TermLike for LogLines {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.line(s);
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.line(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_field_leaves_the_log_line() {
        assert_eq!(super::without_bar("{bar:30} step {pos}/{len} {msg}"), "step {pos}/{len} {msg}");
        assert_eq!(super::without_bar("SFT {bar:30} {pos}/{len}"), "SFT {pos}/{len}");
        assert_eq!(super::without_bar("{pos}/{len}"), "{pos}/{len}");
    }
}
