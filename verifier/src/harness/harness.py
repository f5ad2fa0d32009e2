"""dllm-rl sandbox harness: runs candidate code and reports the values it produces.

The harness never decides pass or fail. Inside the sandbox it only runs the candidate and writes
what the candidate produced (return values as type-tagged JSON of builtin types, exception type
names) as JSON lines on a result channel; the trusted parent holds the expected values and
compares. A forged or extra line can therefore only claim wrong values.

Entry points (argv[1]):
  serve SOCK_FD            native fork-server: imports once, forks a child per job (see serve)
  run JOB_PATH RESULT_PATH  run one job in this process (the wasm sandbox)
  trusted                   the trusted judge of assertion tests: reads requests on stdin,
                            never runs candidate code (see trusted_main)

Job modes:
  stdio   {code, stdin}: exec as __main__; the parent compares stdout
  call    {code, entry, class_name, tests: [{args, kwargs}], start_at}: one result line per test
  assert  {code, test_child, runner}: the candidate calls inside the tests (rewritten by
          `transform`) are evaluated and recorded per call site; expected values stay outside.
          runner "test_functions" also calls the test module's test functions (KodCode's
          pytest files, which import the candidate from module `solution`)
"""

import ast
import builtins
import json
import math
import os
import sys
import time
import types

# Result lines are capped so that a hostile candidate cannot make the parent buffer gigabytes.
MAX_DEPTH = 64
MAX_ITEMS = 1_000_000

# ---------------------------------------------------------------------------------------------
# Values: type-tagged JSON of builtin types. Exact type checks, so candidate subclasses (an int
# whose __eq__ always returns True) are never taken for builtin values and no candidate method
# runs while encoding.


def encode(value):
    """Type-tagged JSON of `value`, built from builtin types only (see the module doc)."""
    return _Encoder().encode(value, 0)


class _Encoder:
    def __init__(self):
        self.budget = MAX_ITEMS
        self.objects = {}  # id -> reference number, so cyclic object graphs terminate

    def encode(self, value, depth):
        self.budget -= 1
        if self.budget < 0 or depth > MAX_DEPTH:
            raise ValueError("value too large or too deep")
        t = type(value)
        d = depth + 1
        if value is None or t is bool or t is str:
            return value
        if t is int:
            return value if -(2**53) < value < 2**53 else {"$int": str(value)}
        if t is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if t is list:
            return [self.encode(v, d) for v in value]
        if t is tuple:
            return {"$tuple": [self.encode(v, d) for v in value]}
        if t is dict:
            return {"$dict": [[self.encode(k, d), self.encode(v, d)] for k, v in dict.items(value)]}
        if t is set or t is frozenset:
            return {"$set" if t is set else "$frozenset": [self.encode(v, d) for v in value]}
        if t is bytes:
            return {"$bytes": value.hex()}
        if t is complex:
            return {"$complex": [self.encode(value.real, d), self.encode(value.imag, d)]}
        np = sys.modules.get("numpy")
        if np is not None and t is np.ndarray:
            return {"$ndarray": {"dtype": str(value.dtype), "data": self.encode(np.ndarray.tolist(value), d)}}
        if np is not None and t.__module__ == "numpy" and issubclass(t, np.generic) and t in _numpy_scalar_types(np):
            return self.encode(np.generic.item(value), d)
        # Plain objects (ListNode, TreeNode, a class the task asked for) travel as their
        # attributes, read with object.__getattribute__ so that no candidate method runs.
        key = id(value)
        if key in self.objects:
            return {"$ref": self.objects[key]}
        self.objects[key] = len(self.objects)
        attrs = object.__getattribute__(value, "__dict__") if _has_dict(value) else None
        encoded = {"$object": t.__name__, "id": self.objects[key], "attrs": None}
        if type(attrs) is dict:
            encoded["attrs"] = [[str(k), self.encode(v, d)] for k, v in dict.items(attrs)]
        return encoded


def _numpy_scalar_types(np):
    return {np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
            np.float16, np.float32, np.float64, np.complex64, np.complex128, np.str_}


def _has_dict(value):
    try:
        object.__getattribute__(value, "__dict__")
        return True
    except Exception:
        return False


class Opaque:
    """A decoded object: attributes only. Equal to another Opaque with the same class name
    and attributes, so that tests comparing linked lists or trees still work."""

    def __init__(self, cls):
        self._dllm_cls = cls

    def __getattr__(self, name):
        # Methods of the candidate's class: their calls are replayed from records.
        if name.startswith("__"):
            raise AttributeError(name)
        return _BoundStub(self)

    def __eq__(self, other):
        return type(other) is Opaque and vars(self) == vars(other)

    def __repr__(self):
        return "%s(%s)" % (self._dllm_cls, ", ".join("%s=%r" % kv for kv in vars(self).items() if kv[0] != "_dllm_cls"))

    __hash__ = None


def decode(value, objects=None):
    if objects is None:
        objects = {}
    if isinstance(value, list):
        return [decode(v, objects) for v in value]
    if not isinstance(value, dict):
        return value
    tag = next((k for k in value if k.startswith("$")), None)
    inner = value.get(tag)
    if tag == "$int":
        return int(inner)
    if tag == "$float":
        return float(inner)
    if tag == "$tuple":
        return tuple(decode(v, objects) for v in inner)
    if tag == "$dict":
        return {_hashable(decode(k, objects)): decode(v, objects) for k, v in inner}
    if tag == "$set":
        return {_hashable(decode(v, objects)) for v in inner}
    if tag == "$frozenset":
        return frozenset(_hashable(decode(v, objects)) for v in inner)
    if tag == "$bytes":
        return bytes.fromhex(inner)
    if tag == "$complex":
        return complex(decode(inner[0], objects), decode(inner[1], objects))
    if tag == "$ndarray":
        data = decode(inner["data"], objects)
        try:
            import numpy

            return numpy.array(data, dtype=inner["dtype"])
        except Exception:
            return data
    if tag == "$ref":
        return objects[inner]
    if tag == "$object":
        obj = Opaque(inner)
        objects[value.get("id")] = obj
        for k, v in value.get("attrs") or []:
            setattr(obj, k, decode(v, objects))
        return obj
    raise ValueError("unknown value tag %r" % (tag,))


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


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


def _flush_stdout():
    try:
        sys.stdout.flush()
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
    _flush_stdout()
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


# ---------------------------------------------------------------------------------------------
# Rewriting assertion tests. Candidate call sites are calls of a candidate name (the entry
# points, `candidate`) or of a method on a candidate class instance (`Solution().f(...)`).
# The child version keeps the test's control flow but reduces each `assert` to its candidate
# calls (so the expected values in the assertion never enter the sandbox); the trusted version
# keeps the assertions and replays recorded values at each site.


def _bound_anywhere(tree):
    """Every name the code binds itself (definitions, imports, assignments, parameters...)."""
    bound = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in n.names if a.name != "*"}
        elif isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            bound.add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
    return bound


def candidate_names(test_code, setup, names, class_names=()):
    """The names under which tests call the candidate: those given, those imported from
    `solution`, and every called name that neither the tests nor their set-up define and that
    is no builtin (tests written to be appended to the solution, as KodCode's and MBPP's)."""
    tree = ast.parse(test_code)
    result = set(names) | {"candidate"}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module == "solution":
            result |= {a.asname or a.name for a in n.names if a.name != "*"}
    bound = _bound_anywhere(tree) | (_bound_anywhere(ast.parse(setup)) if setup else set())
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            if n.func.id not in bound and not hasattr(builtins, n.func.id):
                result.add(n.func.id)
    # Declared candidate classes are handled by their instances' method calls instead.
    return sorted(result - set(class_names))


def _root_name(node):
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node):
    """`a.b.c` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _random_names(tree):
    """Module aliases and names through which the tests draw random numbers: recorded in the
    sandbox and replayed, so that both sides see the same inputs."""
    modules, functions = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name in ("random", "numpy", "numpy.random"):
                    modules.add((a.asname or a.name).split(".")[0])
        elif isinstance(n, ast.ImportFrom) and n.module in ("random", "numpy.random"):
            functions |= {a.asname or a.name for a in n.names}
    return modules, functions


class _Sites(ast.NodeTransformer):
    def __init__(self, names, class_names, random_names=(set(), set())):
        self.names = set(names) | {"candidate"}
        self.class_names = set(class_names)
        self.random_modules, self.random_functions = random_names
        # Variables holding candidate objects (`cache = LRUCache(2)`): their method calls are
        # candidate calls too.
        self.derived = set()
        self.count = 0
        self.child = True
        self.assert_count = 0

    def is_site(self, call):
        f = call.func
        if isinstance(f, ast.Name) and (f.id in self.names or f.id in self.random_functions):
            return True
        if isinstance(f, ast.Attribute) and self.is_derived(f.value):
            return True
        if isinstance(f, ast.Attribute) and _root_name(f) in self.random_modules:
            return _root_name(f) != "np" or "random" in ast.unparse(f).split(".")
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
            inner = f.value.func
            return isinstance(inner, ast.Name) and inner.id in self.class_names
        return False

    def is_derived(self, node):
        path = _dotted(node)
        if path is None:
            return False
        parts = path.split(".")
        return any(".".join(parts[:i]) in self.derived for i in range(1, len(parts) + 1))

    def visit_Assign(self, node):
        node = self.generic_visit(node)
        value = node.value
        from_candidate = _is_recorder(value) or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in self.class_names
        )
        if from_candidate:
            self.derived |= {_dotted(t) for t in node.targets if _dotted(t)}
        return node

    def visit_Call(self, node):
        if isinstance(node.func, ast.Attribute) and self.is_derived(node.func.value):
            node.args = [self.visit(a) for a in node.args]
            node.keywords = [self.visit(k) for k in node.keywords]
        else:
            self.generic_visit(node)
        if not self.is_site(node):
            return node
        site = self.count
        self.count += 1
        return ast.copy_location(
            ast.Call(
                func=ast.Name("__dllm_call__", ast.Load()),
                args=[ast.Constant(site), node.func] + node.args,
                keywords=node.keywords,
            ),
            node,
        )

    def visit_Assert(self, node):
        index = self.assert_count
        self.assert_count += 1
        node = self.generic_visit(node)
        if self.child:
            calls = [n for n in ast.walk(node.test) if _is_recorder(n)]
            calls = [c for c in calls if not any(c is not o and _contains(o, c) for o in calls)]
            calls.sort(key=lambda c: (c.lineno, c.col_offset))
            thunks = [ast.Lambda(_no_args(), c) for c in calls]
            bound = _bound_names(node.test)
            if any(isinstance(n, ast.Name) and n.id in bound for c in calls for n in ast.walk(c)):
                # A call that uses a comprehension or lambda variable cannot be lifted out of
                # the assertion: evaluate the whole expression (its truth is ignored here).
                thunks = [ast.Lambda(_no_args(), node.test)]
            stmt = ast.Expr(ast.Call(ast.Name("__dllm_try__", ast.Load()), thunks, []))
        else:
            stmt = ast.Expr(
                ast.Call(ast.Name("__dllm_check__", ast.Load()), [ast.Constant(index), ast.Lambda(_no_args(), node.test)], [])
            )
        return ast.copy_location(stmt, node)


def _bound_names(expr):
    bound = set()
    for n in ast.walk(expr):
        if isinstance(n, ast.comprehension):
            bound |= {t.id for t in ast.walk(n.target) if isinstance(t, ast.Name)}
        elif isinstance(n, ast.Lambda):
            bound |= {a.arg for a in n.args.args + n.args.kwonlyargs + n.args.posonlyargs}
        elif isinstance(n, ast.NamedExpr):
            bound.add(n.target.id)
    return bound


# The helpers' names end in "__" so that Python does not mangle them inside test classes.


def _is_recorder(n):
    return isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "__dllm_call__"


def _contains(outer, inner):
    return any(n is inner for n in ast.walk(outer))


def _no_args():
    return ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


def transform(test_code, names, class_names, child, setup=""):
    tree = ast.parse(test_code)
    sites = _Sites(candidate_names(test_code, setup, names, class_names), class_names, _random_names(tree))
    sites.child = child
    tree = ast.fix_missing_locations(sites.visit(tree))
    return ast.unparse(tree), sites.count, sites.assert_count


def count_test_functions(test_code):
    """What `_run_test_functions` will run, counted statically (pytest's collection rules)."""
    n = 0
    for node in ast.parse(test_code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            n += 1
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            n += sum(isinstance(m, ast.FunctionDef) and m.name.startswith("test") for m in node.body)
    return n


# ---------------------------------------------------------------------------------------------
# The trusted side: never runs candidate code. Requests are JSON lines on stdin:
#   {"op": "transform", "test_code", "names", "class_names"} -> {"child", "sites", "asserts"}
#   {"op": "replay", "test_code", "names", "class_names", "setup", "records"}
#       -> {"asserts": [{"index", "ok", "error"}], "raised": ...}


class _NotRecorded(Exception):
    """The candidate produced no value at a call site the assertion needs."""


class _CandidateStub:
    """Stands for the candidate's class (`Solution`) and its instances in the replay: calls and
    attribute reads return further stubs; the values come from the recorded call sites."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return _CandidateStub()

    def __call__(self, *args, **kwargs):
        return _CandidateStub()


class _BoundStub(_CandidateStub):
    """A method of a decoded object; the replay updates `receiver` with its recorded state."""

    def __init__(self, receiver):
        self.receiver = receiver


def _builtin_exception(name):
    exc = getattr(builtins, name, None)
    if isinstance(exc, type) and issubclass(exc, BaseException):
        return exc
    return type(name, (Exception,), {})


def _assign_in_place(target, value):
    if type(target) is list and isinstance(value, list):
        target[:] = value
    elif type(target) is dict and isinstance(value, dict):
        target.clear()
        target.update(value)
    elif type(target) is set and isinstance(value, set):
        target.clear()
        target.update(value)
    elif type(target) is Opaque and type(value) is Opaque:
        target.__dict__.clear()
        target.__dict__.update(value.__dict__)


def _free_globals(test_code, setup, names):
    """Values for names the tests read but never define: when appended to a solution they
    would come from the solution's own imports (`List`, `math`). Standard modules and typing
    names are supplied; anything else stands for the candidate."""
    import importlib
    import typing

    tree = ast.parse(test_code)
    bound = _bound_anywhere(tree) | (_bound_anywhere(ast.parse(setup)) if setup else set())
    values = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in bound and n.id not in names:
            if hasattr(builtins, n.id) or n.id in values:
                continue
            if n.id in getattr(sys, "stdlib_module_names", ()) or n.id in ("numpy", "np"):
                try:
                    values[n.id] = importlib.import_module("numpy" if n.id == "np" else n.id)
                    continue
                except ImportError:
                    pass
            values[n.id] = getattr(typing, n.id, None) or _CandidateStub()
    return values


def replay(req):
    records = {}
    for line in req["records"]:
        records.setdefault(line["site"], {})[line["n"]] = line
    counts = {}
    results = []

    def call(site, fn, *args, **kwargs):
        n = counts.get(site, 0)
        counts[site] = n + 1
        line = records.get(site, {}).get(n)
        if line is None:
            raise _NotRecorded("call site %d (occurrence %d) has no recorded result" % (site, n))
        if line.get("printed"):
            sys.stdout.write(line["printed"])
        for arg, after in zip(args, line.get("args_after") or []):
            if after is not None:
                _assign_in_place(arg, decode(after))
        if "self_after" in line and type(fn) is _BoundStub:
            _assign_in_place(fn.receiver, decode(line["self_after"]))
        if "value" in line:
            return decode(line["value"])
        raise _builtin_exception(line.get("raise", "Exception"))(line.get("message", ""))

    def check(index, thunk):
        try:
            ok = bool(thunk())
            results.append({"index": index, "ok": ok, "error": None if ok else "AssertionError"})
        except _NotRecorded as exc:
            results.append({"index": index, "ok": False, "error": "NotRecorded: %s" % exc})
        except BaseException as exc:  # noqa: BLE001 - the candidate's recorded exception
            results.append({"index": index, "ok": False, "error": type(exc).__name__})

    import types

    names = candidate_names(req["test_code"], req.get("setup", ""), req["names"], req["class_names"])
    code, _, n_asserts = transform(req["test_code"], req["names"], req["class_names"], child=False, setup=req.get("setup", ""))
    stub = types.ModuleType("solution")
    stub.__all__ = list(names)
    stub.__getattr__ = lambda name: _CandidateStub()
    sys.modules["solution"] = stub
    ns = {"__name__": "test_solution", "__builtins__": builtins, "__dllm_call__": call, "__dllm_check__": check}
    ns.update(_free_globals(req["test_code"], req.get("setup", ""), names))
    for name in names:
        ns[name] = _CandidateStub()
    for name in req["class_names"]:
        ns[name] = _CandidateStub
    raised = []

    def on_error(exc):
        raised.append(type(exc).__name__)

    functions = []

    def run_function(fn):
        # pytest's unit: a test function passes when it returns and every assertion held.
        first = len(results)
        try:
            fn()
            error = None
        except _NotRecorded as exc:
            error = "NotRecorded: %s" % exc
        except BaseException as exc:  # noqa: BLE001
            error = type(exc).__name__
        failed = [r["error"] for r in results[first:] if not r["ok"]]
        functions.append({"ok": error is None and not failed, "error": failed[0] if failed else error})

    try:
        if req.get("setup"):
            exec(compile(req["setup"], "setup.py", "exec"), ns)
        exec(compile(code, "tests.py", "exec"), ns)
        if req.get("runner") == "test_functions":
            _run_test_functions(ns, on_error, run_function)
    except BaseException as exc:  # noqa: BLE001
        on_error(exc)
    finally:
        sys.modules.pop("solution", None)
    return {"asserts": results, "total": n_asserts, "functions": functions, "raised": raised[0] if raised else None}


def trusted_main():
    import io

    # Test code may print, read, replace sys.stdout or call pytest.main: keep the protocol's
    # own streams away from it and reset what it may have changed before each request.
    out, requests = sys.stdout, sys.stdin
    for line in requests:
        sys.stdout, sys.stdin, sys.argv = io.StringIO(), io.StringIO(), ["tests.py"]
        try:
            req = json.loads(line)
            if req["op"] == "transform":
                child, n_sites, n_asserts = transform(
                    req["test_code"], req["names"], req["class_names"], child=True, setup=req.get("setup", "")
                )
                reply = {"child": child, "sites": n_sites, "asserts": n_asserts, "functions": count_test_functions(req["test_code"])}
            elif req["op"] == "replay":
                reply = replay(req)
            else:
                reply = {"error": "unknown op %r" % (req["op"],)}
        except SyntaxError as exc:
            reply = {"error": "SyntaxError in tests: %s" % exc}
        except BaseException as exc:  # noqa: BLE001 - one bad task must not end the judge
            reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# ---------------------------------------------------------------------------------------------
# Native fork-server. The parent (Rust) starts one server per worker slot, already inside its
# namespaces, and talks to it over a SOCK_SEQPACKET socket. Per job it sends
#   {"uid", "gid", "as_bytes", "cpu_secs", "fsize_bytes", "nofile", "nproc"}
# with five descriptors attached: job_r, stdin_r, stdout_w, stderr_w, result_w. The server
# forks; the child reads the job from job_r and runs it as uid/gid (when the server is root),
# under rlimits, in a fresh private directory. The server answers {"pid"}, then, after the
# child ends, {"exit"/"signal"} once every process of the slot's uid has been killed.

WARM_IMPORTS = "array bisect collections copy dataclasses decimal fractions functools heapq itertools math operator random re statistics string typing"


def serve_forever(sock_fd):
    import resource
    import shutil
    import signal
    import socket
    import tempfile

    for name in WARM_IMPORTS.split():
        __import__(name)
    libc = _libc()
    if libc is not None:
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of a run become ours to reap
    sock = socket.socket(fileno=sock_fd)
    try:
        interfaces = [name for _, name in socket.if_nameindex()]
    except OSError:
        interfaces = ["unknown"]
    sock.send(json.dumps({"interfaces": interfaces, "root": sorted(os.listdir("/"))}).encode())
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 8)
        except (ConnectionResetError, OSError):
            return
        if not msg:
            return
        spec = json.loads(msg)
        workdir = tempfile.mkdtemp(prefix="run-", dir=spec.get("tmp") or None)
        if spec.get("uid") is not None:
            os.chown(workdir, spec["uid"], spec["gid"])
        pid = os.fork()
        if pid == 0:
            _child(spec, fds, workdir, libc, resource, signal)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
        _, status = os.waitpid(pid, 0)
        reply = {"exit": os.WEXITSTATUS(status)} if os.WIFEXITED(status) else {"signal": os.WTERMSIG(status)}
        if spec.get("uid") is not None:
            _kill_uid(spec["uid"], spec["gid"], signal)
            _reap(block=True)  # all were just killed: each wait is short
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            _reap(block=False)
        shutil.rmtree(workdir, ignore_errors=True)
        sock.send(json.dumps(reply).encode())


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except Exception:
        return None


def _reap(block):
    """Waits for the run's orphans (reparented to us, the subreaper), so that none lingers as
    a zombie counted against the slot uid's process limit."""
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_uid(uid, gid, signal):
    """Kills every process of the slot's uid, including any that left the process group."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(gid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _child(spec, fds, workdir, libc, resource, signal):
    try:
        os.setsid()
        import fcntl

        # Move the received descriptors out of the way first: they may sit on 0-4 themselves.
        job_r, stdin_r, stdout_w, stderr_w, result_w = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
        os.dup2(stdin_r, 0)
        os.dup2(stdout_w, 1)
        os.dup2(stderr_w, 2)
        os.dup2(result_w, 3)
        os.dup2(job_r, 4)
        os.closerange(5, 1 << 16)
        with open(4, "rb") as f:
            job = json.loads(f.read())
        os.chdir(workdir)
        limits = [
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_AS, spec.get("as_bytes")),
            (resource.RLIMIT_CPU, spec.get("cpu_secs")),
            (resource.RLIMIT_FSIZE, spec.get("fsize_bytes")),
            (resource.RLIMIT_NOFILE, spec.get("nofile")),
        ]
        if spec.get("uid") is not None:
            limits.append((resource.RLIMIT_NPROC, spec.get("nproc")))
        for which, value in limits:
            if value is not None:
                resource.setrlimit(which, (value, value))
        if spec.get("uid") is not None:
            os.setgroups([])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
        if libc is not None:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})
        sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
        chan = Channel(open(3, "wb", buffering=0, closefd=True))
        del fds, spec
        run_job(job, chan)
        _flush_stdout()
    except BaseException:  # noqa: BLE001 - the child must never return into the server loop
        try:
            import traceback

            os.write(2, ("dllm-rl harness: " + traceback.format_exc()).encode())
        except BaseException:  # noqa: BLE001
            pass
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "trusted":
        trusted_main()
    elif sys.argv[1] == "run":
        if os.path.isdir("/usr/local/site"):
            sys.path.append("/usr/local/site")  # the wasm guest's pure-Python packages
        os.chdir(os.path.dirname(sys.argv[3]))  # the scratch folder, as the native child's cwd
        with open(sys.argv[2], "rb") as f:
            job = json.loads(f.read())
        os.remove(sys.argv[2])
        with open(sys.argv[3], "wb") as result:
            run_job(job, Channel(result))
    elif sys.argv[1] == "serve":
        serve_forever(int(sys.argv[2]))
