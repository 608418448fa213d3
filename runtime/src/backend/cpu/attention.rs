//! Attention on the CPU: one token against the cache with the table's one-head kernel
//! (decode), or a block of tokens with sgemm (prefill), heads spread over the threads.

use super::AttnShape;
use crate::kernels;
use crate::kernels::vector::softmax;
use crate::kv::KvView;

/// Decode: the token at position `kv.len - 1` attends to every filled slot of `kv`. `scores`
/// holds a row of `stride` floats per head.
pub(super) fn one(s: &AttnShape, q: &[f32], kv: KvView<'_>, out: &mut [f32], scores: &mut [f32], stride: usize) {
    let geo = DecodeGeometry { pos: kv.len - 1, hd: s.head_dim, kv_dim: kv.stride, group: s.group, scale: s.scale, stride };
    attention_decode(&geo, &q[..s.n_heads * s.head_dim], kv, out, scores);
}

/// Prefill: `n` tokens at positions `kv.len - n..kv.len`, causal. `att` holds score blocks of
/// `rows` tokens by `stride` positions.
#[allow(clippy::too_many_arguments)]
pub(super) fn many(s: &AttnShape, n: usize, q: &[f32], kv: KvView<'_>, out: &mut [f32], att: &mut [f32], rows: usize, stride: usize) {
    let q_dim = s.n_heads * s.head_dim;
    let geo = AttnGeometry {
        n,
        pos: kv.len - n,
        hd: s.head_dim,
        q_dim,
        kv_dim: kv.stride,
        group: s.group,
        n_heads: s.n_heads,
        scale: s.scale,
        chunk: rows,
        stride,
    };
    attention_batch(&geo, q, kv.keys, kv.values, out, att);
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

/// Causal GQA attention of `n` tokens with sgemm, head by head and block of tokens by block:
/// `S = scale · Q_h K_h^T` (block rows × visible positions), the causal mask and softmax per
/// row, then `O_h = P V_h` straight into the head's columns of `out` (n, q_dim). `q` is
/// (n, q_dim); `keys` / `values` are the layer's cache rows `0..pos + n` (kv_dim each). Heads
/// are split over the threads, each with its own score block of `att`.
fn attention_batch(g: &AttnGeometry, q: &[f32], keys: &[f32], values: &[f32], out: &mut [f32], att: &mut [f32]) {
    let block = g.chunk * g.stride;
    assert!(g.chunk > 0 && att.len() >= block && q.len() >= g.n * g.q_dim && out.len() >= g.n * g.q_dim);
    assert!(keys.len() >= (g.pos + g.n) * g.kv_dim && values.len() >= (g.pos + g.n) * g.kv_dim);
    let slots = (att.len() / block).min(g.n_heads).min(kernels::threads()).max(1);
    let per = g.n_heads.div_ceil(slots);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let att_ptr = SharedMut(att.as_mut_ptr());
    let task = |i: usize| {
        // SAFETY: slot `i < slots <= att.len() / block` owns `att[i * block..(i + 1) * block]`;
        // each task runs once.
        let s = unsafe { core::slice::from_raw_parts_mut(att_ptr.get().add(i * block), block) };
        for h in i * per..((i + 1) * per).min(g.n_heads) {
            let kv_off = (h / g.group) * g.hd;
            let mut t0 = 0;
            while t0 < g.n {
                let rows = g.chunk.min(g.n - t0);
                let width = g.pos + t0 + rows; // positions the block's last token sees
                // SAFETY (both products): every pointer offset and stride stays inside the
                // slice it came from (asserted above: q and out hold n rows of q_dim, keys and
                // values pos + n rows of kv_dim, `s` rows * width <= block floats); the output
                // columns h*hd..(h+1)*hd of `out` belong to this task's head alone.
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
                for r in 0..rows {
                    let row = &mut s[r * width..(r + 1) * width];
                    let seen = g.pos + t0 + r + 1; // causal: positions 0..=pos + t0 + r
                    softmax(&mut row[..seen]);
                    row[seen..].fill(0.0);
                }
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
                        out_ptr.get().add(t0 * g.q_dim + h * g.hd),
                        g.q_dim as isize,
                        1,
                    );
                }
                t0 += rows;
            }
        }
    };
    let tasks = g.n_heads.div_ceil(per);
    #[cfg(feature = "std")]
    crate::pool::run(tasks, tasks, &task);
    #[cfg(not(feature = "std"))]
    (0..tasks).for_each(task);
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
    assert!(kv.len == g.pos + 1 && kv.stride == g.kv_dim);
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
