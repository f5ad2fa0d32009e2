//! One fork-server: a Python interpreter that has imported the harness once and forks a fresh
//! child per job, so a run costs a `fork` instead of an interpreter start-up.
//!
//! The server is started inside new network, mount, IPC and UTS namespaces when the kernel
//! allows it (as root, or through a user namespace), with a private tmpfs on `/tmp`,
//! `/var/tmp` and `/dev/shm`; it dies with its parent (`PR_SET_PDEATHSIG`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, OnceLock};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde::Deserialize;

use crate::sandbox::SandboxError;

pub(crate) struct ForkServer {
    process: Child,
    socket: OwnedFd,
    pub(crate) isolated_network: bool,
    /// Children see only the minimal root (no host files beyond /usr and /etc, no /proc).
    pub(crate) hidden_filesystem: bool,
    /// Each run starts with empty, size-capped /tmp, /var/tmp and /dev/shm of its own.
    pub(crate) fresh_scratch: bool,
}

#[derive(Deserialize)]
struct Ready {
    interfaces: Vec<String>,
    /// What the server sees at `/`.
    root: Vec<String>,
    /// Whether each run gets its own empty tmpfs scratch (see `fork_server.py`).
    #[serde(default)]
    fresh_scratch: bool,
}

/// What a minimal root holds (see `enter_minimal_root`).
const MINIMAL_ROOT: [&str; 8] = ["bin", "dev", "etc", "lib", "lib64", "sbin", "tmp", "usr"];

impl ForkServer {
    /// Starts a server. The process is spawned from one long-lived thread: the server's
    /// parent-death signal fires when the *thread* that spawned it ends, and a worker or test
    /// thread may end long before the verifier does.
    /// `with_pytest` makes a server that has pytest imported (for pytest-style tests).
    pub(crate) fn spawn(python: &Path, harness: &'static str, with_pytest: bool, isolate: bool) -> Result<Self, SandboxError> {
        type Request = (PathBuf, &'static str, bool, bool, mpsc::Sender<Result<ForkServer, SandboxError>>);
        static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
        let spawner = SPAWNER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("fork-server-spawner".into())
                .spawn(move || {
                    for (python, harness, with_pytest, isolate, reply) in rx {
                        let _ = reply.send(Self::spawn_here(&python, harness, with_pytest, isolate));
                    }
                })
                .expect("cannot start the fork-server spawner thread");
            Mutex::new(tx)
        });
        let (reply, answer) = mpsc::channel();
        let sent = spawner.lock().unwrap_or_else(|e| e.into_inner()).send((python.to_path_buf(), harness, with_pytest, isolate, reply));
        sent.map_err(|_| SandboxError::Protocol("the fork-server spawner thread is gone".into()))?;
        answer.recv().map_err(|_| SandboxError::Protocol("the fork-server spawner thread is gone".into()))?
    }

    fn spawn_here(python: &Path, harness: &str, with_pytest: bool, isolate: bool) -> Result<Self, SandboxError> {
        let spawn_error = |source| SandboxError::Spawn { python: python.display().to_string(), source };
        let program = resolve_program(python).map_err(spawn_error)?;
        // Made before the fork: nothing may allocate between fork and exec.
        let trees = InterpreterTree::needed_by(&program);
        // The interpreter's own folders add their top-level names (`opt`, `root`) to the root.
        let extra_tops: Vec<String> = trees.iter().map(|t| t.top.clone()).collect();
        let (parent, child) = seqpacket_pair()?;
        let child_fd = child.as_raw_fd();
        let mut cmd = Command::new(&program);
        // Not `-I`: it would ignore PYTHONHASHSEED, and a fixed seed makes verdicts that
        // depend on set or dict order of strings the same on every run. The environment is
        // cleared instead, and `-s -P` keep user site-packages and the cwd off sys.path.
        cmd.args(["-s", "-P", "-c"])
            .arg(harness)
            .arg("serve")
            .arg(child_fd.to_string())
            .args(with_pytest.then_some("pytest"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // A process group of its own: a terminal's Ctrl-C (sent to the foreground group) is
            // for the command, which stops cleanly; the server dies with it (parent-death signal).
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, prctl, unshare, mount) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(child_fd, libc::F_GETFD);
                libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if isolate {
                    enter_namespaces(&trees);
                }
                Ok(())
            });
        }
        let process = cmd.spawn().map_err(spawn_error)?;
        drop(child);
        let mut server =
            ForkServer { process, socket: parent, isolated_network: false, hidden_filesystem: false, fresh_scratch: false };
        let ready: Ready = serde_json::from_slice(&server.receive()?)
            .map_err(|e| SandboxError::Protocol(format!("fork-server greeting: {e}")))?;
        server.isolated_network = ready.interfaces.iter().all(|i| i == "lo");
        server.fresh_scratch = ready.fresh_scratch;
        server.hidden_filesystem =
            ready.root.iter().all(|e| MINIMAL_ROOT.contains(&e.as_str()) || extra_tops.contains(e));
        Ok(server)
    }

    /// Sends a job header with the child's five descriptors attached.
    pub(crate) fn send(&self, header: &[u8], fds: &[RawFd]) -> Result<(), SandboxError> {
        send_with_fds(self.socket.as_raw_fd(), header, fds).map_err(SandboxError::Io)
    }

    /// Receives one message, or `None` if none has come by `deadline` (the run's main process
    /// still lives: the server answers only once it has reaped it).
    pub(crate) fn receive_until(&self, deadline: Instant) -> Result<Option<Vec<u8>>, SandboxError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout_ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let mut poll = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
            if n > 0 {
                return self.receive().map(Some);
            }
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(SandboxError::Io(err));
                }
            } else if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Receives one message (blocking: for answers that come at once).
    pub(crate) fn receive(&self) -> Result<Vec<u8>, SandboxError> {
        let mut buf = vec![0u8; 1 << 16];
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::recv(self.socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(SandboxError::Io(io::Error::last_os_error()));
        }
        if n == 0 {
            return Err(SandboxError::Protocol("the fork-server closed its socket".into()));
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The interpreter as an absolute path: `python3` is looked up in `PATH` here, because the
/// server's own `PATH` inside the minimal root would not find it.
fn resolve_program(python: &Path) -> io::Result<PathBuf> {
    if python.components().count() > 1 {
        return std::path::absolute(python);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(python))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in PATH"))
}

/// A folder an interpreter outside `/usr` needs (conda's `/opt/conda`, a pyenv version, a venv
/// and its base interpreter): mounted read-only at the same path inside the minimal root, with
/// the folders above it created there. All paths are made before the fork.
struct InterpreterTree {
    source: CString,
    target: CString,
    parents: Vec<CString>,
    /// Its first path component (`opt`), which the minimal root then shows.
    top: String,
}

impl InterpreterTree {
    /// The installation folders (`<prefix>/bin/python3`) of the interpreter as named and, when
    /// that is a link (a venv's `python3`), of the one it points to; none under `/usr`, which
    /// the minimal root holds anyway.
    fn needed_by(program: &Path) -> Vec<Self> {
        let mut prefixes: Vec<PathBuf> = Vec::new();
        for path in [Some(program.to_path_buf()), std::fs::canonicalize(program).ok()].into_iter().flatten() {
            let Some(prefix) = path.parent().and_then(Path::parent) else { continue };
            if prefix.starts_with("/usr") || prefix == Path::new("/") || prefixes.iter().any(|p| prefix.starts_with(p)) {
                continue;
            }
            prefixes.push(prefix.to_path_buf());
        }
        prefixes.iter().filter_map(|prefix| Self::at(prefix)).collect()
    }

    fn at(prefix: &Path) -> Option<Self> {
        let inside = |p: &Path| CString::new(format!("{SANDBOX_ROOT}{}", p.display())).ok();
        let mut parents: Vec<CString> = prefix.ancestors().skip(1).filter(|p| *p != Path::new("/")).filter_map(inside).collect();
        parents.reverse();
        let top = prefix.components().nth(1)?.as_os_str().to_string_lossy().into_owned();
        Some(InterpreterTree { source: CString::new(prefix.as_os_str().as_encoded_bytes()).ok()?, target: inside(prefix)?, parents, top })
    }
}

/// Runs in the forked child before exec. Failures are tolerated: the server reports whether it
/// ended up without network, and the sandbox logs it.
fn enter_namespaces(interpreter: &[InterpreterTree]) {
    // SAFETY: raw syscalls with valid, NUL-terminated constant strings.
    unsafe {
        let ns = libc::CLONE_NEWNET | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        if libc::unshare(ns) != 0 {
            // Not root: a user namespace grants the same, mapping our uid to itself.
            let uid = libc::getuid();
            let gid = libc::getgid();
            if libc::unshare(libc::CLONE_NEWUSER | ns) != 0 {
                return;
            }
            write_file(c"/proc/self/setgroups", b"deny");
            let mut buf = [0u8; 64];
            let n = format_id_map(&mut buf, uid);
            write_file(c"/proc/self/uid_map", &buf[..n]);
            let n = format_id_map(&mut buf, gid);
            write_file(c"/proc/self/gid_map", &buf[..n]);
        }
        libc::mount(c"none".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null());
        // The interpreter's folders may lie under /tmp (a venv in a checkout there), which the
        // tmpfs below hides: hold them open and mount them through /proc/self/fd.
        let mut held = [-1i32; 4];
        for (fd, tree) in held.iter_mut().zip(interpreter) {
            *fd = libc::open(tree.source.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
        }
        for dir in [c"/tmp", c"/var/tmp", c"/dev/shm"] {
            tmpfs(dir, c"size=1g,mode=1777");
        }
        enter_minimal_root(interpreter, &held);
    }
}

type CPath = &'static std::ffi::CStr;

unsafe fn tmpfs(dir: CPath, options: CPath) -> bool {
    // SAFETY: constant NUL-terminated strings.
    unsafe {
        libc::mount(c"tmpfs".as_ptr(), dir.as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, options.as_ptr().cast())
            == 0
    }
}

const SANDBOX_ROOT: &str = "/tmp/.sandbox-root";

/// Replaces the server's root with a fresh one holding only what CPython needs: `/usr` and
/// `/etc` read-only, `/dev`, an empty `/tmp`, the merged-usr links, and the interpreter's own
/// folder when it lives elsewhere (read-only). The host's other files (task files with expected
/// outputs, home folders, the project) and `/proc` (other processes' command lines) are then out
/// of reach. Only raw syscalls on paths made before the fork: we are between fork and exec.
/// Any failure leaves the old root (the server reports what it sees).
unsafe fn enter_minimal_root(interpreter: &[InterpreterTree], held: &[i32]) {
    const ROOT: CPath = c"/tmp/.sandbox-root";
    // SAFETY: raw syscalls with constant NUL-terminated paths.
    unsafe {
        libc::mkdir(ROOT.as_ptr(), 0o755);
        if !tmpfs(ROOT, c"size=1g,mode=755") {
            return;
        }
        let read_only = [(c"/usr", c"/tmp/.sandbox-root/usr"), (c"/etc", c"/tmp/.sandbox-root/etc")];
        for (src, dst) in read_only {
            libc::mkdir(dst.as_ptr(), 0o755);
            if libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0 {
                return;
            }
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID;
            libc::mount(std::ptr::null(), dst.as_ptr(), std::ptr::null(), flags, std::ptr::null());
        }
        libc::mkdir(c"/tmp/.sandbox-root/dev".as_ptr(), 0o755);
        let dev_flags = libc::MS_BIND | libc::MS_REC;
        if libc::mount(c"/dev".as_ptr(), c"/tmp/.sandbox-root/dev".as_ptr(), std::ptr::null(), dev_flags, std::ptr::null()) != 0 {
            return;
        }
        libc::mkdir(c"/tmp/.sandbox-root/tmp".as_ptr(), 0o1777);
        tmpfs(c"/tmp/.sandbox-root/tmp", c"size=1g,mode=1777");
        // After the root's own /tmp, which would hide an interpreter mounted under it.
        for (tree, fd) in interpreter.iter().zip(held) {
            for dir in &tree.parents {
                libc::mkdir(dir.as_ptr(), 0o755);
            }
            libc::mkdir(tree.target.as_ptr(), 0o755);
            let mut path = [0u8; 32];
            let source = if *fd >= 0 { proc_fd_path(&mut path, *fd) } else { tree.source.as_ptr() };
            if libc::mount(source, tree.target.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0 {
                return;
            }
            let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID;
            libc::mount(std::ptr::null(), tree.target.as_ptr(), std::ptr::null(), flags, std::ptr::null());
        }
        // Merged /usr (Debian 12): /bin, /lib, /lib64, /sbin are links into /usr.
        let links = [
            (c"/bin", c"usr/bin", c"/tmp/.sandbox-root/bin"),
            (c"/sbin", c"usr/sbin", c"/tmp/.sandbox-root/sbin"),
            (c"/lib", c"usr/lib", c"/tmp/.sandbox-root/lib"),
            (c"/lib64", c"usr/lib64", c"/tmp/.sandbox-root/lib64"),
        ];
        for (host, target, link) in links {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::lstat(host.as_ptr(), &mut st) != 0 {
                continue;
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                libc::symlink(target.as_ptr(), link.as_ptr());
            } else {
                libc::mkdir(link.as_ptr(), 0o755);
                libc::mount(host.as_ptr(), link.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null());
            }
        }
        libc::mkdir(c"/tmp/.sandbox-root/.old".as_ptr(), 0o700);
        if libc::syscall(libc::SYS_pivot_root, ROOT.as_ptr(), c"/tmp/.sandbox-root/.old".as_ptr()) != 0 {
            return;
        }
        libc::chdir(c"/".as_ptr());
        libc::umount2(c"/.old".as_ptr(), libc::MNT_DETACH);
        libc::rmdir(c"/.old".as_ptr());
    }
}

/// Writes `v` in decimal at `buf[at..]` and returns where it ends, without allocating (we are
/// between fork and exec).
fn write_decimal(buf: &mut [u8], at: usize, v: u32) -> usize {
    let mut digits = [0u8; 10];
    let (mut n, mut v) = (0, v);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[at + i] = digits[n - 1 - i];
    }
    at + n
}

/// "/proc/self/fd/FD" in `buf`, NUL-terminated.
fn proc_fd_path(buf: &mut [u8; 32], fd: i32) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let end = write_decimal(buf, PREFIX.len(), fd.unsigned_abs());
    buf[end] = 0;
    buf.as_ptr().cast()
}

/// Writes "ID ID 1" (a uid_map / gid_map line).
fn format_id_map(buf: &mut [u8; 64], id: u32) -> usize {
    let mut len = 0;
    for _ in 0..2 {
        len = write_decimal(buf, len, id);
        buf[len] = b' ';
        len += 1;
    }
    buf[len] = b'1';
    len + 1
}

unsafe fn write_file(path: &std::ffi::CStr, data: &[u8]) {
    // SAFETY: path is NUL-terminated, data valid for its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, data.as_ptr().cast(), data.len());
            libc::close(fd);
        }
    }
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn send_with_fds(socket: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        if libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_are_formatted_without_allocation() {
        let mut buf = [0u8; 64];
        let n = format_id_map(&mut buf, 1000);
        assert_eq!(&buf[..n], b"1000 1000 1");
        let n = format_id_map(&mut buf, 0);
        assert_eq!(&buf[..n], b"0 0 1");
    }
}
