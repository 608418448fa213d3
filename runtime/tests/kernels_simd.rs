//! Every kernel table of this architecture (`Kernels::variants()`) against the scalar
//! reference (`Kernels::SCALAR`), on random inputs of every length class. Arch-neutral: a table
//! the CPU lacks is reported loudly as NOT tested.
//!
//! What is compared:
//! - `quantize_acts`: `q`, `d`, `sum` bit-identical (the contract of `kernels::acts`);
//! - `nested8_matvec` / `nested8_matmul`, every view: within `TOL` (relative to the sum of the
//!   absolute group terms, so cancellation does not inflate it) — a table may add the per-group
//!   float terms in another order; integer parts must be exact, which the `exact_*` cases check
//!   with inputs where every float operation is exact (so any integer error shows as a
//!   mismatch). Tables listed in `BIT_EXACT` promise equality everywhere and are held to it.

use edge_runtime::blocks::{low_nibbles, nested8_planes_for_view, pack_nested8_planes, repack_top, GroupParams, ParamsRef, SuperParams};
use std::sync::Arc;

/// The form a test reads a view in: its stored planes, or a form `Nested8::prepare` makes at
/// load for SIMD tables.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Planes,
    /// `Prepared::Runs` (2 to 6 bits; 8 bits in tables without a nibble plane).
    Runs,
    /// `Prepared::Nibbles` (8 bits).
    Nibbles,
}

/// Every view in every form it can be read in: (view, form). The x86 tables read views 5 and
/// 6 from their runs only, the 8-bit view from its nibble plane or its runs: without them
/// they run the portable kernels.
const VIEWS: [(u8, Form); 13] = [
    (2, Form::Planes),
    (2, Form::Runs),
    (3, Form::Planes),
    (3, Form::Runs),
    (4, Form::Planes),
    (4, Form::Runs),
    (5, Form::Planes),
    (5, Form::Runs),
    (6, Form::Planes),
    (6, Form::Runs),
    (8, Form::Planes),
    (8, Form::Nibbles),
    (8, Form::Runs),
];
use edge_runtime::kernels::dispatch::view_index;
use edge_runtime::kernels::{Kernels, Nested8, QActs};
use half::f16;

/// Relative tolerance for tables that reorder the float sum over groups.
const TOL: f32 = 1e-5;
/// Tables whose outputs equal the reference bit for bit (documented in their modules).
const BIT_EXACT: &[&str] = &["avx2", "avx512vnni", "neon", "neon+dotprod", "neon+i8mm"];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Tables to test; prints the ones this CPU cannot run.
fn tables() -> Vec<Kernels> {
    let mut out = Vec::new();
    for (name, k) in Kernels::variants() {
        match k {
            Some(k) if name != "scalar" => out.push(k),
            Some(_) => {}
            None => {
                eprintln!("!!!!!!!! {name} not available on this CPU: {name} kernels NOT tested !!!!!!!!");
                println!("!!!!!!!! {name} not available on this CPU: {name} kernels NOT tested !!!!!!!!");
            }
        }
    }
    if out.is_empty() {
        eprintln!("!!!!!!!! no SIMD kernel table on this CPU: only the scalar reference exists !!!!!!!!");
    }
    out
}

/// A nested tensor of `rows` × `cols` (rows padded to whole groups) with random codes over
/// 0..=255 and random group parameters.
struct Tensor {
    params: Vec<GroupParams>,
    /// Super-block parameters instead of `params`, when set.
    supers: Option<Vec<SuperParams>>,
    planes: [Vec<u8>; 6],
    group: usize,
    stride: usize,
    cols: usize,
}

impl Tensor {
    fn random(rows: usize, cols: usize, group: usize, rng: &mut Rng) -> Self {
        let stride = cols.div_ceil(group) * group;
        let mut codes = vec![0u8; rows * stride];
        for r in 0..rows {
            for c in 0..cols {
                codes[r * stride + c] = rng.below(256) as u8;
            }
        }
        let params = (0..rows * stride / group)
            .map(|_| GroupParams {
                scale: f16::from_f32(0.001 + 0.05 * (rng.f32() + 1.0)),
                min: f16::from_f32(-2.0 * rng.f32().abs()),
            })
            .collect();
        Tensor { params, supers: None, planes: pack_nested8_planes(&codes), group, stride, cols }
    }

    /// [`Tensor::random`] with random super-block parameters (every scale and minimum code).
    fn random_super(rows: usize, cols: usize, group: usize, rng: &mut Rng) -> Self {
        let mut t = Tensor::random(rows, cols, group, rng);
        let blocks = rows * SuperParams::per_row(t.stride / group);
        t.supers = Some(
            (0..blocks)
                .map(|_| {
                    let d = f16::from_f32(0.0005 + 0.002 * (rng.f32() + 1.0));
                    let dmin = f16::from_f32(0.06 * rng.f32().abs());
                    let s = core::array::from_fn(|_| rng.below(64) as u8);
                    let m = core::array::from_fn(|_| rng.below(64) as i8 - 32);
                    SuperParams::new(d, dmin, s, m)
                })
                .collect(),
        );
        t
    }

    /// A tensor whose float terms are exact: scale 1, min chosen so every offset is an
    /// integer, one group per row (used with activations of block amax 127, d = 1).
    fn exact(rows: usize, group: usize, rng: &mut Rng) -> Self {
        let mut t = Tensor::random(rows, group, group, rng);
        for p in &mut t.params {
            p.scale = f16::from_f32(1.0);
            p.min = f16::from_f32(-(rng.below(64) as f32) - 0.5);
        }
        t
    }

    /// The `view_bits` view read in `form`, at any group size.
    fn view(&self, view_bits: u8, form: Form) -> Nested8<'_> {
        let n = nested8_planes_for_view(view_bits).unwrap();
        let mut planes: [&[u8]; 6] = [&[]; 6];
        for (i, p) in self.planes.iter().take(n).enumerate() {
            planes[i] = p;
        }
        let numel = self.planes[1].len() * 8;
        let refs: Vec<&[u8]> = self.planes.iter().map(|p| p.as_slice()).collect();
        let repacked = (form == Form::Runs).then(|| Arc::from(repack_top(view_bits, &refs, numel)));
        let low = (form == Form::Nibbles).then(|| Arc::from(low_nibbles(&refs, numel)));
        let params = match &self.supers {
            Some(s) => ParamsRef::Super { blocks: s, groups_per_row: self.stride / self.group },
            None => ParamsRef::F16(&self.params),
        };
        Nested8 { params, planes, group_size: self.group, view_bits, row_stride: self.stride, repacked, low }
    }
}

/// Random activations with zeros, an all-zero block, large magnitudes and exact halves.
fn acts_input(n: usize, cols: usize, group: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * cols)
        .map(|i| match rng.below(10) {
            0 => 0.0,
            1 => rng.f32() * 1e4,
            2 => (i % 7) as f32 - 3.0,
            _ => rng.f32() * 3.0,
        })
        .collect();
    // An all-zero block in token 0 when there are several blocks, and a block with one huge value.
    if cols >= 2 * group {
        x[group..2 * group].fill(0.0);
    }
    if n > 1 {
        x[cols] = 3e6;
    }
    x
}

fn assert_acts_eq(name: &str, got: &QActs, want: &QActs, what: &str) {
    let (n, pc, b) = (want.n, want.padded_cols, want.blocks());
    assert_eq!((got.n, got.padded_cols, got.block), (want.n, want.padded_cols, want.block), "{name} {what}: shape");
    assert_eq!(&got.q[..n * pc], &want.q[..n * pc], "{name} {what}: q");
    let (gd, wd) = (&got.d[..n * b], &want.d[..n * b]);
    assert!(gd.iter().zip(wd).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} {what}: d");
    assert_eq!(&got.sum[..n * b], &want.sum[..n * b], "{name} {what}: sum");
}

/// Compare `got` with `want`; `scale[i]` bounds the magnitude of the terms summed into `want[i]`.
fn assert_close(name: &str, exact: bool, got: &[f32], want: &[f32], scale: &[f32], what: &str) {
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        if exact {
            assert!(g.to_bits() == w.to_bits(), "{name} {what}: [{i}] got {g:e} want {w:e} (bit-exact table)");
        } else {
            assert!((g - w).abs() <= TOL * s.max(f32::MIN_POSITIVE), "{name} {what}: [{i}] got {g:e} want {w:e}");
        }
    }
}

/// Σ_g |term_g| of the reference sum for each output (rows first.., tokens 0..n).
fn term_scale(w: &Nested8<'_>, acts: &QActs, rows: usize) -> Vec<f32> {
    let gpr = w.row_stride / w.group_size;
    let mut out = vec![0f32; acts.n * rows];
    for t in 0..acts.n {
        for r in 0..rows {
            let mut s = 0f32;
            for g in 0..gpr {
                let (step, offset) = edge_runtime::blocks::nested8_step_offset(w.params.get(r * gpr + g), w.view_bits);
                let d = acts.d_row(t)[g];
                let q = &acts.q_row(t)[g * w.group_size..(g + 1) * w.group_size];
                let qa: i32 = q.iter().map(|v| (*v as i32).abs()).sum();
                s += d * (step.abs() * 255.0 * qa as f32 + offset.abs() * qa as f32);
            }
            out[t * rows + r] = s;
        }
    }
    out
}

#[test]
fn quantize_acts_bit_identical() {
    let mut rng = Rng(0x1234_5678);
    for k in tables() {
        for &group in &[8usize, 32, 64, 128] {
            for &cols in &[group, 3 * group, 3 * group + 5, 5 * group + 37, 576] {
                for &n in &[1usize, 2, 3, 7, 9, 64] {
                    let x = acts_input(n, cols, group, &mut rng);
                    let mut want = QActs::default();
                    (Kernels::SCALAR.quantize_acts)(&x, n, cols, group, &mut want);
                    let mut got = QActs::default();
                    (k.quantize_acts)(&x, n, cols, group, &mut got);
                    assert_acts_eq(k.name, &got, &want, &format!("group {group} cols {cols} n {n}"));
                    // Reusing a buffer that held a bigger input must give the same result.
                    let mut reused = QActs::default();
                    let big = acts_input(64, 640, group, &mut rng);
                    (k.quantize_acts)(&big, 64, 640, group, &mut reused);
                    (k.quantize_acts)(&x, n, cols, group, &mut reused);
                    assert_acts_eq(k.name, &reused, &want, &format!("reused, group {group} cols {cols} n {n}"));
                }
            }
        }
    }
}

/// Every view, group size and shape class, decode and prefill, against the reference.
#[test]
fn nested8_products_match_reference() {
    let mut rng = Rng(0xDEAD_BEEF);
    let tables = tables();
    for &group in &[8usize, 32, 64, 128, 96, 256] {
        // cols: one group, several groups, several with a tail that is not a multiple of
        // a 256-code chunk, one short of a group.
        for &cols in &[group, 4 * group, 5 * group + 40, 576 + group / 2, 9 * group - 1] {
            for &rows in &[1usize, 3, 70] {
                let t = Tensor::random(rows + 2, cols, group, &mut rng);
                compare_products(&tables, &t, rows, &[1, 2, 3, 7, 9, 40, 64], &mut rng);
            }
        }
    }
}

/// Super-block group parameters: every view, decode and prefill, at group sizes and row
/// lengths whose last block is partial (18 groups of 32 to a 576-wide row) or whole.
#[test]
fn super_params_products_match_reference() {
    let mut rng = Rng(0x5EED_0F5B);
    let tables = tables();
    for &group in &[8usize, 32, 64, 96] {
        for &cols in &[group, 8 * group, 5 * group + 40, 576, 9 * group - 1] {
            for &rows in &[1usize, 3, 70] {
                let t = Tensor::random_super(rows + 2, cols, group, &mut rng);
                compare_products(&tables, &t, rows, &[1, 3, 9, 40], &mut rng);
            }
        }
    }
}

/// Rows 1..=rows and 2..rows + 2 of `t` (which has rows + 2) through every table against the
/// reference, every view and form, decode and prefill of `ns` tokens. The reference's result
/// (the slow part, under emulation most of all) is computed once for all tables.
fn compare_products(tables: &[Kernels], t: &Tensor, rows: usize, ns: &[usize], rng: &mut Rng) {
    let (group, cols) = (t.group, t.cols);
    for &(view, prep) in &VIEWS {
        let w = t.view(view, prep);
        let vi = view_index(view);
        // Activations for views read from runs are quantized for the runs alone, as
        // `kernels::matvec` does; the 2-bit view on its planes gets them too,
        // which its table must notice (and still compute exactly).
        let runs_only = prep == Form::Runs || view == 2;
        // Decode: rows 1..=rows (not starting at 0), and the last row too.
        let x = acts_input(1, t.cols, group, rng);
        let mut want_a = QActs::default();
        (Kernels::SCALAR.quantize_acts)(&x, 1, cols, group, &mut want_a);
        let term = term_scale(&w, &want_a, rows + 2);
        for first in [1usize, 2] {
            let mut want = vec![0f32; rows];
            (Kernels::SCALAR.nested8_matvec[vi])(&w, &want_a, first, &mut want);
            let scale = &term[first..first + rows];
            for k in tables {
                let mut got_a = QActs { runs_order_only: runs_only, ..QActs::default() };
                (k.quantize_acts)(&x, 1, cols, group, &mut got_a);
                let mut got = vec![f32::NAN; rows];
                (k.nested8_matvec[vi])(&w, &got_a, first, &mut got);
                let what = format!("matvec view {view} (form {prep:?}) group {group} cols {cols} rows {rows} first {first}");
                assert_close(k.name, BIT_EXACT.contains(&k.name), &got, &want, scale, &what);
            }
        }
        // Prefill.
        for &n in ns {
            if n == 64 && rows > 3 && cols > 600 {
                continue; // keep the reference's runtime down
            }
            let x = acts_input(n, t.cols, group, rng);
            let mut want_a = QActs::default();
            (Kernels::SCALAR.quantize_acts)(&x, n, cols, group, &mut want_a);
            let first = 2;
            let mut want = vec![0f32; n * rows];
            (Kernels::SCALAR.nested8_matmul[vi])(&w, &want_a, first, &mut want);
            let all = term_scale(&w, &want_a, rows + 2);
            let scale: Vec<f32> =
                (0..n).flat_map(|tk| all[tk * (rows + 2) + first..tk * (rows + 2) + first + rows].to_vec()).collect();
            for k in tables {
                let mut got_a = QActs { runs_order_only: runs_only, ..QActs::default() };
                (k.quantize_acts)(&x, n, cols, group, &mut got_a);
                let mut got = vec![f32::NAN; n * rows];
                (k.nested8_matmul[vi])(&w, &got_a, first, &mut got);
                let what = format!("matmul view {view} (form {prep:?}) group {group} cols {cols} rows {rows} tokens {n}");
                assert_close(k.name, BIT_EXACT.contains(&k.name), &got, &want, &scale, &what);
            }
        }
    }
}

/// One group per row, scale 1, integer-plus-half offsets and activation blocks with amax
/// 127 (d = 1): every float operation of the reference is exact, so any table, whatever its
/// float order, must give equal outputs — this checks the integer sums exactly.
#[test]
fn exact_integer_sums() {
    let mut rng = Rng(0xFEED_F00D);
    for k in tables() {
        for &group in &[8usize, 32, 64, 128, 256] {
            for &(view, prep) in &VIEWS {
                let rows = 67;
                let t = Tensor::exact(rows, group, &mut rng);
                let w = t.view(view, prep);
                let vi = view_index(view);
                for &n in &[1usize, 2, 3, 7, 9, 40, 64] {
                    let mut x: Vec<f32> = (0..n * group).map(|_| (rng.below(255) as f32) - 127.0).collect();
                    for tk in 0..n {
                        x[tk * group] = 127.0;
                    }
                    let mut want_a = QActs::default();
                    (Kernels::SCALAR.quantize_acts)(&x, n, group, group, &mut want_a);
                    assert!(want_a.d.iter().all(|&d| d == 1.0));
                    let mut got_a = QActs::default();
                    (k.quantize_acts)(&x, n, group, group, &mut got_a);
                    let mut want = vec![0f32; n * rows];
                    let mut got = vec![f32::NAN; n * rows];
                    if n == 1 {
                        (Kernels::SCALAR.nested8_matvec[vi])(&w, &want_a, 0, &mut want);
                        (k.nested8_matvec[vi])(&w, &got_a, 0, &mut got);
                    } else {
                        (Kernels::SCALAR.nested8_matmul[vi])(&w, &want_a, 0, &mut want);
                        (k.nested8_matmul[vi])(&w, &got_a, 0, &mut got);
                    }
                    assert_eq!(got, want, "{} exact sums: view {view} (form {prep:?}) group {group} tokens {n}", k.name);
                }
            }
        }
    }
}

/// Long rows (130 or 300 groups and a partial one; part A of many slots at 32 · odd columns;
/// rows longer than 8192 columns, which the AVX2 decode takes fewer than 8 to a block): decode
/// and prefill.
#[test]
fn wide_rows_match_reference() {
    let mut rng = Rng(0xC0FF_EE00);
    for k in tables() {
        let exact = BIT_EXACT.contains(&k.name);
        for (group, cols) in [32usize, 64, 96].into_iter().flat_map(|g| [(g, 130 * g + 40), (g, 300 * g + 40)]) {
            let rows = 9;
            let t = Tensor::random(rows, cols, group, &mut rng);
            for &(view, prep) in &VIEWS {
                let w = t.view(view, prep);
                let vi = view_index(view);
                for &n in &[1usize, 2, 5] {
                    let x = acts_input(n, cols, group, &mut rng);
                    let mut want_a = QActs::default();
                    (Kernels::SCALAR.quantize_acts)(&x, n, cols, group, &mut want_a);
                    let mut got_a = QActs::default();
                    (k.quantize_acts)(&x, n, cols, group, &mut got_a);
                    let mut want = vec![0f32; n * rows];
                    let mut got = vec![f32::NAN; n * rows];
                    if n == 1 {
                        (Kernels::SCALAR.nested8_matvec[vi])(&w, &want_a, 0, &mut want);
                        (k.nested8_matvec[vi])(&w, &got_a, 0, &mut got);
                    } else {
                        (Kernels::SCALAR.nested8_matmul[vi])(&w, &want_a, 0, &mut want);
                        (k.nested8_matmul[vi])(&w, &got_a, 0, &mut got);
                    }
                    let scale = term_scale(&w, &want_a, rows);
                    let what = format!("wide rows: view {view} (form {prep:?}) group {group} cols {cols} tokens {n}");
                    assert_close(k.name, exact, &got, &want, &scale, &what);
                }
            }
        }
    }
}

/// Decode attention of one head: every table's entry equals the reference bit for bit (the
/// same code, compiled with the table's features), scores and output, for head sizes with and
/// without a tail of 8 and every count of positions modulo 4.
#[test]
fn attend_head_bit_identical() {
    use edge_runtime::kv::{KvBits, KvCache, KvFormat};
    let mut rng = Rng(0xA77E_2D00);
    let formats = ["32", "16", "8", "4", "k8v4", "k16v4"].map(|f| KvFormat::parse(f).unwrap());
    for k in tables() {
        for format in formats {
            let integer = format.keys != KvBits::F32 && format.keys != KvBits::F16 || format.values == KvBits::Q8 || format.values == KvBits::Q4;
            // Integer codes come in groups of 32 values: heads of a multiple of 32 (what the
            // model checks at load); float caches take any head size.
            let dims: &[usize] = if integer { &[64, 32, 128] } else { &[64, 48, 13] };
            for &hd in dims {
                let kv_dim = 3 * hd;
                for n in [1usize, 2, 3, 4, 5, 8, 63, 64, 65, 130] {
                    let q: Vec<f32> = (0..hd).map(|_| 2.0 * rng.f32()).collect();
                    let mut cache = KvCache::with_format(1, n, kv_dim, hd, format);
                    for p in 0..n {
                        let kr: Vec<f32> = (0..kv_dim).map(|_| rng.f32()).collect();
                        let vr: Vec<f32> = (0..kv_dim).map(|_| rng.f32()).collect();
                        cache.store(0, p, &kr, &vr).unwrap();
                    }
                    let run = |f: edge_runtime::kernels::dispatch::AttendHeadFn| {
                        let (mut scores, mut out) = (vec![f32::NAN; n], vec![f32::NAN; hd]);
                        f(&q, cache.view(0, n).head(hd), 0.125, &mut scores, &mut out);
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        (bits(&scores), bits(&out))
                    };
                    // Batched attention's read-back of the head's rows, from row 1 on.
                    let read = |f: edge_runtime::kernels::dispatch::KvRowsFn| {
                        let mut out = vec![f32::NAN; (n - 1) * hd];
                        let view = cache.view(0, n).head(hd);
                        f(view.keys, 1, hd, &mut out);
                        f(view.values, 1, hd, &mut out[..(n - 1) / 2 * hd]);
                        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    };
                    assert_eq!(read(k.kv_rows), read(Kernels::SCALAR.kv_rows), "{} kv_rows: KV {}, hd {hd}, {n} positions", k.name, format.name());
                    assert_eq!(
                        run(k.attend_head),
                        run(Kernels::SCALAR.attend_head),
                        "{} attend_head: KV {}, hd {hd}, {n} positions",
                        k.name,
                        format.name()
                    );
                }
            }
        }
    }
}

#[test]
fn repack_equals_the_definition() {
    let mut rng = Rng(0x5E9A_C4ED);
    for k in tables() {
        let Some(repack) = k.repack else {
            eprintln!("!!!!!!!! table {} makes no runs: repack NOT tested !!!!!!!!", k.name);
            continue;
        };
        // Single codes, one run, a run and a bit, many runs and a partial one.
        for numel in [8usize, 248, 256, 264, 512, 4096 + 96] {
            let codes: Vec<u8> = (0..numel).map(|_| rng.next() as u8).collect();
            let planes = pack_nested8_planes(&codes);
            let refs: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
            // A table without a nibble plane reads its 8-bit view from runs too.
            for v in [2u8, 3, 4, 5, 6].into_iter().chain(k.nibbles.is_none().then_some(8)) {
                assert_eq!(repack(v, &refs, numel), repack_top(v, &refs, numel), "{} repack: view {v}, {numel} codes", k.name);
            }
        }
    }
}

#[test]
fn swiglu_bit_identical() {
    let mut rng = Rng(0x5717_6100);
    for k in tables() {
        for n in [1usize, 7, 8, 9, 31, 1536, 1537] {
            // Gates over exp's whole range (underflow, overflow), zeros, a NaN; ups of both signs.
            let mut gate: Vec<f32> = (0..n).map(|_| (rng.f32() - 0.5) * 300.0).collect();
            gate[0] = 0.0;
            if n > 8 {
                gate[3] = f32::NAN;
                gate[5] = -104.5;
                gate[6] = 89.0;
            }
            let up: Vec<f32> = (0..n).map(|_| (rng.f32() - 0.5) * 8.0).collect();
            let (mut want, mut got) = (gate.clone(), gate.clone());
            edge_runtime::kernels::vector::swiglu(&mut want, &up);
            (k.swiglu)(&mut got, &up);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} swiglu, {n} values", k.name);
        }
    }
}

#[test]
fn geglu_bit_identical_and_tanh_gelu() {
    let mut rng = Rng(0x6E61_7500);
    for k in tables() {
        for n in [1usize, 7, 8, 9, 31, 2048, 2049] {
            // Gates over exp's whole range (underflow, overflow), zeros, a NaN; ups of both signs.
            let mut gate: Vec<f32> = (0..n).map(|_| (rng.f32() - 0.5) * 40.0).collect();
            gate[0] = 0.0;
            if n > 8 {
                gate[3] = f32::NAN;
                gate[5] = -60.0;
                gate[6] = 60.0;
            }
            let up: Vec<f32> = (0..n).map(|_| (rng.f32() - 0.5) * 8.0).collect();
            let (mut want, mut got) = (gate.clone(), gate.clone());
            edge_runtime::kernels::vector::geglu(&mut want, &up);
            (k.geglu)(&mut got, &up);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} geglu, {n} values", k.name);
            // The spec is GELU's tanh form, 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) * up.
            for ((g, u), w) in gate.iter().zip(&up).zip(&want) {
                let g64 = *g as f64;
                let t = (2.0 / core::f64::consts::PI).sqrt() * (g64 + 0.044715 * g64 * g64 * g64);
                let exact = 0.5 * g64 * (1.0 + t.tanh()) * *u as f64;
                if g.is_nan() {
                    assert!(w.is_nan());
                } else {
                    assert!((*w as f64 - exact).abs() <= 1e-6 * (1.0 + exact.abs()), "geglu({g}) * {u} = {w}, tanh form {exact}");
                }
            }
        }
    }
}

#[test]
fn softmax_rows_bit_identical() {
    let mut rng = Rng(0x5AF7_3A11);
    for k in tables() {
        for (rows, width, first) in [(1usize, 1usize, 1usize), (3, 7, 5), (8, 17, 10), (64, 130, 67), (5, 64, 64)] {
            let s: Vec<f32> = (0..rows * width).map(|_| rng.f32() * 8.0).collect();
            let mut want = s.clone();
            edge_runtime::kernels::vector::softmax_rows(&mut want, width, first);
            let mut got = s.clone();
            (k.softmax_rows)(&mut got, width, first);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} softmax_rows {rows}x{width} from {first}", k.name);
        }
    }
}
