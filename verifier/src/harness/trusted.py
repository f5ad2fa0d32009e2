# The trusted judge of assertion tests: it runs the task's test code itself, and never candidate
# code. Appended to values.py and child.py (for the codec and warm_imports, nothing else).
#
# The candidate lives in the sandbox. Here each of its names is a stand-in that forwards what
# the tests do with it (a call, a method call, an attribute, an operator) to the sandbox, one
# request at a time, and turns the answer into plain Python data or a further stand-in for an
# object that stayed there. Expected values, the tests' locals, parametrize tables, random
# draws and the tests' library calls therefore exist only here. What the candidate controls is
# what its functions return, and what comes back is data decoded here (no candidate __eq__ ever
# runs on this side) or a stand-in that the tests can only compare with other stand-ins.
#
# Protocol with the Rust parent, a line each way, every line led by the request id:
#   "<id> A <json>"  analyze a task's tests       -> "<id> D <json>"
#   "<id> R <json>"  run the tests                 -> "<id> C <request>" ... then "<id> D <json>"
#   "<id> S <json>"  the sandbox's answer to the last C line
#   "<id> G <why>"   the sandbox run is over (timeout, crash, ...): no more answers

import ast
import importlib
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


def count_test_functions(tree):
    """What `_run_test_functions` will run, counted statically (pytest's collection rules)."""
    n = 0
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            n += 1
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            n += sum(isinstance(m, ast.FunctionDef) and m.name.startswith("test") for m in node.body)
    return n


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
        checks = _Checks()
        tree = ast.fix_missing_locations(checks.visit(tree))
        compiled = lambda code, name: compile(code, name, "exec") if code else None  # noqa: E731
        free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        _PREPARED[key] = (compile(tree, "tests.py", "exec"), checks.count, compiled(req.get("prelude"), "prelude.py"),
                          compiled(req.get("setup"), "setup.py"), free)
    return _PREPARED[key]


# ---------------------------------------------------------------------------------------------
# The link to the sandbox.


class _Gone(Exception):
    """The sandbox run is over (a time limit, a crash): the candidate answers nothing more."""


class _Broken(Exception):
    """The sandbox's answers broke the protocol (out of step, undecodable): the run is void."""


_SESSION = None


def _session():
    if _SESSION is None:
        raise _Gone("no sandbox")
    return _SESSION


class _Session:
    def __init__(self, rid, out, lines):
        self.rid, self.out, self.lines = rid, out, lines
        self.seq = 0
        self.calls = 0
        self.gone = None
        self.broken = None
        self.proxies = {}
        self.infos = {}

    def request(self, op, target, name=None, args=(), kwargs=None):
        if self.broken is not None:
            raise _Broken(self.broken)
        if self.gone is not None:
            raise _Gone(self.gone)
        out = _Copies()
        msg = {"seq": self.seq + 1, "op": op, "target": target}
        if name is not None:
            msg["name"] = name
        if args:
            msg["args"] = [out.encode(a) for a in args]
        if kwargs:
            msg["kwargs"] = [[str(k), out.encode(v)] for k, v in kwargs.items()]
        if out.table:
            msg["objects"] = out.table
        self.seq += 1
        self.calls += 1
        self.out.write("%d C %s\n" % (self.rid, dumps(msg)))
        self.out.flush()
        line = self.lines.readline()
        head, _, body = line.partition(" ")
        kind, _, body = body.partition(" ")
        if head != str(self.rid) or kind not in ("S", "G"):
            self.broken = "the parent answered out of step"
            raise _Broken(self.broken)
        if kind == "G":
            self.gone = body.strip() or "gone"
            raise _Gone(self.gone)
        try:
            reply = json.loads(body)
            if type(reply) is not dict or reply.get("seq") != self.seq or "bad_request" in reply:
                raise ValueError("an answer out of step: %r" % (reply.get("bad_request") if type(reply) is dict else None,))
            return self._apply(reply, op, name, args, kwargs, out.originals)
        except (_Gone, _Broken, MemoryError):
            raise
        except _Raised as raised:
            raise raised.exc from None
        except Exception as exc:  # noqa: BLE001 - anything undecodable voids the run
            self.broken = "%s: %s" % (type(exc).__name__, exc)
            raise _Broken(self.broken) from None

    def _apply(self, reply, op, name, args, kwargs, originals):
        for h, info in reply.get("handles") or []:
            if type(h) is not int or h in self.infos:
                raise ValueError("a handle described twice")
            self.infos[h] = info
        decoder = _Answers(self, originals)
        # What the call changed in the tests' objects, before its value or its exception.
        for k, attrs in reply.get("objects_after") or []:
            target = originals[k]
            fresh = {str(a): decoder.decode(v) for a, v in attrs}
            try:
                object.__getattribute__(target, "__dict__").clear()
                object.__getattribute__(target, "__dict__").update(fresh)
            except Exception:  # noqa: BLE001 - an object without a __dict__ keeps its state
                pass
        for which, value in reply.get("after") or []:
            original = args[which] if type(which) is int else (kwargs or {}).get(which)
            _assign_in_place(original, decoder.decode(value))
        if reply.get("printed"):
            sys.stdout.write(str(reply["printed"]))
        if "raise" in reply:
            raise _Raised(self._exception(reply, op, name))
        return decoder.decode(reply["value"])

    def _exception(self, reply, op, name):
        raised = str(reply.get("raise"))
        message = str(reply.get("message") or "")
        if raised == "StopIteration" and op == "dunder" and name == "__next__":
            return StopIteration()
        h = reply.get("class")
        cls = self.proxy(h) if type(h) is int and h in self.infos else None
        if isinstance(cls, _RemoteClass) and issubclass(cls, BaseException):
            exc = BaseException.__new__(cls)
            exc.args = (message,)
            return exc
        return _exception_class(raised, str(reply.get("builtin") or "Exception"))(message)

    def proxy(self, h):
        p = self.proxies.get(h)
        if p is not None:
            return p
        info = self.infos.get(h)
        if type(info) is not dict:
            raise ValueError("an undescribed handle %r" % (h,))
        kind = info.get("kind")
        if kind == "class":
            p = _remote_class(h, info, self)
        elif kind == "callable":
            p = RemoteCallable(h, str(info.get("name") or ""))
        else:
            cls = self.proxy(info["class"]) if kind == "object" else None
            p = object.__new__(RemoteObject)
            object.__setattr__(p, "_dllm_h", h)
            object.__setattr__(p, "_dllm_cls", cls)
        self.proxies[h] = p
        return p


class _Raised(Exception):
    def __init__(self, exc):
        self.exc = exc


_EXCEPTIONS = {}


def _exception_class(name, builtin):
    """The class of a candidate's exception here: the builtin itself, or a class of that name
    under its first builtin ancestor. Never one that Python treats specially: a candidate's
    StopIteration must not end a loop of the tests (`all(map(check, xs))` would pass), nor a
    SystemExit or KeyboardInterrupt end the run."""
    base = getattr(builtins, builtin, None)
    if not (isinstance(base, type) and issubclass(base, BaseException)) or not issubclass(base, Exception):
        base = Exception
    if issubclass(base, (StopIteration, StopAsyncIteration)):
        base = RuntimeError
    if base.__name__ == name and getattr(builtins, name, None) is base:
        return base
    key = (name, base)
    if key not in _EXCEPTIONS:
        _EXCEPTIONS[key] = type(name if name.isidentifier() else "CandidateError", (base,), {})
    return _EXCEPTIONS[key]


def _assign_in_place(target, value):
    """Makes a test's container hold what the candidate left in its copy, keeping the
    container itself (and, where both agree, the containers inside it)."""
    if type(target) is list and type(value) is list:
        if len(target) == len(value):
            for i, (t, v) in enumerate(zip(target, value)):
                if type(t) is type(v) and type(t) in (list, dict, set):
                    _assign_in_place(t, v)
                else:
                    target[i] = v
        else:
            target[:] = value
    elif isinstance(target, dict) and isinstance(value, dict):
        target.clear()
        target.update(value)
    elif type(target) is set and isinstance(value, set):
        target.clear()
        target.update(value)
    elif type(target) is bytearray and type(value) is bytes:
        target[:] = value
    elif type(target) is collections.deque and type(value) is collections.deque:
        target.clear()
        target.extend(value)


class _Copies(Encoder):
    """Encodes a request: stand-ins as their handles, the tests' own objects (a TreeNode the test
    built) as copies in the message's table, by attributes."""

    def __init__(self):
        super().__init__()
        self.table = []
        self.originals = []
        self.ids = {}

    def other(self, value, depth):
        t = type(value)
        if t is RemoteObject or t is RemoteCallable:
            return {"$handle": object.__getattribute__(value, "_dllm_h")}
        if isinstance(value, _RemoteClass):
            return {"$handle": value._dllm_h}
        if t is RemoteMethod:
            return {"$method": [value._dllm_owner, value._dllm_name]}
        if getattr(builtins, getattr(value, "__name__", ""), None) is value and t is type(len):
            return {"$builtin": value.__name__}
        if isinstance(value, (type, types.FunctionType, types.ModuleType, types.MethodType)) or not hasattr(value, "__dict__"):
            raise TypeError("a %s of the tests cannot be passed to the candidate" % t.__name__)
        k = self.ids.get(id(value))
        if k is None:
            k = self.ids[id(value)] = len(self.table)
            entry = {"class": t.__name__, "attrs": None}
            self.table.append(entry)
            self.originals.append(value)
            entry["attrs"] = [[str(a), self.encode(v, depth + 4)] for a, v in list(vars(value).items())]
        return {"$ref": k}


class _Answers(Decoder):
    def __init__(self, session, originals):
        self.session, self.originals = session, originals

    def tagged(self, tag, inner, value):
        if tag == "$handle":
            return self.session.proxy(inner)
        if tag == "$ref":
            return self.originals[inner]
        return super().tagged(tag, inner, value)


# ---------------------------------------------------------------------------------------------
# Stand-ins for the candidate's objects.


def _forward(h, name, *args):
    return _session().request("dunder", h, name, args)


def _info(proxy):
    cls = object.__getattribute__(proxy, "_dllm_cls")
    return cls._dllm_info if cls is not None else {}


def _defines(proxy, name):
    return name in _info(proxy).get("dunders", ())


def _checked(value, kinds, what):
    if type(value) not in kinds:
        raise TypeError("%s returned %s" % (what, type(value).__name__))
    return value


class RemoteObject:
    """An object that lives in the sandbox. Attribute reads, method calls and the operators its
    class defines are forwarded. Comparisons and arithmetic forward only between two stand-ins:
    with a value of the tests on the other side, the candidate would be handed that value (an
    expected result, often) and could answer anything; Python then falls back to identity."""

    __slots__ = ("_dllm_h", "_dllm_cls", "__weakref__")

    def __getattr__(self, name):
        h = object.__getattribute__(self, "_dllm_h")
        if name in _info(self).get("methods", ()):
            return RemoteMethod(h, name)
        return _session().request("getattr", h, name)

    def __setattr__(self, name, value):
        _session().request("setattr", object.__getattribute__(self, "_dllm_h"), name, (value,))

    def __delattr__(self, name):
        _session().request("delattr", object.__getattribute__(self, "_dllm_h"), name)

    @property
    def __class__(self):
        cls = object.__getattribute__(self, "_dllm_cls")
        return cls if cls is not None else RemoteObject

    def __eq__(self, other):
        if other is self:
            return True
        if type(other) is RemoteObject and _defines(self, "__eq__"):
            result = _forward(self._dllm_handle(), "__eq__", other)
            return result if type(result) is bool else NotImplemented
        return NotImplemented

    def __ne__(self, other):
        if other is self:
            return False
        if type(other) is RemoteObject and (_defines(self, "__ne__") or _defines(self, "__eq__")):
            result = _forward(self._dllm_handle(), "__ne__", other)
            return result if type(result) is bool else NotImplemented
        return NotImplemented

    def __hash__(self):
        if _defines(self, "__hash__"):
            return _checked(_forward(self._dllm_handle(), "__hash__"), (int,), "__hash__")
        return object.__hash__(self)

    def __bool__(self):
        if _defines(self, "__bool__"):
            return _checked(_forward(self._dllm_handle(), "__bool__"), (bool,), "__bool__")
        if _defines(self, "__len__"):
            return len(self) != 0
        return True

    def __len__(self):
        if not _defines(self, "__len__"):
            raise TypeError("object of type %s has no len()" % self._dllm_label())
        n = _checked(_forward(self._dllm_handle(), "__len__"), (int,), "__len__")
        if n < 0:
            raise ValueError("__len__() should return >= 0")
        return n

    def __iter__(self):
        if _defines(self, "__iter__"):
            return _forward(self._dllm_handle(), "__iter__")
        if _defines(self, "__getitem__"):
            return _sequence_iterator(self)
        raise TypeError("%s object is not iterable" % self._dllm_label())

    def __next__(self):
        if not _defines(self, "__next__"):
            raise TypeError("%s object is not an iterator" % self._dllm_label())
        return _forward(self._dllm_handle(), "__next__")

    def __contains__(self, item):
        if _defines(self, "__contains__"):
            return _checked(_forward(self._dllm_handle(), "__contains__", item), (bool,), "__contains__")
        return any(x is item or x == item for x in iter(self))

    def __str__(self):
        if _defines(self, "__str__") or _defines(self, "__repr__"):
            return _checked(_forward(self._dllm_handle(), "__str__"), (str,), "__str__")
        return "<%s object>" % self._dllm_label()

    def __repr__(self):
        if _defines(self, "__repr__"):
            return _checked(_forward(self._dllm_handle(), "__repr__"), (str,), "__repr__")
        return "<%s object>" % self._dllm_label()

    def __format__(self, spec):
        if not spec:
            return str(self)
        if _defines(self, "__format__"):
            return _checked(_forward(self._dllm_handle(), "__format__", spec), (str,), "__format__")
        raise TypeError("unsupported format string passed to %s.__format__" % self._dllm_label())

    def _dllm_handle(self):
        return object.__getattribute__(self, "_dllm_h")

    def _dllm_label(self):
        return str(_info(self).get("name") or "object")


def _sequence_iterator(proxy):
    i = 0
    while True:
        try:
            yield proxy[i]
        except IndexError:
            return
        i += 1


def _plain_forwarder(name, result=None):
    def forward(self, *args):
        if not _defines(self, name):
            raise TypeError("%s does not support %s" % (self._dllm_label(), name))
        value = _forward(self._dllm_handle(), name, *args)
        return value if result is None else _checked(value, result, name)

    forward.__name__ = name
    return forward


def _binary_forwarder(name, comparison=False):
    def forward(self, other):
        if type(other) is not RemoteObject or not _defines(self, name):
            return NotImplemented
        result = _forward(self._dllm_handle(), name, other)
        return NotImplemented if comparison and type(result) is not bool else result

    forward.__name__ = name
    return forward


for _name in ("__getitem__", "__setitem__", "__delitem__", "__call__", "__reversed__", "__enter__", "__neg__", "__pos__",
              "__abs__", "__invert__", "__round__", "__trunc__", "__floor__", "__ceil__"):
    setattr(RemoteObject, _name, _plain_forwarder(_name))
for _name, _kinds in (("__int__", (int,)), ("__index__", (int,)), ("__float__", (float,)), ("__complex__", (complex,))):
    setattr(RemoteObject, _name, _plain_forwarder(_name, _kinds))
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift", "divmod"):
    for _side in ("", "r"):
        _dunder_name = "__%s%s__" % (_side, _name)
        setattr(RemoteObject, _dunder_name, _binary_forwarder(_dunder_name))
for _name in ("__lt__", "__le__", "__gt__", "__ge__"):
    setattr(RemoteObject, _name, _binary_forwarder(_name, comparison=True))


def _exit(self, *exc_info):
    # The exception of the `with` block stays on this side: the candidate hears only that the
    # block ended.
    if _defines(self, "__exit__"):
        _forward(self._dllm_handle(), "__exit__", None, None, None)
    return False


RemoteObject.__exit__ = _exit


class RemoteCallable:
    """A function (or other callable) of the sandbox."""

    __slots__ = ("_dllm_h", "_dllm_name", "__weakref__")

    def __init__(self, h, name):
        object.__setattr__(self, "_dllm_h", h)
        object.__setattr__(self, "_dllm_name", name)

    def __call__(self, *args, **kwargs):
        return _session().request("call", self._dllm_h, args=args, kwargs=kwargs)

    def __getattr__(self, name):
        return _session().request("getattr", object.__getattribute__(self, "_dllm_h"), name)

    def __repr__(self):
        return "<candidate function %s>" % self._dllm_name


class RemoteMethod:
    """`obj.method` of a stand-in: called in the sandbox as a whole (one request)."""

    __slots__ = ("_dllm_owner", "_dllm_name")

    def __init__(self, owner, name):
        self._dllm_owner, self._dllm_name = owner, name

    def __call__(self, *args, **kwargs):
        return _session().request("method", self._dllm_owner, self._dllm_name, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("_dllm_"):
            raise AttributeError(name)
        return getattr(_session().request("getattr", self._dllm_owner, self._dllm_name), name)

    def __eq__(self, other):
        return type(other) is RemoteMethod and (other._dllm_owner, other._dllm_name) == (self._dllm_owner, self._dllm_name)

    def __hash__(self):
        return hash((self._dllm_owner, self._dllm_name))

    def __repr__(self):
        return "<candidate method %s>" % self._dllm_name


class _RemoteClass(type):
    """The type of a stand-in for a candidate class: calling it makes an instance in the
    sandbox; `isinstance` recognises the stand-ins of its instances (and of its subclasses')."""

    def __call__(cls, *args, **kwargs):
        return _session().request("call", cls._dllm_h, args=args, kwargs=kwargs)

    def __getattr__(cls, name):
        if name.startswith("_dllm_") or name.startswith("__"):
            raise AttributeError(name)
        if name in cls._dllm_info.get("methods", ()):
            return RemoteMethod(cls._dllm_h, name)
        return _session().request("getattr", cls._dllm_h, name)

    def __instancecheck__(cls, obj):
        if type(obj) is RemoteObject:
            own = object.__getattribute__(obj, "_dllm_cls")
            return own is not None and type.__subclasscheck__(cls, own) or cls._subclass(own)
        return type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, sub):
        return type.__subclasscheck__(cls, sub) or cls._subclass(sub)

    def _subclass(cls, sub):
        return isinstance(sub, _RemoteClass) and (sub is cls or cls._dllm_h in sub._dllm_mro)


def _remote_class(h, info, session):
    bases = [b for b in info.get("bases") or [] if type(b) is int]
    mro = set()
    for b in bases:
        mro.add(b)
        parent = session.proxy(b)
        mro |= getattr(parent, "_dllm_mro", set())
    base = (object,)
    if info.get("exception"):
        base = (_exception_class(str(info.get("name")), str(info["exception"])),)
    name = str(info.get("name") or "Candidate")
    cls = _RemoteClass(name if name.isidentifier() else "Candidate", base, {"_dllm_h": h, "_dllm_info": info, "_dllm_mro": mro})
    return cls


# ---------------------------------------------------------------------------------------------
# The tests' namespace.

_STANDARD_MODULES = set(getattr(sys, "stdlib_module_names", ())) - {"antigravity", "this", "tkinter", "turtle", "turtledemo", "idlelib", "webbrowser", "pydoc"}
_LIBRARIES = {"numpy", "scipy", "pandas", "sortedcontainers", "pytest"}


def _typing():
    import typing

    return typing


def _trusted_module(name):
    """This side's own copy of a module the candidate imported (`import math`), for tests that
    use it without importing it."""
    if name.split(".")[0] not in _STANDARD_MODULES | _LIBRARIES:
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001
        return None


def _candidate_names(session, loaded):
    decoder = _Answers(session, [])
    for h, info in loaded.get("handles") or []:
        session.infos[h] = info
    names = {}
    for name, value in loaded.get("names") or []:
        name = str(name)
        if type(value) is dict and "$module" in value:
            module = _trusted_module(str(value["$module"]))
            if module is not None:
                names[name] = module
            continue
        value = decoder.decode(value)
        # `from typing import List` in the candidate: the tests' annotations get the real one.
        if type(value) is RemoteObject and hasattr(_typing(), name):
            cls = object.__getattribute__(value, "_dllm_cls")
            if cls is not None and cls._dllm_info.get("module") == "typing":
                value = getattr(_typing(), name)
        names[name] = value
    return names


def _namespace(req, names, check):
    """The tests see the candidate's names as if appended to its file, except where that would
    let the candidate stand in for something trusted: a builtin (`def abs(x): return 0`), a
    module the tests use (`def math(): ...`), or what the task's own prelude and set-up define.
    Declared entry points are always the candidate's."""
    code, _, prelude, setup, free = _prepared(req)
    declared = set(req.get("names") or []) | set(req.get("class_names") or [])
    ns = {"__name__": "test_solution", "__builtins__": builtins, "__dllm_check__": check}
    if prelude is not None:
        exec(prelude, ns)
    trusted = set(ns)

    def allowed(name, value):
        if name in declared:
            return True
        if hasattr(builtins, name) or name.startswith("__dllm"):
            return False
        if name in _STANDARD_MODULES | _LIBRARIES or name in ("np", "pd"):
            return type(value) is types.ModuleType
        return True

    for name, value in names.items():
        if allowed(name, value) and (name not in trusted or name in declared):
            ns[name] = value
    if setup is not None:
        exec(setup, ns)
        for name in declared & set(names):
            ns[name] = names[name]
    module = types.ModuleType("solution")
    public = {k: v for k, v in names.items() if allowed(k, v)}
    module.__dict__.update(public)
    module.__all__ = [k for k in public if not k.startswith("_")]
    sys.modules["solution"] = module
    # Names the tests read but nobody defines: appended to a solution they would come from its
    # imports (`List`, `math`); the standard ones are supplied.
    for name in free:
        if name in ns or hasattr(builtins, name):
            continue
        if hasattr(_typing(), name):
            ns[name] = getattr(_typing(), name)
        elif name in ("np", "pd"):
            found = _trusted_module("numpy" if name == "np" else "pandas")
            if found is not None:
                ns[name] = found
        elif name in _STANDARD_MODULES:
            found = _trusted_module(name)
            if found is not None:
                ns[name] = found
    return code, ns


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


def _ours(obj):
    """Defined by the test file itself (never a stand-in for the candidate's `test_x`)."""
    if type(obj) is types.FunctionType:
        return obj.__code__.co_filename == "tests.py"
    if type(obj) is type:
        return any(type(v) is types.FunctionType and v.__code__.co_filename == "tests.py" for v in vars(obj).values()) or obj.__module__ == "test_solution"
    return False


def _run_test_functions(ns, run):
    """pytest's collection, reduced to what the tests need: module-level `test*` functions and
    `Test*` classes' `test*` methods, in definition order."""
    for name, obj in list(ns.items()):
        if name.startswith("test") and type(obj) is types.FunctionType and _ours(obj):
            targets = [_parametrized(obj)]
        elif name.startswith("Test") and type(obj) is type and _ours(obj):
            # As pytest: a fresh instance per test method, with setup_method/teardown_method.
            targets = [_method_runner(obj, m) for m in list(vars(obj)) if m.startswith("test") and type(vars(obj)[m]) is types.FunctionType]
        else:
            continue
        for fn in targets:
            run(fn)


def run_tests(req, session):
    global _SESSION
    results = []

    def check(index, thunk):
        try:
            ok = bool(thunk())
            results.append({"index": index, "ok": ok, "error": None if ok else "AssertionError"})
        except BaseException as exc:  # noqa: BLE001 - the candidate's exception, or the sandbox's end
            results.append({"index": index, "ok": False, "error": _error_name(exc)})

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
        functions.append({"ok": error is None and not failed, "error": failed[0] if failed else error})

    raised = []
    n_asserts = _prepared(req)[1]
    _SESSION = session
    try:
        names = _candidate_names(session, req["loaded"])
        code, ns = _namespace(req, names, check)
        exec(code, ns)
        if req.get("runner") == "test_functions":
            _run_test_functions(ns, run_function)
    except BaseException as exc:  # noqa: BLE001
        raised.append(_error_name(exc))
    finally:
        _SESSION = None
        sys.modules.pop("solution", None)
    return {"asserts": results, "total": n_asserts, "functions": functions, "raised": raised[0] if raised else None,
            "calls": session.calls, "broken": session.broken}


def _empty_workdir(workdir):
    """Removes what earlier runs' test code wrote in the judge's private folder, so that no
    run sees another's files. Only a folder named like the one the verifier made."""
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
    # Test code may print, read, replace sys.stdout, restore it from `sys.__stdout__` (a common
    # capture idiom) or call pytest.main, and the candidate's prints are printed again here:
    # none of it may reach the protocol. The protocol moves to private descriptors, fds 0 and 1
    # point at /dev/null, and every stream the code can name is a fresh buffer per request.
    warm_imports(with_pytest=True)
    lines = os.fdopen(os.dup(0), "r", encoding="utf-8")
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    workdir = os.path.abspath(sys.argv[2])
    while True:
        line = lines.readline()
        if not line:
            return
        head, _, rest = line.partition(" ")
        kind, _, body = rest.partition(" ")
        _empty_workdir(workdir)
        sys.stdout = sys.__stdout__ = io.StringIO()
        sys.stdin = sys.__stdin__ = io.StringIO()
        sys.argv = ["tests.py"]
        try:
            rid = int(head)
            req = json.loads(body)
            if kind == "A":
                reply = analyze(req)
            elif kind == "R":
                reply = run_tests(req, _Session(rid, out, lines))
            else:
                reply = {"error": "unexpected line %r" % kind}
        except SyntaxError as exc:
            reply = {"error": "SyntaxError in tests: %s" % exc}
        except BaseException as exc:  # noqa: BLE001 - one bad task must not end the judge
            reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
        out.write("%s D %s\n" % (head, json.dumps(reply)))
        out.flush()
