//! Views on a live model: per-tensor plans, switching without reloading, released ranges.

mod support;
use support::{aligned, TinyLlama};

use edge_runtime::format::Checkpoint;
use edge_runtime::kernels::{self, WeightView};
use edge_runtime::model::{Model, ModelOptions};
use edge_runtime::arch::Kind;
use edge_runtime::plan::ViewPlan;

/// A random tiny Llama (dim 32, 2 layers, GQA 4/2, vocab 64) with nested 8-bit weights.
fn tiny_model() -> Vec<u8> {
    tiny_model_g(16)
}

/// [`tiny_model`] with groups of `g` weights.
fn tiny_model_g(g: usize) -> Vec<u8> {
    let m = TinyLlama { dim: 32, hidden: 64, layers: 2, heads: 4, kv_heads: 2, vocab: 64, context: 64, group: g, range: 0.6, seed: 1 };
    m.bytes()
}

#[test]
fn plan_precedence_name_then_layer_then_kind() {
    let plan = ViewPlan {
        default_bits: Some(4),
        overrides: vec![("ffn_up".into(), 3), ("blk.1".into(), 8), ("blk.1.ffn_up.weight".into(), 2)],
    };
    assert_eq!(plan.bits_for("blk.0.attn_q.weight"), Some(4));
    assert_eq!(plan.bits_for("blk.0.ffn_up.weight"), Some(3));
    assert_eq!(plan.bits_for("blk.1.attn_q.weight"), Some(8));
    assert_eq!(plan.bits_for("blk.1.ffn_up.weight"), Some(2));
    assert_eq!(plan.bits_for("token_embd.weight"), Some(4));
}

#[test]
fn live_view_switch_changes_logits_and_bytes_and_switches_back() {
    let bytes = tiny_model();
    let buf = aligned(&bytes);
    let file = &bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()];
    let ck = Checkpoint::parse(file).unwrap();
    let opts = ModelOptions { max_seq_len: 0, max_batch: 8, ..ModelOptions::default() };
    let mut m = Model::new(&ck, opts).unwrap();
    let tokens = [1u32, 5, 9, 12];
    let run = |m: &mut Model<'_>| m.forward_batch(&tokens, 0, edge_runtime::model::Logits::Last).unwrap().to_vec();
    let full = run(&mut m);
    let full_bytes = m.weights.view_bytes();

    let released = m.set_views(&ck, &ViewPlan::uniform(2)).unwrap();
    let low = run(&mut m);
    let low_bytes = m.weights.view_bytes();
    assert_ne!(full, low, "a 2-bit view computes different logits");
    assert!(low_bytes * 2 < full_bytes, "2-bit view reads {low_bytes} bytes vs {full_bytes} at 8 bits");
    // Released: planes 1..5 of every matrix (5 per matrix), exactly the bytes no longer read.
    let n_matrices = 1 + 2 * 7;
    assert_eq!(released.len(), 5 * n_matrices);
    assert_eq!(released.iter().map(|r| r.1 as usize).sum::<usize>(), full_bytes - low_bytes);

    // Per-layer plan: only layer 1 lowered reads bytes in between.
    let plan = ViewPlan { default_bits: Some(8), overrides: vec![("blk.1".into(), 3)] };
    m.set_views(&ck, &plan).unwrap();
    let mixed = m.weights.view_bytes();
    assert!(low_bytes < mixed && mixed < full_bytes);

    // The 5- and 6-bit views: logits of their own, bytes between the 4- and the 8-bit view's.
    let mut last = (m.set_views(&ck, &ViewPlan::uniform(4)).map(|_| m.weights.view_bytes()).unwrap(), run(&mut m));
    for bits in [5u8, 6] {
        m.set_views(&ck, &ViewPlan::uniform(bits)).unwrap();
        let (b, logits) = (m.weights.view_bytes(), run(&mut m));
        assert!(last.0 < b && b < full_bytes, "{bits}-bit view reads {b} bytes");
        assert!(logits != last.1 && logits != full, "the {bits}-bit view computes logits of its own");
        last = (b, logits);
    }

    m.set_views(&ck, &ViewPlan::uniform(8)).unwrap();
    assert_eq!(run(&mut m), full, "back at 8 bits the logits are bit-identical");
    assert!(m.set_views(&ck, &ViewPlan::uniform(7)).is_err(), "no 7-bit view exists");
}

#[test]
fn observer_sees_every_linear_input_once_per_layer() {
    use edge_runtime::model::{Logits, Observer, Site};
    struct Log(Vec<(Option<usize>, Site, usize, usize)>);
    impl Observer for Log {
        fn observe(&mut self, layer: Option<usize>, site: Site, n: usize, x: &[f32]) {
            assert!(x.iter().all(|v| v.is_finite()));
            self.0.push((layer, site, n, x.len() / n));
        }
    }
    let bytes = tiny_model();
    let buf = aligned(&bytes);
    let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()]).unwrap();
    let mut m = Model::new(&ck, ModelOptions { max_seq_len: 0, max_batch: 8, ..ModelOptions::default() }).unwrap();
    let mut log = Log(Vec::new());
    let plain = m.forward_batch(&[3, 4, 5], 0, Logits::All).unwrap().to_vec();
    let seen = m.forward_observed(&[3, 4, 5], 0, Logits::All, Some(&mut log)).unwrap().to_vec();
    assert_eq!(plain, seen, "observing changes nothing");
    let mut want = Vec::new();
    for l in 0..2 {
        want.extend([(Some(l), Site::AttnIn, 3, 32), (Some(l), Site::AttnOut, 3, 32), (Some(l), Site::FfnIn, 3, 32), (Some(l), Site::FfnDown, 3, 64)]);
    }
    want.push((None, Site::Head, 3, 32));
    assert_eq!(log.0, want);
}

#[test]
fn repacked_views_release_their_planes_and_compute_the_same() {
    for bits in [8u8, 6, 5, 4, 3, 2] {
        repacked_view_releases_its_planes_and_computes_the_same(bits);
    }
}

fn repacked_view_releases_its_planes_and_computes_the_same(bits: u8) {
    let bytes = tiny_model_g(32);
    let buf = aligned(&bytes);
    let file = &bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()];
    let ck = Checkpoint::parse(file).unwrap();
    let opts = ModelOptions { max_seq_len: 0, max_batch: 8, ..ModelOptions::default() };
    let released = std::cell::RefCell::new(Vec::new());
    let mut m = Model::with_plan_releasing(&ck, opts, &ViewPlan::uniform(bits), &|o, l| released.borrow_mut().push((o, l))).unwrap();
    let k = kernels::kernels();
    // 8 bits: the nibble plane where the table makes one, else runs of whole codes.
    if k.repack.is_none() && (bits < 8 || k.nibbles.is_none()) {
        eprintln!("!!!!!!!! table {} makes no copy of {bits}-bit views: their copies are NOT tested on this CPU !!!!!!!!", k.name);
        return;
    }
    // Every matrix (7 per layer, the tied embedding once) gave back the planes its copy holds
    // (the view's planes for runs; 3-5 at 8 bits with a nibble plane), which it no longer
    // reads: a part at a time as the copy grew, then each whole range once complete.
    let mut got = released.into_inner();
    got.sort_unstable();
    let repacked = m.weights.replaced_ranges();
    assert!(repacked.iter().all(|r| got.contains(r)), "a replaced range was not released whole");
    let inside = |&(o, l): &(u64, u64)| repacked.iter().any(|&(ro, rl)| o >= ro && o + l <= ro + rl);
    assert!(got.iter().all(inside), "a release outside the replaced ranges: {got:?}");
    assert!(got.len() > repacked.len(), "no part released before its matrix was complete");
    let per_matrix = match bits {
        8 if k.nibbles.is_some() => 3,
        _ => edge_runtime::blocks::nested8_planes_for_view(bits).unwrap(),
    };
    assert_eq!(repacked.len(), per_matrix * (1 + 2 * 7));
    let read = m.weights.read_ranges();
    assert!(repacked.iter().all(|r| !read.contains(r)), "a repacked plane is still read");
    let tokens = [1u32, 5, 9, 12, 3];
    let run = |m: &mut Model<'_>, t: &[u32]| m.forward_batch(t, 0, edge_runtime::model::Logits::All).unwrap().to_vec();
    let (prefill, decode) = (run(&mut m, &tokens), run(&mut m, &tokens[..1]));
    // The same views without the copies read their planes: bit-identical logits.
    let mut plain = m.weights.clone();
    let strip = |m: &mut kernels::Matrix<'_>| match &mut m.view {
        WeightView::Nested8(n) => {
            assert!(n.prepared().bytes().is_some(), "a {bits}-bit view was not copied");
            *n = n.unprepared();
        }
        _ => panic!("not nested"),
    };
    plain.for_each_matrix_mut(strip);
    let mut p = Model::with_weights(m.config, plain, opts).unwrap();
    assert_eq!(run(&mut p, &tokens), prefill);
    assert_eq!(run(&mut p, &tokens[..1]), decode);

    // A live switch keeps the copies of matrices whose view stays and drops the others'.
    let copy = |m: &kernels::Matrix<'_>| match &m.view {
        WeightView::Nested8(n) => n.prepared().bytes().map(|b| b.as_ptr()),
        _ => None,
    };
    let kept = copy(m.weights.layers[0].w(Kind::AttnQ)).expect("copied");
    let before = copy(m.weights.layers[1].w(Kind::AttnQ));
    let other = if bits == 8 { 5 } else { 8 };
    m.set_views(&ck, &ViewPlan { default_bits: Some(bits), overrides: vec![("blk.1".into(), other)] }).unwrap();
    assert_eq!(copy(m.weights.layers[0].w(Kind::AttnQ)), Some(kept), "an unchanged view was copied again");
    let after = copy(m.weights.layers[1].w(Kind::AttnQ));
    assert!(after != before, "a changed view kept its old copy");
    let fresh = edge_runtime::backend::cpu::matrix(ck.tensor("blk.1.attn_q.weight").unwrap(), Some(other)).unwrap();
    assert_eq!(after.is_some(), copy(&fresh).is_some(), "the {other}-bit view holds a copy exactly when a fresh one does");
}
