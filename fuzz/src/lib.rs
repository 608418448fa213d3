//! A stable-Rust mutation fuzzer for edge-run's readers of untrusted bytes.
//!
//! `cargo fuzz` needs nightly (or a libFuzzer build with `-s none` and its own toolchain set-up);
//! this harness runs on the stable toolchain the project builds with, inside `cargo test`, so the
//! short run is part of CI and the long run is the same code with a larger count
//! (`benches/fuzz-long.sh`).
//!
//! A run takes seeds (real files), mutates them with a seeded RNG (bit flips, interesting bytes,
//! little-endian fields set to boundary values, truncation, extension, chunk duplication and
//! splices between seeds), and calls the target under `catch_unwind`. There is no coverage
//! instrumentation; as a cheap stand-in, an input whose outcome (the target's error message with
//! its numbers removed) has not been seen before joins the corpus, so mutations that got past
//! one check are mutated further. A panic is a crash: the input is saved and the run goes on.
//! An execution over [`HANG_LIMIT`] is a hang: a watchdog saves the input and ends the process
//! (a hung call cannot be interrupted), naming the target and the file.

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod targets;

/// One allocation larger than this is an out-of-memory bug (a size taken from the input without a
/// bound): [`LimitAlloc`] saves the input and the process ends, as libFuzzer's `-malloc_limit_mb`.
pub const ALLOC_LIMIT: usize = 4 << 30;

/// The input being executed and its target, for [`LimitAlloc`] (an abort cannot be caught).
static CURRENT_INPUT: Mutex<Option<(String, Arc<Vec<u8>>)>> = Mutex::new(None);
static IN_OOM: AtomicBool = AtomicBool::new(false);

/// The system allocator, refusing (after saving the input being executed) any allocation over
/// [`ALLOC_LIMIT`]. Install it in a fuzz test binary with `#[global_allocator]`.
pub struct LimitAlloc;

// SAFETY: every call is forwarded to `System` unchanged, except oversized ones, which return
// null (what an allocator that is out of memory returns) after reporting them.
unsafe impl std::alloc::GlobalAlloc for LimitAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT && !IN_OOM.swap(true, Ordering::SeqCst) {
            if let Ok(Some((name, data))) = CURRENT_INPUT.try_lock().map(|c| c.clone()) {
                let path = save(&out_dir(), &name, "oom", &data);
                eprintln!("fuzz {name}: OUT OF MEMORY: one allocation of {} bytes; input saved to {}", layout.size(), path.display());
            }
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

thread_local! {
    /// The folder targets that read paths write their input into: one per run (see [`Scratch`]),
    /// per thread, as `cargo test` runs targets side by side.
    static SCRATCH: std::cell::RefCell<Option<tempfile::TempDir>> = const { std::cell::RefCell::new(None) };
}

/// The scratch folder of the current run, for targets whose reader takes a path: they write the
/// input there under a fixed name, and files that do not change between executions (the real
/// weights beside a mutated config) once. It is in `/dev/shm` where that exists, as writing a
/// file to disk per execution made such targets spend nine tenths of their time in the kernel.
pub fn scratch() -> PathBuf {
    SCRATCH.with_borrow_mut(|s| {
        s.get_or_insert_with(|| {
            let shm = Path::new("/dev/shm");
            let b = || tempfile::Builder::new().prefix("edge-fuzz-").tempdir();
            (if shm.is_dir() { tempfile::Builder::new().prefix("edge-fuzz-").tempdir_in(shm).or_else(|_| b()) } else { b() })
                .expect("a scratch folder for the fuzz targets")
        })
        .path()
        .to_path_buf()
    })
}

/// Write `data` to the scratch folder's file `name` and return its path. The file is rewritten in
/// place and cut to length, not truncated first: a mutant is about the size of the last input,
/// so its pages are reused rather than freed and allocated again.
pub fn write_scratch(name: &str, data: &[u8]) -> PathBuf {
    use std::io::Write;
    let path = scratch().join(name);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).expect("opening a scratch file");
    f.write_all(data).and_then(|()| f.set_len(data.len() as u64)).expect("writing a scratch file");
    path
}

/// Removes the scratch folder (and what the run wrote there) when a run or replay ends.
struct Scratch;

impl Drop for Scratch {
    fn drop(&mut self) {
        SCRATCH.with_borrow_mut(|s| s.take());
    }
}

/// One execution longer than this is reported as a hang.
pub const HANG_LIMIT: Duration = Duration::from_secs(10);
/// Most inputs a corpus grows to (seeds included).
const MAX_CORPUS: usize = 256;
/// Most bytes a mutated input grows to (the seeds may be larger; extension stops here).
const MAX_GROWTH: usize = 4096;

/// A target: feed it bytes, it returns its outcome ("ok" or the error), panicking only on a bug.
pub type Target = fn(&[u8]) -> String;

/// splitmix64: small, fast, and the same sequence on every platform for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING_U8: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, b'"', b'\n'];
const INTERESTING_U32: [u32; 8] = [0, 1, 2, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0xffff, 0x1_0000];
const INTERESTING_U64: [u64; 8] =
    [0, 1, 64, 0x7fff_ffff_ffff_ffff, 0x8000_0000_0000_0000, u64::MAX, 0xffff_ffff, 0x1_0000_0000];

/// Offsets a mutation lands on: mostly near the start (headers, tables), sometimes anywhere, so
/// that a large seed's header is not drowned by its tensor data.
fn pick_offset(rng: &mut Rng, len: usize) -> usize {
    if rng.chance(2) {
        rng.below(len.min(512))
    } else {
        rng.below(len)
    }
}

/// One mutation of `data` in place; `other` is another corpus entry for splices.
pub fn mutate_once(data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    if data.is_empty() {
        data.extend((0..1 + rng.below(16)).map(|_| rng.next_u64() as u8));
        return;
    }
    let len = data.len();
    match rng.below(11) {
        0 => {
            let i = pick_offset(rng, len);
            data[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = pick_offset(rng, len);
            data[i] = INTERESTING_U8[rng.below(INTERESTING_U8.len())];
        }
        2 => {
            let i = pick_offset(rng, len);
            data[i] = rng.next_u64() as u8;
        }
        3 if len >= 4 => {
            let i = pick_offset(rng, len - 3);
            let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
            data[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        4 if len >= 8 => {
            // Aligned more often than not: the formats' fields are.
            let mut i = pick_offset(rng, len - 7);
            if rng.chance(2) {
                i &= !7;
            }
            let v = INTERESTING_U64[rng.below(INTERESTING_U64.len())];
            data[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        5 if len >= 8 => {
            // Small arithmetic on a u32 field: off-by-one lengths and counts.
            let i = pick_offset(rng, len - 3);
            let v = u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
            let d = 1 + rng.below(16) as u32;
            let v = if rng.chance(2) { v.wrapping_add(d) } else { v.wrapping_sub(d) };
            data[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        6 => {
            let keep = if rng.chance(2) { pick_offset(rng, len) } else { rng.below(len) };
            data.truncate(keep);
        }
        7 if len < MAX_GROWTH || rng.chance(8) => {
            let n = 1 + rng.below(64);
            let fill = if rng.chance(2) { 0 } else { rng.next_u64() as u8 };
            let at = rng.below(len + 1);
            data.splice(at..at, std::iter::repeat_n(fill, n));
        }
        8 => {
            // Duplicate a chunk somewhere else.
            let a = pick_offset(rng, len);
            let n = 1 + rng.below((len - a).min(64));
            let chunk = data[a..a + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        9 if !other.is_empty() => {
            // Splice: a chunk of another input over this one.
            let a = rng.below(other.len());
            let n = 1 + rng.below((other.len() - a).min(128));
            let at = pick_offset(rng, len);
            let end = (at + n).min(len);
            data.splice(at..end, other[a..a + n].iter().copied());
        }
        _ => {
            // Delete a chunk.
            let a = pick_offset(rng, len);
            let n = 1 + rng.below((len - a).min(64));
            data.drain(a..a + n);
        }
    }
}

/// A mutant of `base`: one to four stacked mutations.
pub fn mutate(base: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut data, other, rng);
    }
    data
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub target: String,
    pub execs: u64,
    pub elapsed: Duration,
    /// Saved inputs that panicked, with the panic message.
    pub crashes: Vec<(PathBuf, String)>,
    pub corpus: usize,
    pub outcomes: usize,
}

impl Report {
    pub fn execs_per_sec(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} execs in {:.1} s ({:.0}/s), {} distinct outcomes, corpus {}, {} crashes",
            self.target,
            self.execs,
            self.elapsed.as_secs_f64(),
            self.execs_per_sec(),
            self.outcomes,
            self.corpus,
            self.crashes.len()
        )?;
        for (p, msg) in &self.crashes {
            write!(f, "\n  crash: {} ({msg})", p.display())?;
        }
        Ok(())
    }
}

/// Where crashing and hanging inputs are saved: `$EDGE_FUZZ_OUT`, else `fuzz-crashes/` in the
/// system's temp folder.
pub fn out_dir() -> PathBuf {
    std::env::var_os("EDGE_FUZZ_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("edge-fuzz-crashes"))
}

fn save(dir: &Path, target: &str, kind: &str, data: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{target}-{kind}-{:016x}", xxhash_rust::xxh3::xxh3_64(data)));
    if let Err(e) = std::fs::write(&path, data) {
        eprintln!("fuzz {target}: cannot save {kind} input to {}: {e}", path.display());
    }
    path
}

/// An error message without its words that hold digits (numbers, hex checksums): "tensor 'x'
/// needs 4096 bytes" and "... 8 bytes" are one outcome, so the corpus grows by kind of failure,
/// not by value.
fn outcome_key(s: &str) -> String {
    let words: Vec<&str> = s.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).collect();
    words.join(" ").chars().take(48).collect()
}

/// How many executions a run makes: `$EDGE_FUZZ_EXECS` if set, else `default`.
pub fn execs_from_env(default: u64) -> u64 {
    std::env::var("EDGE_FUZZ_EXECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Run `target` for `execs` executions (or until `$EDGE_FUZZ_SECS` seconds pass, if set) from
/// `seeds`, with RNG seed `$EDGE_FUZZ_SEED` (default 1).
pub fn run(name: &str, seeds: Vec<Vec<u8>>, execs: u64, target: Target) -> Report {
    let secs: Option<f64> = std::env::var("EDGE_FUZZ_SECS").ok().and_then(|s| s.parse().ok());
    let seed: u64 = std::env::var("EDGE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Rng::new(seed ^ xxhash_rust::xxh3::xxh3_64(name.as_bytes()));
    let dir = out_dir();
    let _scratch = Scratch;
    // Shared, not copied: the watchdog and the allocator see the input being executed.
    let mut corpus: Vec<Arc<Vec<u8>>> =
        if seeds.is_empty() { vec![Arc::new(Vec::new())] } else { seeds.into_iter().map(Arc::new).collect() };
    let mut seen: HashSet<String> = HashSet::new();
    let mut crashes = Vec::new();
    let mut crash_msgs: HashSet<String> = HashSet::new();

    // The watchdog: the current input and when its execution started (0 = between executions).
    let current: Arc<Mutex<Arc<Vec<u8>>>> = Arc::new(Mutex::new(Arc::new(Vec::new())));
    let started_ns = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let watchdog = {
        let (current, started_ns, done, dir, name) =
            (current.clone(), started_ns.clone(), done.clone(), dir.clone(), name.to_string());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let s = started_ns.load(Ordering::Relaxed);
                if s != 0 && t0.elapsed().as_nanos() as u64 - s > HANG_LIMIT.as_nanos() as u64 {
                    let data = current.lock().map(|d| d.to_vec()).unwrap_or_default();
                    let path = save(&dir, &name, "hang", &data);
                    eprintln!("fuzz {name}: HANG: one execution ran over {HANG_LIMIT:?}; input saved to {}", path.display());
                    std::process::exit(3);
                }
            }
        })
    };

    // Panics are caught and counted; their default report would flood the output.
    let last_panic: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let prev_hook = panic::take_hook();
    {
        let last_panic = last_panic.clone();
        panic::set_hook(Box::new(move |info| {
            if let Ok(mut m) = last_panic.lock() {
                *m = info.to_string().replace('\n', " ");
            }
        }));
    }

    // The seeds themselves first: a real file that crashes is the first thing to know.
    let n_seeds = corpus.len();
    let mut n = 0u64;
    while n < execs.max(n_seeds as u64) {
        if let Some(s) = secs {
            if t0.elapsed().as_secs_f64() >= s {
                break;
            }
        }
        let input = if (n as usize) < n_seeds {
            corpus[n as usize].clone()
        } else {
            // Half the time a real seed: the corpus's later entries are mostly cut-down mutants.
            let a = if rng.chance(2) { rng.below(n_seeds) } else { rng.below(corpus.len()) };
            let b = rng.below(corpus.len());
            Arc::new(mutate(&corpus[a], &corpus[b], &mut rng))
        };
        if let Ok(mut c) = current.lock() {
            *c = input.clone();
        }
        if let Ok(mut c) = CURRENT_INPUT.lock() {
            *c = Some((name.to_string(), input.clone()));
        }
        started_ns.store((t0.elapsed().as_nanos() as u64).max(1), Ordering::Relaxed);
        let result = panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        started_ns.store(0, Ordering::Relaxed);
        n += 1;
        match result {
            Ok(outcome) => {
                if seen.insert(outcome_key(&outcome)) && corpus.len() < MAX_CORPUS && (n as usize) > n_seeds {
                    corpus.push(input);
                }
            }
            Err(_) => {
                let msg = last_panic.lock().map(|m| m.clone()).unwrap_or_default();
                // One saved input per distinct panic site, not thousands of copies.
                if crash_msgs.insert(outcome_key(&msg)) {
                    let path = save(&dir, name, "crash", &input);
                    crashes.push((path, msg));
                }
            }
        }
    }
    panic::set_hook(prev_hook);
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    Report { target: name.to_string(), execs: n, elapsed: t0.elapsed(), crashes, corpus: corpus.len(), outcomes: seen.len() }
}

/// Run, print the report, and fail (naming the target and the saved inputs) on any crash.
pub fn check(name: &str, seeds: Vec<Vec<u8>>, default_execs: u64, target: Target) {
    let report = run(name, seeds, execs_from_env(default_execs), target);
    eprintln!("{report}");
    assert!(report.crashes.is_empty(), "{report}");
}

/// Replay a saved input (a regression test): the target must return, not panic.
pub fn replay(target: Target, data: &[u8]) -> String {
    let _scratch = Scratch;
    target(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mutator_is_deterministic_and_changes_its_input() {
        let base: Vec<u8> = (0..200u8).collect();
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let mut changed = 0;
        for _ in 0..100 {
            let (x, y) = (mutate(&base, &base, &mut a), mutate(&base, &base, &mut b));
            assert_eq!(x, y);
            changed += (x != base) as usize;
        }
        assert!(changed > 90, "only {changed} of 100 mutants differ from the base");
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input_saved() {
        fn bad(d: &[u8]) -> String {
            if d.first() == Some(&0xff) {
                panic!("boom");
            }
            "ok".into()
        }
        let r = run("selftest", vec![vec![0xff, 1, 2]], 10, bad);
        assert_eq!(r.crashes.len(), 1);
        assert!(r.crashes[0].1.contains("boom"));
        assert_eq!(std::fs::read(&r.crashes[0].0).unwrap(), vec![0xff, 1, 2]);
    }
}
