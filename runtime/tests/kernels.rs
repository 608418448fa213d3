//! The model's matrix products against the scalar reference, for every encoding and view, on
//! random inputs of every length class (tails, one block, many blocks).

mod support;
use support::rand_f32;

use edge_runtime::blocks::{pack_nested8_planes, GroupParams, SuperParams, TensorBlocks, NESTED8_VIEWS};
use edge_runtime::format::{Checkpoint, CheckpointWriter, Encoding, TensorData};
use edge_runtime::kernels::{self, reference, Matrix};
use half::{bf16, f16};

fn tensor(name: &str, enc: Encoding, rows: usize, cols: usize, group: usize, seed: u64) -> TensorData {
    let v = rand_f32(rows * cols, seed);
    let segments = match enc {
        Encoding::F32 => vec![bytemuck::cast_slice(&v).to_vec()],
        Encoding::F16 => vec![bytemuck::cast_slice(&v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>()).to_vec()],
        Encoding::Bf16 => vec![bytemuck::cast_slice(&v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>()).to_vec()],
        Encoding::Nested8 | Encoding::Nested8Super => {
            // Rows padded to whole groups, as the format stores them.
            let padded = cols.div_ceil(group) * group;
            let mut codes = vec![0u8; rows * padded];
            for r in 0..rows {
                for c in 0..cols {
                    codes[r * padded + c] = ((v[r * cols + c] + 1.0) * 127.5) as u8;
                }
            }
            let params: Vec<GroupParams> = (0..rows * padded / group)
                .map(|g| GroupParams { scale: f16::from_f32(0.008 + g as f32 * 1e-4), min: f16::from_f32(-1.0) })
                .collect();
            let mut s = vec![match enc {
                // The same scales to f32 rounding, as 6-bit codes (minimum -32 · 1/32 = -1).
                Encoding::Nested8Super => bytemuck::cast_slice(
                    &(0..rows * (padded / group).div_ceil(8))
                        .map(|b| SuperParams::new(f16::from_f32(5e-4), f16::from_f32(1.0 / 32.0), core::array::from_fn(|j| (16 + (8 * b + j) % 40) as u8), [-32; 8]))
                        .collect::<Vec<_>>(),
                )
                .to_vec(),
                _ => bytemuck::cast_slice(&params).to_vec(),
            }];
            s.extend(pack_nested8_planes(&codes));
            s
        }
    };
    TensorData { name: name.into(), encoding: enc, shape: vec![rows as u64, cols as u64], group_size: if enc.is_grouped() { group as u32 } else { 0 }, segments }
}

use edge_runtime::backend::cpu::matrix;

/// A written checkpoint in 16-byte-aligned memory (as a mapping would be).
struct Aligned(Vec<u128>, usize);

impl Aligned {
    fn write(w: CheckpointWriter) -> Self {
        let mut bytes = Vec::new();
        w.write_to(&mut bytes, |_, _| {}).unwrap();
        let mut buf = vec![0u128; bytes.len().div_ceil(16)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
        Aligned(buf, bytes.len())
    }

    fn parse(&self) -> Checkpoint<'_> {
        Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&self.0)[..self.1]).unwrap()
    }
}

#[test]
fn matvec_and_matmul_match_reference() {
    // (rows, cols): a tail-only row, one block, several blocks with a tail, a tall matrix
    // spanning several matmul tiles.
    // (3, 20) and (4, 44) have rows that are not a whole number of 8-weight groups (padded).
    let shapes = [(3usize, 8usize), (5, 32), (7, 96), (130, 64), (3, 20), (4, 44)];
    let encs = [Encoding::F32, Encoding::F16, Encoding::Bf16, Encoding::Nested8, Encoding::Nested8Super];
    let mut w = CheckpointWriter::new();
    for (i, &(r, c)) in shapes.iter().enumerate() {
        for (j, &e) in encs.iter().enumerate() {
            w.add_tensor(tensor(&format!("t{i}_{j}"), e, r, c, 8, (i * 10 + j) as u64 + 1)).unwrap();
        }
    }
    let buf = Aligned::write(w);
    let ck = buf.parse();
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        for j in 0..encs.len() {
            let t = ck.tensor(&format!("t{i}_{j}")).unwrap();
            let views: &[Option<u8>] = if t.encoding.is_grouped() {
                &[Some(2), Some(3), Some(4), Some(5), Some(6), Some(8)]
            } else {
                &[None]
            };
            for &view in views {
                let m = matrix(t, view).unwrap();
                for (n, threads) in [(1usize, 1usize), (1, 3), (2, 1), (5, 3)] {
                    kernels::set_threads(threads);
                    let x = rand_f32(n * cols, 99 + n as u64);
                    let mut want = vec![0f32; n * rows];
                    reference::matmul(&m, &x, n, &mut want);
                    let mut got = vec![0f32; n * rows];
                    let mut tile = kernels::Scratch::new(cols, n, threads);
                    kernels::matmul(&m, &x, n, &mut got, &mut tile);
                    // Nested weights meet int8 activations: the spec is the quantized-activation
                    // reference, matched to float-reordering tolerance; against the f32 product
                    // the difference is the activations' rounding (half a step of 1/127 of each
                    // block's max |x| <= 1, times Σ_c |W[r, c]|).
                    let mut want_q = vec![0f32; n * rows];
                    if let kernels::WeightView::Nested8(w) = &m.view {
                        let mut acts = kernels::QActs::default();
                        reference::quantize_acts(&x, n, cols, w.group_size, &mut acts);
                        for tok in 0..n {
                            for r in 0..rows {
                                want_q[tok * rows + r] = reference::nested8_row_dot(w, r, &acts, tok);
                            }
                        }
                    }
                    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                        if let kernels::WeightView::Nested8(_) = &m.view {
                            let tol = 1e-5 * cols as f32;
                            let wq = want_q[k];
                            assert!((g - wq).abs() <= tol, "{} view {view:?} n={n} threads={threads} out[{k}]: {g} vs spec {wq}", t.name);
                            let mut row = vec![0f32; cols];
                            m.dequant_row(k % rows, &mut row);
                            let act_tol = 0.5 / 127.0 * row.iter().map(|v| v.abs()).sum::<f32>() + 1e-4;
                            assert!((g - w).abs() <= act_tol, "{} view {view:?} n={n}: {g} vs f32 product {w}", t.name);
                        } else {
                            // f32 accumulation vs the f64 reference: relative to the sum of |terms|.
                            let tol = 1e-5 * cols as f32;
                            assert!((g - w).abs() <= tol, "{} view {view:?} n={n} threads={threads} out[{k}]: {g} vs {w}", t.name);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn lower_views_read_fewer_bytes() {
    let mut w = CheckpointWriter::new();
    w.add_tensor(tensor("n", Encoding::Nested8, 16, 64, 32, 3)).unwrap();
    let buf = Aligned::write(w);
    let ck = buf.parse();
    let t = ck.tensor("n").unwrap();
    let sizes: Vec<usize> = NESTED8_VIEWS.iter().map(|&v| matrix(t, Some(v)).unwrap().view_bytes()).collect();
    let params = 16 * 64 / 32 * 4;
    // 16 x 64 codes: 2, 3, 4, 5, 6 and 8 bits each.
    assert_eq!(sizes, vec![params + 256, params + 384, params + 512, params + 640, params + 768, params + 1024]);
    assert!(matrix(t, Some(7)).is_err());
}

#[test]
fn portable_table_is_bit_identical_to_the_scalar_spec() {
    // Group sizes 8 and 32, rows with padding, 1 and 3 tokens, every view.
    for (rows, cols, group) in [(5usize, 20usize, 8usize), (9, 96, 32), (3, 70, 32)] {
        let mut w = CheckpointWriter::new();
        w.add_tensor(tensor("n", Encoding::Nested8, rows, cols, group, rows as u64)).unwrap();
        let buf = Aligned::write(w);
        let ck = buf.parse();
        for view in NESTED8_VIEWS {
            let m = matrix(ck.tensor("n").unwrap(), Some(view)).unwrap();
            let kernels::WeightView::Nested8(nw) = &m.view else { unreachable!() };
            for n in [1usize, 3] {
                let x = rand_f32(n * cols, 7 + n as u64);
                let (s, p) = (kernels::Kernels::SCALAR, kernels::Kernels::PORTABLE);
                let mut acts = kernels::QActs::default();
                (s.quantize_acts)(&x, n, cols, group, &mut acts);
                let vi = kernels::dispatch::view_index(view);
                let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                if n == 1 {
                    (s.nested8_matvec[vi])(nw, &acts, 0, &mut a);
                    (p.nested8_matvec[vi])(nw, &acts, 0, &mut b);
                } else {
                    (s.nested8_matmul[vi])(nw, &acts, 0, &mut a);
                    (p.nested8_matmul[vi])(nw, &acts, 0, &mut b);
                }
                assert_eq!(a, b, "view {view} rows {rows} cols {cols} group {group} tokens {n}");
            }
        }
    }
}

#[test]
fn float_activations_scope_is_this_thread_only() {
    use kernels::dispatch::{float_activations, with_float_activations};
    if std::env::var("EDGE_RUN_KERNELS").as_deref() == Ok("float") {
        eprintln!("EDGE_RUN_KERNELS=float sets float activations everywhere: the scope is NOT tested");
        return;
    }
    assert!(!float_activations());
    let (inside, other_thread) = with_float_activations(|| (float_activations(), std::thread::spawn(float_activations).join().unwrap()));
    assert!(inside, "on inside the scope");
    assert!(!other_thread, "another thread keeps int8 activations");
    assert!(!float_activations(), "off again after the scope");
    // A matrix loaded inside the scope prepares no form for the SIMD kernels: it is read from
    // its planes, as the float path reads it.
    let mut w = CheckpointWriter::new();
    w.add_tensor(tensor("n", Encoding::Nested8, 16, 64, 32, 3)).unwrap();
    let buf = Aligned::write(w);
    let ck = buf.parse();
    let t = ck.tensor("n").unwrap();
    for v in [4u8, 8] {
        let m = with_float_activations(|| matrix(t, Some(v)).unwrap());
        let kernels::WeightView::Nested8(n) = &m.view else { unreachable!() };
        assert_eq!(n.prepared(), kernels::Prepared::Planes, "view {v}");
    }
}

#[test]
fn from_blocks_checks_the_blocks_against_the_shape() {
    let values = vec![0.5f32; 12];
    assert!(Matrix::from_blocks(3, 4, TensorBlocks::F32(&values), None).is_ok());
    assert!(Matrix::from_blocks(4, 4, TensorBlocks::F32(&values), None).is_err(), "f32 data too short");
    // 4 rows of 64 codes in groups of 32: a view needs its planes, whole, and nothing more.
    let codes: Vec<u8> = (0..256u32).map(|i| (i * 37 % 256) as u8).collect();
    let stored = pack_nested8_planes(&codes);
    let params = vec![GroupParams { scale: f16::from_f32(0.01), min: f16::from_f32(-1.0) }; 8];
    let nested = |n_planes: usize, row_stride: usize| {
        let mut planes: [&[u8]; 6] = [&[]; 6];
        for (p, s) in planes.iter_mut().zip(&stored).take(n_planes) {
            *p = s;
        }
        TensorBlocks::Nested8 { params: (&params).into(), planes, group_size: 32, row_stride }
    };
    for v in NESTED8_VIEWS {
        let m = Matrix::from_blocks(4, 64, nested(6, 64), Some(v)).unwrap();
        assert_eq!(m.view_bytes(), 8 * 4 + 256 * v as usize / 8, "view {v}");
    }
    assert!(Matrix::from_blocks(4, 64, nested(6, 64), Some(7)).is_err(), "no 7-bit view");
    assert!(Matrix::from_blocks(4, 64, nested(1, 64), Some(2)).is_ok(), "the 2-bit view reads plane 0 alone");
    assert!(Matrix::from_blocks(4, 64, nested(1, 64), Some(3)).is_err(), "the 3-bit view needs plane 1");
    assert!(Matrix::from_blocks(5, 64, nested(6, 64), Some(4)).is_err(), "planes too short for 5 rows");
    assert!(Matrix::from_blocks(4, 96, nested(6, 64), Some(4)).is_err(), "rows shorter than the columns");
    assert!(Matrix::from_blocks(2, 64, nested(6, 48), Some(4)).is_err(), "rows of partial groups");
}

/// A row dequantized (the float path's weights, an embedding lookup) equals the spec,
/// `blocks::dequant_nested8` over the stored planes, bit for bit: from the planes, from runs and
/// from the 8-bit nibble plane, for groups of 8 to 96, rows that end inside a run and columns that
/// are not a multiple of 8, in both parameter encodings.
#[test]
fn rows_dequantize_as_the_spec_from_every_form() {
    use edge_runtime::blocks::{self, low_nibbles, repack_top};
    let runs = kernels::Kernels { repack: Some(repack_top), nibbles: None, ..kernels::Kernels::PORTABLE };
    let nibbles = kernels::Kernels { repack: Some(repack_top), nibbles: Some(low_nibbles), ..kernels::Kernels::PORTABLE };
    for enc in [Encoding::Nested8, Encoding::Nested8Super] {
        for (group, cols) in [(8, 44), (32, 200), (64, 576), (96, 300)] {
            let rows = 7;
            let mut w = CheckpointWriter::new();
            w.add_tensor(tensor("n", enc, rows, cols, group, 11 + group as u64)).unwrap();
            let buf = Aligned::write(w);
            let ck = buf.parse();
            for v in NESTED8_VIEWS {
                let m = matrix(ck.tensor("n").unwrap(), Some(v)).unwrap();
                let kernels::WeightView::Nested8(n) = &m.view else { unreachable!() };
                let stored = n.unprepared();
                let mut forms = vec![("planes", stored.clone())];
                if group % 32 == 0 {
                    forms.push(("runs", stored.clone().prepare(&runs)));
                    forms.push(("nibbles", stored.clone().prepare(&nibbles)));
                }
                for (form, n) in forms {
                    let fm = Matrix { view: kernels::WeightView::Nested8(n.clone()), ..m.clone() };
                    for r in 0..rows {
                        let mut want = vec![0f32; cols];
                        blocks::dequant_nested8(stored.params, &stored.planes, group, v, r * stored.row_stride, &mut want);
                        let mut got = vec![f32::NAN; cols + 3];
                        fm.dequant_row(r, &mut got);
                        assert_eq!(
                            got[..cols].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            "{enc:?} group {group} cols {cols} view {v} from {form} ({:?}), row {r}",
                            n.prepared()
                        );
                        assert!(got[cols..].iter().all(|x| x.is_nan()), "wrote past the row's columns");
                    }
                }
            }
        }
    }
}

#[test]
fn replaced_planes_name_what_the_prepared_form_replaced() {
    let mut w = CheckpointWriter::new();
    w.add_tensor(tensor("n", Encoding::Nested8, 16, 64, 32, 3)).unwrap();
    w.add_tensor(tensor("f", Encoding::F16, 16, 64, 32, 4)).unwrap();
    let buf = Aligned::write(w);
    let ck = buf.parse();
    let k = kernels::kernels();
    for v in NESTED8_VIEWS {
        let m = matrix(ck.tensor("n").unwrap(), Some(v)).unwrap();
        let kernels::WeightView::Nested8(n) = &m.view else { unreachable!() };
        let (want, form) = match v {
            2..=6 if k.repack.is_some() && !kernels::dispatch::float_activations() => (0..v as usize - 1, "runs"),
            8 if k.nibbles.is_some() && !kernels::dispatch::float_activations() => (3..6, "nibbles"),
            8 if k.repack.is_some() && !kernels::dispatch::float_activations() => (0..6, "runs"),
            _ => (0..0, "planes"),
        };
        assert_eq!(m.replaced_planes(), want, "view {v} ({} table)", k.name);
        match (form, n.prepared()) {
            ("runs", kernels::Prepared::Runs(_)) | ("nibbles", kernels::Prepared::Nibbles(_)) | ("planes", kernels::Prepared::Planes) => {}
            (_, got) => panic!("view {v}: {form} expected, {got:?} prepared"),
        }
        assert_eq!(n.prepared().bytes().is_some(), form != "planes");
        assert_eq!(n.unprepared().prepared(), kernels::Prepared::Planes);
        // The plane slices of those indices, and what the view still reads, do not overlap.
        let replaced = &n.planes[m.replaced_planes()];
        assert_eq!(replaced.len(), want.len());
        let mut read = Vec::new();
        m.for_each_slice(&mut |s| read.push(s.as_ptr()));
        assert!(replaced.iter().all(|p| !read.contains(&p.as_ptr())), "view {v}: a replaced plane is still read");
        // Rows dequantized from the prepared form (an embedding lookup) equal those from the planes.
        let plain = Matrix { view: kernels::WeightView::Nested8(n.unprepared()), ..m.clone() };
        let (mut a, mut b) = (vec![0f32; 64], vec![1f32; 64]);
        for r in 0..16 {
            m.dequant_row(r, &mut a);
            plain.dequant_row(r, &mut b);
            assert_eq!(a, b, "view {v} row {r}: the prepared form dequantizes differently");
        }
    }
    let f = matrix(ck.tensor("f").unwrap(), None).unwrap();
    assert_eq!(f.replaced_planes(), 0..0);
}
