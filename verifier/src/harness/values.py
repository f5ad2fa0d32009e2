"""Values across the sandbox boundary: type-tagged JSON built from builtin types, shared by
every role of the harness (see mod.rs).

Exact type checks throughout, so that a candidate subclass (an int whose __eq__ always returns
True, a dict with a lying items()) is never taken for a builtin value, and no candidate method
runs while encoding. What is not data travels as the side's own choice (`Encoder.other`): a
handle to a live object in the sandbox, a copy of a test's object from the trusted side.

  null, true, 1, 1.5, "s"            themselves (integers only within +-2**53)
  {"$int": "123..."}                 any other integer, exactly
  {"$float": "inf" | "-inf" | "nan"}
  {"$tuple": [...]}, {"$set": [...]}, {"$frozenset": [...]}, {"$bytes": hex}, {"$complex": [re, im]}
  {"$dict": [[k, v], ...], "type"?: "Counter" | "OrderedDict" | "defaultdict", "factory"?: name}
  {"$deque": [...], "maxlen": n}, {"$sorted": "SortedList" | "SortedSet" | "SortedDict", "items": [...]}
  {"$fraction": [n, d]}, {"$decimal": "1.10"}, {"$ndarray": {"dtype", "data"}}, {"$bytearray": hex}
  {"$range": [start, stop, step]}, {"$datetime": [kind, iso]}, {"$timedelta": [d, s, us]}
  {"$handle": h}                     a live object of the sandbox (see child.py)
  {"$ref": k}                        object k of the message's table of copied objects
  {"$method": [h, name]}, {"$builtin": name}
"""

import builtins
import collections
import json
import math
import os
import sys
import time
import types

# Integers cross as decimal text: up to 100,000 digits each way (Python's default, 4,300,
# failed honest big-number answers).
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(100_000)

# Depth counts JSON nesting levels: the parent's JSON reader stops at 128, and a value sits a
# few levels down in its message.
MAX_DEPTH = 120
MAX_ITEMS = 1_000_000

_DICT_TYPES = {collections.Counter: "Counter", collections.OrderedDict: "OrderedDict", collections.defaultdict: "defaultdict"}
_FACTORIES = {int: "int", float: "float", str: "str", list: "list", dict: "dict", set: "set", tuple: "tuple"}


def _numpy_scalar_types(np):
    return {np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
            np.float16, np.float32, np.float64, np.complex64, np.complex128, np.str_}


class Encoder:
    """Encodes the values of one message; `other` decides what is not plain data."""

    def __init__(self, budget=MAX_ITEMS):
        self.budget = budget

    def encode(self, value, depth=0):
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
            return [self.encode(v, depth + 1) for v in list.copy(value)]
        if t is tuple:
            return {"$tuple": [self.encode(v, depth + 2) for v in value]}
        if issubclass(t, tuple) and type(t.__dict__.get("_fields")) is tuple and all(type(f) is str for f in t._fields):
            # A namedtuple: rebuilt on the other side as one of the same name and fields.
            return {"$namedtuple": [str(t.__name__), list(t._fields), [self.encode(v, depth + 3) for v in tuple.__iter__(value)]]}
        if t is dict or t in _DICT_TYPES:
            tagged = {"$dict": [[self.encode(k, depth + 3), self.encode(v, depth + 3)] for k, v in list(dict.items(value))]}
            if t is not dict:
                tagged["type"] = _DICT_TYPES[t]
            if t is collections.defaultdict:
                tagged["factory"] = _FACTORIES.get(value.default_factory) if value.default_factory is not None else None
            return tagged
        if t is set or t is frozenset:
            return {"$set" if t is set else "$frozenset": [self.encode(v, depth + 2) for v in list(value)]}
        if t is bytes:
            return {"$bytes": value.hex()}
        if t is complex:
            return {"$complex": [self.encode(value.real, depth + 2), self.encode(value.imag, depth + 2)]}
        if t is collections.deque:
            return {"$deque": [self.encode(v, depth + 2) for v in list(value)], "maxlen": value.maxlen}
        if t is bytearray:
            return {"$bytearray": bytes(value).hex()}
        if t is range:
            return {"$range": [self.encode(value.start), self.encode(value.stop), self.encode(value.step)]}
        library = self.library(value, t, depth)
        if library is not None:
            return library
        return self.other(value, depth)

    def library(self, value, t, depth):
        """Values of well-known library types, by content (rebuilt as the same type on the other side)."""
        fractions, decimal = sys.modules.get("fractions"), sys.modules.get("decimal")
        if fractions is not None and t is fractions.Fraction:
            return {"$fraction": [self.encode(int(value.numerator), depth + 2), self.encode(int(value.denominator), depth + 2)]}
        if decimal is not None and t is decimal.Decimal:
            return {"$decimal": decimal.Decimal.__str__(value)}
        sc = sys.modules.get("sortedcontainers")
        if sc is not None:
            if t is sc.SortedDict:
                return {"$sorted": "SortedDict", "items": [[self.encode(k, depth + 3), self.encode(v, depth + 3)] for k, v in list(dict.items(value))]}
            if t is sc.SortedList or t is sc.SortedSet:
                return {"$sorted": t.__name__, "items": [self.encode(v, depth + 2) for v in list(value)]}
        datetime = sys.modules.get("datetime")
        if datetime is not None and t in (datetime.date, datetime.datetime, datetime.time):
            return {"$datetime": [t.__name__, t.isoformat(value)]}
        if datetime is not None and t is datetime.timedelta:
            return {"$timedelta": [value.days, value.seconds, value.microseconds]}
        np = sys.modules.get("numpy")
        if np is not None and t is np.ndarray:
            shape = [int(n) for n in value.shape]
            return {"$ndarray": {"dtype": str(value.dtype), "shape": shape, "data": self.encode(np.ndarray.tolist(value), depth + 2)}}
        if np is not None and t.__module__ == "numpy" and issubclass(t, np.generic) and t in _numpy_scalar_types(np):
            return self.encode(np.generic.item(value), depth)
        return None

    def other(self, value, depth):
        raise ValueError("%s is not plain data" % type(value).__name__)


class Decoder:
    """Decodes the values of one message; `tagged` resolves the side's own tags."""

    def decode(self, value, depth=0):
        if depth > MAX_DEPTH + 8:
            raise ValueError("value too deep")
        if type(value) is list:
            return [self.decode(v, depth + 1) for v in value]
        if type(value) is not dict:
            return value
        tag = next((k for k in value if k.startswith("$")), None)
        inner = value.get(tag)
        d = depth + 1
        if tag == "$int":
            return int(inner)
        if tag == "$float":
            return float(inner) if inner in ("inf", "-inf", "nan") else math.nan
        if tag == "$tuple":
            return tuple(self.decode(v, d) for v in inner)
        if tag == "$dict":
            pairs = [(_hashable(self.decode(k, d)), self.decode(v, d)) for k, v in inner]
            kind = value.get("type")
            if kind == "defaultdict":
                factory = {name: f for f, name in _FACTORIES.items()}.get(value.get("factory"))
                return collections.defaultdict(factory, pairs)
            plain = dict(pairs)
            if kind == "Counter":
                return collections.Counter(plain)
            return collections.OrderedDict(pairs) if kind == "OrderedDict" else plain
        if tag == "$set":
            return {_hashable(self.decode(v, d)) for v in inner}
        if tag == "$frozenset":
            return frozenset(_hashable(self.decode(v, d)) for v in inner)
        if tag == "$bytes":
            return bytes.fromhex(inner)
        if tag == "$complex":
            return complex(self.decode(inner[0], d), self.decode(inner[1], d))
        if tag == "$bytearray":
            return bytearray.fromhex(inner)
        if tag == "$range":
            return range(*(self.decode(v, d) for v in inner))
        if tag == "$datetime":
            import datetime

            cls = {"date": datetime.date, "datetime": datetime.datetime, "time": datetime.time}[inner[0]]
            return cls.fromisoformat(str(inner[1]))
        if tag == "$timedelta":
            import datetime

            return datetime.timedelta(days=inner[0], seconds=inner[1], microseconds=inner[2])
        if tag == "$deque":
            return collections.deque((self.decode(v, d) for v in inner), value.get("maxlen"))
        if tag == "$fraction":
            import fractions

            return fractions.Fraction(self.decode(inner[0], d), self.decode(inner[1], d))
        if tag == "$decimal":
            import decimal

            return decimal.Decimal(str(inner))
        if tag == "$sorted":
            import sortedcontainers

            items = value.get("items") or []
            if inner == "SortedDict":
                return sortedcontainers.SortedDict((_hashable(self.decode(k, d)), self.decode(v, d)) for k, v in items)
            cls = {"SortedList": sortedcontainers.SortedList, "SortedSet": sortedcontainers.SortedSet}[inner]
            return cls(self.decode(v, d) for v in items)
        if tag == "$ndarray":
            return _ndarray(self.decode(inner["data"], d), inner["dtype"], inner.get("shape"))
        if tag == "$namedtuple":
            name, fields, items = inner
            return _namedtuple(str(name), tuple(str(f) for f in fields))(*(self.decode(v, d) for v in items))
        return self.tagged(tag, inner, value)

    def tagged(self, tag, inner, value):
        raise ValueError("unknown value tag %r" % (tag,))


def _hashable(v):
    if type(v) is list:
        return tuple(_hashable(x) for x in v)
    return v


_NAMEDTUPLES = {}


def _namedtuple(name, fields):
    key = (name, fields)
    if key not in _NAMEDTUPLES:
        if len(_NAMEDTUPLES) > 1024:
            _NAMEDTUPLES.clear()
        _NAMEDTUPLES[key] = collections.namedtuple(name if name.isidentifier() else "Record", fields, rename=True)
    return _NAMEDTUPLES[key]


def _ndarray(data, dtype, shape=None):
    try:
        import numpy

        array = _ndarray_of(numpy, data, dtype)
        # An empty array's data ([] for shape (0, 3)) does not say its shape.
        if shape is not None and type(array) is numpy.ndarray and array.size == 0:
            array = array.reshape([int(n) for n in shape])
        return array
    except Exception:
        return data


def _ndarray_of(numpy, data, dtype):
    try:
        # The dtype string comes from the other side: a declared width (`<U50000000`, `V10**9`)
        # would make a few bytes of message allocate gigabytes here. Strings get the width of
        # their data; only fixed-size kinds keep the declared type.
        kind = numpy.dtype(dtype).kind
        if kind in "US":
            return numpy.array(data, dtype=kind)
        if kind in "biufcOMm":
            return numpy.array(data, dtype=dtype)
    except Exception:
        pass
    return data


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


def exception_line(exc):
    """What crosses for an exception: its class name, its first builtin ancestor (so that
    `pytest.raises(ValueError)` catches a candidate's `class Invalid(ValueError)`), and its
    message (run in the sandbox, so the candidate's own `__str__` is fine)."""
    t = type(exc)
    base = next((k.__name__ for k in t.__mro__ if getattr(builtins, k.__name__, None) is k), "BaseException")
    try:
        message = str(exc)[:65536]
    except BaseException:  # noqa: BLE001 - a candidate's __str__ that fails says nothing
        message = ""
    return {"raise": t.__name__, "builtin": base, "message": message}
