use dllm_verifier::{NativeConfig, NativeSandbox, Task, Verifier, Completion};
use std::sync::Arc;

#[test]
fn smoke() {
    let sb = Arc::new(NativeSandbox::new(NativeConfig::default()).unwrap());
    eprintln!("isolated: {}", sb.network_isolated());
    let v = Verifier::with_sandbox(sb, 2).unwrap();
    let tasks: Vec<Task> = [
        r#"{"id":"s","kind":"stdio","tests":[{"stdin":"1 2\n","stdout":"3\n"},{"stdin":"5 5\n","stdout":"10\n"}]}"#,
        r#"{"id":"c","kind":"call","entry_point":"add","tests":[{"args":[1,2],"expected":3},{"args":[2,2],"expected":4}]}"#,
        r#"{"id":"a","kind":"assert","entry_points":["add"],"test_code":"assert add(1, 2) == 3\nassert add(2, 2) == 4\n"}"#,
        r#"{"id":"p","kind":"pytest","test_code":"from solution import add\nimport pytest\n\ndef test_a():\n    assert add(1, 2) == 3\n\ndef test_b():\n    with pytest.raises(TypeError):\n        add(1, 'x')\n"}"#,
    ].iter().map(|s| serde_json::from_str(s).unwrap()).collect();
    let prepared: Vec<_> = v.prepare_all(tasks).into_iter().map(|r| r.unwrap()).collect();
    let add = "```python\ndef add(a, b):\n    return a + b\n```";
    let stdio = "a, b = map(int, input().split())\nprint(a + b)\n";
    let comps = vec![
        Completion { task: 0, text: stdio.into() },
        Completion { task: 1, text: add.into() },
        Completion { task: 2, text: add.into() },
        Completion { task: 3, text: add.into() },
        Completion { task: 2, text: "def add(a, b):\n    return 3\n".into() },
        Completion { task: 2, text: "import os\nos._exit(0)\n".into() },
        Completion { task: 0, text: "while True: pass".into() },
    ];
    let t = std::time::Instant::now();
    let out = v.verify_batch(&prepared, &comps, &|_| {});
    eprintln!("{:?}", t.elapsed());
    for o in &out { eprintln!("{} {} {:?}", o.task_id, o.summary(), o.tests.iter().map(|t| t.verdict.name()).collect::<Vec<_>>()); if !o.all_passed { eprintln!("{:?}", o.tests.first()); } }
    assert!(out[0].all_passed && out[1].all_passed && out[2].all_passed && out[3].all_passed);
}
