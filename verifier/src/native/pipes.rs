//! The five pipes of a native run, and the poll loop that feeds and drains them under the
//! run's deadlines and caps.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::sandbox::{Conversation, End, Progress, RunLimits};

pub(super) struct RunPipes {
    job: (OwnedFd, OwnedFd),
    stdin: (OwnedFd, OwnedFd),
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
    result: (OwnedFd, OwnedFd),
}

/// The parent's ends once the child's ends have been handed to the fork-server and closed here.
pub(super) struct ParentPipes {
    job_w: OwnedFd,
    stdin_w: OwnedFd,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
    result_r: OwnedFd,
}

pub(super) struct Drained {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub results: Vec<u8>,
    pub end: End,
    /// When the run must be over: the wall deadline, or the idle one if sooner. The pipes may
    /// close long before the run ends (a program can close its descriptors and live on), so it
    /// holds until the run's main process has been reaped.
    pub deadline: Instant,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

impl RunPipes {
    pub(super) fn new() -> io::Result<Self> {
        Ok(RunPipes { job: pipe()?, stdin: pipe()?, stdout: pipe()?, stderr: pipe()?, result: pipe()? })
    }

    /// In the order the harness expects: job_r, stdin_r, stdout_w, stderr_w, result_w.
    pub(super) fn child_fds(&self) -> [RawFd; 5] {
        [
            self.job.0.as_raw_fd(),
            self.stdin.0.as_raw_fd(),
            self.stdout.1.as_raw_fd(),
            self.stderr.1.as_raw_fd(),
            self.result.1.as_raw_fd(),
        ]
    }

    pub(super) fn close_child_ends(self) -> ParentPipes {
        let p = ParentPipes {
            job_w: self.job.1,
            stdin_w: self.stdin.1,
            stdout_r: self.stdout.0,
            stderr_r: self.stderr.0,
            result_r: self.result.0,
        };
        for fd in [&p.job_w, &p.stdin_w, &p.stdout_r, &p.stderr_r, &p.result_r] {
            set_nonblocking(fd.as_raw_fd());
        }
        p
    }
}

struct Writer {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
    pos: usize,
    /// Kept open once its data is written: a serve run's requests go down it one by one.
    keep_open: bool,
}

struct Reader {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    cap: usize,
}

impl ParentPipes {
    /// Writes the job and stdin, reads stdout, stderr and results until all three close (the
    /// child and everything it started have exited or closed them), a deadline passes, or a
    /// cap is exceeded. All three closed (`End::Exited`) does not mean the child has exited.
    /// The idle deadline restarts at each result line that `progress` awaits.
    ///
    /// With a conversation (a serve run), each result line goes to it instead, and its answer
    /// down the job pipe as the next request; the idle deadline restarts with each request, and
    /// the time the conversation takes to answer is added to the deadlines.
    pub(super) fn drain(
        self,
        job: &[u8],
        stdin: &[u8],
        limits: &RunLimits,
        mut progress: Progress,
        start: Instant,
        mut conversation: Option<&mut dyn Conversation>,
    ) -> io::Result<Drained> {
        let serving = conversation.is_some();
        let mut job_line = job.to_vec();
        job_line.push(b'\n');
        let mut writers = [
            Writer { fd: Some(self.job_w), data: job_line, pos: 0, keep_open: serving },
            Writer { fd: Some(self.stdin_w), data: stdin.to_vec(), pos: 0, keep_open: false },
        ];
        let mut readers = [
            Reader { fd: Some(self.stdout_r), buf: Vec::new(), cap: limits.output_bytes },
            Reader { fd: Some(self.stderr_r), buf: Vec::new(), cap: limits.output_bytes },
            Reader { fd: Some(self.result_r), buf: Vec::new(), cap: limits.result_bytes },
        ];
        let mut wall_deadline = start + limits.wall;
        let mut last_progress = start;
        // A serve run's current line from the result channel, and whether the conversation is over.
        let mut line: Vec<u8> = Vec::new();
        let mut finished = false;
        let mut chunk = vec![0u8; 1 << 16];
        let mut deadline;
        let end = loop {
            let now = Instant::now();
            deadline = wall_deadline;
            if let Some(idle) = limits.idle {
                deadline = deadline.min(last_progress + idle);
            }
            if readers.iter().all(|r| r.fd.is_none()) {
                break End::Exited;
            }
            if now >= deadline {
                break End::TimedOut;
            }
            let timeout_ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut polls = Vec::with_capacity(5);
            // A writer with nothing left to write is not polled (a pipe kept open for requests
            // is always writable: the loop would spin).
            for w in writers.iter().filter(|w| w.pos < w.data.len()) {
                if let Some(fd) = w.fd.as_ref() {
                    polls.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 });
                }
            }
            for r in readers.iter().filter_map(|r| r.fd.as_ref()) {
                polls.push(libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            // SAFETY: polls is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let ready = |fd: RawFd| polls.iter().find(|p| p.fd == fd).map_or(0, |p| p.revents);
            for w in &mut writers {
                let Some(fd) = w.fd.as_ref() else { continue };
                let revents = ready(fd.as_raw_fd());
                if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    w.fd = None; // the child closed its end: it will not read more
                    continue;
                }
                if revents & libc::POLLOUT != 0 || w.pos == w.data.len() {
                    if w.pos < w.data.len() {
                        let rest = &w.data[w.pos..];
                        // SAFETY: rest is valid for rest.len() bytes.
                        let k = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
                        if k > 0 {
                            w.pos += k as usize;
                        } else if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                            w.fd = None;
                            continue;
                        }
                    }
                    if w.pos == w.data.len() && !w.keep_open {
                        w.fd = None; // EOF for the child
                    }
                }
            }
            let mut over_cap = false;
            for (i, r) in readers.iter_mut().enumerate() {
                let Some(fd) = r.fd.as_ref() else { continue };
                if ready(fd.as_raw_fd()) & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                    continue;
                }
                // SAFETY: chunk is valid for chunk.len() bytes.
                let k = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
                if k == 0 {
                    r.fd = None;
                } else if k > 0 && i == 2 && serving {
                    let got = &chunk[..k as usize];
                    let mut rest = got;
                    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                        line.extend_from_slice(&rest[..end]);
                        rest = &rest[end + 1..];
                        if finished {
                            line.clear();
                            continue;
                        }
                        let asked = Instant::now();
                        let next = conversation.as_mut().and_then(|c| c.answer(&line));
                        line.clear();
                        // The conversation's time is not the run's.
                        let now = Instant::now();
                        wall_deadline += now - asked;
                        last_progress = now;
                        let writer = &mut writers[0];
                        match next {
                            Some(mut request) => {
                                request.push(b'\n');
                                writer.data.drain(..writer.pos);
                                writer.pos = 0;
                                writer.data.extend_from_slice(&request);
                            }
                            None => {
                                finished = true;
                                writer.keep_open = false;
                                if writer.pos == writer.data.len() {
                                    writer.fd = None;
                                }
                            }
                        }
                    }
                    line.extend_from_slice(rest);
                    if line.len() > r.cap {
                        over_cap = true;
                    }
                } else if k > 0 {
                    let got = &chunk[..k as usize];
                    let room = r.cap.saturating_sub(r.buf.len());
                    let kept = &got[..got.len().min(room)];
                    if i == 2 && limits.idle.is_some() && progress.advanced(kept) {
                        last_progress = Instant::now();
                    }
                    r.buf.extend_from_slice(kept);
                    if got.len() > room {
                        over_cap = true;
                    }
                } else if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                    r.fd = None;
                }
            }
            if over_cap {
                break End::OutputLimit;
            }
        };
        let [stdout, stderr, results] = readers.map(|r| r.buf);
        Ok(Drained { stdout, stderr, results, end, deadline })
    }
}
