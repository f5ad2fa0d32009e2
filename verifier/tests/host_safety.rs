//! Host safety of the native sandbox, in its own test binary so that no other test's runs are
//! in flight when it counts the sandbox's processes: a fork bomb, an escape from the process
//! group, a connection to the host's loopback, writes outside the sandbox and signals to the
//! verifier must leave the host as it was, and earn nothing.

use std::net::TcpListener;

mod common;

use dllm_verifier::{Backend, Completion, Verifier};

const HONEST: &str = "def f(x):\n    return 7 * x * x + 13 * x + 987643\n";

fn task() -> dllm_verifier::Task {
    let tests: Vec<String> =
        [3i64, 11].iter().map(|x| format!(r#"{{"args":[{x}],"expected":{}}}"#, 7 * x * x + 13 * x + 987_643)).collect();
    let json = format!(
        r#"{{"id":"call","kind":"call","entry_point":"f","tests":[{}],"limits":{{"time_s":1.0,"memory_mb":256}}}}"#,
        tests.join(",")
    );
    serde_json::from_str(&json).unwrap()
}

#[test]
fn native_host_is_unharmed() {
    let verifier = Verifier::new(Backend::Native, 2).unwrap();
    let tasks = vec![verifier.prepare(task()).unwrap()];
    let judge = |code: &str| {
        let completion = Completion { task: 0, text: format!("```python\n{code}\n```") };
        verifier.verify_batch(&tasks, &[completion], &|_| {}).remove(0)
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("pwned");
    // SAFETY: chmod on a path we own; world-writable so that only isolation can stop the write.
    std::fs::set_permissions(outside.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    let cases = [
        (
            "fork bomb",
            "import os\ndef f(x):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n\
             while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
                .to_string(),
        ),
        (
            "escaping the process group",
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n    os._exit(0)\ndef f(x):\n    return 0\n".to_string(),
        ),
        (
            "network connection to the host",
            format!(
                "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\nexcept OSError:\n    pass\n\
                 def f(x):\n    return 0\n"
            ),
        ),
        (
            "writing outside the temp dir",
            format!(
                "import os\nfor p in [{target:?}, '/usr/pwned', '/etc/pwned', '/pwned']:\n    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n\
                 def f(x):\n    return 0\n",
                target = target.display().to_string()
            ),
        ),
        (
            "killing the parent",
            "import os, signal\nfor pid in [os.getppid(), -1, 1]:\n    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n\
             def f(x):\n    return 0\n"
                .to_string(),
        ),
    ];
    for (name, code) in &cases {
        let v = judge(code);
        assert!(v.tests.iter().all(|t| !t.verdict.passed()) && !v.sandbox_error, "`{name}`: {v:?}");
        assert!(listener.accept().is_err(), "`{name}`: the sandbox reached the host's loopback listener");
        assert!(!target.exists(), "`{name}`: wrote {}", target.display());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let left = common::our_sandbox_processes();
        assert!(left.is_empty(), "processes outlived their runs: {left:?}");
    }
    assert!(judge(HONEST).all_passed, "the verifier no longer works");
}
