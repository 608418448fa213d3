//! GGUF reader (v2/v3): metadata, tensor infos, dequantization of every supported type to f32.
//!
//! The file is memory-mapped. Every count, length and offset read from it is checked against
//! the file size before it is used or drives an allocation, so a truncated or hostile file gives
//! an error, never a panic or a huge allocation.
//!
//! The block layouts and dequantization formulas follow ggml's reference implementation
//! (`ggml-common.h` and `dequantize_row_*` in `ggml-quants.c`); every layout is documented below
//! as byte offsets with a size constant checked at compile time.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context};
use edge_runtime::arch::{self, Arch, Kind, QkOrder};
use edge_runtime::config::LocalLayers;
use edge_runtime::Config;
use half::{bf16, f16};
use memmap2::Mmap;

use crate::source::{SourceModel, SourceTensor};

/// `"GGUF"` as the first four bytes of the file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of metadata arrays accepted (guards the recursion against hostile files).
const MAX_ARRAY_DEPTH: usize = 16;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;

// ---------------------------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------------------------

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored by element type (compact: a hostile element count cannot blow up
/// memory by more than a small factor of the file size). Arrays may nest.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The elements as signed integers, for integer arrays whose values all fit in i64.
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => conv(v, |x| Some(x.into())),
            Array::I8(v) => conv(v, |x| Some(x.into())),
            Array::U16(v) => conv(v, |x| Some(x.into())),
            Array::I16(v) => conv(v, |x| Some(x.into())),
            Array::U32(v) => conv(v, |x| Some(x.into())),
            Array::I32(v) => conv(v, |x| Some(x.into())),
            Array::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            Array::I64(v) => conv(v, Some),
            _ => None,
        }
    }
    /// The elements of a string array.
    pub fn as_strs(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }
    /// Element type code.
    pub fn elem_type(&self) -> u32 {
        match self {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::Array(_) => 9,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }
    }
}

impl Value {
    /// The value as an unsigned integer, for any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a signed integer, for any integer type that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }
    /// The value as a float, for float types (and integers, converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// Short type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor types
// ---------------------------------------------------------------------------------------------

/// A ggml tensor type, by its on-disk code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q8_1: GgmlType = GgmlType(9);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const Q8_K: GgmlType = GgmlType(15);
    pub const IQ2_XXS: GgmlType = GgmlType(16);
    pub const IQ2_XS: GgmlType = GgmlType(17);
    pub const BF16: GgmlType = GgmlType(30);

    /// ggml's name for the type (`"Q4_1"`), or `"type #N"` for codes ggml does not define.
    pub fn name(self) -> String {
        let known = match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            4 => "Q4_2",
            5 => "Q4_3",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            31 => "Q4_0_4_4",
            32 => "Q4_0_4_8",
            33 => "Q4_0_8_8",
            34 => "TQ1_0",
            35 => "TQ2_0",
            36 => "IQ4_NL_4_4",
            37 => "IQ4_NL_4_8",
            38 => "IQ4_NL_8_8",
            39 => "MXFP4",
            _ => return format!("type #{}", self.0),
        };
        known.to_string()
    }

    /// `(elements per block, bytes per block)` for the types edge-pack can dequantize.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (QK, Q4_0_SIZE),
            GgmlType::Q4_1 => (QK, Q4_1_SIZE),
            GgmlType::Q5_0 => (QK, Q5_0_SIZE),
            GgmlType::Q5_1 => (QK, Q5_1_SIZE),
            GgmlType::Q8_0 => (QK, Q8_0_SIZE),
            GgmlType::Q2_K => (QK_K, Q2_K_SIZE),
            GgmlType::Q3_K => (QK_K, Q3_K_SIZE),
            GgmlType::Q4_K => (QK_K, Q4_K_SIZE),
            GgmlType::Q5_K => (QK_K, Q5_K_SIZE),
            GgmlType::Q6_K => (QK_K, Q6_K_SIZE),
            GgmlType::Q8_K => (QK_K, Q8_K_SIZE),
            _ => return None,
        })
    }

    /// Whether [`dequantize`] can read this type.
    pub fn is_supported(self) -> bool {
        self.block_layout().is_some()
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Block layouts (ggml-common.h). All multi-byte fields are little-endian; `half` = IEEE f16.
// ---------------------------------------------------------------------------------------------

/// Elements per block of the legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;
/// Bytes of the packed 6-bit scales/mins of Q4_K and Q5_K.
const K_SCALE_SIZE: usize = 12;

/// block_q4_0: `half d` @0, `u8 qs[16]` @2 (element j = low nibble of qs[j], j+16 = high nibble).
pub const Q4_0_SIZE: usize = 2 + QK / 2;
/// block_q4_1: `half d` @0, `half m` @2, `u8 qs[16]` @4.
pub const Q4_1_SIZE: usize = 2 + 2 + QK / 2;
/// block_q5_0: `half d` @0, `u32 qh` @2 (5th bits), `u8 qs[16]` @6.
pub const Q5_0_SIZE: usize = 2 + 4 + QK / 2;
/// block_q5_1: `half d` @0, `half m` @2, `u32 qh` @4, `u8 qs[16]` @8.
pub const Q5_1_SIZE: usize = 2 + 2 + 4 + QK / 2;
/// block_q8_0: `half d` @0, `i8 qs[32]` @2.
pub const Q8_0_SIZE: usize = 2 + QK;
/// block_q2_K: `u8 scales[16]` @0 (low nibble scale, high nibble min), `u8 qs[64]` @16,
/// `half d` @80, `half dmin` @82.
pub const Q2_K_SIZE: usize = QK_K / 16 + QK_K / 4 + 2 + 2;
/// block_q3_K: `u8 hmask[32]` @0, `u8 qs[64]` @32, `u8 scales[12]` @96 (16 packed 6-bit),
/// `half d` @108.
pub const Q3_K_SIZE: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
/// block_q4_K: `half d` @0, `half dmin` @2, `u8 scales[12]` @4 (8 scales + 8 mins, 6-bit),
/// `u8 qs[128]` @16.
pub const Q4_K_SIZE: usize = 2 + 2 + K_SCALE_SIZE + QK_K / 2;
/// block_q5_K: `half d` @0, `half dmin` @2, `u8 scales[12]` @4, `u8 qh[32]` @16, `u8 qs[128]` @48.
pub const Q5_K_SIZE: usize = 2 + 2 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2;
/// block_q6_K: `u8 ql[128]` @0, `u8 qh[64]` @128, `i8 scales[16]` @192, `half d` @208.
pub const Q6_K_SIZE: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
/// block_q8_K: `f32 d` @0, `i8 qs[256]` @4, `i16 bsums[16]` @260.
pub const Q8_K_SIZE: usize = 4 + QK_K + QK_K / 16 * 2;

const _: () = assert!(Q4_0_SIZE == 18);
const _: () = assert!(Q4_1_SIZE == 20);
const _: () = assert!(Q5_0_SIZE == 22);
const _: () = assert!(Q5_1_SIZE == 24);
const _: () = assert!(Q8_0_SIZE == 34);
const _: () = assert!(Q2_K_SIZE == 84);
const _: () = assert!(Q3_K_SIZE == 110);
const _: () = assert!(Q4_K_SIZE == 144);
const _: () = assert!(Q5_K_SIZE == 176);
const _: () = assert!(Q6_K_SIZE == 210);
const _: () = assert!(Q8_K_SIZE == 292);

#[inline]
fn half_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// ggml's `get_scale_min_k4`: scale and min `j` (0..8) of the packed 12-byte Q4_K/Q5_K scales.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn deq_q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qs = &b[2..2 + QK / 2];
    for j in 0..QK / 2 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + QK / 2] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn deq_q4_1(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qs = &b[4..4 + QK / 2];
    for j in 0..QK / 2 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + QK / 2] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn deq_q5_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..6 + QK / 2];
    for j in 0..QK / 2 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((qs[j] & 0x0F) | xh0) as i32 - 16) as f32 * d;
        y[j + QK / 2] = (((qs[j] >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

fn deq_q5_1(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..8 + QK / 2];
    for j in 0..QK / 2 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((qs[j] & 0x0F) | xh0) as f32 * d + m;
        y[j + QK / 2] = ((qs[j] >> 4) | xh1) as f32 * d + m;
    }
}

fn deq_q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (o, &q) in y[..QK].iter_mut().zip(&b[2..2 + QK]) {
        *o = (q as i8) as f32 * d;
    }
}

fn deq_q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let d = half_at(b, 80);
    let min = half_at(b, 82);
    let mut is = 0;
    let mut yi = 0;
    for n in 0..QK_K / 128 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0x0F) as f32;
                let ml = min * (sc >> 4) as f32;
                for l in 0..16 {
                    y[yi] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                    yi += 1;
                }
            }
        }
    }
}

fn deq_q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[0..32];
    let d_all = half_at(b, 108);
    // Unpack the 16 6-bit scales: low 4 bits from bytes 0..8 (low nibble for 0..8, high nibble
    // for 8..16), high 2 bits from bytes 8..12.
    let packed = &b[96..108];
    let mut scales = [0i32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let low = if j < 8 { packed[j] & 0x0F } else { packed[j - 8] >> 4 };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    let mut is = 0;
    let mut yi = 0;
    let mut m: u8 = 1;
    for n in 0..QK_K / 128 {
        let q = &b[32 + 32 * n..32 + 32 * n + 32];
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                for l in 16 * half..16 * half + 16 {
                    let v = ((q[l] >> shift) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                    y[yi] = dl * v as f32;
                    yi += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

fn deq_q4_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let min = half_at(b, 2);
    let scales = &b[4..4 + K_SCALE_SIZE];
    let mut yi = 0;
    for j in 0..QK_K / 64 {
        let q = &b[16 + 32 * j..16 + 32 * j + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for &x in q {
            y[yi] = d1 * (x & 0x0F) as f32 - m1;
            yi += 1;
        }
        for &x in q {
            y[yi] = d2 * (x >> 4) as f32 - m2;
            yi += 1;
        }
    }
}

fn deq_q5_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let min = half_at(b, 2);
    let scales = &b[4..4 + K_SCALE_SIZE];
    let qh = &b[16..48];
    let mut yi = 0;
    let (mut u1, mut u2) = (1u8, 2u8);
    for j in 0..QK_K / 64 {
        let ql = &b[48 + 32 * j..48 + 32 * j + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            let h = if qh[l] & u1 != 0 { 16 } else { 0 };
            y[yi] = d1 * ((ql[l] & 0x0F) + h) as f32 - m1;
            yi += 1;
        }
        for l in 0..32 {
            let h = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[yi] = d2 * ((ql[l] >> 4) + h) as f32 - m2;
            yi += 1;
        }
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

fn deq_q6_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 208);
    for n in 0..QK_K / 128 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

fn deq_q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in y[..QK_K].iter_mut().zip(&b[4..4 + QK_K]) {
        *o = (q as i8) as f32 * d;
    }
}

/// Dequantize `n` elements of type `ty` stored in `data` (exactly the bytes of those elements)
/// to f32. `n` must be a whole number of blocks.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> anyhow::Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into a caller-provided buffer (`out.len()` elements).
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> anyhow::Result<()> {
    let n = out.len();
    let (block, size) = ty
        .block_layout()
        .ok_or_else(|| anyhow!("GGUF type {ty} cannot be dequantized by edge-pack"))?;
    if !n.is_multiple_of(block) {
        bail!("{n} elements of type {ty} are not a whole number of {block}-element blocks");
    }
    let need = n / block * size;
    if data.len() != need {
        bail!("{n} elements of type {ty} take {need} bytes, got {}", data.len());
    }
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        _ => {
            let f: fn(&[u8], &mut [f32]) = match ty {
                GgmlType::Q4_0 => deq_q4_0,
                GgmlType::Q4_1 => deq_q4_1,
                GgmlType::Q5_0 => deq_q5_0,
                GgmlType::Q5_1 => deq_q5_1,
                GgmlType::Q8_0 => deq_q8_0,
                GgmlType::Q2_K => deq_q2_k,
                GgmlType::Q3_K => deq_q3_k,
                GgmlType::Q4_K => deq_q4_k,
                GgmlType::Q5_K => deq_q5_k,
                GgmlType::Q6_K => deq_q6_k,
                GgmlType::Q8_K => deq_q8_k,
                _ => unreachable!("every type with a block layout is handled"),
            };
            for (b, y) in data.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
                f(b, y);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// File parsing
// ---------------------------------------------------------------------------------------------

/// One tensor as listed in the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`: innermost (contiguous) dimension first.
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Shape outermost first (`[rows, cols]` for a matrix): `ne` reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }
    /// Number of elements (checked for overflow when the file was opened; saturates).
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }
    /// Size of the data in bytes, when the type is one edge-pack can read.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, size) = self.ty.block_layout()?;
        // Saturates instead of overflowing for absurd shapes, which then fail the range checks.
        Some((self.n_elements() / block as u64).saturating_mul(size as u64))
    }
}

/// An opened, validated GGUF file.
pub struct GgufFile {
    map: Bytes,
    file_name: String,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("file", &self.file_name)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// Bounds-checked little-endian cursor over the mapped file.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    /// What is being read, for truncation messages.
    what: String,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> anyhow::Result<&'a [u8]> {
        let len = self.b.len() as u64;
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= len).ok_or_else(|| {
            anyhow!(
                "truncated GGUF: {} needs bytes {}..{} but the file has {} bytes; re-download the file",
                self.what,
                self.pos,
                (self.pos as u128) + (n as u128),
                len
            )
        })?;
        let s = &self.b[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }
    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> anyhow::Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
    fn string(&mut self) -> anyhow::Result<String> {
        let n = self.u64()?;
        let s = self.take(n)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> anyhow::Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.bool()?),
            8 => Value::String(self.string()?),
            9 => Value::Array(self.array(depth)?),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            _ => bail!("corrupt GGUF: {} has unknown value type {ty}; the file is damaged or from an unsupported writer", self.what),
        })
    }
    fn bool(&mut self) -> anyhow::Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => bail!("corrupt GGUF: {} holds bool value {v} (must be 0 or 1)", self.what),
        }
    }
    /// An array (element type, count, elements) whose count is checked against the bytes left.
    fn array(&mut self, depth: usize) -> anyhow::Result<Array> {
        if depth >= MAX_ARRAY_DEPTH {
            bail!("corrupt GGUF: {} nests arrays more than {MAX_ARRAY_DEPTH} deep", self.what);
        }
        let et = self.u32()?;
        let n = self.u64()?;
        // Smallest encoding of one element: strings start with an 8-byte length, nested arrays
        // with a 4-byte type and an 8-byte count.
        let min_size: u64 = match et {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => bail!("corrupt GGUF: {} is an array of unknown value type {et}", self.what),
        };
        if n.checked_mul(min_size).is_none_or(|need| need > self.remaining()) {
            bail!(
                "truncated GGUF: {} declares {n} array elements at byte {} but only {} bytes remain in the file; re-download the file",
                self.what,
                self.pos,
                self.remaining()
            );
        }
        let n = n as usize;
        fn read<T>(n: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(f()?);
            }
            Ok(v)
        }
        Ok(match et {
            0 => Array::U8(self.take(n as u64)?.to_vec()),
            1 => Array::I8(self.take(n as u64)?.iter().map(|&x| x as i8).collect()),
            2 => Array::U16(read(n, || self.u16())?),
            3 => Array::I16(read(n, || Ok(self.u16()? as i16))?),
            4 => Array::U32(read(n, || self.u32())?),
            5 => Array::I32(read(n, || Ok(self.u32()? as i32))?),
            6 => Array::F32(read(n, || Ok(f32::from_bits(self.u32()?)))?),
            7 => Array::Bool(read(n, || self.bool())?),
            8 => Array::String(read(n, || self.string())?),
            9 => Array::Array(read(n, || self.array(depth + 1))?),
            10 => Array::U64(read(n, || self.u64())?),
            11 => Array::I64(read(n, || Ok(self.u64()? as i64))?),
            12 => Array::F64(read(n, || Ok(f64::from_bits(self.u64()?)))?),
            _ => unreachable!("element type checked above"),
        })
    }
}

/// The bytes of a GGUF file: a read-only map of the file, or a buffer.
enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl GgufFile {
    /// Map and parse `path`: header, metadata, tensor infos; checks that every tensor of a
    /// readable type lies inside the file.
    pub fn open(path: &Path) -> anyhow::Result<GgufFile> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only and private to this process; like every mmap reader we
        // rely on the file not being truncated underneath us while it is open.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self::parse(Bytes::Map(map), file_name).with_context(|| format!("cannot read GGUF file {}", path.display()))
    }

    /// Parse a GGUF held in memory (`name` is used in messages and as the file name).
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> anyhow::Result<GgufFile> {
        Self::parse(Bytes::Owned(bytes), name.to_string())
    }

    fn parse(map: Bytes, file_name: String) -> anyhow::Result<GgufFile> {
        let b: &[u8] = &map[..];
        let file_len = b.len() as u64;
        if b.len() < 4 || b[..4] != GGUF_MAGIC {
            let got = &b[..b.len().min(4)];
            bail!(
                "not a GGUF file: it starts with {:?} instead of the magic \"GGUF\"; check the path (edge-pack reads GGUF, Hugging Face folders and llama2.c .bin files)",
                String::from_utf8_lossy(got)
            );
        }
        let mut r = Reader { b, pos: 4, what: "the header".into() };
        let version = r.u32()?;
        match version {
            2 | 3 => {}
            v if matches!(v.swap_bytes(), 2 | 3) => bail!(
                "unsupported GGUF version {v}: this is a big-endian GGUF (version {}), and edge-pack reads little-endian files; re-convert the model without --bigendian",
                v.swap_bytes()
            ),
            1 => bail!("unsupported GGUF version 1 (edge-pack reads versions 2 and 3); re-convert the model with a current llama.cpp"),
            v => bail!("unsupported GGUF version {v} (edge-pack reads versions 2 and 3); the file may be corrupt, or newer than edge-pack"),
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor
        // info at least 8 + 4 + 8 + 4 + 8.
        if n_kv.checked_mul(13).is_none_or(|n| n > r.remaining()) {
            bail!("truncated GGUF: the header declares {n_kv} metadata entries, more than the {file_len}-byte file can hold; re-download the file");
        }
        if n_tensors.checked_mul(32).is_none_or(|n| n > r.remaining()) {
            bail!("truncated GGUF: the header declares {n_tensors} tensors, more than the {file_len}-byte file can hold; re-download the file");
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            r.what = format!("metadata entry #{i}");
            let key = r.string()?;
            r.what = format!("metadata '{key}'");
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                bail!("corrupt GGUF: metadata key '{key}' appears twice");
            }
            metadata.push((key, v));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => bail!("corrupt GGUF: general.alignment = {v:?} (must be a power of two)"),
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            r.what = format!("tensor info #{i}");
            let name = r.string()?;
            r.what = format!("tensor info '{name}'");
            let n_dims = r.u32()?;
            if n_dims > MAX_DIMS {
                bail!("corrupt GGUF: tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})");
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64()?);
            }
            let ty = GgmlType(r.u32()?);
            let offset = r.u64()?;
            // The element count must fit comfortably (ggml uses int64); zero-sized dims are
            // harmless.
            if ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none_or(|n| n > i64::MAX as u64) {
                bail!("corrupt GGUF: tensor '{name}' has dimensions {ne:?} whose product overflows");
            }
            if offset % alignment != 0 {
                bail!("corrupt GGUF: tensor '{name}' starts at data offset {offset}, which is not a multiple of the alignment {alignment}");
            }
            if let Some((block, size)) = ty.block_layout() {
                let row = ne.first().copied().unwrap_or(1);
                if row % block as u64 != 0 {
                    bail!("corrupt GGUF: tensor '{name}' of type {ty} has rows of {row} elements, not a multiple of its {block}-element block");
                }
                let n: u64 = ne.iter().product();
                if (n / block as u64).checked_mul(size as u64).is_none_or(|b| b > file_len) {
                    bail!("truncated GGUF: tensor '{name}' ({ty}, dimensions {ne:?}) is larger than the whole {file_len}-byte file; re-download the file");
                }
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                bail!("corrupt GGUF: tensor '{name}' appears twice");
            }
            tensors.push(TensorInfo { name, ne, ty, offset });
        }

        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            let Some(size) = t.n_bytes() else { continue };
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(size));
            match end {
                Some(end) if end <= file_len => {}
                _ => bail!(
                    "truncated GGUF: tensor '{}' data ends at byte {} but the file has {file_len} bytes; re-download the file",
                    t.name,
                    (data_offset as u128) + (t.offset as u128) + (size as u128)
                ),
            }
        }
        Ok(GgufFile { map, file_name, version, metadata, index, tensors, tensor_index, alignment, data_offset })
    }

    /// The file's name (no directory).
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A string metadata value; `Err` if present with another type.
    pub fn get_str(&self, key: &str) -> anyhow::Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| type_error(key, v, "a string")),
        }
    }

    /// An integer metadata value; `Err` if present with another type or negative.
    pub fn get_u64(&self, key: &str) -> anyhow::Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| type_error(key, v, "a non-negative integer")),
        }
    }

    /// A numeric metadata value as f64; `Err` if present with a non-numeric type.
    pub fn get_f64(&self, key: &str) -> anyhow::Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| type_error(key, v, "a number")),
        }
    }

    /// A boolean metadata value; `Err` if present with another type.
    pub fn get_bool(&self, key: &str) -> anyhow::Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| type_error(key, v, "a bool")),
        }
    }

    /// A string-array metadata value; `Err` if present with another type.
    pub fn get_str_array(&self, key: &str) -> anyhow::Result<Option<&[String]>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_array().and_then(Array::as_strs).map(Some).ok_or_else(|| type_error(key, v, "an array of strings"))
    }

    /// An integer-array metadata value; `Err` if present with another type.
    pub fn get_int_array(&self, key: &str) -> anyhow::Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        v.as_array().and_then(Array::to_i64s).map(Some).ok_or_else(|| type_error(key, v, "an array of integers"))
    }

    /// A float-array metadata value (f32 or f64 elements); `Err` if present with another type.
    pub fn get_f32_array(&self, key: &str) -> anyhow::Result<Option<Vec<f32>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.as_array() {
            Some(Array::F32(a)) => Ok(Some(a.clone())),
            Some(Array::F64(a)) => Ok(Some(a.iter().map(|&x| x as f32).collect())),
            _ => Err(type_error(key, v, "an array of floats")),
        }
    }

    /// A tensor's header entry by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor. `Err` for a type edge-pack cannot read (its size is unknown).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> anyhow::Result<&[u8]> {
        let size = t.n_bytes().ok_or_else(|| unsupported_type(t))?;
        // Always in range for this file's own tensors (checked in `parse`).
        let range = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| Some(usize::try_from(s).ok()?..usize::try_from(s.checked_add(size)?).ok()?));
        range.and_then(|r| self.map.get(r)).ok_or_else(|| {
            anyhow!("truncated GGUF: tensor '{}' lies outside the {}-byte file; re-download the file", t.name, self.map.len())
        })
    }

    /// Dequantize a tensor to f32 (`n_elements` values, row-major, rows = outer dims).
    pub fn dequantize_tensor(&self, t: &TensorInfo) -> anyhow::Result<Vec<f32>> {
        let bytes = self.tensor_bytes(t)?;
        dequantize(t.ty, bytes, t.n_elements() as usize).with_context(|| format!("tensor '{}'", t.name))
    }

    /// Build a Hugging Face `tokenizer.json` from the `tokenizer.ggml.*` metadata. `Ok(None)`
    /// when the metadata describes no tokenizer edge-pack can rebuild (e.g. an unknown
    /// vocabulary kind or pre-tokenizer).
    pub fn build_tokenizer_json(&self) -> anyhow::Result<Option<String>> {
        let Some(model) = self.get_str("tokenizer.ggml.model")? else { return Ok(None) };
        let Some(tokens) = self.get_str_array("tokenizer.ggml.tokens")? else { return Ok(None) };
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merges: Vec<&str> =
            self.get_str_array("tokenizer.ggml.merges")?.unwrap_or_default().iter().map(String::as_str).collect();
        let token_types = self.get_int_array("tokenizer.ggml.token_type")?;
        let scores = self.get_f32_array("tokenizer.ggml.scores")?;
        let unk_id = self.get_u64("tokenizer.ggml.unknown_token_id")?.and_then(|i| u32::try_from(i).ok());
        let vocab = crate::tokenizer::GgmlVocab {
            model,
            pre: self.get_str("tokenizer.ggml.pre")?,
            tokens: &tokens,
            token_types: token_types.as_deref(),
            merges: &merges,
            scores: scores.as_deref(),
            add_space_prefix: self.get_bool("tokenizer.ggml.add_space_prefix")?,
            unk_id,
        };
        crate::tokenizer::tokenizer_json_from_ggml(&vocab)
    }
}

fn type_error(key: &str, v: &Value, want: &str) -> anyhow::Error {
    anyhow!("GGUF metadata '{key}' is {} but should be {want}; the file is malformed", v.type_name())
}

fn unsupported_type(t: &TensorInfo) -> anyhow::Error {
    anyhow!(
        "tensor '{}' has GGUF type {}, which edge-pack cannot read; convert the model to Q8_0/F16 with llama-quantize first",
        t.name,
        t.ty
    )
}

// ---------------------------------------------------------------------------------------------
// Model import
// ---------------------------------------------------------------------------------------------

/// Read the config from the `{arch}.*` metadata (`llama.*`, `qwen2.*`); `vocab_size` comes from
/// the token embedding's rows. RoPE scaling other than Llama 3's (`rope_freqs.weight`) is refused.
fn read_config(g: &GgufFile, arch: &Arch) -> anyhow::Result<Config> {
    let a = arch.name;
    let req = |key: &str| -> anyhow::Result<usize> {
        let key = format!("{a}.{key}");
        let v = g.get_u64(&key)?.ok_or_else(|| {
            anyhow!("GGUF metadata is missing '{key}'; the file is incomplete or not a {a} model")
        })?;
        check_dim(&key, v)
    };
    let opt = |key: &str| -> anyhow::Result<Option<usize>> {
        let key = format!("{a}.{key}");
        g.get_u64(&key)?.map(|v| check_dim(&key, v)).transpose()
    };
    let optf = |key: &str, default: f64| -> anyhow::Result<f32> {
        let key = format!("{a}.{key}");
        let v = g.get_f64(&key)?.unwrap_or(default) as f32;
        if !v.is_finite() || v <= 0.0 {
            bail!("GGUF metadata '{key}' = {v} is out of range");
        }
        Ok(v)
    };
    let dim = req("embedding_length")?;
    let hidden_dim = req("feed_forward_length")?;
    let n_layers = req("block_count")?;
    let n_heads = req("attention.head_count")?;
    let n_kv_heads = opt("attention.head_count_kv")?.unwrap_or(n_heads);
    let max_seq_len = req("context_length")?;
    let rope_dims = opt("rope.dimension_count")?;
    let head_dim = match (opt("attention.key_length")?, rope_dims) {
        (Some(k), _) => k,
        (None, Some(r)) => r,
        (None, None) => {
            if dim % n_heads != 0 {
                bail!("{a}.embedding_length {dim} is not a multiple of {a}.attention.head_count {n_heads}; the file is malformed");
            }
            dim / n_heads
        }
    };
    if let Some(r) = rope_dims {
        if r != head_dim {
            bail!("{a}.rope.dimension_count {r} differs from the head size {head_dim}: partial rotary embeddings are not supported by edge-run");
        }
    }
    if let Some(vl) = opt("attention.value_length")? {
        if vl != head_dim {
            bail!("{a}.attention.value_length {vl} differs from key_length {head_dim}; edge-run needs equal key and value head sizes");
        }
    }
    if n_layers > edge_runtime::config::MAX_LAYERS || n_heads % n_kv_heads != 0 || head_dim % 2 != 0 {
        bail!("inconsistent attention config: {n_layers} layers, {n_heads} heads, {n_kv_heads} kv heads, head_dim {head_dim}");
    }
    if let Some(kind) = g.get_str(&format!("{a}.rope.scaling.type"))? {
        if kind != "none" {
            bail!("GGUF metadata sets {a}.rope.scaling.type = '{kind}', which edge-run does not implement; the model would run with wrong positions");
        }
    }
    let rope_freqs = arch::tensor_name(Kind::RopeFreqs, None);
    let rope_freq_factors = g.tensor(&rope_freqs).is_some();
    if rope_freq_factors && !arch.has(Kind::RopeFreqs) {
        bail!("GGUF has '{rope_freqs}' (per-frequency RoPE scaling), which edge-run does not implement for {a}");
    }
    let embd = arch::tensor_name(Kind::TokenEmbd, None);
    let emb = g
        .tensor(&embd)
        .ok_or_else(|| anyhow!("GGUF has no tensor '{embd}'; the file is incomplete or not a {a} model"))?;
    if emb.ne.len() != 2 {
        bail!("tensor '{embd}' has shape {:?}, expected [vocab, {dim}]", emb.shape());
    }
    let vocab_size = check_dim(&format!("{embd} rows"), emb.ne[1])?;
    if let Some(v) = opt("vocab_size")? {
        if v != vocab_size {
            bail!("{a}.vocab_size {v} disagrees with {embd}'s {vocab_size} rows; the file is malformed");
        }
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(v) = g.get_f64(&format!("{a}.{key}"))?.filter(|&v| v != 0.0) {
            bail!("{a}.{key} = {v}: logit softcapping is not supported by edge-run");
        }
    }
    let rope_theta = optf("rope.freq_base", 10000.0)?;
    let local = read_local_layers(g, arch, n_layers)?;
    // llama.cpp scales queries by 1/sqrt(head_dim), but for Gemma 3 27B (62 layers), whose
    // query_pre_attn_scalar is dim / heads; no GGUF key says it.
    let attn_scale = (arch.name == "gemma3" && n_layers == 62).then(|| 1.0 / ((dim / n_heads) as f32).sqrt());
    Ok(Config {
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        max_seq_len,
        norm_eps: optf("attention.layer_norm_rms_epsilon", 1e-5)?,
        rope_theta,
        tied_embeddings: g.tensor(&arch::tensor_name(Kind::Output, None)).is_none(),
        local,
        attn_scale,
        rope_freq_factors,
    })
}

/// The sliding-window layers of a GGUF model: `{arch}.attention.sliding_window`, the pattern
/// `{arch}.attention.sliding_window_pattern` (a period, or one flag per layer, which must repeat
/// with a period whose last layer alone is global) and the local RoPE base
/// `{arch}.rope.freq_base_swa`; where a file leaves the last two out, the architecture's
/// defaults (what llama.cpp assumes).
fn read_local_layers(g: &GgufFile, arch: &Arch, n_layers: usize) -> anyhow::Result<LocalLayers> {
    let a = arch.name;
    let window = match g.get_u64(&format!("{a}.attention.sliding_window"))? {
        None | Some(0) => return Ok(LocalLayers::NONE),
        Some(w) => check_dim(&format!("{a}.attention.sliding_window"), w)?,
    };
    let Some((default_period, default_theta)) = arch.gguf_local_defaults else {
        bail!("{a}.attention.sliding_window is set: sliding-window attention is not supported for {a} models by edge-run");
    };
    let key = format!("{a}.attention.sliding_window_pattern");
    let period = match g.get(&key) {
        None => default_period,
        Some(v) => match (v.as_u64(), v.as_array()) {
            (Some(p), _) => p as usize,
            (None, Some(arr)) => {
                let flags: Vec<bool> = match &arr {
                    Array::Bool(b) => b.clone(),
                    _ => bail!("GGUF metadata '{key}' must be an integer or an array of booleans"),
                };
                period_of(&flags).ok_or_else(|| {
                    anyhow!("GGUF metadata '{key}' is not a repeating pattern of local layers ending in a global one; edge-run cannot run this layer pattern")
                })?
            }
            _ => bail!("GGUF metadata '{key}' must be an integer or an array of booleans"),
        },
    };
    if period == 0 || period > n_layers.max(1) * 2 {
        bail!("GGUF metadata '{key}' = {period} is not supported (edge-run needs a period of 1..=2*layers)");
    }
    let theta_key = format!("{a}.rope.freq_base_swa");
    let rope_theta = g.get_f64(&theta_key)?.map_or(default_theta, |v| v as f32);
    if !rope_theta.is_finite() || rope_theta <= 0.0 {
        bail!("GGUF metadata '{theta_key}' = {rope_theta} is out of range");
    }
    Ok(LocalLayers { window, period, rope_theta })
}

/// The period `p` of one flag per layer (`true`: local) when layer `l` is local exactly when
/// `l % p < p - 1` (llama.cpp's and Hugging Face's pattern).
pub fn period_of(local: &[bool]) -> Option<usize> {
    (1..=local.len() + 1).find(|&p| local.iter().enumerate().all(|(l, &f)| f == (l % p < p - 1)))
}

fn check_dim(key: &str, v: u64) -> anyhow::Result<usize> {
    if v == 0 || v > (1 << 24) {
        bail!("GGUF metadata '{key}' = {v} is out of range");
    }
    Ok(v as usize)
}

/// Dequantize the listed tensors on all cores; results in the order given.
fn dequantize_all(g: &GgufFile, infos: &[&TensorInfo]) -> anyhow::Result<Vec<Vec<f32>>> {
    let n_threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(infos.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<anyhow::Result<Vec<f32>>>>> = Mutex::new((0..infos.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..n_threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= infos.len() {
                    break;
                }
                let r = g.dequantize_tensor(infos[i]);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every tensor was dequantized"))
        .collect()
}

/// Read a GGUF file of a supported architecture ([`arch::ARCHS`]) into a [`SourceModel`].
/// `tokenizer` overrides the tokenizer (a `tokenizer.json`); otherwise one beside the file is
/// used, else one is built from the GGUF's own `tokenizer.ggml.*` metadata.
pub fn load_gguf(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    let g = GgufFile::open(path)?;
    import_gguf(&g, path, tokenizer)
}

/// [`load_gguf`] on an already opened file. `path` is where the model lives: its folder is
/// searched for a `tokenizer.json`, its stem names the model when `general.name` is absent.
pub fn import_gguf(g: &GgufFile, path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    let fname = g.file_name().to_string();
    let ctx = |e: anyhow::Error| e.context(format!("cannot import GGUF file {}", path.display()));

    let arch = match g.get_str("general.architecture").map_err(ctx)? {
        Some(name) => arch::by_name(name)
            .map_err(|_| ctx(anyhow!("unsupported architecture '{name}': edge-run runs {}", arch::names())))?,
        None => {
            return Err(ctx(anyhow!(
                "GGUF metadata has no 'general.architecture'; the file is incomplete (edge-run runs {})",
                arch::names()
            )));
        }
    };
    let config = read_config(g, arch).map_err(ctx)?;

    // Every required tensor present, with the shape the config implies and a readable type.
    let expected = arch.tensors(&config);
    let mut infos = Vec::with_capacity(expected.len());
    for e in &expected {
        let (name, shape) = (&e.name, &e.shape);
        let t = g.tensor(name).ok_or_else(|| {
            ctx(anyhow!(
                "GGUF has no tensor '{name}', which a {}-layer {} model needs; the file is incomplete",
                config.n_layers,
                arch.name
            ))
        })?;
        if &t.shape() != shape {
            return Err(ctx(anyhow!(
                "tensor '{name}' has shape {:?} but the config implies {shape:?}; the file is malformed",
                t.shape()
            )));
        }
        if !t.ty.is_supported() {
            return Err(ctx(unsupported_type(t)));
        }
        infos.push(t);
    }

    let tokenizer_json = resolve_tokenizer(g, path, tokenizer).map_err(ctx)?;

    let vocab = config.vocab_size;
    let token_id = |key: &str| -> anyhow::Result<Option<u32>> {
        match g.get_u64(key)? {
            None => Ok(None),
            Some(id) if id < vocab as u64 => Ok(Some(id as u32)),
            Some(id) => bail!("GGUF metadata '{key}' = {id} is outside the vocabulary ({vocab} tokens)"),
        }
    };
    let bos_token_id = token_id("tokenizer.ggml.bos_token_id").map_err(ctx)?;
    let eos_token_id = token_id("tokenizer.ggml.eos_token_id").map_err(ctx)?;
    let default_add_bos = g.get_str("tokenizer.ggml.model").map_err(ctx)? == Some("llama");
    let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").map_err(ctx)?.unwrap_or(default_add_bos);
    let chat_template = g.get_str("tokenizer.chat_template").map_err(ctx)?.map(str::to_string);
    let name = match g.get_str("general.name").map_err(ctx)? {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| fname.clone()),
    };

    let data = dequantize_all(g, &infos).map_err(ctx)?;
    let mut tensors: Vec<SourceTensor> =
        expected.into_iter().zip(data).map(|(e, data)| SourceTensor { name: e.name, shape: e.shape, data }).collect();
    if arch.gguf_qk_order == QkOrder::RotateHalf {
        crate::source::interleave_qk(&mut tensors, &config).map_err(ctx)?;
    }

    Ok(SourceModel {
        arch,
        config,
        tensors,
        tokenizer_json,
        chat_template,
        bos_token_id,
        eos_token_id,
        add_bos,
        name,
        source: format!("gguf:{fname}"),
    })
}

/// The tokenizer of a GGUF import: the `--tokenizer` override, else a `tokenizer.json` beside
/// the file, else one built from the metadata, else none.
fn resolve_tokenizer(g: &GgufFile, path: &Path, over: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(p) = over {
        return crate::tokenizer::read_tokenizer_json(p).map(Some);
    }
    if let Some(p) = crate::tokenizer::find_tokenizer_json(path) {
        return crate::tokenizer::read_tokenizer_json(&p).map(Some);
    }
    g.build_tokenizer_json().context(
        "cannot build a tokenizer from the GGUF's tokenizer.ggml.* metadata; pass the model's tokenizer.json with --tokenizer",
    )
}
