"""Drives `dllm-rl serve` with SandboxFusion's own client SDK (PyPI sandbox-fusion==0.3.7), as
verl and Dream-Coder would. Run by tests/serve_sdk.rs with the endpoint in
SANDBOX_FUSION_ENDPOINT and the shared data folder as argv[1]; prints one line per check."""

import json
import os
import sys

from sandbox_fusion import (RunCodeRequest, RunStatus, SubmitRequest, TestConfig, run_code, submit,
                            summary_run_code_result, SummaryMapping)

data = sys.argv[1]
checks = 0


def check(ok, what):
    global checks
    if not ok:
        print(f"FAILED: {what}")
        sys.exit(1)
    checks += 1
    print(f"ok: {what}")


def row(name, index):
    with open(os.path.join(data, name)) as f:
        return json.loads(f.read().splitlines()[index])


mapping = SummaryMapping(Success="ok", Failed="failed", RunTimeout="timeout", RunFailed="run_failed")

r = run_code(RunCodeRequest(code="print('hi')", language="python"), max_attempts=1)
check(r.status == RunStatus.Success and r.run_result.stdout == "hi\n", f"run_code print: {r}")
r = run_code(RunCodeRequest(code="import sys; sys.exit(4)", language="python"), max_attempts=1)
check(r.status == RunStatus.Failed and r.run_result.return_code == 4, f"run_code non-zero exit: {r}")
check(summary_run_code_result(r, mapping) == "run_failed", "summary of a non-zero exit")
r = run_code(RunCodeRequest(code="import time; time.sleep(20)", language="python", run_timeout=1), max_attempts=1)
check(summary_run_code_result(r, mapping) == "timeout", f"run_code time-out: {r}")
r = run_code(RunCodeRequest(code="print(int(input()) * 2)", language="python", stdin="21\n"), max_attempts=1)
check(r.run_result.stdout == "42\n", f"run_code stdin: {r}")

mbpp = row("code_eval_mbpp.jsonl", 1)


def mbpp_submit(completion):
    return submit(SubmitRequest(dataset="mbpp", id=mbpp["id"], completion=completion,
                                config=TestConfig(language="python", provided_data=mbpp)), max_attempts=1)


res = mbpp_submit("```python\n" + mbpp["canonical_solution"] + "\n```")
check(res.accepted and len(res.tests) == 3 and all(t.passed for t in res.tests), f"mbpp reference accepted: {res}")
check(res.extracted_type == "fenced", "extracted_type fenced")
res = mbpp_submit("```python\ndef sort_matrix(M):\n    return M\n```")
check(not res.accepted, "mbpp wrong answer refused")
res = mbpp_submit("```python\nimport sys\nsys.exit(0)\n```")
check(not res.accepted, "mbpp sys.exit(0) refused")

lcb = row("code_eval_live_code_bench_v1.jsonl", 0)
solution = ("t = int(input())\nfor _ in range(t):\n    s = input().strip()\n"
            "    print('YES' if sum(a != b for a, b in zip(s, 'abc')) in (0, 2) else 'NO')\n")


def lcb_submit(completion):
    return submit(SubmitRequest(dataset="live_code_bench_v1", id=0, completion=completion,
                                config=TestConfig(language="python", provided_data=lcb)), max_attempts=1)


check(lcb_submit("```python\n" + solution + "```").accepted, "livecodebench stdio solution accepted")
check(not lcb_submit("```python\nimport os\nos._exit(0)\n```").accepted, "livecodebench os._exit(0) refused")

cc = row("code_eval_code_contests.jsonl", 2)
res = submit(SubmitRequest(dataset="code_contests", id=cc["id"], completion="```python\nprint(1)\n```",
                           config=TestConfig(language="python", provided_data={"test": cc["test"]})), max_attempts=1)
check(not res.accepted and any(t.passed for t in res.tests), "code_contests wrong answer refused, per test")
print(f"{checks} passed, 0 failed")
