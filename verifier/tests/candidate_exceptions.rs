//! A candidate's exceptions as the tests see them (the red team's round 2): re-created on the
//! trusted side as the standard type they are, with their arguments and the fields of their
//! type (an `OSError`'s errno, strerror and filename, errno named as on the host even when the
//! wasm guest numbers it otherwise; an `ExceptionGroup`'s exceptions; a `KeyError`'s key), so
//! that `pytest.raises(...)`, `except` and what the tests read from the exception behave as
//! under plain CPython. Before, any type whose construction is not `BaseException`'s voided the
//! run.

mod judging;

use dllm_verifier::Backend;
use judging::{all_pass, asserts, honest_then_hacks, pytest};

/// Raises each kind where the tests expect it (`errno.EACCES` by name: the wasm guest numbers it
/// as WASI does, and its exceptions cross with errno named).
const SOLUTION: &str = "import errno\n\
def read_config(path):\n    with open(path) as f:\n        return f.read()\n\
def parse(s):\n    return int(s)\n\
def check_all(items):\n    errors = []\n    for x in items:\n        if not isinstance(x, int):\n            errors.append(TypeError('not an int: %r' % (x,)))\n        \
elif x < 0:\n            errors.append(ValueError('negative: %d' % x))\n    if errors:\n        raise ExceptionGroup('bad items', errors)\n    return True\n\
def alloc(n):\n    raise MemoryError('cannot allocate %d bytes' % n)\n\
def lookup(d, k):\n    return d[k]\n\
def decode(b):\n    return b.decode('utf-8')\n\
def load(name):\n    __import__(name)\n\
class HttpError(Exception):\n    def __init__(self, status, reason):\n        super().__init__('%d %s' % (status, reason))\n        self.status = status\n\
def fetch(status):\n    raise HttpError(status, 'Not Found')\n\
def blocked(path):\n    raise PermissionError(errno.EACCES, 'Permission denied', path)\n";

fn standard_types(backend: Backend) {
    let task = pytest(
        "import errno\nimport pytest\nfrom solution import read_config, parse, check_all, alloc, lookup, decode, load, HttpError, fetch, blocked\n\n\
         def test_missing_file():\n    with pytest.raises(FileNotFoundError) as e:\n        read_config('missing.cfg')\n    \
         assert e.value.errno == errno.ENOENT and e.value.filename == 'missing.cfg'\n    assert isinstance(e.value, OSError) and e.value.strerror\n    \
         assert str(e.value) == \"[Errno %d] %s: 'missing.cfg'\" % (errno.ENOENT, e.value.strerror)\n\n\
         def test_except_oserror():\n    try:\n        read_config('missing.cfg')\n    except OSError as exc:\n        assert exc.filename == 'missing.cfg'\n    else:\n        assert False\n\n\
         def test_except_value_error():\n    try:\n        parse('x')\n    except ValueError:\n        pass\n    else:\n        assert False\n\n\
         def test_group():\n    with pytest.raises(ExceptionGroup) as e:\n        check_all([1, -2, 'a'])\n    \
         assert len(e.value.exceptions) == 2 and e.value.message == 'bad items'\n    \
         assert isinstance(e.value.exceptions[0], ValueError) and str(e.value.exceptions[1]) == \"not an int: 'a'\"\n    \
         assert e.value.subgroup(TypeError) is not None\n\n\
         def test_memory():\n    with pytest.raises(MemoryError, match='cannot allocate 5'):\n        alloc(5)\n\n\
         def test_key():\n    with pytest.raises(KeyError) as e:\n        lookup({}, 'k')\n    assert e.value.args == ('k',)\n\n\
         def test_unicode():\n    with pytest.raises(UnicodeDecodeError) as e:\n        decode(b'\\xff')\n    assert e.value.encoding == 'utf-8' and e.value.start == 0\n\n\
         def test_import():\n    with pytest.raises(ModuleNotFoundError) as e:\n        load('no_such_module_dllm')\n    assert e.value.name == 'no_such_module_dllm'\n\n\
         def test_own_signature():\n    with pytest.raises(HttpError) as e:\n        fetch(404)\n    assert e.value.status == 404 and str(e.value) == '404 Not Found'\n\n\
         def test_permission():\n    with pytest.raises(PermissionError) as e:\n        blocked('/x')\n    assert e.value.errno == errno.EACCES and e.value.filename == '/x'\n",
    );
    all_pass(backend, "standard exception types", task, &[SOLUTION]);
    // The same exceptions where a test does not expect them: a failure of the candidate's.
    let task = asserts("read_config", "", "assert read_config('missing.cfg') == ''\n");
    let v = &judging::judge(backend, task, &[SOLUTION])[0];
    assert_eq!(v.summary(), "runtime_error", "{backend:?}: {v:?}");
    assert!(v.task_error.is_none() && !v.sandbox_error, "{backend:?}: {v:?}");
    // An exception of another type than the one expected is no pass.
    let task = pytest("import pytest\nfrom solution import parse\n\ndef test_raises():\n    with pytest.raises(FileNotFoundError):\n        parse('x')\n");
    honest_then_hacks(backend, "another exception", task, &[
        "def parse(s):\n    open('missing.cfg')\n",
        "def parse(s):\n    raise OSError('no errno')\n",
        "def parse(s):\n    raise ExceptionGroup('g', [FileNotFoundError(2, 'x')])\n",
    ]);
}

#[test]
fn native_standard_exceptions_reach_the_tests_as_themselves() {
    standard_types(Backend::Native);
}

#[test]
fn wasm_standard_exceptions_reach_the_tests_as_themselves() {
    standard_types(Backend::Wasm);
}
