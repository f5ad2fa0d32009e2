//! The Python harness (embedded in the binary) and the trusted process that rewrites and
//! replays assertion tests. Three roles share `child.py`: the wasm guest runs it alone, the
//! native fork-server adds `fork_server.py`, the trusted judge adds `trusted.py`.
//!
//! The trusted process never receives candidate code: it turns a task's assertion code into
//! the version the sandbox runs (assertions reduced to their candidate calls) and, after the
//! run, replays the assertions with the recorded values decoded into plain Python data.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::task::AssertionTests;

/// The wasm guest's program: the child side of the harness (`child.py`).
pub const GUEST_SOURCE: &str = concat!(include_str!("child.py"), "\nguest_main()\n");
/// What a pre-initialised wasm guest runs once before its snapshot is taken.
pub const GUEST_PRELOAD: &str = concat!(include_str!("child.py"), "\nguest_setup()\n");
/// The native fork-server's program (`python -c SOURCE serve FD [pytest]`).
pub const SERVER_SOURCE: &str = concat!(
    include_str!("child.py"),
    "\n",
    include_str!("fork_server.py"),
    "\nserve_forever(int(sys.argv[2]), sys.argv[3:] == [\"pytest\"])\n"
);
/// The name the trusted judge's private folder starts with; `trusted.py` refuses to empty a
/// folder named otherwise.
const TRUSTED_WORKDIR_PREFIX: &str = "dllm-rl-trusted-";

/// Deadline of a rewrite (parsing and transforming test code: fast unless something is wrong).
const TRANSFORM_DEADLINE: Duration = Duration::from_secs(60);

/// Address-space cap of a trusted process: the replay runs test code on values the candidate
/// chose (`[0] * f(x)`), outside the sandbox; past this it gets a `MemoryError`, not the host's
/// memory.
const TRUSTED_ADDRESS_SPACE: libc::rlim_t = 4 << 30;

/// The trusted judge's program (`python -c SOURCE trusted WORKDIR`); it reuses the child's pytest-style
/// test runner, never its candidate-running code.
pub const TRUSTED_SOURCE: &str =
    concat!(include_str!("child.py"), "\n", include_str!("trusted.py"), "\ntrusted_main()\n");

/// The I/O causes are in the messages, not `source()`s: verdicts keep `to_string()` alone, and
/// a cause in both would be printed twice by `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum TrustedError {
    #[error("cannot start the trusted judge {python}: {cause}")]
    Spawn { python: String, cause: std::io::Error },
    #[error("trusted judge I/O: {0}")]
    Io(std::io::Error),
    #[error("trusted judge answered badly: {0}")]
    Protocol(String),
    /// The task's test code ran past its deadline (a loop over a huge value the candidate
    /// returned, say); the judge process was killed.
    #[error("the replay of the tests took longer than {0:?}")]
    Timeout(Duration),
    /// The task's own test code is broken (does not parse, ...).
    #[error("{0}")]
    Tests(String),
}

/// The sandbox version of a task's assertion code.
#[derive(Debug, Clone, Deserialize)]
pub struct ChildTests {
    /// Test code with each assertion reduced to its candidate calls.
    pub child: String,
    /// Number of `assert` statements: the tests of an `assert` task.
    pub asserts: usize,
    /// Number of candidate call sites: records name one of `0..sites`.
    pub sites: usize,
    /// Number of test functions: the tests of a `pytest` task.
    #[serde(default)]
    pub functions: usize,
}

/// One test function's outcome in the replay (`pytest` tasks).
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionOutcome {
    pub ok: bool,
    pub error: Option<String>,
}

/// One assertion statement's outcome in the replay (a statement in a loop reports each time).
#[derive(Debug, Clone, Deserialize)]
pub struct AssertOutcome {
    pub index: usize,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Replay {
    pub asserts: Vec<AssertOutcome>,
    pub total: usize,
    #[serde(default)]
    pub functions: Vec<FunctionOutcome>,
    /// The first exception raised outside any assertion (by the test code, or a candidate
    /// exception replayed where no assertion catches it).
    pub raised: Option<String>,
}

#[derive(Serialize)]
struct Request<'a> {
    op: &'a str,
    test_code: &'a str,
    names: &'a [String],
    class_names: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    setup: &'a str,
    records: &'a [Value],
    runner: &'a str,
}

/// A request on the wire. The reply echoes `id`: a reply with another id is not this request's
/// (something the test code ran wrote to the protocol), and the process is discarded.
#[derive(Serialize)]
struct Numbered<'a> {
    id: u64,
    #[serde(flatten)]
    request: &'a Request<'a>,
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The replay runs the task's test code, which may write files (KodCode tests redirect
    /// stdout to `output.txt`): they land in this private folder, the process's cwd, emptied
    /// before each request; not in the cwd of whoever runs the verifier. Declared last: removed
    /// after the process is gone.
    _workdir: tempfile::TempDir,
}

impl From<std::io::Error> for TrustedError {
    fn from(e: std::io::Error) -> Self {
        TrustedError::Io(e)
    }
}

/// A small pool of trusted judge processes (one per concurrent caller).
pub struct TrustedJudge {
    python: std::path::PathBuf,
    idle: Mutex<Vec<Process>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl TrustedJudge {
    pub fn new(python: &Path) -> Self {
        TrustedJudge { python: python.to_path_buf(), idle: Mutex::new(Vec::new()), next_id: Default::default() }
    }

    fn spawn(&self) -> Result<Process, TrustedError> {
        let workdir = tempfile::Builder::new().prefix(TRUSTED_WORKDIR_PREFIX).tempdir()?;
        let mut command = Command::new(&self.python);
        command
            // A fixed hash seed, as in the sandbox, so that replays are deterministic (hence
            // not `-I`, which ignores PYTHONHASHSEED; the environment is cleared instead).
            .args(["-s", "-P", "-c", TRUSTED_SOURCE, "trusted"])
            .arg(workdir.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("HOME", workdir.path())
            .env("TMPDIR", workdir.path())
            .current_dir(workdir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent. (No parent-
        // death signal: it fires when the spawning *thread* ends, and judges outlive the scoped
        // threads that start them; a judge whose verifier died reads end-of-file and exits.)
        unsafe {
            command.pre_exec(|| {
                let cap = libc::rlimit { rlim_cur: TRUSTED_ADDRESS_SPACE, rlim_max: TRUSTED_ADDRESS_SPACE };
                if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|cause| TrustedError::Spawn { python: self.python.display().to_string(), cause })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Process { child, stdin, stdout, _workdir: workdir })
    }

    fn ask(&self, request: &Request<'_>, deadline: Duration) -> Result<Value, TrustedError> {
        let popped = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut process = match popped {
            Some(p) => p,
            None => self.spawn()?,
        };
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut line =
            serde_json::to_vec(&Numbered { id, request }).map_err(|e| TrustedError::Protocol(e.to_string()))?;
        line.push(b'\n');
        process.stdin.write_all(&line)?;
        process.stdin.flush()?;
        let reply = match read_line_by(&mut process.stdout, Instant::now() + deadline) {
            Ok(Some(reply)) => reply,
            failed => {
                let _ = process.child.kill();
                let _ = process.child.wait();
                return Err(match failed {
                    Ok(_) => TrustedError::Protocol("the trusted judge exited".into()),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => TrustedError::Timeout(deadline),
                    Err(e) => TrustedError::Io(e),
                });
            }
        };
        let reply: Value = match serde_json::from_str::<Value>(&reply) {
            Ok(reply) if reply.get("id").and_then(Value::as_u64) == Some(id) => reply,
            wrong => {
                let _ = process.child.kill();
                let _ = process.child.wait();
                return Err(TrustedError::Protocol(match wrong {
                    Ok(_) => format!("a reply that is not request {id}'s"),
                    Err(e) => e.to_string(),
                }));
            }
        };
        // Back to the pool only in step with the protocol.
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(process);
        if let Some(err) = reply.get("error").and_then(Value::as_str) {
            return Err(TrustedError::Tests(err.to_owned()));
        }
        Ok(reply)
    }

    /// Rewrites assertion code for the sandbox.
    pub fn child_tests(&self, tests: &AssertionTests<'_>) -> Result<ChildTests, TrustedError> {
        let request = Request {
            op: "transform",
            test_code: tests.test_code,
            names: tests.entry_points,
            class_names: tests.class_names,
            setup: tests.test_setup,
            records: &[],
            runner: tests.runner,
        };
        let reply = self.ask(&request, TRANSFORM_DEADLINE)?;
        serde_json::from_value(reply).map_err(|e| TrustedError::Protocol(e.to_string()))
    }

    /// Replays the assertions on the recorded call-site values; the process is killed after
    /// `deadline` (`TrustedError::Timeout`).
    pub fn replay(&self, tests: &AssertionTests<'_>, records: &[Value], deadline: Duration) -> Result<Replay, TrustedError> {
        let request = Request {
            op: "replay",
            test_code: tests.test_code,
            names: tests.entry_points,
            class_names: tests.class_names,
            setup: tests.test_setup,
            records,
            runner: tests.runner,
        };
        let reply = self.ask(&request, deadline)?;
        serde_json::from_value(reply).map_err(|e| TrustedError::Protocol(e.to_string()))
    }
}

/// One line from `reader`, or `None` at end of file; an error of kind `TimedOut` when no whole
/// line arrived by `deadline`.
fn read_line_by(reader: &mut BufReader<ChildStdout>, deadline: Instant) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        if reader.buffer().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd { fd: reader.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            match unsafe { libc::poll(&mut poll, 1, ms) } {
                0 => return Err(std::io::ErrorKind::TimedOut.into()),
                n if n < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                    continue;
                }
                _ => {}
            }
        }
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done {
            return String::from_utf8(line).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
    }
}

impl Drop for TrustedJudge {
    fn drop(&mut self) {
        for mut p in self.idle.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_write_in_a_private_folder_emptied_between_requests() {
        // KodCode tests write `output.txt` to their cwd; before, the replay wrote it into the
        // cwd of whoever ran `dllm-rl`.
        let judge = TrustedJudge::new(&crate::native::default_python());
        let probe = format!("dllm-rl-replay-probe-{}.txt", std::process::id());
        let code = format!(
            "import os\nassert not os.path.exists({probe:?})\nwith open({probe:?}, 'w') as f:\n    f.write('x')\n\
             assert os.path.exists({probe:?})\n"
        );
        let (names, classes) = (vec!["f".to_owned()], Vec::new());
        let tests =
            AssertionTests { entry_points: &names, class_names: &classes, test_setup: "", test_code: &code, runner: "module" };
        for round in 0..2 {
            let replay = judge.replay(&tests, &[], Duration::from_secs(60)).unwrap();
            assert_eq!(replay.asserts.len(), 2, "round {round}: {replay:?}");
            assert!(replay.asserts.iter().all(|a| a.ok), "round {round}: {replay:?}");
            assert!(!Path::new(&probe).exists(), "round {round}: the replay wrote into the caller's cwd");
        }
    }

    #[test]
    fn a_recorded_array_cannot_declare_its_own_width() {
        // Three elements declared 2 GB wide each: a few bytes of record, 6 GB to decode as said.
        let judge = TrustedJudge::new(&crate::native::default_python());
        let code = "r = f(1)\nassert len(r) == 3 and str(r.dtype) == '<U2'\n";
        let (names, classes) = (vec!["f".to_owned()], Vec::new());
        let tests =
            AssertionTests { entry_points: &names, class_names: &classes, test_setup: "", test_code: code, runner: "module" };
        let record = serde_json::json!({"site": 0, "n": 0, "value": {"$ndarray": {"dtype": "<U500000000", "data": ["a", "bc", ""]}}});
        let replay = judge.replay(&tests, &[record], Duration::from_secs(60)).unwrap();
        assert!(replay.asserts.iter().all(|a| a.ok) && replay.asserts.len() == 1, "{replay:?}");
    }
}
