# The task's tests on the trusted side: their shape (assertions, test functions, whether they
# reach the candidate), pytest's collection reduced to what they need, and one run against a
# completion (appended after stand_ins.py; see mod.rs).

import ast
import collections
import inspect
import io

# ---------------------------------------------------------------------------------------------
# The tests, prepared once per task.


class _Checks(ast.NodeTransformer):
    """Each `assert T` becomes `__dllm_check__(i, lambda: T)`, so that every assertion is
    counted and judged on its own."""

    def __init__(self):
        self.count = 0

    def visit_Assert(self, node):
        index = self.count
        self.count += 1
        node = self.generic_visit(node)
        call = ast.Call(ast.Name("__dllm_check__", ast.Load()), [ast.Constant(index), ast.Lambda(_no_args(), node.test)], [])
        return ast.copy_location(ast.Expr(call), node)


def _no_args():
    return ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


def _is_test_class(node):
    """pytest collects `Test*` classes and unittest.TestCase subclasses whatever their name."""
    bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
    return node.name.startswith("Test") or "TestCase" in bases


def count_test_functions(tree):
    """What `_run_test_functions` will run, counted statically (pytest's collection rules; a
    name defined twice is one test, the later definition, as Python keeps it)."""
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names[node.name] = 1
        elif isinstance(node, ast.ClassDef) and _is_test_class(node):
            methods = {m.name for m in node.body if isinstance(m, ast.FunctionDef) and m.name.startswith("test")}
            names[node.name] = len(methods)
    return sum(names.values())


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


def _library_name(name):
    return name in _STANDARD_MODULES or name in ("np", "pd", "numpy", "pandas", "scipy", "pytest", "sortedcontainers") or hasattr(_typing(), name)


def analyze(req):
    """The shape of a task's tests: assertions, test functions, and whether they can reach the
    candidate at all. Tests that define every function they call (a test file that carries
    its own solution) judge nothing: any completion would pass."""
    tree = ast.parse(req["test_code"])
    trusted = set()
    for code in (req.get("prelude"), req.get("setup")):
        if code:
            trusted |= _bound_anywhere(ast.parse(code))
    bound = _bound_anywhere(tree) | trusted
    reach = any(isinstance(n, ast.ImportFrom) and n.module == "solution" for n in ast.walk(tree))
    reach |= any(isinstance(n, ast.Import) and any(a.name == "solution" for a in n.names) for n in ast.walk(tree))
    declared = set(req.get("names") or []) | set(req.get("class_names") or [])
    free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    reach |= bool(declared & (free - _bound_anywhere(tree)))
    reach |= any(not hasattr(builtins, name) and not _library_name(name) for name in free - bound)
    checks = _Checks()
    checks.visit(tree)
    invalid = None
    if not reach:
        invalid = "the tests never reach the candidate: they define every function they call"
    return {"asserts": checks.count, "functions": count_test_functions(tree), "invalid": invalid}


_PREPARED = {}


def _prepared(req):
    """The task's tests with their assertions counted, compiled once per task: the same tests
    run for every completion (G per prompt in RL)."""
    key = (req["test_code"], req.get("setup", ""), req.get("prelude", ""))
    if key not in _PREPARED:
        if len(_PREPARED) > 4096:
            _PREPARED.clear()
        tree = ast.parse(req["test_code"])
        bound = _bound_anywhere(tree)
        checks = _Checks()
        tree = ast.fix_missing_locations(checks.visit(tree))
        compiled = lambda code, name: compile(code, name, "exec") if code else None  # noqa: E731
        free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        _PREPARED[key] = (compile(tree, "tests.py", "exec"), checks.count, compiled(req.get("prelude"), "prelude.py"),
                          compiled(req.get("setup"), "setup.py"), free, bound, _taken_from_solution(tree))
    return _PREPARED[key]


def _taken_from_solution(tree):
    """The names the tests take from the candidate's module by name: `from solution import f`
    and `solution.f` after `import solution` (not `import *`, which takes what is there)."""
    taken = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module == "solution":
            taken |= {a.name for a in n.names if a.name != "*"}
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "solution":
            taken.add(n.attr)
    return taken


def _reached(req, names, session):
    """Whether the tests reached the candidate: they called it, or they read a name of its that
    is data, or is missing (`solve = 5`, no `solve`: its failure, judged by the tests)."""
    _, _, _, _, free, _, taken = _prepared(req)
    declared = (set(req.get("names") or []) | set(req.get("class_names") or [])) & free
    stand_ins = (RemoteObject, RemoteCallable)
    return session.calls > 0 or any(n not in names or not (type(names[n]) in stand_ins or isinstance(names[n], _RemoteClass))
                                    for n in declared | taken)


# ---------------------------------------------------------------------------------------------
# Running the tests.


def _error_name(exc):
    if isinstance(exc, _Gone):
        return "SandboxGone"
    if isinstance(exc, _Broken):
        return "Broken"
    return type(exc).__name__


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


def _fixture_function(obj):
    """The function behind a `@pytest.fixture` of the test file (pytest 7 marks the function;
    pytest 8.4 wraps it in a FixtureFunctionDefinition), or None."""
    if getattr(obj, "_pytestfixturefunction", None) is not None:
        return inspect.unwrap(obj)
    if type(obj).__name__ == "FixtureFunctionDefinition":
        return obj._get_wrapped_function()
    return None


class _Capture:
    """pytest's `capsys`: what the test and the candidate printed, since the last read."""

    def __init__(self):
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()

    def readouterr(self):
        out, err = sys.stdout.getvalue(), sys.stderr.getvalue()
        sys.stdout.seek(0), sys.stdout.truncate(0), sys.stderr.seek(0), sys.stderr.truncate(0)
        return collections.namedtuple("CaptureResult", "out err")(out, err)

    def close(self):
        sys.stdout, sys.stderr = self._saved


class _Fixtures:
    """The fixtures of one test: the file's own (`@pytest.fixture`, yield ones torn down after)
    and pytest's capsys/capfd, monkeypatch, tmp_path; each made once per test."""

    def __init__(self, ns):
        self.ns, self.values, self.finalizers = ns, {}, []

    def get(self, name):
        if name in self.values:
            return self.values[name]
        if name in ("capsys", "capfd"):
            value = _Capture()
            self.finalizers.append(value.close)
        elif name == "monkeypatch":
            from _pytest.monkeypatch import MonkeyPatch

            value = MonkeyPatch()
            self.finalizers.append(value.undo)
        elif name in ("tmp_path", "tmpdir"):
            import pathlib
            import tempfile

            value = pathlib.Path(tempfile.mkdtemp(dir=os.getcwd()))
        else:
            fn = _fixture_function(self.ns.get(name))
            if fn is None:
                raise TypeError("fixture %r not found" % name)
            value = fn(**{p: self.get(p) for p in _arguments(fn)})
            if isinstance(value, types.GeneratorType):
                generator, value = value, next(value)
                self.finalizers.append(lambda: next(generator, None))
        self.values[name] = value
        return value

    def close(self):
        for finalize in reversed(self.finalizers):
            finalize()


def _arguments(fn):
    """The parameters pytest fills: all but those `mock.patch` decorators pass themselves."""
    names = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty]
    return names[len(getattr(fn, "patchings", None) or ()):]


def _call_test(fn, ns, given):
    fixtures = _Fixtures(ns)
    try:
        kwargs = dict(given)
        for name in _arguments(fn):
            if name not in kwargs:
                kwargs[name] = fixtures.get(name)
        fn(**kwargs)
    finally:
        fixtures.close()


def _parametrized(fn, ns):
    def run():
        for kwargs in _parameter_sets(fn):
            _call_test(fn, ns, kwargs)

    return run


def _hook(instance, name, method):
    hook = getattr(instance, name, None)
    if hook is None:
        return
    # pytest passes the test method only to hooks that take it.
    takes_method = getattr(getattr(hook, "__code__", None), "co_argcount", 1) > 1
    hook(method) if takes_method else hook()


def _method_runner(cls, name, ns):
    import unittest

    def run():
        for kwargs in _parameter_sets(vars(cls)[name]):
            if issubclass(cls, unittest.TestCase):
                instance = cls(name)
                instance.setUp()
                try:
                    getattr(instance, name)()
                finally:
                    instance.tearDown()
                continue
            instance = cls()
            method = getattr(instance, name)
            _hook(instance, "setup_method", method)
            try:
                _call_test(method, ns, kwargs)
            finally:
                _hook(instance, "teardown_method", method)

    return run


def _ours(obj):
    """Defined by the test file itself (never a stand-in for the candidate's `test_x`)."""
    if type(obj) is types.FunctionType:
        return getattr(inspect.unwrap(obj), "__code__", obj.__code__).co_filename == "tests.py"
    if type(obj) is type:
        return any(type(v) is types.FunctionType and v.__code__.co_filename == "tests.py" for v in vars(obj).values()) or obj.__module__ == "test_solution"
    return False


def _test_class(name, obj):
    import unittest

    return type(obj) is type and _ours(obj) and (name.startswith("Test") or issubclass(obj, unittest.TestCase))


def _run_test_functions(ns, run):
    """pytest's collection, reduced to what the tests need: module-level `test*` functions and
    the `test*` methods of `Test*` classes and unittest.TestCase subclasses, in definition order."""
    for name, obj in list(ns.items()):
        if name.startswith("test") and type(obj) is types.FunctionType and _ours(obj) and _fixture_function(obj) is None:
            targets = [_parametrized(obj, ns)]
        elif _test_class(name, obj):
            # As pytest: a fresh instance per test method, with setup_method/teardown_method
            # (setUp/tearDown, and setUpClass once, for a TestCase).
            methods = [m for m in list(vars(obj)) if m.startswith("test") and type(vars(obj)[m]) is types.FunctionType]
            targets = [_method_runner(obj, m, ns) for m in methods]
            if methods and hasattr(obj, "setUpClass"):
                obj.setUpClass()
        else:
            continue
        for fn in targets:
            run(fn)


def run_tests(req, session):
    global _SESSION
    results = []

    def over():
        """The sandbox's end (or a broken answer) fails what comes after it, whatever the
        tests then do: nothing the candidate did not answer can pass."""
        return "Broken" if session.broken is not None else "SandboxGone" if session.gone is not None else None

    def check(index, thunk):
        try:
            ok = bool(thunk())
            error = None if ok else "AssertionError"
        except BaseException as exc:  # noqa: BLE001 - the candidate's exception, or the sandbox's end
            ok, error = False, _error_name(exc)
        if ok and over():
            ok, error = False, over()
        results.append({"index": index, "ok": ok, "error": error})
        if error in ("SandboxGone", "Broken"):
            raise _Gone(error)

    functions = []

    def run_function(fn):
        # pytest's unit: a test function passes when it returns and every assertion held.
        first = len(results)
        try:
            fn()
            error = None
        except BaseException as exc:  # noqa: BLE001
            error = _error_name(exc)
        failed = [r["error"] for r in results[first:] if not r["ok"]]
        error = failed[0] if failed else error or over()
        functions.append({"ok": error is None, "error": error})

    raised = []
    n_asserts = _prepared(req)[1]
    pytest_file = req.get("runner") == "test_functions"
    _SESSION = session
    names = None
    try:
        names = _candidate_names(session, req["loaded"])
        code, ns = _namespace(req, names, check)
        exec(code, ns)
        # A module-level assertion of a pytest file that fails is a collection error: no test
        # of the file passes.
        failed = [r["error"] for r in results if not r["ok"]]
        if pytest_file and failed:
            raised.append(failed[0])
        elif pytest_file:
            _run_test_functions(ns, run_function)
    except BaseException as exc:  # noqa: BLE001
        raised.append(_error_name(exc))
    finally:
        _SESSION = None
        sys.modules.pop("solution", None)
    return {"asserts": results, "total": n_asserts, "functions": functions, "raised": raised[0] if raised else None,
            "calls": session.calls, "reached": _reached(req, names, session) if names is not None else session.calls > 0,
            "broken": session.broken}
