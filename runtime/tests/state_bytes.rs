//! The run-time state a memory budget plans for ([`Model::planned_state_bytes`]) is what a
//! built model reports ([`Model::state_bytes`] minus its KV cache), over contexts, batches,
//! KV formats and thread counts.

mod support;
use support::{aligned, TinyLlama};

use edge_runtime::format::Checkpoint;
use edge_runtime::kv::{KvBits, KvFormat};
use edge_runtime::model::{Model, ModelOptions};

#[test]
fn planned_state_bytes_match_a_built_model() {
    let shapes = [
        TinyLlama {
            dim: 64,
            hidden: 128,
            layers: 2,
            heads: 2,
            kv_heads: 1,
            vocab: 96,
            context: 96,
            group: 16,
            range: 0.8,
            seed: 11,
        },
        TinyLlama {
            dim: 128,
            hidden: 320,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            vocab: 300,
            context: 512,
            group: 32,
            range: 0.8,
            seed: 5,
        },
    ];
    for shape in shapes {
        let bytes = shape.bytes();
        let buf = aligned(&bytes);
        let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()]).unwrap();
        for (ctx, batch) in [(0, 1), (16, 1), (64, 8), (96, 64), (4096, 32), (33, 100)] {
            for kv in [
                KvFormat::default(),
                KvFormat::uniform(KvBits::Q8),
                KvFormat::uniform(KvBits::Q4),
            ] {
                let opts = ModelOptions {
                    max_seq_len: ctx,
                    max_batch: batch,
                    kv,
                    kv_window: None,
                };
                let m = Model::new(&ck, opts).unwrap();
                let planned = Model::planned_state_bytes(&m.config, opts).unwrap();
                assert_eq!(
                    planned,
                    m.state_bytes() - m.kv_bytes().0,
                    "ctx {ctx}, batch {batch}, kv {}",
                    kv.name()
                );
            }
        }
    }
}
