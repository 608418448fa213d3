//! Where a command writes its results. The place is checked before the long work that fills it
//! (a pack, a sweep, a run of logits), so a folder that cannot be written fails in a moment, not
//! after an hour; the files are then written to a temporary name beside their place and renamed
//! into it, so a failure never leaves a half-written file under the real name. Both binaries
//! (edge-pack and edge-run) use these.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

/// The folder `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Create and remove a file in `dir`: the only check that answers for read-only file systems,
/// ACLs and root alike. Its name is a temporary file's (`.tmp-PID`), so one left by a kill at the
/// wrong moment is cleaned like any other (`interrupt`), and numbered per call, so that threads
/// checking the same folder at once do not remove each other's.
fn probe(dir: &Path) -> std::io::Result<()> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = dir.join(format!(".edge-write-check-{n}.tmp-{}", std::process::id()));
    std::fs::File::create_new(&p)?;
    std::fs::remove_file(&p)
}

/// Check, before any work, that the file `path` (named by `what`, e.g. `--logits-out`) can be
/// written: not a folder, in a folder that exists and takes new files. An existing file is
/// fine (it is replaced).
pub fn check_file(path: &Path, what: &str) -> Result<()> {
    let shown = path.display();
    if path.is_dir() {
        bail!("{what} '{shown}' is a folder; give a file name in it");
    }
    let dir = parent_of(path);
    match std::fs::metadata(&dir) {
        Err(_) => bail!("the folder of {what} '{shown}' does not exist; create {} first or choose another path", dir.display()),
        Ok(m) if !m.is_dir() => bail!("{what} '{shown}' is inside {}, which is a file, not a folder; choose another path", dir.display()),
        Ok(_) => {}
    }
    probe(&dir).map_err(|e| anyhow!("cannot write {what} '{shown}': {} does not take new files ({e}); choose a writable folder", dir.display()))
}

/// Check, before any work, that the folder `dir` (named by `what`, e.g. `--out`) can receive
/// `files`: an existing folder that takes new files and holds no folder under those names, or a
/// missing one whose nearest existing ancestor is a writable folder (it is created at the end).
pub fn check_dir(dir: &Path, files: &[&str], what: &str) -> Result<()> {
    let shown = dir.display();
    if dir.exists() {
        if !dir.is_dir() {
            bail!("{what} '{shown}' is a file, not a folder; give a folder (it is created if missing)");
        }
        probe(dir).map_err(|e| anyhow!("cannot write in {what} '{shown}' ({e}); choose a writable folder"))?;
        if let Some(f) = files.iter().map(|f| dir.join(f)).find(|f| f.is_dir()) {
            bail!("{what} '{shown}' holds a folder named {}, where a file goes; remove it or choose another folder", f.display());
        }
        return Ok(());
    }
    // The nearest ancestor that exists is where the folder would be created.
    let mut up = parent_of(dir);
    while !up.exists() && up != Path::new(".") {
        up = parent_of(&up);
    }
    if !up.is_dir() {
        bail!("{what} '{shown}' cannot be created: {} is a file, not a folder; choose another folder", up.display());
    }
    probe(&up).map_err(|e| anyhow!("{what} '{shown}' cannot be created: {} does not take new files ({e}); choose a writable folder", up.display()))
}

/// Write `bytes` to `path` through a temporary file beside it, renamed into place; on failure
/// the temporary file is removed and `path` is left as it was, and so on Ctrl-C, SIGTERM or
/// SIGHUP (the folder is watched as a pack's is: [`crate::interrupt::watch`], which also
/// removes what a killed process left there).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = parent_of(path);
    crate::interrupt::watch(&dir);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_checking_one_folder_at_once_all_pass() {
        let d = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..200 {
                        super::check_file(&d.path().join("out.edge"), "--output").unwrap();
                    }
                });
            }
        });
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "no probe left behind");
    }

    use super::*;

    #[test]
    fn a_write_removes_what_a_killed_writer_left_beside_it() {
        let d = tempfile::tempdir().unwrap();
        // Above Linux's largest pid (2^22): no process runs under it.
        let dead = d.path().join(".sweep.json.tmp-4194305");
        std::fs::write(&dead, b"half").unwrap();
        write_atomic(&d.path().join("sweep.json"), b"{}").unwrap();
        assert!(!dead.exists(), "the dead writer's temporary file is still there");
        assert_eq!(std::fs::read(d.path().join("sweep.json")).unwrap(), b"{}");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn files_and_folders_are_checked_and_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f.txt");
        std::fs::write(&file, b"x").unwrap();
        // A file where a folder goes, and a folder inside a file.
        let e = check_dir(&file, &["a.json"], "--out").unwrap_err().to_string();
        assert!(e.contains("is a file, not a folder"), "{e}");
        let e = check_dir(&file.join("sub/deeper"), &[], "--out").unwrap_err().to_string();
        assert!(e.contains("cannot be created") && e.contains("is a file"), "{e}");
        let e = check_file(&file.join("x.npy"), "--logits-out").unwrap_err().to_string();
        assert!(e.contains("which is a file"), "{e}");
        let e = check_file(&d.path().join("missing/x.npy"), "--logits-out").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_file(d.path(), "--logits-out").unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        // A folder holding a folder under an output's name.
        std::fs::create_dir(d.path().join("a.json")).unwrap();
        let e = check_dir(d.path(), &["a.json"], "--out").unwrap_err().to_string();
        assert!(e.contains("holds a folder named"), "{e}");
        // What can be written passes, and the probe leaves nothing behind.
        check_dir(&d.path().join("new/sub"), &["a.json"], "--out").unwrap();
        check_file(&file, "--logits-out").unwrap();
        write_atomic(&file, b"whole").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"whole");
        let mut names: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["a.json", "f.txt"]);
        // A failed write leaves no temporary file.
        assert!(write_atomic(&d.path().join("a.json"), b"y").is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
