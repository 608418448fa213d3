//! What the device has left: readings for the memory controller (`edge_runtime::control`) and
//! for fitting a run to free memory by default.
//!
//! ```text
//! room = min( budget - VmRSS                                   (--budget, when given)
//!           , limit - (usage - inactive file)                  (the cgroup's, when it has one)
//!           , MemAvailable - reserve )                         (/proc/meminfo)
//! ```
//!
//! A cgroup's usage counts the page cache, mapped checkpoint pages included, which the kernel
//! reclaims before it kills anything; the inactive file pages are taken off, as the kubelet
//! does. Both cgroup versions are read (v2 `memory.max`/`memory.current`, v1
//! `memory.limit_in_bytes`/`memory.usage_in_bytes`). Pressure is PSI's `some avg10`, the
//! cgroup's (v2) or the system's.
//!
//! `EDGE_RUN_MEM_LIMIT=FILE` simulates a cgroup that holds this process alone: its limit is the
//! byte count in FILE (read at every reading), its usage the resident set. The tests squeeze a
//! run through it where no cgroup can be made.

use std::path::{Path, PathBuf};

use crate::stats::{self, human_bytes};

/// Kept free for the rest of the system when fitting to `MemAvailable`: 5% of the total, at
/// least 64 MiB.
pub fn reserve(total: u64) -> u64 {
    (total / 20).max(64 << 20)
}

/// The whole process's budget when fitting to free memory: the resident set now plus the room
/// the device leaves (`MemAvailable` less the reserve, or with a board config its margin and
/// then its share; the cgroup's room when lower), and the startup line that says so.
pub fn device_budget(r: &Reading, board: Option<(f64, u64)>) -> Option<(u64, String)> {
    let (avail, total) = r.available?;
    let (system, how) = match board {
        Some((share, margin)) => (
            (avail.saturating_sub(margin) as f64 * share) as u64,
            format!("MemAvailable {} less the board's margin {}, times its share {share}", human_bytes(avail), human_bytes(margin)),
        ),
        None => (avail.saturating_sub(reserve(total)), format!("MemAvailable {} less a reserve of {}", human_bytes(avail), human_bytes(reserve(total)))),
    };
    let (room, how) = match r.cgroup {
        Some((usage, limit)) if limit.saturating_sub(usage) < system => {
            (limit.saturating_sub(usage), format!("the cgroup's limit {} less its use {}", human_bytes(limit), human_bytes(usage)))
        }
        _ => (system, how),
    };
    let bytes = r.rss + room;
    Some((bytes, format!("free memory: {} ({how}, plus {} resident now)", human_bytes(bytes), human_bytes(r.rss))))
}

/// The cgroup this process is in, where its memory files can be read.
#[derive(Debug, Clone)]
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    fn find() -> Option<Cgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let v1 = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            ctl.split(',').any(|c| c == "memory").then(|| path.to_string())
        });
        let v2 = own.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string));
        let candidates = [
            v1.map(|p| (Path::new("/sys/fs/cgroup/memory").join(p.trim_start_matches('/')), false)),
            v2.clone().map(|p| (Path::new("/sys/fs/cgroup").join(p.trim_start_matches('/')), true)),
            v2.map(|p| (Path::new("/sys/fs/cgroup/unified").join(p.trim_start_matches('/')), true)),
        ];
        candidates.into_iter().flatten().find_map(|(dir, v2)| {
            let probe = if v2 { "memory.current" } else { "memory.usage_in_bytes" };
            dir.join(probe).is_file().then_some(Cgroup { dir, v2 })
        })
    }

    fn read_u64(&self, name: &str) -> Option<u64> {
        std::fs::read_to_string(self.dir.join(name)).ok()?.trim().parse().ok()
    }

    /// (usage less inactive file pages, limit), or `None` without a limit.
    fn usage_and_limit(&self) -> Option<(u64, u64)> {
        let (limit, usage, inactive) = if self.v2 {
            (self.read_u64("memory.max")?, self.read_u64("memory.current")?, "inactive_file")
        } else {
            (self.read_u64("memory.limit_in_bytes")?, self.read_u64("memory.usage_in_bytes")?, "total_inactive_file")
        };
        // v1 writes "no limit" as a huge page-aligned number.
        if limit >= 1 << 60 {
            return None;
        }
        let stat = std::fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default();
        let inactive = stat
            .lines()
            .find_map(|l| l.strip_prefix(inactive).and_then(|v| v.trim().parse::<u64>().ok()))
            .unwrap_or(0);
        Some((usage.saturating_sub(inactive), limit))
    }
}

/// One reading of the device's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// This process's resident set (`VmRSS`).
    pub rss: u64,
    /// `MemAvailable` and `MemTotal`, bytes.
    pub available: Option<(u64, u64)>,
    /// The cgroup's usage (less inactive file pages) and limit, where it has a limit.
    pub cgroup: Option<(u64, u64)>,
    /// PSI memory `some avg10`, percent.
    pub pressure: Option<f32>,
}

impl Reading {
    /// The room of each source (name, bytes) for a process held to `budget`.
    pub fn rooms(&self, budget: Option<u64>) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        if let Some(b) = budget {
            out.push(("budget", b.saturating_sub(self.rss)));
        }
        if let Some((usage, limit)) = self.cgroup {
            out.push(("cgroup limit", limit.saturating_sub(usage)));
        }
        if let Some((avail, total)) = self.available {
            out.push(("MemAvailable", avail.saturating_sub(reserve(total))));
        }
        out
    }

    /// The least room of every source and its name (`None` when nothing can be read).
    pub fn room(&self, budget: Option<u64>) -> Option<(&'static str, u64)> {
        self.rooms(budget).into_iter().min_by_key(|r| r.1)
    }
}

/// The files to read, found once.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The simulated limit's file (`EDGE_RUN_MEM_LIMIT`).
    pub simulated: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    psi: Option<PathBuf>,
}

impl Sources {
    pub fn detect() -> Sources {
        let simulated = std::env::var_os("EDGE_RUN_MEM_LIMIT").map(PathBuf::from);
        let cgroup = Cgroup::find();
        let psi = cgroup
            .as_ref()
            .filter(|c| c.v2)
            .map(|c| c.dir.join("memory.pressure"))
            .filter(|p| p.is_file())
            .or_else(|| Some(PathBuf::from("/proc/pressure/memory")).filter(|p| p.is_file()));
        Sources { simulated, cgroup, psi }
    }

    pub fn read(&self) -> Reading {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb = |key: &str| {
            meminfo.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.trim().trim_end_matches("kB").trim();
                v.parse::<u64>().ok().map(|v| v * 1024)
            })
        };
        let available = kb("MemAvailable:").map(|a| (a, kb("MemTotal:").unwrap_or(a)));
        let pressure = self.psi.as_ref().and_then(|p| {
            let s = std::fs::read_to_string(p).ok()?;
            let some = s.lines().find(|l| l.starts_with("some"))?;
            some.split_whitespace().find_map(|f| f.strip_prefix("avg10=")).and_then(|v| v.parse().ok())
        });
        let rss = stats::rss_bytes().unwrap_or(0);
        let cgroup = match &self.simulated {
            Some(f) => std::fs::read_to_string(f).ok().and_then(|s| s.trim().parse::<u64>().ok()).map(|limit| (rss, limit)),
            None => self.cgroup.as_ref().and_then(Cgroup::usage_and_limit),
        };
        Reading { rss, available, cgroup, pressure }
    }
}

/// Give freed heap pages back to the system now (glibc keeps them for reuse otherwise), so a
/// step down shows in the resident set.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it has no
    // preconditions beyond a glibc malloc, which this target links.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fix glibc's mmap threshold at 256 KiB. By default glibc raises it each time a large mapping
/// is freed (a step down frees copies of views of megabytes); the buffers allocated next (a KV
/// cache in a new format, a view's copy) then come from the heap, where a zeroed allocation is
/// written in full (a fresh mapping's pages stay untouched until used) and a freed one stays
/// resident, so a step down could raise the resident set. In exchange, a hot loop must keep its
/// large buffers between calls (as the x86 prefill keeps its tiles), or it maps and faults them
/// in every time. Call before any thread starts.
pub fn return_freed_copies() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's settings; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_the_least_of_the_sources() {
        let r = Reading {
            rss: 300 << 20,
            available: Some((2 << 30, 8 << 30)),
            cgroup: Some((900 << 20, 1 << 30)),
            pressure: None,
        };
        assert_eq!(r.room(Some(400 << 20)), Some(("budget", 100 << 20)));
        assert_eq!(r.room(Some(1 << 30)), Some(("cgroup limit", 124 << 20)));
        assert_eq!(r.room(None), Some(("cgroup limit", 124 << 20)));
        let r = Reading { cgroup: None, ..r };
        // 2 GiB less 5% of 8 GiB.
        assert_eq!(r.room(None), Some(("MemAvailable", (2 << 30) - (8 << 30) / 20)));
        assert_eq!(Reading::default().room(None), None);
    }

    #[test]
    fn a_device_budget_is_the_resident_set_plus_the_least_room() {
        let r = Reading { rss: 50 << 20, available: Some((2 << 30, 8 << 30)), cgroup: None, pressure: None };
        let (b, why) = device_budget(&r, None).unwrap();
        assert_eq!(b, (50 << 20) + (2 << 30) - (8 << 30) / 20);
        assert!(why.contains("MemAvailable 2.0 GiB"), "{why}");
        // A board keeps its margin, then takes its share.
        let (b, _) = device_budget(&r, Some((0.5, 1 << 30))).unwrap();
        assert_eq!(b, (50 << 20) + (512 << 20));
        // A cgroup with less room wins.
        let r = Reading { cgroup: Some((300 << 20, 400 << 20)), ..r };
        let (b, why) = device_budget(&r, None).unwrap();
        assert_eq!(b, (50 << 20) + (100 << 20));
        assert!(why.contains("cgroup"), "{why}");
        assert_eq!(device_budget(&Reading::default(), None), None);
    }
}
