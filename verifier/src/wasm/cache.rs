//! The compiled-module cache (`~/.cache/dllm-rl/wasm`): one ~300 MB file per interpreter, harness
//! and guest-package version. Every upgrade of dllm-rl (or edit of the harness) makes a new
//! one, so each kind keeps only its most recently used files.

use std::path::Path;
use std::time::SystemTime;

/// Files of one kind kept: the current one and a few others (another dllm-rl version in use
/// beside this one, a switch back and forth between two checkouts).
pub(super) const KEEP_PER_KIND: usize = 3;

/// Marks a cached file as used now (its mtime), so that pruning keeps it.
pub(super) fn mark_used(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Removes all but the `keep` most recently used `{prefix}*.cwasm` files of `dir`. A process
/// still using a removed file keeps its mapping; failures only leave files behind.
pub(super) fn prune(dir: &Path, prefix: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(prefix) && n.ends_with(".cwasm")))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, path) in files.into_iter().skip(keep) {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!("removed the old module cache {}", path.display()),
            Err(e) => tracing::debug!("cannot remove the old module cache {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_most_recently_used_files_of_a_kind_stay() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, secs: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            let file = std::fs::File::options().append(true).open(&path).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).unwrap();
            path
        };
        let old = at("guest-preinit-1.cwasm", 100);
        let used = at("guest-preinit-2.cwasm", 50);
        let newer = at("guest-preinit-3.cwasm", 200);
        let newest = at("guest-preinit-4.cwasm", 300);
        let other_kind = at("python-snapshot-1.cwasm", 1);
        mark_used(&used);
        prune(dir.path(), "guest-preinit-", 3);
        assert!(!old.exists(), "the least recently used goes");
        assert!(used.exists() && newer.exists() && newest.exists());
        assert!(other_kind.exists(), "another kind is pruned on its own");
    }
}
