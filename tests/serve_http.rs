//! `dllm-rl serve` end to end: the binary on a free loopback port, spoken to over raw HTTP/1.1
//! (no client library: what goes on the wire is what the test writes).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A server process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dllm-rl"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dllm-rl serve");
        let stdout = child.stdout.take().expect("piped stdout");
        // The server prints its address once it accepts connections.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the address line");
        let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("no address in {line:?}")).to_owned();
        Server { child, addr }
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (code, text) = http(&self.addr, "POST", path, &body.to_string(), None);
        (code, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} answered {code} with non-JSON {text:?}: {e}")))
    }

    fn run_code(&self, body: Value) -> Value {
        let (code, v) = self.post("/run_code", &body);
        assert_eq!(code, 200, "{v}");
        v
    }

    fn submit(&self, body: Value) -> Value {
        let (code, v) = self.post("/submit", &body);
        assert_eq!(code, 200, "{v}");
        v
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on its own connection; the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, body.to_owned())
}

fn shared_row(file: &str, index: usize) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/shared/sandboxfusion").join(file);
    let text = std::fs::read_to_string(&path).expect("shared data");
    serde_json::from_str(text.lines().nth(index).expect("row")).expect("JSON row")
}

fn fenced(code: &str) -> String {
    format!("Here is my solution.\n```python\n{code}\n```\n")
}

#[test]
fn run_code_runs_python_with_sandboxfusions_status_rule() {
    let server = Server::start(&["-j", "2"]);
    let v = server.run_code(json!({"code": "print('hello')", "language": "python"}));
    assert_eq!(v["status"], "Success", "{v}");
    assert_eq!(v["compile_result"], Value::Null);
    assert_eq!(v["run_result"]["status"], "Finished");
    assert_eq!(v["run_result"]["return_code"], 0);
    assert_eq!(v["run_result"]["stdout"], "hello\n");
    assert!(v["run_result"]["execution_time"].as_f64().is_some_and(|t| t > 0.0), "{v}");
    assert_eq!(v["files"], json!({}));

    let v = server.run_code(json!({"code": "import sys\nprint('x')\nsys.exit(3)", "language": "python"}));
    assert_eq!((v["status"].as_str(), v["run_result"]["return_code"].as_i64()), (Some("Failed"), Some(3)), "{v}");
    assert_eq!(v["run_result"]["stdout"], "x\n");

    let v = server.run_code(json!({"code": "raise ValueError('bad input')", "language": "python"}));
    assert_eq!((v["status"].as_str(), v["run_result"]["return_code"].as_i64()), (Some("Failed"), Some(1)), "{v}");
    assert!(v["run_result"]["stderr"].as_str().unwrap().contains("ValueError: bad input"), "{v}");

    let v = server.run_code(json!({"code": "print(input()[::-1])\nprint(sum(map(int, input().split())))", "language": "python",
                                   "stdin": "abc\n1 2 3\n"}));
    assert_eq!(v["run_result"]["stdout"], "cba\n6\n", "{v}");

    let start = Instant::now();
    let v = server.run_code(json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(30)", "language": "python", "run_timeout": 1}));
    assert!(start.elapsed() < Duration::from_secs(10), "the time limit was not applied: {:?}", start.elapsed());
    assert_eq!((v["status"].as_str(), v["run_result"]["status"].as_str()), (Some("Failed"), Some("TimeLimitExceeded")), "{v}");

    // "Run this program" semantics: an exit 0 is Success here by definition (judging is /submit's).
    let v = server.run_code(json!({"code": "import sys\nsys.exit(0)\nassert False", "language": "python"}));
    assert_eq!(v["status"], "Success", "{v}");

    // SandboxFusion's SDK sends every field; empty files and -1 memory are fine.
    let v = server.run_code(json!({"code": "print(1)", "language": "python", "stdin": null, "compile_timeout": 10,
                                   "run_timeout": 5, "memory_limit_MB": -1, "files": {}, "fetch_files": []}));
    assert_eq!(v["status"], "Success", "{v}");
}

#[test]
fn bad_requests_get_a_400_naming_the_field() {
    let server = Server::start(&["-j", "1", "--max-code-bytes", "1000", "--max-stdin-bytes", "100", "--max-body-bytes", "5000", "--max-run-timeout", "20"]);
    let cases = [
        (json!({"code": "int main() {}", "language": "cpp"}), "`cpp`"),
        (json!({"code": "x = 1\n".repeat(200), "language": "python"}), "code:"),
        (json!({"code": "print(1)", "language": "python", "stdin": "x".repeat(200)}), "stdin:"),
        (json!({"code": "print(1)", "language": "python", "run_timeout": 100}), "run_timeout:"),
        (json!({"code": "print(1)", "language": "python", "run_timeout": -1}), "run_timeout:"),
        (json!({"code": "print(1)", "language": "python", "files": {"a.txt": "eA=="}}), "files:"),
        (json!({"code": "x".repeat(6000), "language": "python"}), "request body"),
        (json!({"language": "python"}), "missing field `code`"),
    ];
    for (body, field) in cases {
        let (code, v) = server.post("/run_code", &body);
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["status"], "SandboxError", "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(field), "{field} not named in {message:?}");
    }
    let (code, v) = server.post("/submit", &json!({"dataset": "mbpp", "id": 1, "completion": "x", "config": {}}));
    assert_eq!(code, 400);
    assert!(v["message"].as_str().unwrap().contains("config.provided_data"), "{v}");
    let (code, v) = server.post("/submit", &json!({"dataset": "mbpp", "id": 1, "completion": "x", "config": {"provided_data": {"content": "no tests"}}}));
    assert_eq!(code, 400);
    assert!(v["message"].as_str().unwrap().contains("config.provided_data.test_list"), "{v}");
    let (code, v) = server.post("/submit", &json!({"dataset": "mbpp", "id": 1, "completion": "x", "config": {"language": "java", "provided_data": {}}}));
    assert_eq!(code, 400);
    assert!(v["message"].as_str().unwrap().contains("`java`"), "{v}");

    // The small endpoints.
    assert_eq!(http(&server.addr, "GET", "/v1/ping", "", None), (200, "\"pong\"".to_owned()));
    assert_eq!(http(&server.addr, "GET", "/healthz", "", None).0, 200);
    let (code, metrics) = http(&server.addr, "GET", "/metrics", "", None);
    assert_eq!(code, 200);
    assert!(metrics.contains("dllm_serve_requests_total{endpoint=\"/run_code\",code=\"400\"} 8\n"), "{metrics}");
    assert!(metrics.contains("dllm_serve_request_seconds_count{endpoint=\"/submit\"} 3\n"), "{metrics}");
    assert!(metrics.contains("dllm_serve_queue_depth 0\n"), "{metrics}");
}

#[test]
fn submit_judges_mbpp_rows_with_the_trusted_judge() {
    let server = Server::start(&["-j", "2"]);
    let row = shared_row("code_eval_mbpp.jsonl", 0);
    assert_eq!(row["id"], 11);
    let submit = |completion: String, provided: &Value| {
        server.submit(json!({"dataset": "mbpp", "id": 11, "completion": completion, "config": {"language": "python", "provided_data": provided}}))
    };
    let reference = row["canonical_solution"].as_str().unwrap().to_owned();
    let v = submit(fenced(&reference), &row);
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!(v["id"], 11);
    assert_eq!(v["extracted_type"], "fenced");
    assert_eq!(v["extracted_code"].as_str().unwrap().trim(), reference.trim());
    assert_eq!(v["tests"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["tests"].as_array().unwrap().iter().all(|t| t["passed"] == true && t["exec_info"]["status"] == "Success"), "{v}");
    assert_eq!(v["extra"]["verdict"], "passed");

    // Only what judging needs, as a client would send it.
    let minimal = json!({"test_list": row["test_list"]});
    assert_eq!(submit(fenced(&reference), &minimal)["accepted"], true);

    let wrong = submit(fenced("def remove_Occ(s, ch):\n    return s[1:]"), &minimal);
    assert_eq!(wrong["accepted"], false, "{wrong}");
    assert_eq!(wrong["extra"]["verdict"], "wrong_answer", "{wrong}");
    assert!(wrong["tests"].as_array().unwrap().iter().any(|t| t["passed"] == false), "{wrong}");

    // SandboxFusion accepts these (exit code 0); the trusted judge does not.
    for trick in [
        "import sys\nsys.exit(0)",
        "def remove_Occ(s, ch):\n    return s\nimport os\nos._exit(0)",
        "def remove_Occ(s, ch):\n    raise SystemExit(0)",
        "class Always:\n    def __eq__(self, other):\n        return True\n\ndef remove_Occ(s, ch):\n    return Always()",
    ] {
        let v = submit(fenced(trick), &minimal);
        assert_eq!(v["accepted"], false, "{trick}: {v}");
        assert!(v["tests"].as_array().unwrap().iter().all(|t| t["passed"] == false), "{trick}: {v}");
    }
    let (_, metrics) = http(&server.addr, "GET", "/metrics", "", None);
    assert!(metrics.contains("dllm_serve_verdicts_total{verdict=\"passed\"} 2\n"), "{metrics}");
    assert!(metrics.contains("dllm_serve_verdicts_total{verdict=\"wrong_answer\"}"), "{metrics}");
}

#[test]
fn submit_judges_stdio_rows_and_humaneval_rows() {
    let server = Server::start(&["-j", "2"]);
    // CodeContests "Digit Jump", 102 stdio tests.
    let row = shared_row("code_eval_code_contests.jsonl", 2);
    assert!(row["content"].as_str().unwrap().contains("Digit Jump"));
    let bfs = "from collections import deque\ns = input().strip()\nn = len(s)\npos = {}\nfor i, c in enumerate(s):\n    pos.setdefault(c, []).append(i)\ndist = [-1] * n\ndist[0] = 0\nq = deque([0])\nseen = set()\nwhile q:\n    i = q.popleft()\n    nb = [i - 1, i + 1]\n    if s[i] not in seen:\n        seen.add(s[i])\n        nb += pos[s[i]]\n    for j in nb:\n        if 0 <= j < n and dist[j] < 0:\n            dist[j] = dist[i] + 1\n            q.append(j)\nprint(dist[n - 1])";
    let provided = json!({"test": row["test"]});
    let submit = |completion: String| {
        server.submit(json!({"dataset": "code_contests", "id": row["id"], "completion": completion,
                             "config": {"language": "python", "run_timeout": 10, "provided_data": provided}}))
    };
    let v = submit(fenced(bfs));
    assert_eq!(v["accepted"], true, "{}", &v.to_string()[..2000.min(v.to_string().len())]);
    let tests = v["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 102);
    assert!(tests[0]["test_info"]["input"]["stdin"].is_string(), "{}", tests[0]);
    let wrong = submit(fenced("print(1)"));
    assert_eq!(wrong["accepted"], false);
    assert!(wrong["tests"].as_array().unwrap().iter().any(|t| t["passed"] == true), "some answers are 1");
    for trick in ["import os\nos._exit(0)", "import sys\nsys.exit(0)"] {
        let v = submit(fenced(trick));
        assert_eq!(v["accepted"], false, "{trick}");
    }

    // HumanEval-style: the completion continues the prompt.
    let row = json!({"prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Add two numbers.\"\"\"\n",
                     "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
                     "entry_point": "add"});
    let submit = |completion: &str| {
        server.submit(json!({"dataset": "humaneval", "id": "HumanEval/0", "completion": completion, "config": {"provided_data": row}}))
    };
    assert_eq!(submit("    return a + b\n")["accepted"], true);
    assert_eq!(submit(&fenced("def add(a, b):\n    return a + b"))["accepted"], true);
    assert_eq!(submit("    return a - b\n")["accepted"], false);
    assert_eq!(submit("    import sys\n    sys.exit(0)\n")["accepted"], false);
}

#[test]
fn submit_judges_livecodebench_rows() {
    let server = Server::start(&["-j", "2"]);
    let row = shared_row("code_eval_live_code_bench_v1.jsonl", 1);
    let submit = |completion: &str| {
        server.submit(json!({"dataset": "live_code_bench_v1", "id": 1, "completion": completion, "config": {"provided_data": row}}))
    };
    let solution = "```python\nclass Solution:\n    def countSeniors(self, details: List[str]) -> int:\n        return sum(int(d[11:13]) > 60 for d in details)\n```";
    assert_eq!(submit(solution)["accepted"], true);
    // The dataset's own "reference" (SandboxFusion accepts it for call tasks).
    assert_eq!(submit("import sys\nsys.exit(0)")["accepted"], false);
}

#[test]
fn past_the_queue_requests_are_answered_504() {
    let server = Server::start(&["-j", "1", "--queue", "0"]);
    let addr = server.addr.clone();
    let slow = std::thread::spawn(move || {
        let body = json!({"code": "import time\ntime.sleep(2)\nprint('done')", "language": "python"});
        http(&addr, "POST", "/run_code", &body.to_string(), None)
    });
    // Until the slow run is admitted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http(&server.addr, "GET", "/metrics", "", None);
        if metrics.contains("dllm_serve_queue_depth 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "the slow run was never admitted: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, v) = server.post("/run_code", &json!({"code": "print(1)", "language": "python"}));
    assert_eq!(code, 504, "{v}");
    let (code, body) = slow.join().expect("slow request");
    assert_eq!(code, 200);
    assert!(body.contains("\"stdout\":\"done\\n\""), "{body}");
    // A place is free again.
    assert_eq!(server.run_code(json!({"code": "print(1)", "language": "python"}))["status"], "Success");
}

#[test]
fn a_token_is_required_when_set_and_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let server = Server::start(&["-j", "1", "--token-file", token_file.to_str().unwrap()]);
    let body = json!({"code": "print(1)", "language": "python"}).to_string();
    assert_eq!(http(&server.addr, "POST", "/run_code", &body, None).0, 401);
    assert_eq!(http(&server.addr, "POST", "/run_code", &body, Some("wrong-token!")).0, 401);
    assert_eq!(http(&server.addr, "GET", "/v1/ping", "", None).0, 401);
    let (code, text) = http(&server.addr, "POST", "/run_code", &body, Some("s3cret-token"));
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"status\":\"Success\""), "{text}");
    // Probes carry no token.
    assert_eq!(http(&server.addr, "GET", "/healthz", "", None).0, 200);

    let out = Command::new(env!("CARGO_BIN_EXE_dllm-rl")).args(["serve", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--token-file"), "{stderr}");
}

#[test]
fn sigterm_finishes_the_requests_in_flight_then_exits() {
    let mut server = Server::start(&["-j", "1"]);
    let addr = server.addr.clone();
    let slow = std::thread::spawn(move || {
        let body = json!({"code": "import time\ntime.sleep(1.5)\nprint('finished')", "language": "python"});
        http(&addr, "POST", "/run_code", &body.to_string(), None)
    });
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) }, 0);
    let (code, body) = slow.join().expect("slow request");
    assert_eq!(code, 200);
    assert!(body.contains("\"stdout\":\"finished\\n\""), "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(&server.addr).is_err(), "still accepting");
}
