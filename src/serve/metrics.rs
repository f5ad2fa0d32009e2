//! The server's counters, written out as Prometheus text for `GET /metrics`.
//!
//! A mutex over a few maps: a request costs one lock for a moment, next to a sandbox run of
//! tens of milliseconds at least, so a lock-free registry would buy nothing.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency histogram, seconds: from a cached refusal to a long test run.
const BUCKETS: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default)]
struct Histogram {
    /// Per bucket, the requests at most that long (not cumulative; summed when written).
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Counters {
    /// (endpoint, HTTP status) -> requests.
    requests: BTreeMap<(&'static str, u16), u64>,
    /// Task-level verdicts of `/submit` (`passed`, `wrong_answer`, ...).
    verdicts: BTreeMap<&'static str, u64>,
    /// `/run_code` outcomes by SandboxFusion status.
    runs: BTreeMap<&'static str, u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, status: u16, seconds: f64) {
        let mut c = self.lock();
        *c.requests.entry((endpoint, status)).or_default() += 1;
        let h = c.latency.entry(endpoint).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.counts[i] += 1;
        }
        h.count += 1;
        h.sum += seconds;
    }

    pub fn verdict(&self, name: &'static str) {
        *self.lock().verdicts.entry(name).or_default() += 1;
    }

    pub fn run(&self, status: &'static str) {
        *self.lock().runs.entry(status).or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        // A panic while holding the lock leaves plain numbers behind: still fine to count on.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exposition text; `queued` is the requests admitted and not yet answered, `running`
    /// those holding a sandbox worker.
    pub fn render(&self, queued: usize, running: usize, capacity: usize) -> String {
        let c = self.lock();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP dllm_serve_requests_total HTTP requests by endpoint and status.");
        let _ = writeln!(out, "# TYPE dllm_serve_requests_total counter");
        for ((endpoint, code), n) in &c.requests {
            let _ = writeln!(out, "dllm_serve_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP dllm_serve_verdicts_total /submit verdicts of the trusted judge, by kind.");
        let _ = writeln!(out, "# TYPE dllm_serve_verdicts_total counter");
        for (verdict, n) in &c.verdicts {
            let _ = writeln!(out, "dllm_serve_verdicts_total{{verdict=\"{verdict}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP dllm_serve_runs_total /run_code runs by SandboxFusion status.");
        let _ = writeln!(out, "# TYPE dllm_serve_runs_total counter");
        for (status, n) in &c.runs {
            let _ = writeln!(out, "dllm_serve_runs_total{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP dllm_serve_queue_depth Requests admitted and not yet answered (running or waiting).");
        let _ = writeln!(out, "# TYPE dllm_serve_queue_depth gauge");
        let _ = writeln!(out, "dllm_serve_queue_depth {queued}");
        let _ = writeln!(out, "# HELP dllm_serve_running Requests holding a sandbox worker.");
        let _ = writeln!(out, "# TYPE dllm_serve_running gauge");
        let _ = writeln!(out, "dllm_serve_running {running}");
        let _ = writeln!(out, "# HELP dllm_serve_capacity Requests admitted at most; past it the answer is 504.");
        let _ = writeln!(out, "# TYPE dllm_serve_capacity gauge");
        let _ = writeln!(out, "dllm_serve_capacity {capacity}");
        let _ = writeln!(out, "# HELP dllm_serve_request_seconds Time from a request's arrival to its answer.");
        let _ = writeln!(out, "# TYPE dllm_serve_request_seconds histogram");
        for (endpoint, h) in &c.latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(out, "dllm_serve_request_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "dllm_serve_request_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "dllm_serve_request_seconds_sum{{endpoint=\"{endpoint}\"}} {}", h.sum);
            let _ = writeln!(out, "dllm_serve_request_seconds_count{{endpoint=\"{endpoint}\"}} {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_the_slow_ones_in_inf() {
        let m = Metrics::default();
        m.request("/run_code", 200, 0.003);
        m.request("/run_code", 200, 0.2);
        m.request("/run_code", 504, 100.0);
        let text = m.render(1, 0, 4);
        assert!(text.contains("dllm_serve_request_seconds_bucket{endpoint=\"/run_code\",le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("dllm_serve_request_seconds_bucket{endpoint=\"/run_code\",le=\"0.25\"} 2\n"), "{text}");
        assert!(text.contains("dllm_serve_request_seconds_bucket{endpoint=\"/run_code\",le=\"60\"} 2\n"), "{text}");
        assert!(text.contains("dllm_serve_request_seconds_bucket{endpoint=\"/run_code\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("dllm_serve_requests_total{endpoint=\"/run_code\",code=\"504\"} 1\n"), "{text}");
        assert!(text.contains("dllm_serve_queue_depth 1\n"), "{text}");
    }
}
