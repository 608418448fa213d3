//! Helpers shared by the runtime's tests and the kernel benches (`benches/kernels.rs` includes
//! this file with `#[path]`).

/// The xorshift64 stream both generators below draw from.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Deterministic pseudo-random floats in [-1, 1) (xorshift64).
#[allow(dead_code)]
pub fn rand_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut next = xorshift(seed);
    (0..n).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect()
}

/// Deterministic pseudo-random bytes (the same xorshift64 as [`rand_f32`]).
#[allow(dead_code)]
pub fn rand_u8(n: usize, seed: u64) -> Vec<u8> {
    let mut next = xorshift(seed);
    (0..n).map(|_| (next() >> 56) as u8).collect()
}

/// Shape of a random Llama with nested 8-bit weights (tied embeddings, unit norms).
#[allow(dead_code)]
pub struct TinyLlama {
    pub dim: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub context: usize,
    /// Weights per (scale, min) group.
    pub group: usize,
    /// Every group spans `[-range / 2, range / 2]`.
    pub range: f32,
    /// Seed before the first tensor's (each tensor takes the next).
    pub seed: u64,
}

impl TinyLlama {
    /// The checkpoint's bytes: random 8-bit codes, one (scale, min) for every group.
    #[allow(dead_code)]
    pub fn bytes(&self) -> Vec<u8> {
        use edge_runtime::blocks::{pack_nested8_planes, GroupParams};
        use edge_runtime::format::{keys, CheckpointWriter, Encoding, MetaValue, TensorData};
        use half::f16;
        let (dim, g) = (self.dim, self.group);
        let hd = dim / self.heads;
        let mut w = CheckpointWriter::new();
        let mut seed = self.seed;
        let mut nested = |name: String, rows: usize, cols: usize, w: &mut CheckpointWriter| {
            seed += 1;
            let codes = rand_u8(rows * cols, seed);
            let p = GroupParams { scale: f16::from_f32(self.range / 255.0), min: f16::from_f32(-self.range / 2.0) };
            let mut segments = vec![bytemuck::cast_slice(&vec![p; rows * cols / g]).to_vec()];
            segments.extend(pack_nested8_planes(&codes));
            let shape = vec![rows as u64, cols as u64];
            w.add_tensor(TensorData { name, encoding: Encoding::Nested8, shape, group_size: g as u32, segments }).unwrap();
        };
        let ones = |name: String, w: &mut CheckpointWriter| {
            let v = vec![1f32; dim];
            let segments = vec![bytemuck::cast_slice(&v).to_vec()];
            w.add_tensor(TensorData { name, encoding: Encoding::F32, shape: vec![dim as u64], group_size: 0, segments }).unwrap();
        };
        nested("token_embd.weight".into(), self.vocab, dim, &mut w);
        ones("output_norm.weight".into(), &mut w);
        for l in 0..self.layers {
            ones(format!("blk.{l}.attn_norm.weight"), &mut w);
            ones(format!("blk.{l}.ffn_norm.weight"), &mut w);
            nested(format!("blk.{l}.attn_q.weight"), dim, dim, &mut w);
            nested(format!("blk.{l}.attn_k.weight"), self.kv_heads * hd, dim, &mut w);
            nested(format!("blk.{l}.attn_v.weight"), self.kv_heads * hd, dim, &mut w);
            nested(format!("blk.{l}.attn_output.weight"), dim, dim, &mut w);
            nested(format!("blk.{l}.ffn_gate.weight"), self.hidden, dim, &mut w);
            nested(format!("blk.{l}.ffn_up.weight"), self.hidden, dim, &mut w);
            nested(format!("blk.{l}.ffn_down.weight"), dim, self.hidden, &mut w);
        }
        w.set_meta(keys::ARCH, MetaValue::Str("llama"));
        for (k, v) in [
            (keys::DIM, dim),
            (keys::HIDDEN_DIM, self.hidden),
            (keys::N_LAYERS, self.layers),
            (keys::N_HEADS, self.heads),
            (keys::N_KV_HEADS, self.kv_heads),
            (keys::HEAD_DIM, hd),
            (keys::VOCAB_SIZE, self.vocab),
            (keys::CONTEXT_LENGTH, self.context),
        ] {
            w.set_meta(k, MetaValue::U64(v as u64));
        }
        w.set_meta(keys::NORM_EPS, MetaValue::F32(1e-5));
        w.set_meta(keys::ROPE_THETA, MetaValue::F32(10000.0));
        w.set_meta(keys::TIED_EMBEDDINGS, MetaValue::Bool(true));
        let mut out = Vec::new();
        w.write_to(&mut out, |_, _| {}).unwrap();
        out
    }
}

/// `bytes` in a 16-byte aligned buffer (checkpoints are parsed in place).
#[allow(dead_code)]
pub fn aligned(bytes: &[u8]) -> Vec<u128> {
    let mut buf = vec![0u128; bytes.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..bytes.len()].copy_from_slice(bytes);
    buf
}
