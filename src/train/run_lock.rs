//! One writer per run: an OS file lock on `runs/<name>/lock`, held for the life of the process.
//!
//! A second `train --resume` on a live run used to run beside the first (the store held step 2
//! twice, checkpoints interleaved). The lock is `flock`'s, so a crashed or killed holder leaves
//! no stale lock behind: the kernel drops it with the process, and nothing needs cleaning up.
//! The file says who holds it (pid and host), for the refusal's message.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};

/// Held while alive; dropped (or the process gone), the run is free again.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of the run folder `run_dir` (created if missing), or fails naming the
    /// process that holds it.
    pub fn take(run_dir: &Path, run: &str) -> anyhow::Result<RunLock> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let path = run_dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                bail!(
                    "run {run} is in use by {} ({}): one process writes a run; wait for it, or stop it (Ctrl-C or SIGTERM checkpoints) and resume",
                    if holder.is_empty() { "another process" } else { holder },
                    path.display()
                );
            }
            return Err(error).with_context(|| format!("locking {}", path.display()));
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "pid {} on {}", std::process::id(), hostname())?;
        file.flush()?;
        Ok(RunLock { _file: file })
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "an unknown host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_a_dropped_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::take(dir.path(), "r").unwrap();
        // flock locks belong to the open file: a second open in this process conflicts too.
        let err = RunLock::take(dir.path(), "r").unwrap_err().to_string();
        assert!(err.contains(&format!("in use by pid {}", std::process::id())), "{err}");
        drop(first);
        RunLock::take(dir.path(), "r").unwrap();
    }
}
