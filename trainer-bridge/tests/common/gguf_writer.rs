//! A minimal GGUF writer for tests: synthetic (tiny or deliberately broken) GGUF files.
#![allow(dead_code)]

/// A metadata value, with GGUF's value type codes.
#[derive(Debug, Clone)]
pub enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type code and elements.
    Arr(u32, Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl V {
    pub fn code(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
        }
    }
    pub fn str(s: &str) -> V {
        V::Str(s.to_string())
    }
    pub fn strs(v: &[&str]) -> V {
        V::Arr(8, v.iter().map(|s| V::str(s)).collect())
    }
    pub fn i32s(v: &[i32]) -> V {
        V::Arr(5, v.iter().map(|&x| V::I32(x)).collect())
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &V) {
    match v {
        V::U8(x) => out.push(*x),
        V::I8(x) => out.push(*x as u8),
        V::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::Bool(x) => out.push(*x as u8),
        V::Str(s) => put_str(out, s),
        V::Arr(et, items) => {
            out.extend_from_slice(&et.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        V::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// One tensor: name, ggml `ne` (innermost first), type code, raw data.
#[derive(Debug, Clone)]
pub struct T {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct GgufWriter {
    pub magic: [u8; 4],
    pub version: u32,
    pub alignment: u64,
    pub kv: Vec<(String, V)>,
    pub tensors: Vec<T>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter { magic: *b"GGUF", version: 3, alignment: 32, kv: Vec::new(), tensors: Vec::new() }
    }
}

impl GgufWriter {
    pub fn kv(&mut self, k: &str, v: V) -> &mut Self {
        self.kv.retain(|(key, _)| key != k);
        self.kv.push((k.to_string(), v));
        self
    }
    pub fn remove_kv(&mut self, k: &str) -> &mut Self {
        self.kv.retain(|(key, _)| key != k);
        self
    }
    pub fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self.tensors.push(T { name: name.to_string(), ne: ne.to_vec(), ty, data });
        self
    }
    pub fn tensor_f32(&mut self, name: &str, ne: &[u64], data: &[f32]) -> &mut Self {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensor(name, ne, 0, bytes)
    }
    pub fn get_tensor_mut(&mut self, name: &str) -> &mut T {
        self.tensors.iter_mut().find(|t| t.name == name).expect("tensor exists")
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend_from_slice(&v.code().to_le_bytes());
            put_value(&mut out, v);
        }
        let a = self.alignment;
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(a) * a;
        }
        let start = (out.len() as u64).div_ceil(a) * a;
        out.resize(start as usize, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize((start + off) as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Hyperparameters of a synthetic llama model.
#[derive(Debug, Clone, Copy)]
pub struct Tiny {
    pub dim: u64,
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub vocab: u64,
    pub tied: bool,
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny { dim: 64, hidden: 96, layers: 2, heads: 4, kv_heads: 2, vocab: 10, tied: false }
    }
}

/// A complete, valid tiny llama GGUF (all tensors F32) with a small gpt2-style vocabulary.
pub fn tiny_llama(c: Tiny) -> GgufWriter {
    let mut w = GgufWriter::default();
    let hd = c.dim / c.heads;
    w.kv("general.architecture", V::str("llama"))
        .kv("general.name", V::str("tiny test llama"))
        .kv("llama.context_length", V::U32(128))
        .kv("llama.embedding_length", V::U32(c.dim as u32))
        .kv("llama.feed_forward_length", V::U32(c.hidden as u32))
        .kv("llama.block_count", V::U32(c.layers as u32))
        .kv("llama.attention.head_count", V::U32(c.heads as u32))
        .kv("llama.attention.head_count_kv", V::U32(c.kv_heads as u32))
        .kv("llama.rope.freq_base", V::F32(500000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", V::F32(1e-6))
        .kv("llama.rope.dimension_count", V::U32(hd as u32));
    let mut seed = 1;
    let mut add = |w: &mut GgufWriter, name: &str, ne: &[u64]| {
        seed += 1;
        let n = ne.iter().product::<u64>() as usize;
        w.tensor_f32(name, ne, &noise(n, seed));
    };
    add(&mut w, "token_embd.weight", &[c.dim, c.vocab]);
    for l in 0..c.layers {
        add(&mut w, &format!("blk.{l}.attn_norm.weight"), &[c.dim]);
        add(&mut w, &format!("blk.{l}.attn_q.weight"), &[c.dim, c.heads * hd]);
        add(&mut w, &format!("blk.{l}.attn_k.weight"), &[c.dim, c.kv_heads * hd]);
        add(&mut w, &format!("blk.{l}.attn_v.weight"), &[c.dim, c.kv_heads * hd]);
        add(&mut w, &format!("blk.{l}.attn_output.weight"), &[c.heads * hd, c.dim]);
        add(&mut w, &format!("blk.{l}.ffn_norm.weight"), &[c.dim]);
        add(&mut w, &format!("blk.{l}.ffn_gate.weight"), &[c.dim, c.hidden]);
        add(&mut w, &format!("blk.{l}.ffn_up.weight"), &[c.dim, c.hidden]);
        add(&mut w, &format!("blk.{l}.ffn_down.weight"), &[c.hidden, c.dim]);
    }
    add(&mut w, "output_norm.weight", &[c.dim]);
    if !c.tied {
        add(&mut w, "output.weight", &[c.dim, c.vocab]);
    }
    w
}
