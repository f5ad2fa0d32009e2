# Stand-ins for the candidate's names and objects on the trusted side, and the namespace the
# tests run in (appended after session.py; see mod.rs).

import importlib

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
    class defines are forwarded. Ordering and arithmetic forward only between two stand-ins:
    with a value of the tests on the other side, the candidate would be handed that value (an
    expected result, often) and could answer anything; Python then falls back to identity.
    Equality is never the candidate's to say: identity, or, for a class that defines `__eq__`,
    equal state compared here (`_same_state`)."""

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
            return _same_state(self, other)
        return NotImplemented

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

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
        # `expected in f(x)` must not hand the candidate the expected value: only another
        # stand-in is asked about; a value of the tests is looked for among the items.
        if _defines(self, "__contains__") and type(item) is RemoteObject:
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


def _same_state(a, b):
    """Whether two candidate objects whose class defines `__eq__` are equal, judged here: the
    same class and equal state, all the way down (a dataclass, a linked list), never by asking
    the candidate's `__eq__`, which would say what it likes. The state is what the sandbox
    reads through the type (state.py): an object whose class steers that read has none, and
    equals only itself."""
    states = {}
    pending, seen = [(a, b)], set()
    while pending:
        x, y = pending.pop()
        if x is y:
            continue
        tx, ty = type(x), type(y)
        if tx is RemoteObject or ty is RemoteObject:
            if tx is not ty or object.__getattribute__(x, "_dllm_cls") is not object.__getattribute__(y, "_dllm_cls"):
                return False
            if (id(x), id(y)) in seen:
                continue
            seen.add((id(x), id(y)))
            sx, sy = _state(x, states), _state(y, states)
            if sx is None or sy is None or len(sx) != len(sy):
                return False
            for part_x, part_y in zip(sx, sy):
                if type(part_x) is dict:
                    if part_x.keys() != part_y.keys():
                        return False
                    pending.extend((part_x[k], part_y[k]) for k in part_x)
                else:
                    pending.append((part_x, part_y))
        elif tx in (list, tuple) and tx is ty:
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y))
        elif tx is dict and ty is dict:
            if x.keys() != y.keys():
                return False
            pending.extend((x[k], y[k]) for k in x)
        elif not x == y:
            return False
    return True


def _state(proxy, states):
    """`proxy`'s state as `(attributes, slots[, a builtin base's content])`, or None: asked of
    the sandbox with those of the objects it reaches, unless an earlier answer had it."""
    h = object.__getattribute__(proxy, "_dllm_h")
    if h not in states:
        states[h] = None
        for entry in _session().request("state", h):
            if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not RemoteObject:
                raise ValueError("a state that is not one")
            state = entry[1]
            if state is not None:
                if type(state) is not list or len(state) not in (2, 3):
                    raise ValueError("a state that is not one")
                state = [dict((str(k), v) for k, v in state[0]), dict((str(k), v) for k, v in state[1])] + state[2:]
            states[object.__getattribute__(entry[0], "_dllm_h")] = state
    return states[h]


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
    code, _, prelude, setup, free, bound_by_tests, _ = _prepared(req)
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
    for name in declared - set(names):
        # An entry point the candidate lacks is missing, whoever else defines that name.
        ns.pop(name, None)
    module = types.ModuleType("solution")
    public = {k: v for k, v in names.items() if allowed(k, v)}
    module.__dict__.update(public)
    # `from solution import *` brings what the tests do not bind themselves: after
    # `from math import isclose`, a candidate's `isclose` would judge its own answers.
    module.__all__ = [k for k in public if not k.startswith("_") and (k in declared or k not in bound_by_tests)]
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
