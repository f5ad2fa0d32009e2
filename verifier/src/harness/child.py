"""dllm-rl sandbox harness, the part that runs next to candidate code (in a forked native child
or in the wasm guest).

It never decides pass or fail. It runs the candidate and writes what the candidate produced
(return values as type-tagged JSON of builtin types, exception type names) as JSON lines on a
result channel; the trusted parent holds the expected values and compares. A forged or extra
line can therefore only claim wrong values.

Job modes:
  stdio   {code}: exec as __main__; the parent compares stdout
  call    {code, entry, class_name, tests: [{args, kwargs}], start_at}: one result line per test
  assert  {code, test_child, runner}: the candidate calls inside the tests (rewritten by the
          trusted side's `transform`) are evaluated and recorded per call site; expected
          values stay outside. runner "test_functions" also calls the test module's test
          functions (KodCode's pytest files, which import the candidate from module `solution`)

The files of this folder are concatenated per role (see mod.rs): child.py alone (the wasm
guest), child.py + fork_server.py (the native fork-server), child.py + trusted.py (the
trusted judge).
"""

import builtins
import json
import math
import os
import sys
import time
import types

# Modules solutions commonly use, imported before the candidate runs (once per fork-server, or
# into the wasm guest's snapshot), so that a run does not pay for them.
WARM_IMPORTS = "array bisect collections copy dataclasses decimal fractions functools heapq itertools math operator random re statistics string typing"

# Result lines are capped so that a hostile candidate cannot make the parent buffer gigabytes.
# Depth counts JSON nesting levels: the parent's JSON reader stops at 128, and a value sits up
# to 6 levels down in its result line.
MAX_DEPTH = 120
MAX_ITEMS = 1_000_000

# ---------------------------------------------------------------------------------------------
# Values: type-tagged JSON of builtin types. Exact type checks, so candidate subclasses (an int
# whose __eq__ always returns True) are never taken for builtin values and no candidate method
# runs while encoding.


def encode(value):
    """Type-tagged JSON of `value`, built from builtin types only (see the module doc).

    Plain objects (ListNode, TreeNode, a class the task asked for) travel as their attributes,
    read with object.__getattribute__ so that no candidate method runs, in a flat table:
    `{"$graph": {"value": V, "objects": [{"$object": cls, "id": n, "attrs": [[k, v]...]}...]}}`
    with `{"$ref": n}` wherever an object occurs. Nested, a linked list of 50 nodes was too deep
    for the parent's JSON reader, and an honest solution failed as "malformed"."""
    encoder = _Encoder()
    root = encoder.encode(value, 0)
    if not encoder.queue:
        return root
    objects = []
    while len(objects) < len(encoder.queue):
        obj = encoder.queue[len(objects)]
        attrs = object.__getattribute__(obj, "__dict__") if _has_dict(obj) else None
        entry = {"$object": type(obj).__name__, "id": len(objects), "attrs": None}
        if type(attrs) is dict:
            entry["attrs"] = [[str(k), encoder.encode(v, 6)] for k, v in dict.items(attrs)]
        objects.append(entry)
    return {"$graph": {"value": root, "objects": objects}}


class _Encoder:
    def __init__(self):
        self.budget = MAX_ITEMS
        self.objects = {}  # id -> reference number, so shared and cyclic objects are one entry
        self.queue = []  # the objects met, in reference order; their attributes come later

    def encode(self, value, depth):
        self.budget -= 1
        if self.budget < 0 or depth > MAX_DEPTH:
            raise ValueError("value too large or too deep")
        t = type(value)
        if value is None or t is bool or t is str:
            return value
        if t is int:
            return value if -(2**53) < value < 2**53 else {"$int": str(value)}
        if t is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if t is list:
            return [self.encode(v, depth + 1) for v in value]
        if t is tuple:
            return {"$tuple": [self.encode(v, depth + 2) for v in value]}
        if t is dict:
            return {"$dict": [[self.encode(k, depth + 3), self.encode(v, depth + 3)] for k, v in dict.items(value)]}
        if t is set or t is frozenset:
            return {"$set" if t is set else "$frozenset": [self.encode(v, depth + 2) for v in value]}
        if t is bytes:
            return {"$bytes": value.hex()}
        if t is complex:
            return {"$complex": [self.encode(value.real, depth + 2), self.encode(value.imag, depth + 2)]}
        np = sys.modules.get("numpy")
        if np is not None and t is np.ndarray:
            return {"$ndarray": {"dtype": str(value.dtype), "data": self.encode(np.ndarray.tolist(value), depth + 2)}}
        if np is not None and t.__module__ == "numpy" and issubclass(t, np.generic) and t in _numpy_scalar_types(np):
            return self.encode(np.generic.item(value), depth)
        key = id(value)
        if key not in self.objects:
            self.objects[key] = len(self.queue)
            self.queue.append(value)
        return {"$ref": self.objects[key]}


def _numpy_scalar_types(np):
    return {np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
            np.float16, np.float32, np.float64, np.complex64, np.complex128, np.str_}


def _has_dict(value):
    try:
        object.__getattribute__(value, "__dict__")
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# The child side: runs candidate code.


class Channel:
    def __init__(self, stream):
        self._write = stream.write
        self._flush = stream.flush

    def send(self, obj):
        self._write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
        self._flush()


def _exception_line(exc):
    return {"raise": type(exc).__name__, "message": str(exc)[:200] if type(exc).__str__ is BaseException.__str__ else ""}


def _module_namespace(name):
    return {"__name__": name, "__builtins__": builtins, "__file__": "solution.py"}


def run_job(job, chan):
    sys.setrecursionlimit(100_000)
    mode = job["mode"]
    if mode == "stdio":
        _run_stdio(job, chan)
    elif mode == "call":
        _run_call(job, chan)
    elif mode == "assert":
        _run_assert(job, chan)
    else:
        chan.send({"error": "unknown mode %r" % (mode,)})
    # Neither a forked child (os._exit) nor a guest turn finalizes the interpreter: what the
    # candidate left in the buffers would be lost to the audit's output excerpts.
    _flush_output()


def _flush_output():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _run_stdio(job, chan):
    start = time.perf_counter()
    status = {"done": True}
    try:
        code = compile(job["code"], "solution.py", "exec")
        exec(code, _module_namespace("__main__"))
    except SystemExit as exc:
        if exc.code not in (None, 0):
            status.update({"raise": "SystemExit", "message": str(exc.code)[:200]})
    except BaseException as exc:  # noqa: BLE001 - any failure of the candidate is a verdict
        status.update(_exception_line(exc))
    _flush_output()
    status["secs"] = time.perf_counter() - start
    chan.send(status)


def _load_candidate(job):
    """Runs the candidate's code as module `solution` (KodCode's tests import from it)."""
    import types

    module = types.ModuleType("solution")
    ns = module.__dict__
    ns.update(_module_namespace("solution"))
    sys.modules["solution"] = module
    exec(compile(job["code"], "solution.py", "exec"), ns)
    return ns


def _call(fn):
    fn()


def _parameter_sets(fn):
    """The keyword arguments of each call pytest would make: the cartesian product of the
    function's `parametrize` marks (one empty call when it has none)."""
    sets = [{}]
    for mark in getattr(fn, "pytestmark", []):
        if getattr(mark, "name", None) != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        rows = []
        for value in values:
            value = getattr(value, "values", value)  # pytest.param(...)
            row = dict(zip(names, value)) if len(names) > 1 else {names[0]: value}
            rows.append(row)
        sets = [dict(a, **b) for a in sets for b in rows]
    return sets


def _parametrized(fn):
    def run():
        for kwargs in _parameter_sets(fn):
            fn(**kwargs)

    return run


def _hook(instance, name, method):
    hook = getattr(instance, name, None)
    if hook is None:
        return
    # pytest passes the test method only to hooks that take it.
    takes_method = getattr(getattr(hook, "__code__", None), "co_argcount", 1) > 1
    hook(method) if takes_method else hook()


def _method_runner(cls, name):
    def run():
        for kwargs in _parameter_sets(vars(cls)[name]):
            instance = cls()
            method = getattr(instance, name)
            _hook(instance, "setup_method", method)
            try:
                method(**kwargs)
            finally:
                _hook(instance, "teardown_method", method)

    return run


def _run_test_functions(ns, on_error, run=_call):
    """pytest's collection, reduced to what assertion replay needs: module-level `test*`
    functions and `Test*` classes' `test*` methods, in definition order."""
    for name, obj in list(ns.items()):
        if name.startswith("test") and callable(obj) and getattr(obj, "__module__", None) == ns["__name__"]:
            targets = [_parametrized(obj)]
        elif name.startswith("Test") and isinstance(obj, type) and obj.__module__ == ns["__name__"]:
            # As pytest: a fresh instance per test method, with setup_method/teardown_method.
            targets = [_method_runner(obj, m) for m in list(vars(obj)) if m.startswith("test") and callable(vars(obj)[m])]
        else:
            continue
        for fn in targets:
            try:
                run(fn)
            except BaseException as exc:  # noqa: BLE001
                on_error(exc)


def _run_call(job, chan):
    try:
        ns = _load_candidate(job)
        target = ns[job["class_name"]]() if job.get("class_name") else ns
        fn = getattr(target, job["entry"]) if job.get("class_name") else ns[job["entry"]]
    except BaseException as exc:  # noqa: BLE001
        chan.send({"load": _exception_line(exc)})
        return
    tests = job["tests"]
    for i in range(job.get("start_at", 0), len(tests)):
        test = tests[i]
        start = time.perf_counter()
        line = {"test": i}
        try:
            # Arguments are plain JSON (the task's inputs), not tagged values.
            value = fn(*test.get("args", []), **test.get("kwargs", {}))
            line["value"] = encode(value)
        except BaseException as exc:  # noqa: BLE001
            line.update(_exception_line(exc))
        line["secs"] = time.perf_counter() - start
        chan.send(line)
    chan.send({"done": True})


class _Tee:
    """Stands in for sys.stdout during a recorded call: what the candidate prints is kept (the
    replay prints it again, for tests that capture output) and passed on."""

    def __init__(self, inner):
        self._inner = inner
        self._parts = []
        self._size = 0

    def write(self, text):
        if self._size < (1 << 20) and type(text) is str:
            self._parts.append(text)
            self._size += len(text)
        return self._inner.write(text)

    def text(self):
        return "".join(self._parts)

    def __getattr__(self, name):
        return getattr(self._inner, name)


_MUTABLE = (list, dict, set)


def _changeable(value):
    """Builtin containers and plain objects (the candidate's classes), not modules or code."""
    t = type(value)
    if t in _MUTABLE:
        return True
    return _has_dict(value) and not isinstance(value, (type, types.ModuleType, types.FunctionType, types.MethodType))


def _run_assert(job, chan):
    counts = {}

    def record(site, fn, *args, **kwargs):
        n = counts.get(site, 0)
        counts[site] = n + 1
        line = {"site": site, "n": n}
        tee = _Tee(sys.stdout)
        sys.stdout = tee
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            line.update(_exception_line(exc))
            raise
        else:
            try:
                line["value"] = encode(value)
            except BaseException as exc:  # noqa: BLE001
                line.update({"raise": "UnserializableResult", "message": str(exc)[:200]})
            return value
        finally:
            if sys.stdout is tee:
                sys.stdout = tee._inner
            if tee.text():
                line["printed"] = tee.text()
            # Arguments and receivers changed in place (`enqueue(queue, 1)`, `ll.add(3)`,
            # `reverse(head)`, `random.shuffle(a)`): the replay applies the changes.
            try:
                after = [encode(a) if _changeable(a) else None for a in args]
                if any(a is not None for a in after):
                    line["args_after"] = after
                receiver = getattr(fn, "__self__", None) if type(fn) is types.MethodType else None
                if receiver is not None and _changeable(receiver):
                    line["self_after"] = encode(receiver)
            except BaseException:  # noqa: BLE001
                pass
            chan.send(line)

    try:
        ns = _load_candidate(job)
    except BaseException as exc:  # noqa: BLE001
        chan.send({"load": _exception_line(exc)})
        return
    if job.get("runner") == "test_functions":
        # The test module sees the candidate's names, as if appended to the solution (KodCode
        # files that do not import from `solution` rely on it); only its own tests are run.
        ns = dict(ns, __name__="test_solution")
    ns["__dllm_call__"] = record
    ns["__dllm_try__"] = _try_each
    try:
        exec(compile(job["test_child"], "tests.py", "exec"), ns)
        if job.get("runner") == "test_functions":
            _run_test_functions(ns, lambda exc: None)
    except BaseException as exc:  # noqa: BLE001
        chan.send({"tests_raised": _exception_line(exc)})
    chan.send({"done": True})


def _try_each(*thunks):
    for thunk in thunks:
        try:
            thunk()
        except Exception:
            pass


def guest_main():
    """The wasm guest's entry as a program: `run JOB_PATH RESULT_PATH`."""
    guest_setup()
    guest_run(sys.argv[2], sys.argv[3])


def guest_setup():
    """What a guest needs once: its pure-Python packages (pytest, ...) on sys.path, and the
    modules the harness uses imported (a pre-initialised guest keeps them in its snapshot)."""
    if os.path.isdir("/usr/local/site") and "/usr/local/site" not in sys.path:
        sys.path.append("/usr/local/site")
    warm_imports()


def warm_imports(with_pytest=True):
    for name in WARM_IMPORTS.split():
        __import__(name)
    if with_pytest:
        try:
            import pytest  # noqa: F401 - KodCode's test files import it; ~0.1 s a run otherwise
        except ImportError:
            pass
    # What is loaded now lives as long as the process: keep the collector from walking it in
    # every run (and, before a fork, from touching its pages).
    import gc

    gc.collect()
    gc.freeze()


def guest_run(job_path, result_path):
    """Runs the job in JOB_PATH, writing result lines to RESULT_PATH (both in the scratch
    folder, which becomes the cwd, like the native child's)."""
    os.chdir(os.path.dirname(result_path))
    with open(job_path, "rb") as f:
        job = json.loads(f.read())
    os.remove(job_path)
    with open(result_path, "wb") as result:
        run_job(job, Channel(result))
