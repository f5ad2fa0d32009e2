"""dllm-rl sandbox harness: runs candidate code and reports the values it produces.

The harness never decides pass or fail. Inside the sandbox it only runs the candidate and writes
what the candidate produced (return values as type-tagged JSON of builtin types, exception type
names) as JSON lines on a result channel; the trusted parent holds the expected values and
compares. A forged or extra line can therefore only claim wrong values.

Entry points (argv[1]):
  serve SOCK_FD            native fork-server: imports once, forks a child per job (see serve)
  run JOB_JSON RESULT_PATH  run one job in this process (the wasm sandbox)
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

# Result lines are capped so that a hostile candidate cannot make the parent buffer gigabytes.
MAX_DEPTH = 64
MAX_ITEMS = 1_000_000

# ---------------------------------------------------------------------------------------------
# Values: type-tagged JSON of builtin types. Exact type checks, so candidate subclasses (an int
# whose __eq__ always returns True) are never taken for builtin values and no candidate method
# runs while encoding.


def encode(value, depth=0, budget=None):
    if budget is None:
        budget = [MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise ValueError("value too large or too deep")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -(2**53) < value < 2**53 else {"$int": str(value)}
    if t is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if t is list:
        return [encode(v, depth + 1, budget) for v in value]
    if t is tuple:
        return {"$tuple": [encode(v, depth + 1, budget) for v in value]}
    if t is dict:
        return {"$dict": [[encode(k, depth + 1, budget), encode(v, depth + 1, budget)] for k, v in dict.items(value)]}
    if t is set or t is frozenset:
        return {"$set" if t is set else "$frozenset": [encode(v, depth + 1, budget) for v in value]}
    if t is bytes:
        return {"$bytes": value.hex()}
    if t is complex:
        return {"$complex": [encode(value.real), encode(value.imag)]}
    # Plain objects (LeetCode's ListNode, TreeNode) travel as their attributes. Read through
    # object.__getattribute__ so that a candidate __getattr__ cannot run.
    attrs = object.__getattribute__(value, "__dict__") if _has_dict(value) else None
    if type(attrs) is dict:
        return {"$object": t.__name__, "attrs": [[str(k), encode(v, depth + 1, budget)] for k, v in dict.items(attrs)]}
    return {"$object": t.__name__, "attrs": None}


def _has_dict(value):
    try:
        object.__getattribute__(value, "__dict__")
        return True
    except Exception:
        return False


class Opaque:
    """A decoded object: attributes only. Equal to another Opaque with the same class name
    and attributes, so that tests comparing linked lists or trees still work."""

    def __init__(self, cls, attrs):
        self.__dict__.update(attrs)
        self._dllm_cls = cls

    def __eq__(self, other):
        return type(other) is Opaque and vars(self) == vars(other)

    def __repr__(self):
        return "%s(%s)" % (self._dllm_cls, ", ".join("%s=%r" % kv for kv in vars(self).items() if kv[0] != "_dllm_cls"))

    __hash__ = None


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, inner),) = [(k, v) for k, v in value.items() if k != "attrs"] or [(None, None)]
    if tag == "$int":
        return int(inner)
    if tag == "$float":
        return float(inner)
    if tag == "$tuple":
        return tuple(decode(v) for v in inner)
    if tag == "$dict":
        return {_hashable(decode(k)): decode(v) for k, v in inner}
    if tag == "$set":
        return {_hashable(decode(v)) for v in inner}
    if tag == "$frozenset":
        return frozenset(_hashable(decode(v)) for v in inner)
    if tag == "$bytes":
        return bytes.fromhex(inner)
    if tag == "$complex":
        return complex(decode(inner[0]), decode(inner[1]))
    if tag == "$object":
        return Opaque(inner, {k: decode(v) for k, v in (value.get("attrs") or [])})
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


def _run_test_functions(ns, on_error, run=_call):
    """pytest's collection, reduced to what assertion replay needs: module-level `test*`
    functions and `Test*` classes' `test*` methods, in definition order."""
    for name, obj in list(ns.items()):
        if name.startswith("test") and callable(obj) and getattr(obj, "__module__", None) == ns["__name__"]:
            targets = [obj]
        elif name.startswith("Test") and isinstance(obj, type) and obj.__module__ == ns["__name__"]:
            try:
                instance = obj()
            except BaseException as exc:  # noqa: BLE001
                on_error(exc)
                continue
            targets = [getattr(instance, m) for m in list(vars(obj)) if m.startswith("test") and callable(getattr(instance, m))]
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


def _run_assert(job, chan):
    counts = {}

    def record(site, fn, *args, **kwargs):
        n = counts.get(site, 0)
        counts[site] = n + 1
        line = {"site": site, "n": n}
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            line.update(_exception_line(exc))
            chan.send(line)
            raise
        try:
            line["value"] = encode(value)
        except BaseException as exc:  # noqa: BLE001
            line.update({"raise": "UnserializableResult", "message": str(exc)[:200]})
        chan.send(line)
        return value

    try:
        ns = _load_candidate(job)
    except BaseException as exc:  # noqa: BLE001
        chan.send({"load": _exception_line(exc)})
        return
    if job.get("runner") == "test_functions":
        ns = {"__name__": "test_solution", "__builtins__": builtins}
    ns["__dllm_call"] = record
    ns["__dllm_try"] = _try_each
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


class _Sites(ast.NodeTransformer):
    def __init__(self, names, class_names):
        self.names = set(names) | {"candidate"}
        self.class_names = set(class_names)
        self.count = 0
        self.child = True
        self.assert_count = 0

    def visit_ImportFrom(self, node):
        if node.module == "solution":
            self.names |= {a.asname or a.name for a in node.names if a.name != "*"}
        return node

    def is_site(self, call):
        f = call.func
        if isinstance(f, ast.Name) and f.id in self.names:
            return True
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call):
            inner = f.value.func
            return isinstance(inner, ast.Name) and inner.id in self.class_names
        return False

    def visit_Call(self, node):
        self.generic_visit(node)
        if not self.is_site(node):
            return node
        site = self.count
        self.count += 1
        return ast.copy_location(
            ast.Call(
                func=ast.Name("__dllm_call", ast.Load()),
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
            stmt = ast.Expr(ast.Call(ast.Name("__dllm_try", ast.Load()), thunks, []))
        else:
            stmt = ast.Expr(
                ast.Call(ast.Name("__dllm_check", ast.Load()), [ast.Constant(index), ast.Lambda(_no_args(), node.test)], [])
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


def _is_recorder(n):
    return isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "__dllm_call"


def _contains(outer, inner):
    return any(n is inner for n in ast.walk(outer))


def _no_args():
    return ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


def transform(test_code, names, class_names, child):
    tree = ast.parse(test_code)
    sites = _Sites(names, class_names)
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


def _builtin_exception(name):
    exc = getattr(builtins, name, None)
    if isinstance(exc, type) and issubclass(exc, BaseException):
        return exc
    return type(name, (Exception,), {})


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

    code, _, n_asserts = transform(req["test_code"], req["names"], req["class_names"], child=False)
    stub = types.ModuleType("solution")
    stub.__all__ = list(req["names"])
    stub.__getattr__ = lambda name: _CandidateStub()
    sys.modules["solution"] = stub
    ns = {"__name__": "test_solution", "__builtins__": builtins, "__dllm_call": call, "__dllm_check": check}
    for name in req["names"]:
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
    out = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "transform":
                child, n_sites, n_asserts = transform(req["test_code"], req["names"], req["class_names"], child=True)
                reply = {"child": child, "sites": n_sites, "asserts": n_asserts, "functions": count_test_functions(req["test_code"])}
            elif req["op"] == "replay":
                reply = replay(req)
            else:
                reply = {"error": "unknown op %r" % (req["op"],)}
        except SyntaxError as exc:
            reply = {"error": "SyntaxError in tests: %s" % exc}
        except Exception as exc:  # noqa: BLE001
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
    sock = socket.socket(fileno=sock_fd)
    try:
        interfaces = [name for _, name in socket.if_nameindex()]
    except OSError:
        interfaces = ["unknown"]
    sock.send(json.dumps({"interfaces": interfaces}).encode())
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
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(workdir, ignore_errors=True)
        sock.send(json.dumps(reply).encode())


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except Exception:
        return None


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
        with open(sys.argv[3], "wb") as result:
            run_job(json.loads(sys.argv[2]), Channel(result))
    elif sys.argv[1] == "serve":
        serve_forever(int(sys.argv[2]))
