//! Each dataset layout, from a row written the way the dataset publishes it, to a task whose
//! tests a correct solution passes and a wrong one fails in the sandbox. Rows are small,
//! hand-made in each dataset's published field layout (`../shared/research/verifier.md` §2).

use std::path::Path;
use std::sync::OnceLock;

use dllm_prompts::{import_text, Format, Task};
use dllm_verifier::{Backend, Completion, Verifier};
use serde_json::json;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::new(Backend::Native, 2).unwrap())
}

fn import_one(format: Format, row: serde_json::Value) -> Task {
    let imported = import_text(format, Path::new("row.jsonl"), &format!("{row}\n")).unwrap();
    assert!(imported.errors.is_empty(), "{:?}", imported.errors);
    assert_eq!(imported.tasks.len(), 1);
    imported.tasks.into_iter().next().unwrap()
}

/// Whether each completion passes every test of `task`.
fn judge(task: &Task, completions: &[&str]) -> Vec<bool> {
    let v = verifier();
    let prepared = vec![v.prepare(task.clone()).unwrap()];
    let completions: Vec<Completion> = completions.iter().map(|c| Completion { task: 0, text: c.to_string() }).collect();
    v.verify_batch(&prepared, &completions, &|_| {}).into_iter().map(|r| r.all_passed).collect()
}

#[test]
fn humaneval() {
    let task = import_one(
        Format::Humaneval,
        json!({
            "task_id": "HumanEval/53", "entry_point": "add",
            "prompt": "\n\ndef add(x: int, y: int):\n    \"\"\"Add two numbers x and y\n    >>> add(2, 3)\n    5\n    \"\"\"\n",
            "canonical_solution": "    return x + y\n",
            "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(0, 1) == 1\n    assert candidate(5, 7) == 12\n    assert candidate(7, 5) == 12\n"
        }),
    );
    assert_eq!((task.id.as_str(), task.kind()), ("humaneval/53", "assert"));
    let reference = task.reference.clone().unwrap();
    assert_eq!(judge(&task, &[&reference, "def add(x, y):\n    return x - y\n"]), [true, false]);
}

#[test]
fn humaneval_helpers_of_the_prompt_are_the_tasks() {
    // HumanEval/32's layout: the tests call `poly`, which the prompt defines.
    let task = import_one(
        Format::Humaneval,
        json!({
            "task_id": "HumanEval/32", "entry_point": "find_zero",
            "prompt": "import math\n\n\ndef poly(xs: list, x: float):\n    \"\"\"Evaluates a polynomial.\"\"\"\n    \
                       return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])\n\n\n\
                       def find_zero(xs: list):\n    \"\"\"Finds x such that poly(x) = 0.\"\"\"\n",
            "canonical_solution": "    begin, end = -1.0, 1.0\n    while poly(xs, begin) * poly(xs, end) > 0:\n        begin *= 2.0\n        end *= 2.0\n    \
                                   while end - begin > 1e-10:\n        center = (begin + end) / 2.0\n        \
                                   if poly(xs, center) * poly(xs, begin) > 0:\n            begin = center\n        else:\n            end = center\n    return begin\n",
            "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    for coeffs in [[1, 2], [-6, 11, -6, 1], [3, -4, 0, 1]]:\n        \
                     solution = candidate(list(coeffs))\n        assert math.fabs(poly(coeffs, solution)) < 1e-4\n"
        }),
    );
    let setup = match &task.spec {
        dllm_verifier::TestSpec::Assert { test_setup, .. } => test_setup.clone(),
        other => panic!("{other:?}"),
    };
    assert!(setup.contains("def poly(") && !setup.contains("find_zero"), "{setup}");
    let reference = task.reference.clone().unwrap();
    let own_poly = "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 12345\n";
    assert_eq!(judge(&task, &[&reference, own_poly]), [true, false]);
}

#[test]
fn mbpp_google_research() {
    let task = import_one(
        Format::Mbpp,
        json!({
            "task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character from the string.",
            "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    for i in range(len(s) - 1,-1,-1):  \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
            "test_list": ["assert remove_Occ(\"hello\",\"l\") == \"heo\"", "assert remove_Occ(\"abcda\",\"a\") == \"bcd\"", "assert remove_Occ(\"PHP\",\"P\") == \"H\""],
            "test_setup_code": "", "challenge_test_list": []
        }),
    );
    assert_eq!(task.id, "mbpp/11");
    let reference = task.reference.clone().unwrap();
    assert_eq!(judge(&task, &[&reference, "def remove_Occ(s, ch):\n    return s[1:-1]\n"]), [true, false]);
}

#[test]
fn apps_taco_stdio_and_call_based() {
    let stdio = import_one(
        Format::AppsTaco,
        json!({
            "problem_id": 4000, "question": "Read n and print n squared.",
            "solutions": "[\"n = int(input())\\nprint(n * n)\\n\"]", "starter_code": "",
            "input_output": "{\"inputs\": [\"3\\n\", \"10\\n\"], \"outputs\": [\"9\\n\", \"100\\n\"]}", "source": "codeforces"
        }),
    );
    assert_eq!((stdio.id.as_str(), stdio.kind()), ("codeforces/4000", "stdio"));
    let reference = stdio.reference.clone().unwrap();
    assert_eq!(judge(&stdio, &[&reference, "print(9)"]), [true, false]);

    let call = import_one(
        Format::AppsTaco,
        json!({
            "question": "Return the reversed list.", "solutions": "[]",
            "starter_code": "def reverse_list(xs):\n\t",
            "input_output": "{\"fn_name\": \"reverse_list\", \"inputs\": [[[1, 2, 3]], [[]]], \"outputs\": [[[3, 2, 1]], [[]]]}"
        }),
    );
    assert_eq!(call.kind(), "call");
    assert_eq!(judge(&call, &["def reverse_list(xs):\n    return xs[::-1]\n", "def reverse_list(xs):\n    return xs\n"]), [true, false]);
}

#[test]
fn codecontests_from_deepmind() {
    let task = import_one(
        Format::Codecontests,
        json!({
            "name": "1548_A. Sum", "description": "Print a + b.",
            "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
            "private_tests": {"input": ["5 5\n", "-1 1\n"], "output": ["10\n", "0\n"]},
            "generated_tests": {"input": [], "output": []},
            "solutions": {"language": [2, 3], "solution": ["int main(){}", "a, b = map(int, input().split())\nprint(a + b)\n"]},
            "time_limit": {"seconds": 3, "nanos": 0}
        }),
    );
    assert_eq!(task.id, "code_contests/1548");
    assert_eq!(task.limits.time_s, 9.0, "three times the C++ limit");
    let reference = task.reference.clone().unwrap();
    assert_eq!(judge(&task, &[&reference, "print(3)"]), [true, false]);
}

#[test]
fn livecodebench_raw_rows_with_pickled_private_tests() {
    // private_test_cases = base64(zlib(pickle.dumps(json.dumps([...])))), as LiveCodeBench ships.
    use base64::Engine;
    use std::io::Write;
    let private = r#"[{"input": "[3, 1, 2]\n", "output": "[1, 2, 3]", "testtype": "functional"}]"#;
    let mut pickled = vec![0x80, 4, 0x8c, private.len() as u8];
    pickled.extend_from_slice(private.as_bytes());
    pickled.push(b'.');
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&pickled).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap());
    let task = import_one(
        Format::Livecodebench,
        json!({
            "question_title": "Sort", "question_content": "Sort the numbers.", "platform": "leetcode", "question_id": "9001",
            "starter_code": "class Solution:\n    def sortIt(self, nums: List[int]) -> List[int]:\n        ",
            "public_test_cases": "[{\"input\": \"[2, 1]\\n\", \"output\": \"[1, 2]\", \"testtype\": \"functional\"}]",
            "private_test_cases": encoded, "metadata": "{\"func_name\": \"sortIt\"}",
            "contest_date": "2023-08-21T00:00:00"
        }),
    );
    assert_eq!((task.id.as_str(), task.kind()), ("livecodebench/leetcode/9001", "call"));
    assert_eq!(task.released.as_ref().map(|d| d.as_str()), Some("2023-08-21"), "contest_date kept for release windows");
    assert_eq!(dllm_prompts::curate::test_count(&task), 2, "public and private tests");
    let good = "class Solution:\n    def sortIt(self, nums: List[int]) -> List[int]:\n        return sorted(nums)\n";
    let bad = "class Solution:\n    def sortIt(self, nums):\n        return nums\n";
    assert_eq!(judge(&task, &[good, bad]), [true, false]);
}

#[test]
fn livecodebench_contest_dates_are_read_in_each_form_and_bad_ones_named() {
    let row = |date: serde_json::Value| {
        json!({"question_content": "Print 1.", "platform": "atcoder", "question_id": "abc1_a", "contest_date": date,
               "public_test_cases": "[{\"input\": \"\", \"output\": \"1\", \"testtype\": \"stdin\"}]"})
    };
    for (form, day) in [("2024-03-02", "2024-03-02"), ("2024-03-02 00:00:00 +00:00", "2024-03-02")] {
        let task = import_one(Format::Livecodebench, row(json!(form)));
        assert_eq!(task.released.as_ref().map(|d| d.as_str()), Some(day), "{form}");
    }
    assert_eq!(import_one(Format::Livecodebench, row(json!(null))).released, None);
    let text = format!("{}\n", row(json!("2024-02-30T00:00:00")));
    let imported = import_text(Format::Livecodebench, Path::new("lcb.jsonl"), &text).unwrap();
    assert!(imported.tasks.is_empty());
    let message = format!("{:?}", imported.errors);
    assert!(message.contains("contest_date") && message.contains("2024-02-30"), "{message}");
}

#[test]
fn deepcoder_shapes() {
    let codeforces = import_one(
        Format::Deepcoder,
        json!({"problem": "Print the input doubled.", "data_source": "codeforces",
               "tests": "[{\"input\": \"2\\n\", \"output\": \"4\\n\"}, {\"input\": \"5\\n\", \"output\": \"10\\n\"}]"}),
    );
    assert_eq!(codeforces.kind(), "stdio");
    assert_eq!(judge(&codeforces, &["print(2 * int(input()))", "print(4)"]), [true, false]);
    let taco = import_one(
        Format::Deepcoder,
        json!({"problem": "Double it.", "data_source": "taco",
               "tests": {"fn_name": "double", "inputs": [[2], [5]], "outputs": [[4], [10]]}}),
    );
    assert_eq!(taco.kind(), "call");
    assert_eq!(judge(&taco, &["def double(x):\n    return 2 * x\n", "def double(x):\n    return x\n"]), [true, false]);
}

#[test]
fn verl_layout_guru_ground_truths() {
    let stdio = import_one(
        Format::Verl,
        json!({
            "data_source": "codegen__primeintellect",
            "prompt": [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "Print the sum of two integers."}],
            "reward_model": {"style": "rule", "ground_truth": "{\"inputs\": [\"1 2\\n\"], \"outputs\": [\"3\\n\"]}"},
            "extra_info": {"index": 7}
        }),
    );
    assert_eq!((stdio.id.as_str(), stdio.prompt.as_deref()), ("codegen__primeintellect/7", Some("Print the sum of two integers.")));
    assert_eq!(judge(&stdio, &["print(sum(map(int, input().split())))", "print(12)"]), [true, false]);
    let functional = import_one(
        Format::Verl,
        json!({
            "data_source": "codegen__leetcode2k", "prompt": [{"role": "user", "content": "Write is_even."}],
            "reward_model": {"ground_truth": {"functional": "assert is_even(2) == True\nassert is_even(3) == False"}}
        }),
    );
    assert_eq!(functional.kind(), "assert");
    assert_eq!(judge(&functional, &["def is_even(n):\n    return n % 2 == 0\n", "def is_even(n):\n    return True\n"]), [true, false]);
}

#[test]
fn kodcode_v1_rows() {
    let task = import_one(
        Format::Kodcode,
        json!({
            "question_id": "Leetcode_1_I", "subset": "Leetcode", "style": "instruct",
            "question": "Write `add(a, b)`.", "solution": "def add(a, b):\n    return a + b\n",
            "test_code": "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n",
            "test_info": [{"function_name": "add", "parameter_list": "(a, b)", "function_declaration": "def add(a, b):", "docstring": null}]
        }),
    );
    assert_eq!((task.id.as_str(), task.kind()), ("kodcode/Leetcode_1_I", "pytest"));
    let reference = task.reference.clone().unwrap();
    assert_eq!(judge(&task, &[&reference, "def add(a, b):\n    return a - b\n"]), [true, false]);
}

#[test]
fn bad_rows_name_their_field() {
    let text = "{\"question\": \"q\", \"input_output\": \"{\\\"inputs\\\": [\\\"1\\\"], \\\"outputs\\\": []}\"}\n";
    let got = import_text(Format::AppsTaco, Path::new("taco.jsonl"), text).unwrap();
    assert_eq!(got.errors.len(), 1);
    assert_eq!(got.errors[0].to_string(), "taco.jsonl:1: field `input_output`: 1 inputs, 0 outputs");
}

#[test]
fn parquet_and_gzip_files_import_like_jsonl() {
    // Parquet with nested columns (scripts/reference/parquet_fixture.py), as verl sets ship.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/verl-sample.parquet");
    let imported = dllm_prompts::import_file(Format::Verl, &path).unwrap();
    assert!(imported.errors.is_empty(), "{:?}", imported.errors);
    let ids: Vec<&str> = imported.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["codegen__primeintellect/0", "codegen__leetcode2k/1"]);
    assert_eq!(imported.tasks[1].prompt.as_deref(), Some("Write is_even(n)."));
    assert_eq!(judge(&imported.tasks[0], &["print(sum(map(int, input().split())))"]), [true]);

    // HumanEval.jsonl.gz, as openai/human-eval ships it.
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("HumanEval.jsonl.gz");
    let row = json!({"task_id": "HumanEval/0", "entry_point": "f", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
                     "test": "def check(candidate):\n    assert candidate() == 1\n"});
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    writeln!(enc, "{row}").unwrap();
    enc.finish().unwrap();
    let imported = dllm_prompts::import_file(Format::Humaneval, &gz).unwrap();
    assert_eq!(imported.tasks.len(), 1);
    assert_eq!(judge(&imported.tasks[0], &[imported.tasks[0].reference.as_deref().unwrap()]), [true]);
}
