# What the sandbox says of a candidate object without running any of its code (appended after
# child.py; see mod.rs): its state as its type holds it, for the trusted side to compare two
# objects, and a raised exception's record, for the trusted side to re-create it.
#
# Reads go through the type, never the object's own attribute lookup: the instance dict by the
# `__dict__` descriptor Python made for the class, slots by their member descriptors, a builtin
# base's content by that base's own C methods. A class that takes over how it is read (its own
# `__dict__`, `__getattribute__` or `__class__`, a metaclass `mro()`) has no state to compare.

# The most objects one `state` answer describes (the trusted side asks again from the first
# object it still lacks, so a linked list of any length compares, this many a message).
STATE_OBJECTS = 10_000

_HEAPTYPE = 1 << 9
_IMMUTABLETYPE = 1 << 8
_TYPE_ATTR = {name: type.__dict__[name] for name in ("__mro__", "__dict__", "__flags__", "__basicsize__", "__itemsize__")}


def _type_attr(cls, name):
    """`cls.<name>` as `type` defines it (a metaclass cannot answer for it)."""
    return _TYPE_ATTR[name].__get__(cls)


def _builtin_contents():
    complex_part = complex.__dict__["real"], complex.__dict__["imag"]
    items = {
        list: list.copy,
        tuple: lambda o: tuple.__getitem__(o, slice(None)),
        dict: lambda o: dict(list(dict.items(o))),
        set: set.copy,
        frozenset: frozenset.copy,
        str: str.__str__,
        bytes: lambda o: bytes.__getitem__(o, slice(None)),
        bytearray: bytearray.copy,
        int: int.__index__,
        float: float.__float__,
        complex: lambda o: complex(complex_part[0].__get__(o), complex_part[1].__get__(o)),
        collections.deque: lambda o: list(collections.deque.__iter__(o)),
    }
    items[collections.OrderedDict] = items[collections.defaultdict] = items[dict]
    return items


# A builtin base's content, by that base's C methods (a subclass's overrides never run).
_BUILTIN_CONTENT = _builtin_contents()


def _python_class(cls):
    """Made by a `class` statement (a heap type that stays mutable), not by C."""
    flags = _type_attr(cls, "__flags__")
    return bool(flags & _HEAPTYPE) and not flags & _IMMUTABLETYPE


def object_state(obj):
    """`[dict items, slot values]`, plus the content of a builtin base (a `list` subclass's
    items), read through `obj`'s type; None where its class decides how it is read, or holds
    state of C that cannot be read."""
    cls = type(obj)
    for meta in _type_attr(type(cls), "__mro__"):
        if meta is not type and "mro" in _type_attr(meta, "__dict__"):
            return None
    mro = _type_attr(cls, "__mro__")
    found_dict, attrs, slots, base = False, [], [], []
    for k in mro:
        own = _type_attr(k, "__dict__")
        if not found_dict and "__dict__" in own:
            found_dict = True
            d = own["__dict__"]
            if type(d) is not types.GetSetDescriptorType or d.__objclass__ not in mro:
                return None
            instance_dict = d.__get__(obj, cls)
            attrs = list(dict.items(instance_dict))
            if any(type(a) is not str for a, _ in attrs):
                return None
        if k is object:
            continue
        if _python_class(k):
            if "__getattribute__" in own or "__class__" in own:
                return None
            for name, member in list(own.items()):
                if type(member) is types.MemberDescriptorType and member.__objclass__ is k:
                    try:
                        slots.append([name, member.__get__(obj, cls)])
                    except AttributeError:
                        pass  # a slot never set: told apart from a set one by its absence
        elif k in _BUILTIN_CONTENT:
            if not base:
                base = [_BUILTIN_CONTENT[k](obj)]
        elif _type_attr(k, "__basicsize__") != _type_attr(object, "__basicsize__") or _type_attr(k, "__itemsize__"):
            return None
    return [[list(p) for p in attrs], slots] + base


class _StateOut(_Out):
    """Encodes states, queueing each candidate object they reach to be described next."""

    def __init__(self, objects, described, queue):
        super().__init__(objects, {}, described)
        self.queue = queue

    def other(self, value, depth):
        tagged = super().other(value, depth)
        t = type(value)
        if not (issubclass(t, type) or t is types.ModuleType or t in _CALLABLES or t is type(len)):
            self.queue.append(value)
        return tagged


def state_answer(reply, root, objects):
    """The answer to `state`: `[[handle, state], ...]` for `root` and the candidate objects its
    state reaches (a linked list, a tree), up to STATE_OBJECTS of them."""
    described, queue, seen, found = [], [root], set(), []
    out = _StateOut(objects, described, queue)
    while queue and len(found) < STATE_OBJECTS and out.budget > MAX_ITEMS // 2:
        obj = queue.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        handle = {"$handle": objects.handle(obj, described)}
        queued = len(queue)
        try:
            state = object_state(obj)
            encoded = None if state is None else out.encode(state, 2)
        except BaseException:  # noqa: BLE001 - state too large or too deep to cross: none
            del queue[queued:]
            encoded = None
        found.append([handle, encoded])
    reply["value"] = found
    if described:
        reply["handles"] = described
    return reply


# ---------------------------------------------------------------------------------------------
# Exceptions.



class _ExceptionOut(_Out):
    """Encodes a raised exception's parts; the exceptions inside them (an ExceptionGroup's) as
    records of their own."""

    def other(self, value, depth):
        if issubclass(type(value), BaseException):
            return {"$exception": exception_record(value, self, depth + 2)}
        return super().other(value, depth)


def exception_record(exc, out, depth=0):
    """What the trusted side needs to re-create `exc` (see session.py): its name, builtin
    ancestor and message, its class when the candidate's, its args, the fields its builtin
    types define (an OSError's errno, strerror and filename, as the C members hold them), errno
    by name (WASI numbers it otherwise than the host), and its own attributes."""
    record = exception_line(exc)
    cls = type(exc)
    try:
        if getattr(builtins, cls.__name__, None) is not cls:
            record["class"] = out.objects.handle(cls, out.described)
        record["args"] = out.encode(tuple(BaseException.__dict__["args"].__get__(exc)), depth + 1)
        fields = []
        for k in _type_attr(cls, "__mro__"):
            if k is BaseException or getattr(builtins, k.__name__, None) is not k or not issubclass(k, BaseException):
                continue
            for name, field in list(_type_attr(k, "__dict__").items()):
                # Dunders (`__traceback__`, `__cause__`, `__weakref__`) are Python's, not the type's.
                if name.startswith("__") or type(field) not in (types.MemberDescriptorType, types.GetSetDescriptorType):
                    continue
                try:
                    value = field.__get__(exc, cls)
                except Exception:  # noqa: BLE001 - a field never set
                    continue
                # None is how an unset field reads (an OSError's filename2); set, it would print.
                if value is not None:
                    fields.append([name, out.encode(value, depth + 3)])
        if fields:
            record["fields"] = fields
        if issubclass(cls, OSError):
            import errno

            code = OSError.__dict__["errno"].__get__(exc)
            if type(code) is int and code in errno.errorcode:
                record["errno"] = errno.errorcode[code]
        attrs = object.__getattribute__(exc, "__dict__")
        if attrs:
            record["attrs"] = [[str(k), out.encode(v, depth + 3)] for k, v in list(dict.items(attrs))]
    except BaseException:  # noqa: BLE001 - what cannot cross stays behind: name and message still do
        record.pop("attrs", None)
    return record
