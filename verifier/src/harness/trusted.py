# The trusted judge of assertion tests: never runs candidate code. Appended to child.py (for
# the pytest-style test runner). Requests are JSON lines on stdin, answered on stdout.

import ast

# ---------------------------------------------------------------------------------------------
# Values back from the sandbox.

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

            # The dtype string comes from the sandbox: a declared width (`<U50000000`, `V10**9`)
            # would make a few bytes of record allocate gigabytes here. Strings get the width
            # of their data; only fixed-size kinds keep the declared type.
            kind = numpy.dtype(inner["dtype"]).kind
            if kind in "US":
                return numpy.array(data, dtype=kind)
            if kind in "biufcOMm":
                return numpy.array(data, dtype=inner["dtype"])
        except Exception:
            pass
        return data
    if tag == "$graph":
        # Every object first (references may point forward or form cycles), then attributes.
        table = inner["objects"]
        for entry in table:
            objects[entry["id"]] = Opaque(entry["$object"])
        for entry in table:
            for k, v in entry.get("attrs") or []:
                setattr(objects[entry["id"]], k, decode(v, objects))
        return decode(inner["value"], objects)
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
        if isinstance(f, ast.Attribute) and _is_recorder(f.value):
            # A method of what a site returned: `make_counter(5).is_positive()`.
            return True
        if isinstance(f, ast.Attribute) and _root_name(f) in self.random_modules:
            return _root_name(f) != "np" or "random" in ast.unparse(f).split(".")
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
            inner = f.value.func
            return isinstance(inner, ast.Name) and inner.id in self.class_names
        return False

    def is_derived(self, node):
        # An element of a derived container is derived too: `nodes[0].connect(nodes[1])`.
        while isinstance(node, ast.Subscript):
            node = node.value
        path = _dotted(node)
        if path is None:
            return False
        parts = path.split(".")
        return any(".".join(parts[:i]) in self.derived for i in range(1, len(parts) + 1))

    def from_candidate(self, value):
        """Whether an assigned value is (or holds) what the candidate made: a site's result, a
        declared class's instance, or a literal or comprehension of those."""
        if _is_recorder(value):
            return True
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in self.class_names:
            return True
        if isinstance(value, (ast.List, ast.Tuple, ast.Set)):
            return any(self.from_candidate(e) for e in value.elts)
        if isinstance(value, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            return self.from_candidate(value.elt)
        if isinstance(value, ast.DictComp):
            return self.from_candidate(value.value)
        if isinstance(value, ast.Dict):
            return any(self.from_candidate(v) for v in value.values)
        return False

    def derive(self, target):
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self.derive(t.value if isinstance(t, ast.Starred) else t)
        elif _dotted(target):
            self.derived.add(_dotted(target))

    def visit_Assign(self, node):
        node = self.generic_visit(node)
        if self.from_candidate(node.value):
            for t in node.targets:
                self.derive(t)
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
        # Only recorded call sites may produce the candidate's values: a call the rewrite did
        # not see (a method of an object the candidate returned, reached some other way) has no
        # value the sandbox vouched for. A truthy stub here passed `assert obj.is_ok()` for a
        # class without the method.
        raise _NotRecorded("a call on the candidate's objects outside any recorded site")


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


_PREPARED = {}


def _prepared_replay(req):
    """The rewritten, compiled tests of a task, made once per task: the same tests are
    replayed for every completion (G per prompt in RL)."""
    key = (req["test_code"], req.get("setup", ""), tuple(req["names"]), tuple(req["class_names"]))
    if key not in _PREPARED:
        if len(_PREPARED) > 4096:
            _PREPARED.clear()
        setup = req.get("setup", "")
        names = candidate_names(req["test_code"], setup, req["names"], req["class_names"])
        source, _, n_asserts = transform(req["test_code"], req["names"], req["class_names"], child=False, setup=setup)
        free = _free_globals(req["test_code"], setup, names)
        setup_code = compile(setup, "setup.py", "exec") if setup else None
        _PREPARED[key] = (names, compile(source, "tests.py", "exec"), n_asserts, free, setup_code)
    return _PREPARED[key]


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

    names, code, n_asserts, free, setup_code = _prepared_replay(req)
    stub = types.ModuleType("solution")
    stub.__all__ = list(names)
    stub.__getattr__ = lambda name: _CandidateStub()
    sys.modules["solution"] = stub
    ns = {"__name__": "test_solution", "__builtins__": builtins, "__dllm_call__": call, "__dllm_check__": check}
    ns.update(free)
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
        if setup_code is not None:
            exec(setup_code, ns)
        exec(code, ns)
        if req.get("runner") == "test_functions":
            _run_test_functions(ns, on_error, run_function)
    except BaseException as exc:  # noqa: BLE001
        on_error(exc)
    finally:
        sys.modules.pop("solution", None)
    return {"asserts": results, "total": n_asserts, "functions": functions, "raised": raised[0] if raised else None}


def _empty_workdir(workdir):
    """Removes what earlier replays' test code wrote in the judge's private folder, so that
    no replay sees another's files. Only a folder named like the one the verifier made."""
    import shutil

    if not os.path.basename(workdir).startswith("dllm-rl-trusted-"):
        raise RuntimeError("not the trusted judge's own folder: %r" % workdir)
    os.chdir(workdir)
    for entry in os.scandir(workdir):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def trusted_main():
    import io

    # Test code may print, read, replace sys.stdout, restore it from `sys.__stdout__` (a common
    # capture idiom) or call pytest.main, and the replay re-prints what the candidate printed:
    # none of it may reach the protocol. Requests and replies move to private descriptors,
    # fds 0 and 1 point at /dev/null, and every stream the code can name is a fresh buffer per
    # request. Replies echo the request's id besides.
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    workdir = os.path.abspath(sys.argv[2])
    for line in requests:
        _empty_workdir(workdir)
        sys.stdout = sys.__stdout__ = io.StringIO()
        sys.stdin = sys.__stdin__ = io.StringIO()
        sys.argv = ["tests.py"]
        req = {}
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
        reply["id"] = req.get("id") if isinstance(req, dict) else None
        out.write(json.dumps(reply) + "\n")
        out.flush()
