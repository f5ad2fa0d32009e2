# The trusted judge's link to the sandbox (appended after values.py and child.py, before
# stand_ins.py, tests.py and trusted.py; see mod.rs): one request per thing the tests do with a
# candidate object, its answer decoded into plain data or a stand-in, the tests' own functions
# called back when the candidate calls them.

import collections.abc
import errno
import functools

# ---------------------------------------------------------------------------------------------
# The link to the sandbox.


class _Gone(BaseException):
    """The sandbox run is over (a time limit, a crash): the candidate answers nothing more. Not
    an `Exception`: `pytest.raises(Exception)` in a test must not take a candidate that killed
    its own process for one that raised."""


class _Broken(BaseException):
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
        self.callbacks = {}  # the tests' functions and iterators passed to the candidate

    def request(self, op, target, name=None, args=(), kwargs=None):
        if self.broken is not None:
            raise _Broken(self.broken)
        if self.gone is not None:
            raise _Gone(self.gone)
        out = _Copies(self)
        msg = {"seq": self.seq + 1, "op": op, "target": target}
        if name is not None:
            msg["name"] = name
        if args:
            msg["args"] = [out.encode(a) for a in args]
        if kwargs:
            msg["kwargs"] = [[str(k), out.encode(v)] for k, v in kwargs.items()]
        if out.copies():
            msg["objects"] = out.table
        self.seq += 1
        seq = self.seq
        self.calls += 1
        self._send(msg)
        while True:
            reply = self._receive(seq)
            if "callback" not in reply:
                break
            # The candidate calls a function of the tests (a key, a lambda): run it here, on its
            # values, and answer; then wait for the call's own answer.
            self._send(self._call_back(reply))
        try:
            if "bad_request" in reply:
                raise ValueError("the sandbox could not read a request: %s" % reply["bad_request"])
            return self._apply(reply, op, name, args, kwargs, out.originals)
        except (_Gone, _Broken, MemoryError):
            raise
        except _Raised as raised:
            raise raised.exc from None
        except Exception as exc:  # noqa: BLE001 - anything undecodable voids the run
            self.broken = "%s: %s" % (type(exc).__name__, exc)
            raise _Broken(self.broken) from None

    def _send(self, msg):
        self.out.write(b"%d C %s\n" % (self.rid, dumps(msg).encode()))
        self.out.flush()

    def _receive(self, seq):
        """The sandbox's next message about request `seq`: its answer, or a callback."""
        line = self.lines.readline().decode("utf-8", "replace")
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
            if type(reply) is not dict or reply.get("seq") != seq:
                raise ValueError("an answer out of step")
            for h, info in reply.get("handles") or []:
                if type(h) is not int or h in self.infos:
                    raise ValueError("a handle described twice")
                self.infos[h] = info
        except Exception as exc:  # noqa: BLE001
            self.broken = "%s: %s" % (type(exc).__name__, exc)
            raise _Broken(self.broken) from None
        return reply

    def _call_back(self, msg):
        answer = {"seq": msg.get("seq"), "op": "return"}
        try:
            fn = self.callbacks[msg["callback"]]
            decoder = _Answers(self, [])
            args = [decoder.decode(a) for a in msg.get("args") or []]
            kwargs = {str(k): decoder.decode(v) for k, v in msg.get("kwargs") or []}
        except Exception as exc:  # noqa: BLE001
            self.broken = "a callback the tests never passed: %s" % exc
            raise _Broken(self.broken) from None
        try:
            value = next(fn) if msg.get("op") == "next" else fn(*args, **kwargs)
        except StopIteration:
            answer["stop"] = True
            return answer
        except (_Gone, _Broken):
            raise
        except Exception as exc:  # noqa: BLE001 - the test's function raised: the candidate hears it
            answer.update({"raise": type(exc).__name__, "builtin": next(
                (k.__name__ for k in type(exc).__mro__ if getattr(builtins, k.__name__, None) is k), "Exception"), "message": str(exc)[:1000]})
            return answer
        out = _Copies(self)
        answer["value"] = out.encode(value)
        if out.copies():
            answer["objects"] = out.table
        return answer

    def _apply(self, reply, op, name, args, kwargs, originals):
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
            raise _Raised(self._exception(reply, op, name, decoder))
        return decoder.decode(reply["value"])

    def _exception(self, reply, op, name, decoder):
        raised = str(reply.get("raise"))
        message = str(reply.get("message") or "")
        if raised == "StopIteration" and op == "dunder" and name == "__next__":
            return StopIteration()
        return self.exception(reply, decoder)

    def exception(self, record, decoder):
        """A candidate's exception made here from its record (state.py's `exception_record`):
        built as Python builds its type, from its args, so that `pytest.raises(...)`, `except`
        and the type's own fields (an OSError's errno and filename, an ExceptionGroup's
        exceptions) are as the candidate raised them; its attributes set after."""
        raised = str(record.get("raise"))
        message = str(record.get("message") or "")
        h = record.get("class")
        cls = self.proxy(h) if type(h) is int and h in self.infos else None
        if not (isinstance(cls, _RemoteClass) and issubclass(cls, Exception)):
            cls = _exception_class(raised, str(record.get("builtin") or "Exception"))
        args = decoder.decode(record["args"]) if "args" in record else (message,)
        args = args if type(args) is tuple else (message,)
        fields = [(str(k), decoder.decode(v)) for k, v in record.get("fields") or []]
        local = getattr(errno, str(record.get("errno")), None) if "errno" in record else None
        if type(local) is int:
            # The guest's number for it (WASI's) is not the host's: the tests compare with theirs.
            guest = dict(fields).get("errno")
            fields = [(k, local if k == "errno" else v) for k, v in fields]
            if args and type(guest) is int and args[0] == guest:
                args = (local,) + args[1:]
        exc = _new_exception(cls, args)
        for k, v in fields:
            _set_field(exc, k, v)
        for k, v in record.get("attrs") or []:
            try:
                setattr(exc, str(k), decoder.decode(v))
            except Exception:  # noqa: BLE001
                pass
        if type(exc) is not getattr(builtins, type(exc).__name__, None):
            # The candidate's message, as its own __str__ made it (classes made here print it).
            BaseException.__setattr__(exc, "_dllm_message", message)
        return exc

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
        _EXCEPTIONS[key] = type(name if name.isidentifier() else "CandidateError", (base,), {"__str__": _candidate_str})
    return _EXCEPTIONS[key]


def _new_exception(cls, args):
    """`cls(*args)` as its builtin base makes it (every class of candidate exceptions made here
    has its base's construction); where the base refuses those args (a subclass's own
    `__init__` made them), an instance holding them without construction."""
    try:
        return type.__call__(cls, *args)
    except Exception:  # noqa: BLE001
        pass
    try:
        exc = cls.__new__(cls)
    except Exception:  # noqa: BLE001 - a type that cannot be made without its arguments
        exc = Exception.__new__(_exception_class(cls.__name__, "Exception"))
    exc.args = args
    return exc


def _set_field(exc, name, value):
    """Sets a field of a builtin exception type (`filename`, `errno`) through that type's own
    descriptor; a read-only one stays as construction made it."""
    for k in type(exc).__mro__:
        field = vars(k).get(name)
        if field is None or getattr(builtins, k.__name__, None) is not k:
            continue
        if type(field) in (types.MemberDescriptorType, types.GetSetDescriptorType):
            try:
                field.__set__(exc, value)
            except Exception:  # noqa: BLE001
                pass
        return


def _candidate_str(exc):
    message = getattr(exc, "_dllm_message", None)
    return message if type(message) is str else BaseException.__str__(exc)


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


_TEST_CALLABLES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodDescriptorType,
                   types.WrapperDescriptorType, types.MethodWrapperType, type, functools.partial)


class _Copies(Encoder):
    """Encodes a request: stand-ins as their handles, the tests' own objects (a TreeNode the test
    built) as copies in the message's table, by attributes; the tests' functions and iterators
    as callbacks the sandbox calls back through the session."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.table = []
        self.originals = []
        self.ids = {}
        self.pending = []

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
        if isinstance(value, _TEST_CALLABLES):
            return {"$callback": self.callback(value)}
        if isinstance(value, collections.abc.Iterator):
            return {"$iterator": self.callback(value)}
        if isinstance(value, types.ModuleType) or not hasattr(value, "__dict__"):
            raise TypeError("a %s of the tests cannot be passed to the candidate" % t.__name__)
        k = self.ids.get(id(value))
        if k is None:
            k = self.ids[id(value)] = len(self.table)
            self.table.append({"class": t.__name__, "attrs": []})
            self.originals.append(value)
            self.pending.append(k)
        return {"$ref": k}

    def copies(self):
        """The table of the tests' objects met so far, each by its attributes: filled one object
        at a time, not by recursion, so that a linked list of any length is a flat table (its
        nodes refer to each other by `$ref`) within the message's depth."""
        while self.pending:
            k = self.pending.pop()
            self.table[k]["attrs"] = [[str(a), self.encode(v, 4)] for a, v in list(vars(self.originals[k]).items())]
        return self.table

    def callback(self, value):
        callbacks = self.session.callbacks
        k = next((k for k, v in callbacks.items() if v is value), None)
        if k is None:
            k = len(callbacks)
            callbacks[k] = value
        return k


class _Answers(Decoder):
    def __init__(self, session, originals):
        self.session, self.originals = session, originals

    def tagged(self, tag, inner, value):
        if tag == "$handle":
            return self.session.proxy(inner)
        if tag == "$ref":
            return self.originals[inner]
        if tag == "$exception" and type(inner) is dict:
            return self.session.exception(inner, self)
        return super().tagged(tag, inner, value)
