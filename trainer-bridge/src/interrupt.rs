//! Temporary files of an interrupted pack or output write. Packs and `writable::write_atomic`
//! write to a temporary name and rename it (`.NAME.tmp-PID`; `.NAME.partial-PID` by edge-run's
//! cache): on SIGINT, SIGTERM or SIGHUP this process's temporary files in the folders it watches
//! are removed before it exits, and a process that died without that chance (SIGKILL, power
//! loss) has its files removed by the next pack or write in the same folder.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Exit status after an interruption (128 + SIGINT, as shells report it).
pub const INTERRUPTED: i32 = 130;

/// The process id in a temporary file's name, or `None` for any other file.
fn temp_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, pid) = name.rsplit_once(".tmp-").or_else(|| name.rsplit_once(".partial-"))?;
    pid.parse().ok()
}

/// Whether process `pid` runs (`None`: cannot tell on this system).
fn alive(pid: u32) -> Option<bool> {
    Path::new("/proc/self").exists().then(|| Path::new(&format!("/proc/{pid}")).exists())
}

/// Remove the temporary files in `dir` of process `pid` (`None`: of every process that no
/// longer runs). Returns how many were removed.
fn remove_temps(dir: &Path, pid: Option<u32>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(p) = temp_pid(&name) else { continue };
        let ours = pid == Some(p);
        let stale = pid.is_none() && p != std::process::id() && alive(p) == Some(false);
        if (ours || stale) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Watch `dir` (where a pack is about to write): remove the temporary files left there by
/// processes that no longer run, and remove this process's own if it is interrupted.
pub fn watch(dir: &Path) {
    let stale = remove_temps(dir, None);
    if stale > 0 {
        eprintln!("removed {stale} temporary file(s) left in {} by an interrupted pack or write", dir.display());
    }
    if let Ok(mut dirs) = DIRS.lock() {
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_path_buf());
        }
    }
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // Another handler already installed (a host program's) keeps its say; the stale sweep
        // at the next start still cleans up after us.
        let _ = ctrlc::set_handler(|| {
            let dirs = DIRS.lock().map(|d| d.clone()).unwrap_or_default();
            let n: usize = dirs.iter().map(|d| remove_temps(d, Some(std::process::id()))).sum();
            eprintln!("{}", interrupted_message(n));
            std::process::exit(INTERRUPTED);
        });
    });
}

/// What an interrupted process says: the unfinished files it removed, if any. Outputs it had
/// already finished (renamed into place before the signal) stay, so it never says "nothing".
fn interrupted_message(removed: usize) -> String {
    match removed {
        0 => "interrupted".into(),
        n => format!("interrupted: {n} unfinished file(s) removed (outputs finished before the interruption are kept)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_what_was_removed_only() {
        assert_eq!(interrupted_message(0), "interrupted");
        let m = interrupted_message(2);
        assert!(m.starts_with("interrupted: 2 unfinished file(s) removed") && !m.contains("nothing"), "{m}");
    }

    #[test]
    fn temporary_names_and_their_processes() {
        assert_eq!(temp_pid(".model.edge.tmp-4242"), Some(4242));
        assert_eq!(temp_pid(".smollm-00ff.edge.partial-17"), Some(17));
        assert_eq!(temp_pid("..m.edge.partial-17.tmp-17"), Some(17));
        assert_eq!(temp_pid("model.edge"), None);
        assert_eq!(temp_pid(".model.edge.lock"), None);
        assert_eq!(temp_pid(".x.tmp-notapid"), None);
    }

    #[test]
    fn stale_files_go_and_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        // No process has this id (beyond Linux's pid_max of 2^22).
        let dead = d.path().join(".m.edge.tmp-4194305");
        let mine = d.path().join(format!(".m.edge.tmp-{}", std::process::id()));
        let other = d.path().join("m.edge");
        for f in [&dead, &mine, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        if alive(1).is_none() {
            eprintln!("SKIPPED: no /proc here, a stale file's process cannot be checked");
            return;
        }
        assert_eq!(remove_temps(d.path(), None), 1);
        assert!(!dead.exists() && mine.exists() && other.exists());
        assert_eq!(remove_temps(d.path(), Some(std::process::id())), 1);
        assert!(!mine.exists() && other.exists());
    }
}
