//! The Python harness (embedded in the binary) and the trusted process that runs assertion
//! tests. `values.py` (the type-tagged values that cross the boundary), `child.py` (what runs
//! next to candidate code) and `state.py` (what it reads of candidate objects without running
//! them) are shared by every role: the wasm guest runs them alone, the native
//! fork-server adds `fork_server.py`, the trusted judge adds `session.py` (its link to the
//! sandbox), `stand_ins.py` (the candidate's names on its side), `test_run.py` (the tests) and
//! `trusted.py` (its protocol loop).
//!
//! Assertion and pytest tasks run in two processes at once. The trusted process executes the
//! task's test code; each name the candidate defined is a stand-in there that forwards what the
//! tests do with it to the sandbox, which runs only candidate code. The judge relays the two
//! ([`Session`], a [`Conversation`]): test code, expected values, random draws and the tests'
//! library calls never enter the sandbox, and the candidate's answers come back as data.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sandbox::Conversation;
use crate::task::AssertionTests;

/// The wasm guest's program: the child side of the harness.
pub const GUEST_SOURCE: &str =
    concat!(include_str!("values.py"), "\n", include_str!("child.py"), "\n", include_str!("state.py"), "\nguest_main()\n");
/// What a pre-initialised wasm guest runs once before its snapshot is taken.
pub const GUEST_PRELOAD: &str =
    concat!(include_str!("values.py"), "\n", include_str!("child.py"), "\n", include_str!("state.py"), "\nguest_setup()\n");
/// The native fork-server's program (`python -c SOURCE serve FD [pytest]`).
pub const SERVER_SOURCE: &str = concat!(
    include_str!("values.py"),
    "\n",
    include_str!("child.py"),
    "\n",
    include_str!("state.py"),
    "\n",
    include_str!("fork_server.py"),
    "\nserve_forever(int(sys.argv[2]), sys.argv[3:] == [\"pytest\"])\n"
);
/// The trusted judge's program (`python -c SOURCE trusted WORKDIR`).
pub const TRUSTED_SOURCE: &str = concat!(
    include_str!("values.py"),
    "\n",
    include_str!("child.py"),
    "\n",
    include_str!("state.py"),
    "\n",
    include_str!("session.py"),
    "\n",
    include_str!("stand_ins.py"),
    "\n",
    include_str!("test_run.py"),
    "\n",
    include_str!("trusted.py"),
    "\ntrusted_main()\n"
);
/// The name the trusted judge's private folder starts with; `trusted.py` refuses to empty a
/// folder named otherwise.
const TRUSTED_WORKDIR_PREFIX: &str = "dllm-rl-trusted-";

/// Deadline of an analysis (parsing a task's test code: fast unless something is wrong).
const ANALYZE_DEADLINE: Duration = Duration::from_secs(60);

/// Address-space cap of a trusted process: the tests run on values the candidate chose
/// (`[0] * f(x)`), outside the sandbox; past this they get a `MemoryError`, not the host's
/// memory.
const TRUSTED_ADDRESS_SPACE: libc::rlim_t = 4 << 30;

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
    #[error("the tests took longer than {0:?}")]
    Timeout(Duration),
    /// The task's own test code is broken (does not parse, ...).
    #[error("{0}")]
    Tests(String),
}

/// What a task's tests look like, found once per task.
#[derive(Debug, Clone, Deserialize)]
pub struct TestShape {
    /// Number of `assert` statements: the tests of an `assert` task.
    pub asserts: usize,
    /// Number of test functions: the tests of a `pytest` task.
    #[serde(default)]
    pub functions: usize,
    /// Why no completion can be judged on them (they never reach the candidate).
    pub invalid: Option<String>,
}

/// One test function's outcome (`pytest` tasks).
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionOutcome {
    pub ok: bool,
    pub error: Option<String>,
}

/// One assertion statement's outcome (a statement in a loop reports each time).
#[derive(Debug, Clone, Deserialize)]
pub struct AssertOutcome {
    pub index: usize,
    pub ok: bool,
    pub error: Option<String>,
}

/// How the tests went, as the trusted process saw it.
#[derive(Debug, Clone, Deserialize)]
pub struct TestRun {
    pub asserts: Vec<AssertOutcome>,
    pub total: usize,
    #[serde(default)]
    pub functions: Vec<FunctionOutcome>,
    /// The first exception raised outside any assertion (by the test code, or a candidate
    /// exception where no assertion catches it).
    pub raised: Option<String>,
    /// Requests made to the candidate.
    pub calls: usize,
    /// Whether the tests reached the candidate: they made requests, or read one of its names
    /// that is data or missing (`solve = 5`). Tests that never did judge nothing.
    pub reached: bool,
    /// The sandbox's answers broke the protocol (out of step, undecodable): nothing it said counts.
    pub broken: Option<String>,
}

/// What the assertion tests of a task need besides their code.
#[derive(Serialize)]
struct TaskRequest<'a> {
    test_code: &'a str,
    names: &'a [String],
    class_names: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    setup: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    prelude: &'a str,
    runner: &'a str,
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The test code may write files (KodCode tests redirect stdout to `output.txt`): they
    /// land in this private folder, the process's cwd, emptied before each request; not in the
    /// cwd of whoever runs the verifier. Declared last: removed after the process is gone.
    _workdir: tempfile::TempDir,
}

impl Process {
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn send(&mut self, id: u64, kind: char, body: &[u8]) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(body.len() + 24);
        write!(line, "{id} {kind} ")?;
        line.extend_from_slice(body);
        line.push(b'\n');
        self.stdin.write_all(&line)?;
        self.stdin.flush()
    }

    /// The next line for request `id`: (kind, body).
    fn receive(&mut self, id: u64, deadline: Duration) -> Result<(u8, Vec<u8>), TrustedError> {
        let line = match read_line_by(&mut self.stdout, Instant::now() + deadline) {
            Ok(Some(line)) => line,
            Ok(None) => return Err(TrustedError::Protocol("the trusted judge exited".into())),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(TrustedError::Timeout(deadline)),
            Err(e) => return Err(TrustedError::Io(e)),
        };
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(head), Some(kind), Some(body)) if head == id.to_string() && kind.len() == 1 => {
                Ok((kind.as_bytes()[0], body.as_bytes().to_vec()))
            }
            _ => Err(TrustedError::Protocol(format!("a line that is not request {id}'s"))),
        }
    }
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
            // A fixed hash seed, as in the sandbox, so that runs are deterministic (hence not
            // `-I`, which ignores PYTHONHASHSEED; the environment is cleared instead).
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
            .stderr(Stdio::inherit())
            // Its own process group, so that a terminal's Ctrl-C reaches only the command (a
            // judge reads end-of-file and exits when the command is gone).
            .process_group(0);
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

    fn take(&self) -> Result<Process, TrustedError> {
        let popped = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match popped {
            Some(p) => Ok(p),
            None => self.spawn(),
        }
    }

    /// Back to the pool: only a process in step with the protocol.
    fn put_back(&self, process: Process) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(process);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts the tests of a task's assertion code and checks that they can reach the
    /// candidate.
    pub fn analyze(&self, tests: &AssertionTests<'_>, prelude: &str) -> Result<TestShape, TrustedError> {
        let mut process = self.take()?;
        let id = self.next_id();
        let body = serde_json::to_vec(&task_request(tests, prelude)).map_err(|e| TrustedError::Protocol(e.to_string()))?;
        let reply = process.send(id, 'A', &body).map_err(TrustedError::Io).and_then(|()| process.receive(id, ANALYZE_DEADLINE));
        let reply = reply.and_then(|(kind, body)| match kind {
            b'D' => serde_json::from_slice::<Value>(&body).map_err(|e| TrustedError::Protocol(e.to_string())),
            _ => Err(TrustedError::Protocol("an analysis answered with a request".into())),
        });
        // Only a process in step goes back: one that answered out of turn is gone.
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                process.kill();
                return Err(e);
            }
        };
        self.put_back(process);
        if let Some(err) = reply.get("error").and_then(Value::as_str) {
            return Err(TrustedError::Tests(err.to_owned()));
        }
        serde_json::from_value(reply).map_err(|e| TrustedError::Protocol(e.to_string()))
    }

    /// Why no completion could be judged on `task`'s tests (they never reach the candidate, or
    /// do not parse), or `None` for a task that can judge. Only assertion and pytest tasks are
    /// looked at.
    pub fn why_unjudgeable(&self, task: &crate::Task) -> Result<Option<String>, TrustedError> {
        let Some(tests) = task.spec.assertion_tests() else { return Ok(None) };
        match self.analyze(&tests, &task.prelude) {
            Ok(shape) => Ok(shape.invalid),
            Err(TrustedError::Tests(message)) => Ok(Some(message)),
            Err(e) => Err(e),
        }
    }

    /// A session that will run `tests` against one completion, the trusted side of a serve
    /// run; the tests' own work may take `budget` in all.
    pub fn session(&self, tests: &AssertionTests<'_>, prelude: &str, budget: Duration) -> Result<Session, TrustedError> {
        let request = serde_json::to_value(task_request(tests, prelude)).map_err(|e| TrustedError::Protocol(e.to_string()))?;
        let process = self.take()?;
        crate::affinity::follow(process.child.id());
        Ok(Session { process: Some(process), id: self.next_id(), request, budget, state: State::Starting })
    }

    /// Takes back a finished session's process and returns what the tests said.
    pub fn finish(&self, session: Session, end: &str) -> SessionEnd {
        let mut session = session;
        session.wind_up(end);
        match (session.state, session.process) {
            (State::Done(run), Some(process)) => {
                // The sandbox's answers broke the protocol: whatever they were, the process that
                // read them is not reused (a line it split could answer the next request).
                if run.broken.is_some() {
                    process.kill();
                } else {
                    self.put_back(process);
                }
                SessionEnd::Tests(run)
            }
            (state, process) => {
                if let Some(p) = process {
                    p.kill();
                }
                match state {
                    State::Loaded(load) => SessionEnd::LoadFailed(Some(load)),
                    // The run ended before the candidate's code had loaded (a loop at module
                    // level, a crash): the sandbox's outcome says how.
                    State::Starting => SessionEnd::LoadFailed(None),
                    State::Failed(e) => SessionEnd::Failed(e),
                    State::Done(_) | State::Running => {
                        SessionEnd::Failed(TrustedError::Protocol("the session ended without the tests' results".into()))
                    }
                }
            }
        }
    }
}

fn task_request<'a>(tests: &'a AssertionTests<'a>, prelude: &'a str) -> TaskRequest<'a> {
    TaskRequest {
        test_code: tests.test_code,
        names: tests.entry_points,
        class_names: tests.class_names,
        setup: tests.test_setup,
        prelude,
        runner: tests.runner,
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The tests ran (perhaps cut short by the end of the sandbox run).
    Tests(TestRun),
    /// The candidate's code did not load: the harness's `load` line, or none when the run ended
    /// before it said anything.
    LoadFailed(Option<Value>),
    Failed(TrustedError),
}

enum State {
    Starting,
    Running,
    Loaded(Value),
    Done(TestRun),
    Failed(TrustedError),
}

/// The trusted side of one serve run: relays the sandbox's answers to the trusted process and
/// its requests back, line by line, without looking into the values (a line from the sandbox is
/// only checked to be one JSON object, so that it cannot spill into the protocol).
pub struct Session {
    process: Option<Process>,
    id: u64,
    /// The task, sent with the candidate's names once they are known.
    request: Value,
    /// What the tests' own work may still take.
    budget: Duration,
    state: State,
}

impl Session {
    /// Sends `kind body` and reads the trusted side's next line: a request for the sandbox, or
    /// the end of the tests.
    fn exchange(&mut self, kind: char, body: &[u8]) -> Option<Vec<u8>> {
        let process = self.process.as_mut()?;
        let started = Instant::now();
        let reply = process.send(self.id, kind, body).map_err(TrustedError::Io).and_then(|()| process.receive(self.id, self.budget));
        self.budget = self.budget.saturating_sub(started.elapsed());
        match reply {
            Ok((b'C', request)) => {
                self.state = State::Running;
                Some(request)
            }
            Ok((b'D', done)) => {
                self.state = match serde_json::from_slice::<Value>(&done) {
                    Ok(v) if v.get("error").is_some() => {
                        State::Failed(TrustedError::Tests(v["error"].as_str().unwrap_or("?").to_owned()))
                    }
                    Ok(v) => match serde_json::from_value(v) {
                        Ok(run) => State::Done(run),
                        Err(e) => State::Failed(TrustedError::Protocol(e.to_string())),
                    },
                    Err(e) => State::Failed(TrustedError::Protocol(e.to_string())),
                };
                None
            }
            Ok(_) => {
                self.state = State::Failed(TrustedError::Protocol("an unknown line kind".into()));
                None
            }
            Err(e) => {
                self.state = State::Failed(e);
                None
            }
        }
    }

    /// After the sandbox run: a session still waiting for an answer hears that none will come
    /// (`end` says why), and the tests finish without the candidate.
    fn wind_up(&mut self, end: &str) {
        while matches!(self.state, State::Running) {
            let why = end.as_bytes().to_vec();
            if self.exchange('G', &why).is_some() {
                continue; // a request after the end: answered the same way
            }
        }
    }
}

impl Conversation for Session {
    fn answer(&mut self, message: &[u8]) -> Option<Vec<u8>> {
        // Only a single JSON object may be relayed: the line is the candidate's to shape, and
        // the trusted side reads one value per line.
        let well_formed = message.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
            && serde_json::from_slice::<serde::de::IgnoredAny>(message).is_ok()
            && !message.contains(&b'\n');
        match self.state {
            State::Starting => {
                #[derive(Deserialize)]
                struct First {
                    load: Option<Value>,
                }
                let first: Option<First> = if well_formed { serde_json::from_slice(message).ok() } else { None };
                match first {
                    Some(First { load: Some(load) }) => {
                        self.state = State::Loaded(load);
                        None
                    }
                    Some(First { load: None }) => {
                        let mut request = std::mem::take(&mut self.request);
                        let loaded: Value = serde_json::from_slice(message).unwrap_or_default();
                        request["loaded"] = loaded;
                        let body = serde_json::to_vec(&request).unwrap_or_default();
                        self.exchange('R', &body)
                    }
                    None => {
                        self.state = State::Loaded(serde_json::json!({"raise": "malformed_result"}));
                        None
                    }
                }
            }
            State::Running if well_formed => self.exchange('S', message),
            // An answer that is not one JSON object: the protocol is broken, as if the sandbox
            // had said something undecodable.
            State::Running => self.exchange('S', b"{}"),
            _ => None,
        }
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
    fn analysis_counts_tests_and_finds_tests_that_never_reach_the_candidate() {
        let judge = TrustedJudge::new(&crate::native::default_python());
        let (names, classes) = (vec!["f".to_owned()], Vec::new());
        let shape = |code: &str, runner: &'static str| {
            let tests = AssertionTests { entry_points: &names, class_names: &classes, test_setup: "", test_code: code, runner };
            judge.analyze(&tests, "").unwrap()
        };
        let s = shape("assert f(1) == 2\nfor x in range(3):\n    assert f(x) >= 0\n", "module");
        assert_eq!((s.asserts, s.invalid.is_none()), (2, true), "{s:?}");
        let s = shape("from solution import g\ndef test_a():\n    assert g(1)\nclass TestB:\n    def test_c(self):\n        pass\n", "test_functions");
        assert_eq!((s.functions, s.invalid.is_none()), (2, true), "{s:?}");
        // KodCode algorithm 41's shape: the test file carries its own solution.
        let s = shape("import random\ndef f(a):\n    a.sort()\ndef test_f():\n    a = [3, 1]\n    f(a)\n    assert a == sorted(a)\n", "test_functions");
        assert!(s.invalid.is_some(), "{s:?}");
        let tests = AssertionTests { entry_points: &names, class_names: &classes, test_setup: "", test_code: "assert f(", runner: "module" };
        assert!(matches!(judge.analyze(&tests, ""), Err(TrustedError::Tests(m)) if m.contains("SyntaxError")));
    }
}
