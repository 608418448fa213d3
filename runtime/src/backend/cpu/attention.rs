//! Attention on the CPU: one token against the cache with the table's one-head kernel
//! (decode), or a block of tokens with sgemm (prefill), (head, block) tasks spread over the
//! threads.

use core::sync::atomic::{AtomicU64, Ordering};

use super::AttnShape;
use crate::kernels;
use crate::kv::KvView;

/// Decode: the token at position `kv.len - 1` attends to every filled slot of `kv`. `scores`
/// holds a row of `stride` floats per head.
pub(super) fn one(s: &AttnShape, q: &[f32], kv: KvView<'_>, out: &mut [f32], scores: &mut [f32], stride: usize, qrot: &mut [f32]) {
    // A sliding-window layer sees its last `window` slots alone: they are the whole cache to it.
    let kv = match s.window {
        Some(w) if kv.len > w => kv.from_row(kv.len - w),
        _ => kv,
    };
    let geo = DecodeGeometry { pos: kv.len - 1, hd: s.head_dim, kv_dim: kv.keys.dim, group: s.group, scale: s.scale, stride };
    let q_dim = s.n_heads * s.head_dim;
    let q = rotated_queries(&q[..q_dim], kv, s.head_dim, qrot);
    attention_decode(&geo, q, kv, out, scores);
    rotate_back(&mut out[..q_dim], kv, s.head_dim);
}

/// `q` in the key's domain: rotated by the Walsh-Hadamard matrix into `qrot` when the cache
/// stores keys rotated ([`crate::kv::KvBits::rotated`]), else itself.
fn rotated_queries<'q>(q: &'q [f32], kv: KvView<'_>, head_dim: usize, qrot: &'q mut [f32]) -> &'q [f32] {
    if !kv.keys.bits().rotated() {
        return q;
    }
    let r = &mut qrot[..q.len()];
    r.copy_from_slice(q);
    kernels::tokens::hadamard_heads(r, head_dim);
    r
}

/// The attention output rotated back when the cache stores values rotated.
fn rotate_back(out: &mut [f32], kv: KvView<'_>, head_dim: usize) {
    if kv.values.bits().rotated() {
        kernels::tokens::hadamard_heads(out, head_dim);
    }
}

/// The buffers batched attention works in: `att`, one score block of `rows` tokens by `stride`
/// positions a thread; `kv_f32`, the layer's keys then values as f32 (`stride` rows of kv_dim
/// each) for a cache not stored as f32; `qrot`, queries rotated for a rotated cache.
pub(super) struct Work<'w> {
    pub(super) att: &'w mut [f32],
    pub(super) rows: usize,
    pub(super) stride: usize,
    pub(super) kv_f32: &'w mut [f32],
    pub(super) qrot: &'w mut [f32],
}

/// Prefill: `n` tokens at positions `kv.len - n..kv.len`, causal.
pub(super) fn many(s: &AttnShape, n: usize, q: &[f32], kv: KvView<'_>, out: &mut [f32], w: Work<'_>) {
    let Work { att, rows, stride, kv_f32, qrot } = w;
    let q_dim = s.n_heads * s.head_dim;
    let q = rotated_queries(&q[..n * q_dim], kv, s.head_dim, qrot);
    let geo = AttnGeometry {
        n,
        pos: kv.len - n,
        hd: s.head_dim,
        q_dim,
        kv_dim: kv.keys.dim,
        group: s.group,
        n_heads: s.n_heads,
        scale: s.scale,
        window: s.window,
        chunk: rows,
        stride,
    };
    let (kbuf, vbuf) = kv_f32.split_at_mut(kv_f32.len() / 2);
    let keys = f32_rows(kv.keys, kv.len, kbuf);
    let values = f32_rows(kv.values, kv.len, vbuf);
    attention_batch(&geo, q, keys, values, out, att);
    rotate_back(&mut out[..n * q_dim], kv, s.head_dim);
}

/// The first `len` rows of `rows` as f32: in place for an f32 cache, else read back once into
/// `buf` (through the table's `kv_rows`, rows split over the threads) for every task of the
/// layer to share.
fn f32_rows<'a>(rows: crate::kv::KvRows<'a>, len: usize, buf: &'a mut [f32]) -> &'a [f32] {
    if let Some(v) = rows.as_f32() {
        return v;
    }
    let dim = rows.dim;
    let buf = &mut buf[..len * dim];
    let read = kernels::kernels().kv_rows;
    // Tasks of at least 64 rows (a read-back of fewer is not worth a hand-off).
    let per = len.div_ceil(kernels::threads()).max(64);
    let tasks = len.div_ceil(per);
    let ptr = SharedMut(buf.as_mut_ptr());
    let task = |i: usize| {
        let (first, n) = (i * per, per.min(len - i * per));
        // SAFETY: task i alone writes rows first..first + n of `buf` (in bounds: first + n <=
        // len); each task runs once, before the borrow of `buf` ends.
        let part = unsafe { core::slice::from_raw_parts_mut(ptr.get().add(first * dim), n * dim) };
        read(rows, first, dim, part);
    };
    #[cfg(feature = "std")]
    crate::pool::run(tasks, tasks, &task);
    #[cfg(not(feature = "std"))]
    (0..tasks).for_each(task);
    buf
}

/// Shapes of one layer's batched attention.
struct AttnGeometry {
    /// Tokens, at positions `pos..pos + n`.
    n: usize,
    pos: usize,
    hd: usize,
    q_dim: usize,
    kv_dim: usize,
    /// Query heads per kv head.
    group: usize,
    n_heads: usize,
    scale: f32,
    /// A sliding-window layer's reach (see [`AttnShape::window`]).
    window: Option<usize>,
    /// Tokens per score block.
    chunk: usize,
    /// Floats per row a score block may use (max_seq_len).
    stride: usize,
}

/// A pointer that tasks writing disjoint elements share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the tasks of `attention_batch` write disjoint elements (their own heads' columns of
// the output, their own score block) and finish before the borrows end.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Causal GQA attention of `n` tokens with sgemm, one task per (head, block of tokens):
/// `S = scale · Q_h K_h^T` (block rows × visible positions), the causal mask and softmax per
/// row, then `O_h = P V_h` straight into the head's columns of `out` (n, q_dim). `q` is
/// (n, q_dim); `keys` / `values` are the layer's cache rows `0..pos + n` (kv_dim each).
///
/// The tasks are claimed by the threads as they finish their last one, widest blocks first, so
/// the threads end together (one task per thread of a few heads each left one thread with a
/// head more than the other). A running task holds one score block of `att`, claimed from
/// `free`: no more tasks run at once than there are blocks.
fn attention_batch(g: &AttnGeometry, q: &[f32], keys: &[f32], values: &[f32], out: &mut [f32], att: &mut [f32]) {
    let block = g.chunk * g.stride;
    assert!(g.chunk > 0 && g.chunk <= super::ATT_ROWS && att.len() >= block);
    assert!(q.len() >= g.n * g.q_dim && out.len() >= g.n * g.q_dim);
    assert!(keys.len() >= (g.pos + g.n) * g.kv_dim && values.len() >= (g.pos + g.n) * g.kv_dim);
    assert!(g.n_heads * g.hd <= g.q_dim && g.n_heads.div_ceil(g.group) * g.hd <= g.kv_dim);
    assert!(g.pos + g.n <= g.stride);
    // At most 64 blocks, one bit each in `free`.
    let slots = (att.len() / block).min(kernels::threads()).clamp(1, 64);
    let blocks = g.n.div_ceil(g.chunk);
    let tasks = blocks * g.n_heads;
    let free = AtomicU64::new(0);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let att_ptr = SharedMut(att.as_mut_ptr());
    let task = |i: usize| {
        // Widest blocks first: task i is head i % n_heads of the (i / n_heads)-th block from the end.
        let (b, h) = (blocks - 1 - i / g.n_heads, i % g.n_heads);
        let slot = claim(&free, slots);
        // SAFETY: slot `slot < slots <= att.len() / block` owns `att[slot * block..][..block]`
        // until `release` below: `claim` hands each bit to one task at a time.
        let s = unsafe { core::slice::from_raw_parts_mut(att_ptr.get().add(slot * block), block) };
        head_block(g, h, b * g.chunk, q, keys, values, out_ptr, s);
        release(&free, slot);
    };
    #[cfg(feature = "std")]
    crate::pool::run(tasks, slots, &task);
    #[cfg(not(feature = "std"))]
    (0..tasks).for_each(task);
}

/// Claim a free bit of the first `slots` of `free`. Callers run at most `slots` tasks at once
/// (the pool's thread count), each holding one bit, so one is always free; the loop only
/// retries a lost race.
fn claim(free: &AtomicU64, slots: usize) -> usize {
    loop {
        let cur = free.load(Ordering::Acquire);
        let bit = (!cur).trailing_zeros() as usize;
        if bit < slots && free.compare_exchange_weak(cur, cur | 1 << bit, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return bit;
        }
        core::hint::spin_loop();
    }
}

fn release(free: &AtomicU64, slot: usize) {
    free.fetch_and(!(1u64 << slot), Ordering::Release);
}

/// Head `h` of the tokens `t0..t0 + rows` (one block): scores into the task's score block `s`,
/// the output into the head's columns of `out`. `attention_batch` asserted the shapes this
/// relies on.
#[allow(clippy::too_many_arguments)]
fn head_block(g: &AttnGeometry, h: usize, t0: usize, q: &[f32], keys: &[f32], values: &[f32], out: SharedMut, s: &mut [f32]) {
    let rows = g.chunk.min(g.n - t0);
    // Positions lo..lo + width: those the block's first token sees (all before it without a
    // window) up to the block's last token; a row's own window starts later (masked below).
    let first_seen = |p: usize| g.window.map_or(0, |w| (p + 1).saturating_sub(w));
    let lo = first_seen(g.pos + t0);
    let width = g.pos + t0 + rows - lo;
    let kv_off = lo * g.kv_dim + (h / g.group) * g.hd;
    // SAFETY (both products): every pointer offset and stride stays inside the slice it came
    // from (asserted by the caller: q and out hold n rows of q_dim with head h's hd columns
    // inside, keys and values pos + n rows of kv_dim with kv head h / group's columns inside,
    // `s` holds chunk * stride >= rows * width floats); the block's rows of head h's columns of
    // `out` belong to this task alone.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            g.hd,
            width,
            g.scale,
            q.as_ptr().add(t0 * g.q_dim + h * g.hd),
            g.q_dim as isize,
            1,
            keys.as_ptr().add(kv_off),
            1,
            g.kv_dim as isize,
            0.0,
            s.as_mut_ptr(),
            width as isize,
            1,
        );
    }
    if g.window.is_some() {
        // Row r (position pos + t0 + r) sees none of the positions before its window; e^-inf
        // is 0 in the softmax (its own position is always seen, so no row is all -inf).
        for (r, row) in s[..rows * width].chunks_exact_mut(width).enumerate() {
            row[..first_seen(g.pos + t0 + r) - lo].fill(f32::NEG_INFINITY);
        }
    }
    (kernels::kernels().softmax_rows)(&mut s[..rows * width], width, g.pos + t0 + 1 - lo);
    unsafe {
        matrixmultiply::sgemm(
            rows,
            width,
            g.hd,
            1.0,
            s.as_ptr(),
            width as isize,
            1,
            values.as_ptr().add(kv_off),
            g.kv_dim as isize,
            1,
            0.0,
            out.get().add(t0 * g.q_dim + h * g.hd),
            g.q_dim as isize,
            1,
        );
    }
}

/// Shapes of one layer's decode attention (one token at position `pos`).
struct DecodeGeometry {
    pos: usize,
    hd: usize,
    kv_dim: usize,
    /// Query heads per kv head.
    group: usize,
    scale: f32,
    /// Floats of each head's row of scores (max_seq_len).
    stride: usize,
}

/// Attention of one token at position `pos` to positions `0..=pos`, head by head, heads spread
/// over the threads: `s = scale · q_h · k_j`, softmax, `out_h = Σ_j s_j v_j`. `q` and `out` are
/// (q_dim); `kv` the layer's cache slots holding positions `0..=pos`; `scores` holds a
/// row of `stride` floats per head.
fn attention_decode(g: &DecodeGeometry, q: &[f32], kv: KvView<'_>, out: &mut [f32], scores: &mut [f32]) {
    let n_heads = q.len() / g.hd;
    assert!(g.pos < g.stride && scores.len() >= n_heads * g.stride && out.len() >= n_heads * g.hd);
    assert!(kv.len == g.pos + 1 && kv.keys.dim == g.kv_dim);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let scores_ptr = SharedMut(scores.as_mut_ptr());
    let attend = kernels::kernels().attend_head;
    let head = |h: usize| {
        // SAFETY: head `h < n_heads` alone owns its row of scores and its hd columns of `out`
        // (both in bounds, asserted above); each task runs once, before the borrows end.
        let (sc, o) = unsafe {
            (
                core::slice::from_raw_parts_mut(scores_ptr.get().add(h * g.stride), g.pos + 1),
                core::slice::from_raw_parts_mut(out_ptr.get().add(h * g.hd), g.hd),
            )
        };
        let kv_off = (h / g.group) * g.hd;
        attend(&q[h * g.hd..(h + 1) * g.hd], kv.head(kv_off), g.scale, sc, o);
    };
    // Below a few thousand multiply-adds a head, waking a worker costs more than it saves.
    let threads = if (g.pos + 1) * g.hd * 2 >= 4096 { kernels::threads() } else { 1 };
    #[cfg(feature = "std")]
    crate::pool::run(n_heads, threads, &head);
    #[cfg(not(feature = "std"))]
    {
        let _ = threads;
        (0..n_heads).for_each(head);
    }
}
