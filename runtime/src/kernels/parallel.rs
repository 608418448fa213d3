//! Splitting a product's output rows, or an elementwise step's tokens, over threads: the
//! persistent pool of [`crate::pool`] with `std`, the calling thread alone without.

/// Threads the products use (std: set by [`set_threads`]; 0 = the default).
#[cfg(feature = "std")]
static THREADS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Use `n` threads for matrix products (0 = the default, see [`threads`]).
#[cfg(feature = "std")]
pub fn set_threads(n: usize) {
    THREADS.store(n, core::sync::atomic::Ordering::Relaxed);
}

/// Threads the products will use: as set by [`set_threads`], by default the physical cores
/// this process may run on (see `default_threads`); without std, 1.
pub fn threads() -> usize {
    #[cfg(feature = "std")]
    {
        match THREADS.load(core::sync::atomic::Ordering::Relaxed) {
            0 => default_threads(),
            n => n,
        }
    }
    #[cfg(not(feature = "std"))]
    {
        1
    }
}

/// The default thread count: physical cores (Linux: distinct (package, core) pairs in
/// `/sys/devices/system/cpu/cpu*/topology`, so SMT siblings count once), capped by
/// `available_parallelism` (which honours affinity masks and cgroup quotas). Elsewhere, or when
/// the topology is unreadable, `available_parallelism`, which counts logical CPUs. Computed
/// once.
#[cfg(feature = "std")]
pub fn default_threads() -> usize {
    static DEFAULT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
        physical_cores().map_or(logical, |p| p.clamp(1, logical))
    })
}

#[cfg(feature = "std")]
fn physical_cores() -> Option<usize> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let mut cores = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/sys/devices/system/cpu").ok()?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("cpu") && name[3..].bytes().all(|b| b.is_ascii_digit()) && name.len() > 3) {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(e.path().join("topology").join(f)).ok();
        let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) else { continue };
        cores.insert((pkg.trim().to_owned(), core.trim().to_owned()));
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Smallest share of a product (weights, rows x cols) worth handing to another thread: below
/// it, waking a worker (~1-5 µs) costs about what the share saves.
pub(crate) const MIN_WEIGHTS_PER_THREAD: usize = 32 * 1024;

/// Row ranges per thread of a product that needs no scratch (see [`for_row_ranges`]). More
/// than one lets a thread that starts late (a busy machine) leave part of its share to the
/// others, but each range pays a kernel call's set-up, which costs more decode speed on a quiet
/// machine than it saves on a busy one (measurements in `docs/RESULTS.md`).
pub(crate) const TASKS_PER_THREAD: usize = 1;

/// Split rows `0..rows` into contiguous ranges whose starts are multiples of `align` and run
/// `f(first, rows, scratch)` for each, with its own scratch slice (`per_thread` floats of
/// `scratch`; `per_thread == 0`: no scratch, empty slices), on up to `threads()` threads of the
/// pool (std) or in turn.
///
/// Each range holds at least [`MIN_WEIGHTS_PER_THREAD`] / `cost` rows (`cost`: a row's weights
/// times tokens). With scratch there is one range per thread (as many as the scratch holds);
/// without, up to [`TASKS_PER_THREAD`] per thread.
pub(crate) fn for_row_ranges(
    rows: usize,
    align: usize,
    cost: usize,
    scratch: &mut [f32],
    per_thread: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let threads = threads();
    let (by_scratch, split) = match scratch.len().checked_div(per_thread) {
        Some(fit) => (fit, 1),
        None => (usize::MAX, TASKS_PER_THREAD), // no scratch needed
    };
    let (chunk, n) = split_rows(rows, align, cost, (threads * split).min(by_scratch));
    if n == 1 || threads == 1 {
        return f(0, rows, scratch);
    }
    #[cfg(feature = "std")]
    {
        let base = OutPtr(scratch.as_mut_ptr());
        crate::pool::run(n, threads, &|i| {
            let first = i * chunk;
            // SAFETY: `i < n <= by_scratch`, so `(i + 1) * per_thread <= scratch.len()` (with
            // `per_thread == 0`, an empty slice at the start); the pool runs each index exactly
            // once, so the slices are disjoint, and `run` returns only after every call has,
            // within the borrow of `scratch`.
            let buf = unsafe { core::slice::from_raw_parts_mut(base.get().add(i * per_thread), per_thread) };
            f(first, chunk.min(rows - first), buf)
        });
    }
    #[cfg(not(feature = "std"))]
    for i in 0..n {
        let first = i * chunk;
        f(first, chunk.min(rows - first), &mut scratch[i * per_thread..(i + 1) * per_thread]);
    }
}

/// How [`for_row_ranges`] splits `rows` into at most `most` ranges: `(chunk, n)`, `n`
/// non-empty ranges of `chunk` rows (the last one shorter), `chunk` a multiple of `align`, each
/// range at least [`MIN_WEIGHTS_PER_THREAD`] / `cost` rows.
pub(crate) fn split_rows(rows: usize, align: usize, cost: usize, most: usize) -> (usize, usize) {
    let by_work = (rows * cost.max(1) / MIN_WEIGHTS_PER_THREAD).max(1);
    let n = most.min(rows.div_ceil(align)).min(by_work).max(1);
    let chunk = rows.div_ceil(n).div_ceil(align) * align;
    // Ranges actually non-empty (rounding up `chunk` may leave the last ones without rows).
    (chunk, rows.div_ceil(chunk))
}

/// Least floats of output one share of an elementwise step writes: below it, waking a worker
/// costs about what the share saves (a few microseconds; an elementwise step writes a float in
/// well under a nanosecond).
pub(crate) const MIN_FLOATS_PER_TASK: usize = 16 * 1024;

/// Shares of an elementwise step per thread: a thread that starts late (a busy machine) leaves
/// the shares it has not claimed to the others.
const ELEMENTWISE_TASKS_PER_THREAD: usize = 2;

/// Split items `0..n` (tokens, or single floats) into contiguous ranges whose starts are
/// multiples of `align`, and run `f(range, parts)` for each with every part cut to the range:
/// part `k` holds `parts[k].len() / n` floats per item. Runs on up to [`threads`] threads of the
/// pool (std) when each range writes at least [`MIN_FLOATS_PER_TASK`] floats, else once, over
/// all items, on the calling thread.
pub(crate) fn for_item_ranges<const K: usize>(
    n: usize,
    align: usize,
    parts: [&mut [f32]; K],
    f: impl Fn(core::ops::Range<usize>, [&mut [f32]; K]) + Sync,
) {
    if n == 0 {
        return;
    }
    let widths = parts.each_ref().map(|p| p.len() / n);
    assert!(parts.iter().zip(&widths).all(|(p, w)| p.len() == n * w));
    let floats: usize = parts.iter().map(|p| p.len()).sum();
    let threads = threads();
    let by_work = floats / MIN_FLOATS_PER_TASK;
    let tasks = (threads * ELEMENTWISE_TASKS_PER_THREAD).min(by_work).min(n.div_ceil(align.max(1)));
    if tasks <= 1 || threads <= 1 {
        return f(0..n, parts);
    }
    let chunk = n.div_ceil(tasks).next_multiple_of(align.max(1));
    let tasks = n.div_ceil(chunk);
    #[cfg(feature = "std")]
    {
        let ptrs = parts.map(|p| OutPtr(p.as_mut_ptr()));
        crate::pool::run(tasks, threads, &|i| {
            let items = i * chunk..((i + 1) * chunk).min(n);
            // SAFETY: part k holds n * widths[k] floats (asserted above) and items lie within
            // 0..n, so each slice is in bounds; the pool runs each index once and the ranges
            // of distinct indices are disjoint, and `run` returns only after every call has,
            // within the borrows of `parts`.
            let cut = core::array::from_fn(|k| unsafe {
                core::slice::from_raw_parts_mut(ptrs[k].get().add(items.start * widths[k]), items.len() * widths[k])
            });
            f(items, cut)
        });
    }
    #[cfg(not(feature = "std"))]
    {
        let _ = tasks;
        f(0..n, parts)
    }
}

/// A raw output pointer that threads writing disjoint elements may share.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: used only by the products and the elementwise steps, whose threads write disjoint
// elements (their own row ranges or tiles, their own scratch slices, their own tokens) and
// finish before the borrow ends (the pool's `run` returns only after every index has).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not field access), so closures capture the whole `Send + Sync` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
