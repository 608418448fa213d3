//! Where the readers look: the real `/sys` and `/proc`, or a fixture tree in their place, and the
//! programs they run. The readers take a [`Host`] instead of reading the environment, so tests
//! run side by side, each on its own tree.
//!
//! - `EDGE_RUN_SYSFS_ROOT=DIR`: `/sys/...` and `/proc/...` are read under `DIR` instead.
//! - `EDGE_RUN_VCGENCMD=PROGRAM`: run in place of `vcgencmd` (a script printing its output).
//!
//! A fixture tree must not be mixed with the machine's own sensors, or a test would pass on one
//! machine and fail on another: with `EDGE_RUN_SYSFS_ROOT` set, NVML (which asks the driver, not
//! sysfs) is not loaded and `vcgencmd` is run only when `EDGE_RUN_VCGENCMD` names one.

use std::cmp::Ordering;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, Result};

/// The NVML library as the NVIDIA driver installs it.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Read `/sys` and `/proc` under this folder; None reads the real ones.
    pub root: Option<PathBuf>,
    /// The program run as `vcgencmd`; None when a fixture root is set without one.
    pub vcgencmd: Option<String>,
    /// The NVML library to load; None when a fixture root is set.
    pub nvml: Option<String>,
}

impl Host {
    /// The machine itself, or the fixture tree and programs the environment names.
    pub fn from_env() -> Host {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let root = var("EDGE_RUN_SYSFS_ROOT").map(PathBuf::from);
        let vcgencmd = var("EDGE_RUN_VCGENCMD").or_else(|| root.is_none().then(|| "vcgencmd".to_string()));
        let nvml = root.is_none().then(|| NVML_LIBRARY.to_string());
        Host { root, vcgencmd, nvml }
    }

    /// A fixture tree at `root`, no `vcgencmd` and no NVML.
    #[cfg(test)]
    pub fn fixture(root: &Path) -> Host {
        Host { root: Some(root.to_path_buf()), vcgencmd: None, nvml: None }
    }

    /// `path` as this host reads it: under the fixture root when it is a `/sys` or `/proc` path.
    pub fn path(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        match &self.root {
            Some(root) if p.starts_with("/sys") || p.starts_with("/proc") => root.join(p.strip_prefix("/").unwrap_or(p)),
            _ => p.to_path_buf(),
        }
    }

    /// Why `vcgencmd` is not run, for messages.
    pub fn no_vcgencmd_reason() -> &'static str {
        "not run: EDGE_RUN_SYSFS_ROOT reads a fixture tree and EDGE_RUN_VCGENCMD names no program"
    }
}

/// A sysfs file's text, trimmed; the error names the file.
pub fn read_text(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) => Err(anyhow!("cannot read {}: {}", path.display(), io_reason(&e))),
    }
}

/// An I/O error without the `(os error N)` tail, lower case like the rest of a message.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// A sysfs file holding one finite number; the error names the file, what it held and what
/// was expected (`expected`: "an integer in microjoules").
pub fn read_number(path: &Path, expected: &str) -> Result<f64> {
    let text = read_text(path)?;
    parse_finite(&text).ok_or_else(|| anyhow!("{}: {} is not {expected}", path.display(), quoted(&text)))
}

/// A finite decimal number (sysfs never writes `inf` or `NaN`; a file that does is broken).
pub fn parse_finite(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `text` quoted for a one-line message, cut to a readable length.
pub fn quoted(text: &str) -> String {
    let line = crate::report::one_line(text);
    if line.chars().count() > 80 {
        format!("{:?}...", line.chars().take(80).collect::<String>())
    } else {
        format!("{line:?}")
    }
}

/// The paths matching `pattern`, whose components may hold `*` (sysfs numbering: `hwmon*`,
/// `intel-rapl:*`), in natural order (`hwmon2` before `hwmon10`).
pub fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for c in pattern.components() {
        let part = c.as_os_str().to_string_lossy();
        if !matches!(c, Component::Normal(_)) || !part.contains('*') {
            for p in &mut found {
                p.push(c.as_os_str());
            }
            continue;
        }
        let mut next = Vec::new();
        for dir in &found {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.retain(|n| wildcard(&part, n));
            names.sort_by(|a, b| natural_cmp(a, b));
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        found = next;
    }
    found.retain(|p| p.exists());
    found
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn wildcard(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Names compared with their digit runs as numbers.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    natural_key(a).cmp(&natural_key(b))
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Number(u64),
    Text(String),
}

fn natural_key(s: &str) -> Vec<Part> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let digits = c.is_ascii_digit();
        let end = rest.find(|ch: char| ch.is_ascii_digit() != digits).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        out.push(if digits { Part::Number(run.parse().unwrap_or(u64::MAX)) } else { Part::Text(run.to_string()) });
        rest = tail;
    }
    out
}

/// Writes `files` (path relative to `root`, contents) into a fixture tree.
#[cfg(test)]
pub fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_go_under_the_root_only_for_sys_and_proc() {
        let h = Host::fixture(Path::new("/tmp/fx"));
        assert_eq!(h.path("/sys/class/powercap"), Path::new("/tmp/fx/sys/class/powercap"));
        assert_eq!(h.path("/proc/device-tree/model"), Path::new("/tmp/fx/proc/device-tree/model"));
        assert_eq!(h.path("/system/x"), Path::new("/system/x"));
        assert_eq!(h.path("/dev/shm/w"), Path::new("/dev/shm/w"));
        assert_eq!(Host::default().path("/sys/x"), Path::new("/sys/x"));
    }

    #[test]
    fn glob_matches_stars_in_natural_order() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["hwmon10", "hwmon2", "hwmon1", "other"] {
            write_tree(dir.path(), &[(&format!("{n}/in1_input"), "5000")]);
        }
        let got: Vec<String> = glob(&dir.path().join("hwmon*/in1_input"))
            .iter()
            .map(|p| p.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["hwmon1", "hwmon2", "hwmon10"]);
        assert!(glob(&dir.path().join("hwmon*/curr1_input")).is_empty());
        assert!(wildcard("intel-rapl:*", "intel-rapl:0:1"));
        assert!(!wildcard("intel-rapl:*", "intel-rapl-mmio:0"));
        assert!(wildcard("in*_label", "in12_label") && !wildcard("in*_label", "in1_input"));
        assert!(wildcard("BAT*", "BAT") && !wildcard("BAT*", "AC"));
    }

    #[test]
    fn garbage_numbers_name_the_file_and_the_expectation() {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path(), &[("a", "12abc\n"), ("b", "nan"), ("c", " 42\n")]);
        let e = read_number(&dir.path().join("a"), "an integer in microjoules").unwrap_err().to_string();
        assert!(e.contains("/a: \"12abc\" is not an integer in microjoules"), "{e}");
        assert!(read_number(&dir.path().join("b"), "x").is_err());
        assert_eq!(read_number(&dir.path().join("c"), "x").unwrap(), 42.0);
        let e = read_number(&dir.path().join("missing"), "x").unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.ends_with("missing: no such file"), "{e}");
    }
}
