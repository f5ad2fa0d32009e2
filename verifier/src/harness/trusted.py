# The trusted judge of assertion tests: it runs the task's test code itself, and never candidate
# code. Appended last (see mod.rs); of values.py and child.py it uses the codec and warm_imports.
#
# The candidate lives in the sandbox. Here each of its names is a stand-in that forwards what
# the tests do with it (a call, a method call, an attribute, an operator) to the sandbox, one
# request at a time, and turns the answer into plain Python data or a further stand-in for an
# object that stayed there. Expected values, the tests' locals, parametrize tables, random
# draws and the tests' library calls therefore exist only here. What the candidate controls is
# what its functions return, and what comes back is data decoded here (no candidate __eq__ ever
# runs on this side) or a stand-in that the tests can only compare with other stand-ins.
#
# Protocol with the Rust parent, a line each way, every line led by the request id, read and
# written as bytes: only b"\n" ends a line (the sandbox's answers are relayed as it wrote them,
# and JSON allows a raw "\r" between its tokens and U+2028 in its strings, where a text reader
# or `splitlines` sees the end of a line and leaves the rest to answer the next request):
#   "<id> A <json>"  analyze a task's tests       -> "<id> D <json>"
#   "<id> R <json>"  run the tests                 -> "<id> C <request>" ... then "<id> D <json>"
#   "<id> S <json>"  the sandbox's answer to the last C line
#   "<id> G <why>"   the sandbox run is over (timeout, crash, ...): no more answers
#
# This file holds the protocol loop; session.py the link to the sandbox, stand_ins.py the
# stand-ins and the tests' namespace, test_run.py the tests themselves.

import io


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
    lines = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    workdir = os.path.abspath(sys.argv[2])
    while True:
        line = lines.readline()
        if not line:
            return
        head, _, rest = line.decode("utf-8", "replace").partition(" ")
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
        out.write(("%s D %s\n" % (head, json.dumps(reply))).encode())
        out.flush()
