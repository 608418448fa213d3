//! A change of views made beside a running model (`Model::begin_views`, a slice at a time, then
//! `install_views`) ends where the synchronous `set_views` does: the same matrices, bit for
//! bit, the same file ranges released, the same logits.

mod support;
use support::{aligned, TinyLlama};

use edge_runtime::backend::cpu::Preparing;
use edge_runtime::format::Checkpoint;
use edge_runtime::kernels::{self, WeightView};
use edge_runtime::model::{Model, ModelOptions, ViewChange};
use edge_runtime::plan::ViewPlan;

/// A random tiny Llama with groups of 32 (the SIMD tables' unit, so the views 2-6 are repacked
/// into runs and the 8-bit view gets a nibble plane), its embedding 512 x 64: 128 runs of 256
/// codes, so a change made a run at a time takes many slices.
fn model() -> Vec<u8> {
    TinyLlama { dim: 64, hidden: 128, layers: 2, heads: 4, kv_heads: 2, vocab: 512, context: 4096, group: 32, range: 0.6, seed: 7 }.bytes()
}

/// Every matrix's stored view and its prepared form, as bytes.
fn forms(m: &Model<'_>) -> Vec<(String, Option<u8>, Option<Vec<u8>>)> {
    m.weights
        .matrices()
        .into_iter()
        .map(|(name, w)| match &w.view {
            WeightView::Nested8(n) => (name, Some(n.view_bits), n.prepared().bytes().map(|b| b.to_vec())),
            _ => (name, None, None),
        })
        .collect()
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn a_view_change_made_in_slices_matches_set_views_bit_for_bit() {
    let bytes = model();
    let buf = aligned(&bytes);
    let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()]).unwrap();
    let opts = ModelOptions { max_seq_len: 0, max_batch: 8, ..ModelOptions::default() };
    let k = kernels::kernels();
    let copies = k.repack.is_some();
    if !copies {
        eprintln!("!!!!!!!! table {} makes no copies of views: slices of copies are NOT tested on this CPU !!!!!!!!", k.name);
    }
    let steps = [
        ViewPlan::uniform(3),
        // Up to 8 bits again: the nibble plane (or, in tables without one, runs).
        ViewPlan::uniform(8),
        // The embedding alone (the tied head), then a layer.
        ViewPlan { default_bits: Some(8), overrides: vec![("token_embd".into(), 4)] },
        ViewPlan { default_bits: Some(8), overrides: vec![("token_embd".into(), 2), ("blk.1".into(), 5)] },
        ViewPlan::uniform(6),
    ];
    let mut sync = Model::new(&ck, opts).unwrap();
    let mut live = Model::new(&ck, opts).unwrap();
    let mut pos = 0;
    let mut token = 1u32;
    for plan in &steps {
        // The live model decodes at its old views while the change is made, a run at a time.
        let mut change: ViewChange<'_, _> = live.begin_views(&ck, plan).unwrap();
        assert_send(&change);
        let mut slices = 0;
        loop {
            let a = sync.forward(token, pos).unwrap().to_vec();
            let b = live.forward(token, pos).unwrap().to_vec();
            assert_eq!(a, b, "the old views keep running while the change is made");
            pos += 1;
            token = (token * 7 + 3) % 512;
            slices += 1;
            if change.step(1) {
                break;
            }
        }
        if copies && plan.bits_for("token_embd.weight") != Some(8) {
            assert!(slices > 16, "the embedding's change was made in {slices} slices");
        }
        let released_live = live.install_views(change);
        let released_sync = sync.set_views(&ck, plan).unwrap();
        assert_eq!(released_live, released_sync, "the same file ranges are no longer read");
        assert_eq!(live.weights.read_ranges(), sync.weights.read_ranges());
        assert_eq!(live.weights.replaced_ranges(), sync.weights.replaced_ranges());
        assert_eq!(forms(&live), forms(&sync), "the same views and prepared forms, bit for bit");
        for _ in 0..3 {
            let a = sync.forward(token, pos).unwrap().to_vec();
            let b = live.forward(token, pos).unwrap().to_vec();
            assert_eq!(a, b, "bit-identical logits after the swap");
            pos += 1;
            token = (token * 7 + 3) % 512;
        }
    }
    // A change to the views already there has nothing to make.
    let none = live.begin_views(&ck, steps.last().unwrap()).unwrap();
    assert!(none.is_empty() && none.is_complete());
}

#[test]
fn a_preparation_finishes_early_into_the_same_matrix() {
    let bytes = model();
    let buf = aligned(&bytes);
    let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()]).unwrap();
    use edge_runtime::backend::{Backend, Cpu, Preparing as _};
    let t = ck.tensor("token_embd.weight").unwrap();
    let c = edge_runtime::Config::from_checkpoint(&ck).unwrap();
    let cpu = Cpu::new(&c, 1, 8).unwrap();
    for bits in [2u8, 3, 4, 5, 6, 8] {
        let whole = cpu.prepare(t, Some(bits)).unwrap();
        // A few slices, then the rest at once.
        let mut p: Preparing<'_> = cpu.begin_prepare(t, Some(bits)).unwrap();
        // At 8 bits a table makes its nibble plane or, without one, runs.
        let copies = kernels::kernels().repack.is_some() || (bits == 8 && kernels::kernels().nibbles.is_some());
        assert_eq!(p.step(100), !copies, "{bits} bits: done after one small slice only without a copy to make");
        p.step(1000);
        let parts = p.finish();
        assert_eq!(parts.replaced_planes, whole.replaced_planes);
        let bytes = |m: &kernels::Matrix<'_>| match &m.view {
            WeightView::Nested8(n) => n.prepared().bytes().map(|b| b.to_vec()),
            _ => None,
        };
        assert_eq!(bytes(&parts.matrix), bytes(&whole.matrix), "{bits} bits");
    }
}
