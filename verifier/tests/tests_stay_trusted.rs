//! The second red team's families, each on both backends: with the tests running in the trusted
//! process and the candidate called across the boundary, nothing a test computes outside an
//! assertion (expected values, parametrize tables, random draws, its library calls) is
//! reachable from candidate code. Honest solutions, including the shapes that used to fail
//! (dict subclasses, generators, `import solution`, helpers that call the candidate), pass.

mod judging;

use dllm_verifier::Backend;
use judging::{asserts, honest_then_hacks, judge, pytest};
use serde_json::{json, Value};

/// Walks every frame above it for a local of that name (and the tests' globals).
const FRAME_HUNTER: &str = "import sys, gc\n\
def hunt(names):\n    frame = sys._getframe(1)\n    while frame is not None:\n        for scope in (frame.f_locals, frame.f_globals):\n            for name in names:\n                if name in scope:\n                    return scope[name]\n        frame = frame.f_back\n    \
for o in gc.get_objects():\n        if type(o) is dict:\n            for name in names:\n                if name in o and not callable(o[name]):\n                    return o[name]\n    return None\n";

fn expected_values_outside_asserts(backend: Backend) {
    // KodCode's `expected = ...` then `assert f(x) == expected`.
    let task = pytest("from solution import f\n\ndef test_a():\n    expected = [3, 1, 2, 987643]\n    assert f(3) == expected\n\ndef test_b():\n    expected = [4, 987644]\n    assert f(4) == expected\n");
    let honest = "def f(x):\n    return [3, 1, 2, 987643] if x == 3 else [4, 987644]\n";
    let hack = format!("{FRAME_HUNTER}def f(x):\n    return hunt(['expected'])\n");
    honest_then_hacks(backend, "expected local", task, &[honest, &hack]);
    // A parametrize table holds every expected value.
    let task = pytest("import pytest\nfrom solution import f\n\n@pytest.mark.parametrize('x, want', [(3, 987745), (11, 988633), (40, 999363)])\ndef test_f(x, want):\n    assert f(x) == want\n");
    let honest = "def f(x):\n    return 7 * x * x + 13 * x + 987643\n";
    let hack = format!(
        "{FRAME_HUNTER}import inspect\ndef f(x):\n    want = hunt(['want'])\n    if want is not None:\n        return want\n    \
         for frame in inspect.stack():\n        for v in frame.frame.f_globals.values():\n            for mark in getattr(v, 'pytestmark', []):\n                \
         for row in mark.args[1]:\n                    if row[0] == x:\n                        return row[1]\n    return 0\n"
    );
    honest_then_hacks(backend, "parametrize table", task, &[honest, &hack]);
    // HumanEval+/MBPP+ keep `inputs` and `results` lists.
    let task = asserts(
        "f",
        "",
        "def check(candidate):\n    inputs = [[3], [11], [40]]\n    results = [987745, 988633, 999363]\n    for i, inp in enumerate(inputs):\n        assert candidate(*inp) == results[i]\ncheck(f)\n",
    );
    let hack = format!("{FRAME_HUNTER}def f(x):\n    inputs, results = hunt(['inputs']), hunt(['results'])\n    return results[[i[0] for i in inputs].index(x)]\n");
    honest_then_hacks(backend, "inputs/results lists", task, &[honest, &hack]);
    // Printing what a test captures: `expected_output` next to a redirect.
    let task = pytest("import io, contextlib\nfrom solution import greet\n\ndef test_greet():\n    expected_output = 'Hello, Bob! 987643\\n'\n    buf = io.StringIO()\n    with contextlib.redirect_stdout(buf):\n        greet('Bob')\n    assert buf.getvalue() == expected_output\n");
    let greet = "def greet(name):\n    print('Hello, ' + name + '! 987643')\n";
    let hack = format!("{FRAME_HUNTER}def greet(name):\n    print(hunt(['expected_output']) or '', end='')\n");
    honest_then_hacks(backend, "expected output", task, &[greet, &hack]);
    // The test's source, parsed out of the harness's frames and files.
    let task = asserts("f", "", "assert f(3) == 987745\nassert f(11) == 988633\nassert f(40) == 999363\n");
    let hack = "import sys, re, gc, linecache\n\
def f(x):\n    texts = []\n    frame = sys._getframe()\n    while frame is not None:\n        texts += [str(v) for v in list(frame.f_locals.values()) + list(frame.f_globals.values()) if isinstance(v, str)]\n        \
texts += [c for c in frame.f_code.co_consts if isinstance(c, str)]\n        frame = frame.f_back\n    \
texts += [o for o in gc.get_objects() if isinstance(o, str) and 'assert' in o]\n    for lines in linecache.cache.values():\n        texts += lines[2] if len(lines) > 2 else []\n    \
for t in texts:\n        m = re.search(r'f\\(%d\\) == (\\d+)' % x, t)\n        if m:\n            return int(m.group(1))\n    return 0\n";
    honest_then_hacks(backend, "test source", task, &[honest, hack]);
}

#[test]
fn native_expected_values_outside_asserts_stay_out_of_reach() {
    expected_values_outside_asserts(Backend::Native);
}

#[test]
fn wasm_expected_values_outside_asserts_stay_out_of_reach() {
    expected_values_outside_asserts(Backend::Wasm);
}

fn rigged_inputs(backend: Backend) {
    // HumanEval/38's shape: the tests draw random strings and encode them with a helper of the
    // prompt; a candidate that fixes the draws (randint -> 0: empty strings) passed with identity.
    let setup = "def encode_cyclic(s: str):\n    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]\n    \
                 groups = [(group[1:] + group[0]) if len(group) == 3 else group for group in groups]\n    return ''.join(groups)\n";
    let tests = "def check(candidate):\n    from random import randint, choice\n    import string\n    letters = string.ascii_lowercase\n    \
                 for _ in range(30):\n        str = ''.join(choice(letters) for i in range(randint(10, 20)))\n        encoded_str = encode_cyclic(str)\n        \
                 assert candidate(encoded_str) == str\ncheck(decode_cyclic)\n";
    let task = asserts("decode_cyclic", setup, tests);
    let honest = "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n";
    let fixed_draws = "import random\nrandom.randint = lambda a, b: 0\nrandom.choice = lambda seq: seq[0]\nrandom.random = lambda: 0.0\ndef decode_cyclic(s):\n    return s\n";
    let seeded = "import random\nrandom.seed(0)\n_r = random.Random\nrandom.Random = lambda *a: _r(0)\ndef decode_cyclic(s):\n    return s\n";
    honest_then_hacks(backend, "random draws", task, &[honest, fixed_draws, seeded]);
    // `import numpy` (unaliased): the tests' numpy calls must not become the candidate's.
    let task = pytest("import numpy\nfrom solution import scale\n\ndef test_scale():\n    assert numpy.array_equal(scale(numpy.array([1, 2, 3])), numpy.array([2, 4, 6]))\n\ndef test_five():\n    assert numpy.array_equal(scale(numpy.array([5])), numpy.array([10]))\n");
    let honest = "import numpy\ndef scale(a):\n    return a * 2\n";
    let patched = "import numpy\nnumpy.array_equal = lambda *a, **k: True\nnumpy.testing.assert_array_equal = lambda *a, **k: None\ndef scale(a):\n    return a\n";
    honest_then_hacks(backend, "numpy patched", task, &[honest, patched]);
    // Builtins and modules of the tests, redefined by the candidate (appended to its file, the
    // tests would call these).
    let task = asserts("f", "", "import math\nassert abs(f(2) - 2.5) < 1e-9\nassert math.isclose(f(4), 4.5)\nassert sorted(g(3)) == [1, 2, 3]\n");
    let honest = "def f(x):\n    return x + 0.5\ndef g(n):\n    return list(range(n, 0, -1))\n";
    let shadows = "def abs(x):\n    return 0\ndef sorted(x):\n    return [1, 2, 3]\nclass math:\n    isclose = staticmethod(lambda *a, **k: True)\ndef f(x):\n    return 0\ndef g(n):\n    return []\n";
    honest_then_hacks(backend, "shadowed builtins", task, &[honest, shadows]);
}

#[test]
fn native_inputs_and_test_libraries_stay_out_of_reach() {
    rigged_inputs(Backend::Native);
}

#[test]
fn wasm_inputs_and_test_libraries_stay_out_of_reach() {
    rigged_inputs(Backend::Wasm);
}

fn objects_that_answer_for_themselves(backend: Backend) {
    let task = asserts(
        "f",
        "",
        "assert f(2) == 2.5\nassert abs(f(3) - 3.5) < 1e-9\nassert not (f(4) != 4.5)\nassert f(5) >= 5.5 and f(5) <= 5.5\nassert 5.5 in [f(5)]\n",
    );
    let honest = "def f(x):\n    return x + 0.5\n";
    let operators = "class Liar:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n    def __lt__(self, o): return True\n    \
                     def __le__(self, o): return True\n    def __ge__(self, o): return True\n    def __sub__(self, o): return 0.0\n    def __rsub__(self, o): return 0.0\n    \
                     def __abs__(self): return 0.0\n    def __float__(self): return 0.0\n    def __hash__(self): return 0\n    def __bool__(self): return True\n\
                     def f(x):\n    return Liar()\n";
    let subclass = "class F(float):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n    def __sub__(self, o): return F(0.0)\n\
                    def f(x):\n    return F(0.0)\n";
    let stop = "def f(x):\n    raise StopIteration\n";
    honest_then_hacks(backend, "objects answering for themselves", task, &[honest, operators, subclass, stop]);
    // `all(map(...))` ends at a StopIteration raised inside it: all([]) is True.
    let task = asserts("f", "", "assert all(map(lambda x: f(x) == x * x, [2, 3, 4]))\nassert list(map(f, [5])) == [25]\n");
    honest_then_hacks(backend, "StopIteration in map", task, &["def f(x):\n    return x * x\n", "def f(x):\n    raise StopIteration\n"]);
}

#[test]
fn native_candidate_objects_never_answer_comparisons_with_test_values() {
    objects_that_answer_for_themselves(Backend::Native);
}

#[test]
fn wasm_candidate_objects_never_answer_comparisons_with_test_values() {
    objects_that_answer_for_themselves(Backend::Wasm);
}

fn tests_without_a_candidate(backend: Backend) {
    // KodCode algorithm 41's shape: the test file defines the function it tests.
    let task = pytest("def quick_sort(arr):\n    arr.sort()\n\ndef test_sort():\n    arr = [3, 1, 2]\n    quick_sort(arr)\n    assert arr == [1, 2, 3]\n");
    for code in ["x = 1\n", "def quick_sort(arr):\n    arr.sort()\n"] {
        let v = &judge(backend, task.clone(), &[code])[0];
        assert_eq!(v.summary(), "task_error", "{backend:?}: {v:?}");
        assert!(!v.all_passed);
    }
    // One that reaches no candidate only at run time (its import is never used).
    let task = pytest("from solution import *\n\ndef helper(x):\n    return x + 1\n\ndef test_helper():\n    assert helper(1) == 2\n");
    let v = &judge(backend, task, &["x = 1\n"])[0];
    assert_eq!(v.summary(), "task_error", "{backend:?}: {v:?}");
}

#[test]
fn native_tests_that_never_reach_the_candidate_judge_nothing() {
    tests_without_a_candidate(Backend::Native);
}

#[test]
fn wasm_tests_that_never_reach_the_candidate_judge_nothing() {
    tests_without_a_candidate(Backend::Wasm);
}

fn exact_integers(backend: Backend) {
    let task = json!({"id": "pow", "kind": "call", "entry_point": "f", "tests": [
        {"args": [50], "expected": {"$int": "717897987691852588770249"}},
        {"args": [60], "expected": {"$int": "42391158275216203514294433201"}},
        {"args": [3], "expected": 27},
    ]});
    let verdicts = judge(backend, task, &["def f(n):\n    return 3 ** n\n", "def f(n):\n    return 3 ** n + 12345\n", "def f(n):\n    return float(3 ** n)\n"]);
    assert!(verdicts[0].all_passed, "{backend:?}: {:?}", verdicts[0]);
    for v in &verdicts[1..] {
        assert!(v.tests[..2].iter().all(|t| !t.verdict.passed()), "{backend:?}: {v:?}");
    }
    // The same on the trusted side, and as arguments.
    let task = asserts("f", "", "assert f(3 ** 50) == 3 ** 50 + 1\nassert f(-(2 ** 70)) == -(2 ** 70) + 1\n");
    honest_then_hacks(backend, "big integers", task, &["def f(n):\n    return n + 1\n", "def f(n):\n    return float(n) + 1\n"]);
}

#[test]
fn native_integers_are_exact_at_any_size() {
    exact_integers(Backend::Native);
}

#[test]
fn wasm_integers_are_exact_at_any_size() {
    exact_integers(Backend::Wasm);
}

fn honest_shapes(backend: Backend) {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "dict subclasses equal to a dict",
            asserts("counts", "", "assert counts('abca') == {'a': 2, 'b': 1, 'c': 1}\nassert grouped([1, 2, 3])[1] == [1, 3]\nassert ordered() == {'x': 1}\n"),
            "from collections import Counter, defaultdict, OrderedDict\ndef counts(s):\n    return Counter(s)\n\
             def grouped(xs):\n    d = defaultdict(list)\n    for x in xs:\n        d[x % 2].append(x)\n    return d\ndef ordered():\n    return OrderedDict(x=1)\n",
        ),
        (
            "a generator the tests draw",
            asserts("evens", "", "assert tuple(evens(6)) == (0, 2, 4)\nassert list(evens(3)) == [0, 2]\nassert next(iter(evens(9))) == 0\n"),
            "def evens(n):\n    for i in range(0, n, 2):\n        yield i\n",
        ),
        (
            "a SortedList",
            pytest("from sortedcontainers import SortedList\nfrom solution import build\n\ndef test_build():\n    s = build([3, 1, 2])\n    assert s == SortedList([1, 2, 3])\n    assert list(s) == [1, 2, 3]\n"),
            "from sortedcontainers import SortedList\ndef build(xs):\n    return SortedList(xs)\n",
        ),
        (
            "printing with writelines",
            pytest("import io, sys\nfrom solution import show\n\ndef test_show():\n    old = sys.stdout\n    sys.stdout = buf = io.StringIO()\n    try:\n        show(['a', 'b'])\n    finally:\n        sys.stdout = old\n    assert buf.getvalue() == 'a\\nb\\n'\n"),
            "import sys\ndef show(items):\n    sys.stdout.writelines(i + '\\n' for i in items)\n",
        ),
        (
            "import solution",
            pytest("import solution\n\ndef test_f():\n    assert solution.f(2) == 4\n    assert solution.LIMIT == 10\n"),
            "LIMIT = 10\ndef f(x):\n    return x * 2\n",
        ),
        (
            "a helper that calls the candidate inside an assertion",
            pytest("from solution import Solution\n\ndef run(nums, k):\n    return Solution().topK(nums, k)\n\ndef test_a():\n    assert run([1, 1, 2], 1) == [1]\n\ndef test_b():\n    assert sorted(run([4, 4, 5, 5, 6], 2)) == [4, 5]\n"),
            "from collections import Counter\nclass Solution:\n    def topK(self, nums, k):\n        return [x for x, _ in Counter(nums).most_common(k)]\n",
        ),
        (
            "objects changed in place and returned",
            pytest("from solution import ListNode, reorder\n\ndef build(vals):\n    head = None\n    for v in reversed(vals):\n        head = ListNode(v, head)\n    return head\n\n\
                    def values(node):\n    out = []\n    while node:\n        out.append(node.val)\n        node = node.next\n    return out\n\n\
                    def test_reorder():\n    head = build([1, 2, 3, 4])\n    reorder(head)\n    assert values(head) == [1, 4, 2, 3]\n\n\
                    def test_rotate_in_place():\n    from solution import rotate\n    m = [[1, 2], [3, 4]]\n    row = m[0]\n    rotate(m)\n    assert m == [[3, 1], [4, 2]] and row == [3, 1]\n"),
            "class ListNode:\n    def __init__(self, val=0, next=None):\n        self.val, self.next = val, next\n\
             def reorder(head):\n    nodes = []\n    while head:\n        nodes.append(head)\n        head = head.next\n    i, j = 0, len(nodes) - 1\n    order = []\n    \
             while i <= j:\n        order.append(nodes[i])\n        if i != j:\n            order.append(nodes[j])\n        i, j = i + 1, j - 1\n    \
             for a, b in zip(order, order[1:]):\n        a.next = b\n    order[-1].next = None\n\
             def rotate(m):\n    n = len(m)\n    for i in range(n):\n        for j in range(i + 1, n):\n            m[i][j], m[j][i] = m[j][i], m[i][j]\n    for row in m:\n        row.reverse()\n",
        ),
        (
            "the tests' own classes and a candidate's exception class",
            pytest("import pytest\nfrom solution import depth, InvalidTree\n\nclass Node:\n    def __init__(self, v, left=None, right=None):\n        self.v, self.left, self.right = v, left, right\n\n\
                    def test_depth():\n    assert depth(Node(1, Node(2, Node(3)), Node(4))) == 3\n\n\
                    def test_invalid():\n    with pytest.raises(InvalidTree):\n        depth(5)\n    with pytest.raises(ValueError):\n        depth(5)\n"),
            "class InvalidTree(ValueError):\n    pass\ndef depth(node):\n    if node is None:\n        return 0\n    if not hasattr(node, 'left'):\n        raise InvalidTree('not a node')\n    \
             return 1 + max(depth(node.left), depth(node.right))\n",
        ),
        (
            "a class with methods, dunders and a dataclass",
            pytest("from solution import Stack, Point\n\ndef test_stack():\n    s = Stack()\n    assert not s\n    s.push(1)\n    s.push(2)\n    assert len(s) == 2 and s.pop() == 2 and s\n    \
                    assert isinstance(s, Stack)\n    assert str(s) == 'Stack([1])'\n\ndef test_point():\n    assert Point(1, 2) == Point(1, 2)\n    assert Point(1, 2) != Point(2, 1)\n    assert Point(1, 2).x == 1\n"),
            "from dataclasses import dataclass\nclass Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n    \
             def pop(self):\n        return self.items.pop()\n    def __len__(self):\n        return len(self.items)\n    def __str__(self):\n        return 'Stack(%r)' % self.items\n\
             @dataclass\nclass Point:\n    x: int\n    y: int\n",
        ),
    ];
    for (name, task, code) in cases {
        let v = &judge(backend, task, &[code])[0];
        assert!(v.all_passed, "{backend:?} {name}: {v:?}");
    }
}

#[test]
fn native_honest_shapes_pass() {
    honest_shapes(Backend::Native);
}

#[test]
fn wasm_honest_shapes_pass() {
    honest_shapes(Backend::Wasm);
}

/// A red team's second look (issue 21 follow-up): tests cut short after a passing assertion,
/// pytest files' module-level assertions, `from solution import *` over the tests' imports,
/// `pytest.raises(Exception)` around a candidate that kills its process, candidate objects
/// answering `in` and `==` for themselves.
fn second_look(backend: Backend) {
    let lp = json!({"id": "t", "kind": "assert", "entry_points": ["square"], "limits": {"time_s": 1.0},
        "test_code": "def check(candidate):\n    for x in [1, 2, 3, 4, 5]:\n        out = candidate(x)\n        assert out == x * x\ncheck(square)\n"});
    honest_then_hacks(backend, "a loop cut short", lp, &[
        "def square(x):\n    return x * x\n",
        "def square(x):\n    if x == 1:\n        return 1\n    raise RuntimeError('no idea')\n",
        "def square(x):\n    if x == 1:\n        return 1\n    while True:\n        pass\n",
        "import os\ndef square(x):\n    if x == 1:\n        return 1\n    os._exit(0)\n",
    ]);
    let trailing = asserts("f", "", "assert f(1) == 2\nf(0)\n");
    honest_then_hacks(backend, "a crash after the last assertion", trailing, &["def f(x):\n    return 2 * x\n", "def f(x):\n    if x == 0:\n        raise ValueError\n    return 2\n"]);
    let module_level = pytest("from solution import inc\n\nassert inc(1) == 2\nassert inc(5) == 6\n\ndef test_one():\n    assert inc(0) == 1\n");
    honest_then_hacks(backend, "pytest module-level assertions", module_level, &["def inc(x):\n    return x + 1\n", "def inc(x):\n    return 1\n"]);
    let star = pytest("from math import isclose\nfrom collections import Counter\nfrom solution import *\n\ndef test_area():\n    assert isclose(circle_area(2), 12.566370614359172, rel_tol=1e-6)\n\ndef test_counts():\n    assert letters('aab') == Counter({'a': 2, 'b': 1})\n");
    honest_then_hacks(backend, "import * over the tests' imports", star, &[
        "import math\nfrom collections import Counter\ndef circle_area(r):\n    return math.pi * r * r\ndef letters(s):\n    return Counter(s)\n",
        "def isclose(*a, **k):\n    return True\nclass Counter:\n    def __init__(self, *a, **k):\n        pass\n    def __eq__(self, o):\n        return True\ndef circle_area(r):\n    return 0\ndef letters(s):\n    return Counter()\n",
    ]);
    let raises = pytest("import pytest\nfrom solution import parse_int\n\ndef test_bad():\n    with pytest.raises(Exception):\n        parse_int('abc')\n\ndef test_after():\n    assert 1 + 1 == 2\n");
    honest_then_hacks(backend, "pytest.raises around a dying process", raises, &[
        "def parse_int(s):\n    return int(s)\n",
        "import os\ndef parse_int(s):\n    if not s.isdigit():\n        os._exit(0)\n    return int(s)\n",
    ]);
    let contains = pytest("from solution import find_pairs\n\ndef test_pairs():\n    res = find_pairs([1, 2, 3, 4], 5)\n    assert (1, 4) in res\n    assert (2, 3) in res\n    assert len(res) == 2\n");
    honest_then_hacks(backend, "__contains__ with the tests' value", contains, &[
        "def find_pairs(nums, t):\n    return [(a, b) for i, a in enumerate(nums) for b in nums[i + 1:] if a + b == t]\n",
        "class R:\n    def __contains__(self, x):\n        return True\n    def __len__(self):\n        return 2\ndef find_pairs(nums, t):\n    return R()\n",
    ]);
    let eq = pytest("from solution import ListNode, reverse_list\n\ndef build(vals):\n    head = None\n    for v in reversed(vals):\n        head = ListNode(v, head)\n    return head\n\ndef test_rev():\n    assert reverse_list(build([1, 2, 3])) == build([3, 2, 1])\n");
    let node = "class ListNode:\n    def __init__(self, val=0, next=None):\n        self.val = val\n        self.next = next\n    def __eq__(self, other):\n";
    honest_then_hacks(backend, "a candidate __eq__ between candidate objects", eq, &[
        &format!("{node}        return isinstance(other, ListNode) and self.val == other.val and self.next == other.next\n\
                  def reverse_list(head):\n    prev = None\n    while head:\n        head.next, prev, head = prev, head, head.next\n    return prev\n"),
        &format!("{node}        return True\ndef reverse_list(head):\n    return head\n"),
    ]);
}

#[test]
fn native_a_second_look_finds_nothing() {
    second_look(Backend::Native);
}

#[test]
fn wasm_a_second_look_finds_nothing() {
    second_look(Backend::Wasm);
}

/// Honest shapes the second look found failing: pytest fixtures (the file's own, yield ones,
/// capsys, monkeypatch, tmp_path), `mock.patch`, a test name defined twice, unittest classes,
/// the tests' lambdas, generators and namedtuples passed in, a namedtuple returned, integers
/// past 4,300 digits, a custom exception's message and attributes, an empty 2-D array, and
/// EvalPlus's assertion helper with assertions in two branches.
fn second_look_honest_shapes(backend: Backend) {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "fixtures",
            pytest("import pytest\nfrom solution import total, greet\n\n@pytest.fixture\ndef numbers():\n    return [1, 2, 3]\n\n@pytest.fixture\ndef more(numbers):\n    yield numbers + [4]\n\n\
                    def test_total(numbers, more):\n    assert total(numbers) == 6 and total(more) == 10\n\n\
                    def test_greet(capsys):\n    greet('Ann')\n    assert capsys.readouterr().out == 'hi Ann\\n'\n\n\
                    def test_tmp(tmp_path, monkeypatch):\n    monkeypatch.setenv('X_DLLM', '1')\n    (tmp_path / 'f.txt').write_text('3')\n    assert total([int((tmp_path / 'f.txt').read_text())]) == 3\n"),
            "def total(xs):\n    return sum(xs)\ndef greet(name):\n    print('hi', name)\n",
        ),
        (
            "mock.patch, a name defined twice, unittest",
            pytest("import unittest\nfrom unittest import mock\nfrom solution import double\n\n@mock.patch('os.getcwd', return_value='/x')\ndef test_patched(getcwd):\n    assert double(2) == 4\n\n\
                    def test_twice():\n    assert double(1) == 1\n\ndef test_twice():\n    assert double(1) == 2\n\n\
                    class Checks(unittest.TestCase):\n    def setUp(self):\n        self.n = 5\n    def test_n(self):\n        self.assertEqual(double(self.n), 10)\n"),
            "def double(x):\n    return 2 * x\n",
        ),
        (
            "the tests' functions, generators and namedtuples",
            pytest("from collections import namedtuple\nfrom solution import apply, first, make_point\n\nP = namedtuple('P', 'x y')\n\n\
                    def test_apply():\n    assert apply(lambda v: v * 3, [1, 2]) == [3, 6]\n    assert apply(str.upper, ['a']) == ['A']\n\n\
                    def test_generator():\n    assert first(x * x for x in range(2, 5)) == 4\n\n\
                    def test_points():\n    p = make_point(P(1, 2))\n    assert p == (2, 3) and p.x == 2\n"),
            "from collections import namedtuple\nQ = namedtuple('Q', 'x y')\ndef apply(f, xs):\n    return [f(x) for x in xs]\n\
             def first(it):\n    return next(iter(it))\ndef make_point(p):\n    return Q(p.x + 1, p.y + 1)\n",
        ),
        (
            "big integers, exception messages and attributes, empty arrays, EvalPlus branches",
            asserts("f", "import numpy as np\n",
                    "import pytest\nassert f(1) == 10 ** 5000\nwith pytest.raises(ValueError) as e:\n    f(-1)\nassert str(e.value) == 'negative: -1' and e.value.code == 7\n\
                     assert g().shape == (0, 3)\n\n\
                     def assertion(out, exp, atol):\n    exact = out == exp\n    if atol == 0 and isinstance(exp, float):\n        atol = 1e-6\n    \
                     if not exact and atol != 0:\n        assert abs(out - exp) <= atol\n    else:\n        assert exact\n\
                     for x in [2, 3]:\n        assertion(h(x), x / 2, 0)\n"),
            "import numpy as np\nclass Bad(ValueError):\n    def __init__(self, n):\n        super().__init__(n)\n        self.code = 7\n    def __str__(self):\n        return 'negative: %d' % self.args[0]\n\
             def f(x):\n    if x < 0:\n        raise Bad(x)\n    return 10 ** 5000\ndef g():\n    return np.zeros((0, 3))\ndef h(x):\n    return x / 2\n",
        ),
    ];
    for (name, task, code) in cases {
        let v = &judge(backend, task, &[code])[0];
        assert!(v.all_passed, "{backend:?} {name}: {v:?}");
    }
}

#[test]
fn native_second_look_honest_shapes_pass() {
    second_look_honest_shapes(Backend::Native);
}

#[test]
fn wasm_second_look_honest_shapes_pass() {
    second_look_honest_shapes(Backend::Wasm);
}
