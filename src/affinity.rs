//! Which cores the products run on: with `--power`, the pool's threads are pinned, one core
//! each, the board's big cores first (a big.LITTLE board's config names them), so that the
//! power loop's thread count also says which cores run: `t` threads are the caller on the
//! first core and workers 1..t on the next ones. Linux only (`sched_setaffinity`,
//! `pthread_setaffinity_np`); where pinning fails the run goes on unpinned, and says so once.

use anyhow::{bail, Result};

use crate::board::Board;

/// What pinning did, for the startup line and `--json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pinning {
    /// The cores in the order threads take them.
    pub cores: Vec<usize>,
    /// Where they came from: "the board's big cores" or "the cores this process may use".
    pub from: &'static str,
    /// Why the threads are not pinned, if they are not.
    pub error: Option<String>,
}

impl Pinning {
    pub fn describe(&self) -> String {
        let list = self.cores.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        match &self.error {
            None => format!("threads pinned to cores {list} ({})", self.from),
            Some(e) => format!("threads not pinned ({e})"),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "cores": self.cores, "from": self.from, "pinned": self.error.is_none(), "error": self.error })
    }
}

/// The order in which `allowed` cores are taken: the board's big cores first (those among the
/// allowed), then the rest.
pub fn order(allowed: &[usize], board: Option<&Board>) -> (Vec<usize>, &'static str) {
    let big: Vec<usize> = board.map(|b| b.big_cores.iter().copied().filter(|c| allowed.contains(c)).collect()).unwrap_or_default();
    if big.is_empty() || big.len() == allowed.len() {
        return (allowed.to_vec(), "the cores this process may use");
    }
    let rest = allowed.iter().copied().filter(|c| !big.contains(c));
    (big.iter().copied().chain(rest).collect(), "the board's big cores first")
}

/// Pin the caller and the pool's first `threads - 1` workers, one core each, in [`order`].
pub fn pin(threads: usize, board: Option<&Board>) -> Pinning {
    let allowed = match allowed_cores() {
        Ok(a) => a,
        Err(e) => return Pinning { cores: Vec::new(), from: "", error: Some(format!("{e:#}")) },
    };
    let (cores, from) = order(&allowed, board);
    let error = pin_to(&cores, threads).err().map(|e| format!("{e:#}"));
    Pinning { cores: cores.into_iter().take(threads.max(1)).collect(), from, error }
}

#[cfg(target_os = "linux")]
fn allowed_cores() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the pointer and size describe `set`.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set within its size (the index is below CPU_SETSIZE).
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

#[cfg(not(target_os = "linux"))]
fn allowed_cores() -> Result<Vec<usize>> {
    bail!("pinning threads to cores is done on Linux only")
}

#[cfg(target_os = "linux")]
fn one_core(core: usize) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it (core is below
    // CPU_SETSIZE: it came from sched_getaffinity).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        set
    }
}

#[cfg(target_os = "linux")]
fn pin_to(cores: &[usize], threads: usize) -> Result<()> {
    if cores.is_empty() {
        bail!("no core to pin to");
    }
    let size = std::mem::size_of::<libc::cpu_set_t>();
    let set = one_core(cores[0]);
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of `size` bytes.
    if unsafe { libc::sched_setaffinity(0, size, &set) } != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    for (i, handle) in edge_runtime::pool::worker_handles(threads.saturating_sub(1)).into_iter().enumerate() {
        let set = one_core(cores[(i + 1) % cores.len()]);
        // SAFETY: `handle` is a live pool worker's pthread_t (workers never exit); `set` is a
        // valid cpu_set_t of `size` bytes.
        let rc = unsafe { libc::pthread_setaffinity_np(handle, size, &set) };
        if rc != 0 {
            bail!("pthread_setaffinity_np: {}", std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn pin_to(_: &[usize], _: usize) -> Result<()> {
    bail!("pinning threads to cores is done on Linux only")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_cores_come_first_and_one_cluster_keeps_the_order() {
        let mut b = Board::load("rpi5-8gb").unwrap();
        assert_eq!(order(&[0, 1, 2, 3], Some(&b)), (vec![0, 1, 2, 3], "the cores this process may use"));
        b.big_cores = vec![4, 5];
        assert_eq!(order(&[0, 1, 2, 3, 4, 5], Some(&b)), (vec![4, 5, 0, 1, 2, 3], "the board's big cores first"));
        // Big cores this process may not use are skipped.
        assert_eq!(order(&[0, 1, 5], Some(&b)).0, vec![5, 0, 1]);
        assert_eq!(order(&[2, 3], None).0, vec![2, 3]);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_can_pin_its_threads() {
        let allowed = allowed_cores().unwrap();
        assert!(!allowed.is_empty());
        let p = pin(2, None);
        assert!(p.error.is_none(), "{p:?}");
        assert_eq!(p.cores, allowed.iter().copied().take(2).collect::<Vec<_>>());
        assert!(p.describe().starts_with("threads pinned to cores"));
    }
}
