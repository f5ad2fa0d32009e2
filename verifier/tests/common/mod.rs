//! Shared by the test binaries that check the native sandbox leaves no process behind.

fn status_field(pid: &str, field: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|l| l.split_whitespace().next())?.parse().ok()
}

/// Whether `pid` descends from this test process (the sandbox's fork-servers are subreapers, so
/// an escaped grandchild is reparented to them, not to init).
fn is_ours(pid: &str) -> bool {
    let me = std::process::id();
    let mut pid = pid.parse::<u32>().unwrap_or(0);
    while pid > 1 {
        pid = status_field(&pid.to_string(), "PPid:").unwrap_or(0);
        if pid == me {
            return true;
        }
    }
    false
}

/// The processes (zombies included) of this test's sandboxes now running with a uid in the
/// native sandbox's range; other dllm-rl processes' sandboxes on the machine are not counted.
pub fn our_sandbox_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let Some(uid) = status_field(&pid, "Uid:") else { continue };
        if dllm_verifier::native::SANDBOX_UIDS.contains(&uid) && is_ours(&pid) {
            let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            found.push(format!("{pid} uid {uid}: {}", state.trim()));
        }
    }
    found
}
