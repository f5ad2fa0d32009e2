# The native fork-server, appended to values.py and child.py.

# ---------------------------------------------------------------------------------------------
# Native fork-server. The parent (Rust) starts a server per worker slot (and a second one, with
# pytest imported, when the slot meets pytest-style tests), already inside its namespaces,
# and talks to it over a SOCK_SEQPACKET socket. Per job it sends
#   {"uid", "gid", "as_bytes", "cpu_secs", "fsize_bytes", "nofile", "nproc"}
# with five descriptors attached: job_r, stdin_r, stdout_w, stderr_w, result_w. The server
# forks; the child reads the job as the first line of job_r (a serve job reads its requests
# from the lines after it) and runs it as uid/gid (when the server is root), under rlimits, in
# fresh scratch space: its own mount and IPC namespaces, with empty, size-capped tmpfs on /tmp,
# /var/tmp and /dev/shm and no SysV objects, all gone with the run's last process, so nothing a run writes is seen by the next
# or outlives it (without namespace rights, only a fresh working folder). The server answers
# {"pid"}, then, after the child ends, {"exit"/"signal"} once every process of the slot's uid has
# been killed. The server keeps no time: the parent kills the child's group when the run's
# deadline passes, even if the child closed its pipes long before, and that ends the waitpid
# here.

# Per-run scratch: tmpfs options of each mount (a run that fills one gets ENOSPC, its own
# failure; a thousand nested folders cost the server nothing).
SCRATCH_OPTIONS = b"size=64m,nr_inodes=16384,mode=1777"
SCRATCH_MOUNTS = (b"/tmp", b"/var/tmp", b"/dev/shm")



def serve_forever(sock_fd, with_pytest):
    import fcntl  # noqa: F401 - the child moves its descriptors with it
    import resource
    import signal
    import socket
    import tempfile

    # pytest costs every run: a server holding it is twice the size (fork and exit walk its
    # page tables) and its `threading` import adds an after-fork hook that touches ~120 pages
    # in each child. Only the servers for pytest-style tests load it.
    warm_imports(with_pytest)
    libc = _libc()
    if libc is not None:
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of a run become ours to reap
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, inherited by every child
    # What every child starts with, made once here rather than in each child: the environment
    # (less HOME and TMPDIR, which name the run's folder) and text streams on descriptors 0-2,
    # which each child points at its own pipes. Nothing is ever written to or read from them
    # here, so no buffered data crosses a fork.
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
    sock = socket.socket(fileno=sock_fd)
    try:
        interfaces = [name for _, name in socket.if_nameindex()]
    except OSError:
        interfaces = ["unknown"]
    fresh = _probe_fresh_scratch(libc)
    sock.send(json.dumps({"interfaces": interfaces, "root": sorted(os.listdir("/")), "fresh_scratch": fresh}).encode())
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 8)
        except (ConnectionResetError, OSError):
            return
        if not msg:
            return
        spec = json.loads(msg)
        # Without fresh scratch the run works in a folder of ours, removed after it.
        workdir = None if fresh else tempfile.mkdtemp(prefix="run-")
        if workdir is not None and spec.get("uid") is not None:
            os.chown(workdir, spec["uid"], spec["gid"])
        spec["fresh"] = fresh
        pid = os.fork()
        if pid == 0:
            _child(spec, fds, workdir, libc, resource, signal)
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
        _, status = os.waitpid(pid, 0)
        reply = {"exit": os.WEXITSTATUS(status)} if os.WIFEXITED(status) else {"signal": os.WTERMSIG(status)}
        if not _has_children():
            pass  # nothing of the run survived its main process: the common case, no cost
        elif spec.get("uid") is not None:
            _kill_uid(spec["uid"], spec["gid"], signal)
            _reap(block=True)  # all were just killed: each wait is short
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            _reap(block=False)
        if workdir is not None:
            _remove_tree(workdir)
        sock.send(json.dumps(reply).encode())


def _remove_tree(root):
    """Removes a run's folder whatever it made there (thousands of nested folders included:
    shutil.rmtree recursed past Python's limit and took the server down). Never raises: what
    cannot be removed stays."""
    dirs, stack = [], [root]
    while stack:
        d = stack.pop()
        dirs.append(d)
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    os.unlink(e.path)
            except OSError:
                pass
    for d in reversed(dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _fresh_scratch(libc, spec=None):
    """Enters new mount and IPC namespaces, with empty tmpfs on the scratch paths, and returns the run's
    working folder there, or None where the kernel refuses (no namespace rights)."""
    # CLONE_NEWNS | CLONE_NEWIPC: SysV shared memory, semaphores and message queues are per IPC
    # namespace, so they die with the run too (a run could leave answers in a segment for the
    # next one, or pin memory).
    if libc is None or libc.unshare(0x00020000 | 0x08000000) != 0:
        return None
    flags = 2 | 4 | 8  # MS_NOSUID | MS_NODEV | MS_NOEXEC
    for path in SCRATCH_MOUNTS:
        if os.path.isdir(path) and libc.mount(b"tmpfs", path, b"tmpfs", flags, SCRATCH_OPTIONS) != 0 and path == b"/tmp":
            return None
    workdir = "/tmp/run"
    os.mkdir(workdir, 0o700)
    if spec is not None and spec.get("uid") is not None:
        os.chown(workdir, spec["uid"], spec["gid"])
    return workdir


def _probe_fresh_scratch(libc):
    """Whether a child can have fresh scratch here, tried once in a throw-away child."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if _fresh_scratch(libc) else 1)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except Exception:
        return None


def _has_children():
    """Whether any process of the last run is alive. We are the subreaper: every descendant
    whose parent died was reparented to us, so none left means none alive."""
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def _reap(block):
    """Waits for the run's orphans (reparented to us, the subreaper), so that none lingers as
    a zombie counted against the slot uid's process limit."""
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


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
        fcntl = sys.modules["fcntl"]

        # Move the received descriptors out of the way first: they may sit on 0-4 themselves.
        job_r, stdin_r, stdout_w, stderr_w, result_w = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
        os.dup2(stdin_r, 0)
        os.dup2(stdout_w, 1)
        os.dup2(stderr_w, 2)
        os.dup2(result_w, 3)
        os.dup2(job_r, 4)
        os.closerange(5, 1 << 16)
        if spec.get("cpu") is not None:
            try:
                os.sched_setaffinity(0, {spec["cpu"]})
            except OSError:
                pass
        requests = open(4, "rb")
        job = json.loads(requests.readline())
        if spec.get("fresh"):
            workdir = _fresh_scratch(libc, spec)
            if workdir is None:
                raise RuntimeError("no fresh scratch space for the run")
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
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server (not inherited)
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir
        chan = Channel(open(3, "wb", buffering=0, closefd=True))
        del fds, spec
        run_job(job, chan, lambda: requests.readline() or None)
    except BaseException:  # noqa: BLE001 - the child must never return into the server loop
        try:
            import traceback

            os.write(2, ("dllm-rl harness: " + traceback.format_exc()).encode())
        except BaseException:  # noqa: BLE001
            pass
    os._exit(0)
