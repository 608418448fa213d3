//! Splitting a product's output rows over threads.

/// Threads the products use (std: set by [`set_threads`], default all available cores;
/// without std: 1).
#[cfg(feature = "std")]
static THREADS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Use `n` threads for matrix products (0 = all available cores).
#[cfg(feature = "std")]
pub fn set_threads(n: usize) {
    THREADS.store(n, core::sync::atomic::Ordering::Relaxed);
}

/// Threads the products will use.
pub fn threads() -> usize {
    #[cfg(feature = "std")]
    {
        match THREADS.load(core::sync::atomic::Ordering::Relaxed) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
    #[cfg(not(feature = "std"))]
    {
        1
    }
}

/// Split rows `0..rows` into at most `threads()` contiguous ranges whose starts are multiples of
/// `align`, limited by the scratch available (`scratch` floats, `per_thread` each), and run
/// `f(first, rows, scratch)` for each range with its own scratch slice, in parallel (std) or in
/// turn.
pub(crate) fn for_row_ranges(
    rows: usize,
    align: usize,
    scratch: &mut [f32],
    per_thread: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let by_scratch = scratch.len() / per_thread.max(1);
    let n = threads().min(by_scratch).min(rows.div_ceil(align)).max(1);
    if n == 1 {
        return f(0, rows, scratch);
    }
    let chunk = rows.div_ceil(n).div_ceil(align) * align;
    #[cfg(feature = "std")]
    std::thread::scope(|s| {
        for (i, buf) in scratch.chunks_mut(per_thread).take(n).enumerate() {
            let first = i * chunk;
            if first >= rows {
                break;
            }
            let f = &f;
            s.spawn(move || f(first, chunk.min(rows - first), buf));
        }
    });
    #[cfg(not(feature = "std"))]
    for (i, buf) in scratch.chunks_mut(per_thread).take(n).enumerate() {
        let first = i * chunk;
        if first < rows {
            f(first, chunk.min(rows - first), buf);
        }
    }
}

/// A raw output pointer that threads writing disjoint elements may share.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: used only by the products, whose threads write disjoint output elements (their own
// row ranges) and finish before the borrow of `out` ends (scoped threads).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not field access), so closures capture the whole `Send + Sync` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
