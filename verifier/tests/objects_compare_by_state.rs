//! Candidate objects compared on the trusted side (the red team's round 2): two objects whose
//! class defines `__eq__` are equal when their class is one and their state is, read through
//! the type (the instance dict, slots, a builtin base's items), never through the object's own
//! attribute lookup; a class that takes over how its state is read (`__dict__`,
//! `__getattribute__`, `__class__`, a metaclass `mro`) equals nothing but itself. Linked lists
//! of thousands of nodes judge, built by the tests or by the candidate.

mod judging;

use dllm_verifier::Backend;
use judging::{all_pass, honest_then_hacks, pytest};
use serde_json::Value;

/// Expected values built with the candidate's own class, compared with what it returns.
fn point_task() -> Value {
    pytest("from solution import Point, make\n\ndef test_a():\n    assert make(1, 2) == Point(1, 2)\n\ndef test_b():\n    assert make(3, 4) == Point(3, 4)\n")
}

/// A `Point` whose `__eq__` says yes to anything, and a `make` that ignores its input: only a
/// state read the class cannot steer tells `Point(0, 0)` from `Point(1, 2)`.
fn state_hiding(backend: Backend) {
    let honest = "from dataclasses import dataclass\n@dataclass\nclass Point:\n    x: int\n    y: int\ndef make(x, y):\n    return Point(x, y)\n";
    let eq = "    def __eq__(self, other):\n        return True\n";
    let init = "    def __init__(self, x, y):\n        self.x, self.y = x, y\n";
    let make = "def make(x, y):\n    return Point(0, 0)\n";
    let dict_property = format!("class Point:\n    __dict__ = property(lambda self: {{}})\n{init}{eq}{make}");
    let getattribute = format!(
        "class Point:\n{init}    def __getattribute__(self, name):\n        if name == '__dict__':\n            return {{}}\n        return object.__getattribute__(self, name)\n{eq}{make}"
    );
    let slots_getattr = format!("class Point:\n    __slots__ = ('x', 'y')\n{init}    def __getattr__(self, name):\n        return {{}}\n{eq}{make}");
    let list_base = format!("class Point(list):\n    def __init__(self, x, y):\n        super().__init__([x, y])\n{eq}    __hash__ = None\n{make}");
    let class_property = format!("class Point:\n{init}    @property\n    def __class__(self):\n        return Point\n{eq}{make}");
    // The metaclass leaves the base holding the slots out of the MRO: a walk of the MRO sees none.
    let mro = format!(
        "class Meta(type):\n    def mro(cls):\n        return [cls, object]\nclass Base:\n    __slots__ = ('x', 'y')\n\
         class Point(Base, metaclass=Meta):\n    __slots__ = ()\n    def __init__(self, x, y):\n        Base.__dict__['x'].__set__(self, x)\n        Base.__dict__['y'].__set__(self, y)\n{eq}{make}"
    );
    honest_then_hacks(backend, "state read for equality", point_task(), &[
        honest,
        &dict_property,
        &getattribute,
        &slots_getattr,
        &list_base,
        &class_property,
        &mro,
    ]);
}

#[test]
fn native_objects_cannot_steer_how_their_state_is_read() {
    state_hiding(Backend::Native);
}

#[test]
fn wasm_objects_cannot_steer_how_their_state_is_read() {
    state_hiding(Backend::Wasm);
}

/// Honest classes whose state is not (all) in an instance dict: slots, `dataclass(slots=True)`,
/// a builtin base's items, a generic dataclass; and a class with both slots and a dict.
fn honest_state(backend: Backend) {
    let eq = "    def __eq__(self, other):\n        return type(other) is Point and (self.x, self.y) == (other.x, other.y)\n    __hash__ = None\n";
    let make = "def make(x, y):\n    return Point(x, y)\n";
    all_pass(backend, "honest state", point_task(), &[
        &format!("class Point:\n    __slots__ = ('x', 'y')\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n{eq}{make}"),
        &format!("from dataclasses import dataclass\n@dataclass(slots=True)\nclass Point:\n    x: int\n    y: int\n{make}"),
        &format!(
            "class Point(tuple):\n    def __new__(cls, x, y):\n        return super().__new__(cls, (x, y))\n    x = property(lambda self: self[0])\n    y = property(lambda self: self[1])\n{eq}{make}"
        ),
        &format!("from dataclasses import dataclass\nfrom typing import Generic, TypeVar\nT = TypeVar('T')\n@dataclass\nclass Point(Generic[T]):\n    x: T\n    y: T\n{make}"),
        &format!("class Base:\n    __slots__ = ('x',)\nclass Point(Base):\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n{eq}{make}"),
    ]);
    // Equal state, told apart: a slot set on one side only, another class, another base's items.
    let task = pytest("from solution import Point, Other\n\ndef test_unset():\n    assert Point(1) != Point(1, 2)\n\ndef test_class():\n    assert Point(1, 2) != Other(1, 2)\n");
    all_pass(backend, "state told apart", task, &[
        "class Point:\n    __slots__ = ('x', 'y')\n    def __init__(self, x, y=None):\n        self.x = x\n        if y is not None:\n            self.y = y\n    \
         def __eq__(self, other):\n        return True\n    __hash__ = None\nclass Other(Point):\n    __slots__ = ()\n",
    ]);
}

#[test]
fn native_slots_and_builtin_bases_compare_by_state() {
    honest_state(Backend::Native);
}

#[test]
fn wasm_slots_and_builtin_bases_compare_by_state() {
    honest_state(Backend::Wasm);
}

/// LeetCode's linked lists at the size of their constraints: the tests' own nodes copied into
/// the sandbox and changed there (10,000 of them), the candidate's nodes compared with `==`.
fn long_lists(backend: Backend) {
    let tests_nodes = pytest(
        "from solution import reverse\n\nclass ListNode:\n    def __init__(self, val=0, next=None):\n        self.val, self.next = val, next\n\n\
         def build(vals):\n    head = None\n    for v in reversed(vals):\n        head = ListNode(v, head)\n    return head\n\n\
         def values(node):\n    out = []\n    while node:\n        out.append(node.val)\n        node = node.next\n    return out\n\n\
         def test_short():\n    assert values(reverse(build(list(range(40))))) == list(range(39, -1, -1))\n\n\
         def test_long():\n    head = build(list(range(10000)))\n    assert values(reverse(head)) == list(range(9999, -1, -1))\n    assert head.next is None\n",
    );
    let reverse = "def reverse(head):\n    prev = None\n    while head:\n        head.next, prev, head = prev, head, head.next\n    return prev\n";
    let node = "class ListNode:\n    def __init__(self, val=0, next=None):\n        self.val, self.next = val, next\n    def __eq__(self, other):\n        \
                return isinstance(other, ListNode) and self.val == other.val and self.next == other.next\n    __hash__ = None\n";
    // Copies of the tests' nodes are the candidate's `ListNode`s when it has a class of that name.
    all_pass(backend, "the tests' long list", tests_nodes, &[reverse, &format!("{node}{reverse}")]);
    let candidate_nodes = pytest(
        "from solution import ListNode, reverse, build\n\n\
         def test_equal():\n    assert reverse(build(list(range(1000)))) == build(list(range(999, -1, -1)))\n\n\
         def test_unequal():\n    assert reverse(build(list(range(1000)))) != build(list(range(1000)))\n",
    );
    let build = "def build(vals):\n    head = None\n    for v in reversed(vals):\n        head = ListNode(v, head)\n    return head\n";
    all_pass(backend, "the candidate's long list", candidate_nodes, &[&format!("{node}{build}{reverse}")]);
}

#[test]
fn native_long_linked_lists_judge() {
    long_lists(Backend::Native);
}

#[test]
fn wasm_long_linked_lists_judge() {
    long_lists(Backend::Wasm);
}
