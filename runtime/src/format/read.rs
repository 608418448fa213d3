//! Zero-copy checkpoint reader. Never panics on file contents: every read goes through
//! [`Cursor`], which bounds-checks, and every count is bounded by the bytes that hold it.

use alloc::format;
use alloc::vec::Vec;

use super::{
    checksum, expected_segments, meta_type, Encoding, SegmentKind, DATA_ALIGN, HEADER_LEN, MAGIC,
    MAX_DIMS, MAX_SEGMENTS, VERSION,
};
use crate::error::{corrupt, Error, Result};

/// A metadata value, borrowing strings and byte blobs from the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetaValue<'a> {
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(&'a str),
    Bytes(&'a [u8]),
}

/// One stored segment of a tensor: a contiguous, 64-byte aligned run of bytes.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub kind: SegmentKind,
    /// Planes: number of adjacent bit positions held. 0 otherwise.
    pub bits: u8,
    /// Planes: lowest bit position held. 0 otherwise.
    pub shift: u8,
    /// Offset of the segment from the start of the file.
    pub file_offset: u64,
    pub bytes: &'a [u8],
    pub checksum: u64,
}

impl Segment<'_> {
    pub fn verify(&self, tensor: &str, index: usize) -> Result<()> {
        let computed = checksum(self.bytes);
        if computed != self.checksum {
            return Err(Error::ChecksumMismatch {
                what: format!("tensor '{tensor}' segment {index}"),
                stored: self.checksum,
                computed,
            });
        }
        Ok(())
    }
}

/// A tensor entry of the table, with its segments resolved to byte slices.
#[derive(Debug, Clone)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    pub encoding: Encoding,
    /// Outermost dimension first; a matrix is `[rows (out features), cols (in features)]`.
    pub shape: Vec<u64>,
    /// Values per group along the last dimension (grouped encodings), else 0.
    pub group_size: u32,
    pub segments: Vec<Segment<'a>>,
}

impl<'a> TensorInfo<'a> {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes.len() as u64).sum()
    }
    /// The segment of `kind` (the first one, for planes use [`TensorInfo::planes`]).
    pub fn segment(&self, kind: SegmentKind) -> Option<&Segment<'a>> {
        self.segments.iter().find(|s| s.kind == kind)
    }
    pub fn planes(&self) -> impl Iterator<Item = &Segment<'a>> {
        self.segments.iter().filter(|s| s.kind == SegmentKind::Plane)
    }
    /// Verify every segment's checksum.
    pub fn verify(&self) -> Result<()> {
        for (i, s) in self.segments.iter().enumerate() {
            s.verify(self.name, i)?;
        }
        Ok(())
    }
}

/// A parsed checkpoint borrowing from its bytes.
#[derive(Debug, Clone)]
pub struct Checkpoint<'a> {
    bytes: &'a [u8],
    pub version: u32,
    pub meta: Vec<(&'a str, MetaValue<'a>)>,
    pub tensors: Vec<TensorInfo<'a>>,
}

/// Bounds-checked little-endian reader over one section.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    section: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], section: &'static str) -> Self {
        Cursor { buf, pos: 0, section }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                section: self.section,
                needed: (self.pos as u64).saturating_add(n as u64),
                available: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn str_u16(&mut self) -> Result<&'a str> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        core::str::from_utf8(b).map_err(|_| corrupt(format!("non-UTF-8 name in {}", self.section)))
    }
    fn blob_u64(&mut self) -> Result<&'a [u8]> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| corrupt(format!("length {n} too large in {}", self.section)))?;
        self.take(n)
    }
}

/// Slice `file[off..off+len]`, reporting truncation against the whole file.
fn slice_at<'a>(file: &'a [u8], off: u64, len: u64, section: &'static str) -> Result<&'a [u8]> {
    let end = off.checked_add(len).ok_or_else(|| corrupt(format!("{section} offset overflows")))?;
    if end > file.len() as u64 {
        return Err(Error::Truncated { section, needed: end, available: file.len() as u64 });
    }
    Ok(&file[off as usize..end as usize])
}

fn verify_section(what: &str, bytes: &[u8], stored: u64) -> Result<()> {
    let computed = checksum(bytes);
    if computed != stored {
        return Err(Error::ChecksumMismatch { what: what.into(), stored, computed });
    }
    Ok(())
}

impl<'a> Checkpoint<'a> {
    /// Parse a checkpoint. Verifies the header, metadata and tensor-table checksums and the
    /// structure of every tensor; segment checksums are left to [`Checkpoint::verify`] so that
    /// loading an mmapped file does not read every weight.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&bytes[..8]);
            return Err(Error::BadMagic { found });
        }
        let header = slice_at(bytes, 0, HEADER_LEN as u64, "header")?;
        let mut h = Cursor::new(header, "header");
        let _magic = h.array::<8>()?;
        let version = h.u32()?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion { found: version, supported: VERSION });
        }
        let header_len = h.u32()?;
        if header_len as usize != HEADER_LEN {
            return Err(corrupt(format!("header length {header_len}, expected {HEADER_LEN}")));
        }
        let file_len = h.u64()?;
        let meta_off = h.u64()?;
        let meta_len = h.u64()?;
        let table_off = h.u64()?;
        let table_len = h.u64()?;
        let n_tensors = h.u32()?;
        let n_meta = h.u32()?;
        let data_off = h.u64()?;
        let data_len = h.u64()?;
        let meta_sum = h.u64()?;
        let table_sum = h.u64()?;
        let _reserved = h.take(24)?;
        let header_sum = h.u64()?;
        verify_section("header", &header[..HEADER_LEN - 8], header_sum)?;
        if file_len != bytes.len() as u64 {
            if file_len > bytes.len() as u64 {
                return Err(Error::Truncated { section: "file", needed: file_len, available: bytes.len() as u64 });
            }
            return Err(corrupt(format!(
                "file is {} bytes but its header says {file_len}: trailing bytes",
                bytes.len()
            )));
        }
        if data_off % DATA_ALIGN != 0 {
            return Err(corrupt("data section is not 64-byte aligned"));
        }
        let meta_bytes = slice_at(bytes, meta_off, meta_len, "metadata")?;
        let table_bytes = slice_at(bytes, table_off, table_len, "tensor table")?;
        let data = slice_at(bytes, data_off, data_len, "tensor data")?;
        verify_section("metadata", meta_bytes, meta_sum)?;
        verify_section("tensor table", table_bytes, table_sum)?;

        // Metadata: each entry takes at least 2 (key len) + 1 (type) + 1 bytes.
        if n_meta as u64 * 4 > meta_len {
            return Err(corrupt(format!("{n_meta} metadata entries cannot fit in {meta_len} bytes")));
        }
        let mut meta = Vec::with_capacity(n_meta as usize);
        let mut c = Cursor::new(meta_bytes, "metadata");
        for _ in 0..n_meta {
            let key = c.str_u16()?;
            let ty = c.u8()?;
            let value = match ty {
                meta_type::U64 => MetaValue::U64(c.u64()?),
                meta_type::I64 => MetaValue::I64(c.u64()? as i64),
                meta_type::F32 => MetaValue::F32(f32::from_bits(c.u32()?)),
                meta_type::F64 => MetaValue::F64(f64::from_bits(c.u64()?)),
                meta_type::BOOL => MetaValue::Bool(c.u8()? != 0),
                meta_type::STR => {
                    let b = c.blob_u64()?;
                    MetaValue::Str(
                        core::str::from_utf8(b)
                            .map_err(|_| corrupt(format!("metadata '{key}' is not UTF-8")))?,
                    )
                }
                meta_type::BYTES => MetaValue::Bytes(c.blob_u64()?),
                other => return Err(corrupt(format!("metadata '{key}' has unknown type id {other}"))),
            };
            meta.push((key, value));
        }
        if c.remaining() != 0 {
            return Err(corrupt("trailing bytes after metadata"));
        }

        // Tensor table: each entry takes at least 2 + 1 + 1 + 4 + 1 bytes.
        if n_tensors as u64 * 9 > table_len {
            return Err(corrupt(format!("{n_tensors} tensors cannot fit in a {table_len}-byte table")));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut c = Cursor::new(table_bytes, "tensor table");
        for _ in 0..n_tensors {
            tensors.push(parse_tensor(&mut c, data_off, data)?);
        }
        if c.remaining() != 0 {
            return Err(corrupt("trailing bytes after tensor table"));
        }
        for (i, t) in tensors.iter().enumerate() {
            if tensors[..i].iter().any(|u| u.name == t.name) {
                return Err(corrupt(format!("tensor '{}' appears twice", t.name)));
            }
        }
        Ok(Checkpoint { bytes, version, meta, tensors })
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Verify the checksum of every segment of every tensor (reads the whole file).
    pub fn verify(&self) -> Result<()> {
        for t in &self.tensors {
            t.verify()?;
        }
        Ok(())
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn get(&self, key: &str) -> Option<MetaValue<'a>> {
        self.meta.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            MetaValue::U64(v) => Some(v),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        match self.get(key)? {
            MetaValue::F32(v) => Some(v),
            MetaValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            MetaValue::Str(v) => Some(v),
            _ => None,
        }
    }
    pub fn get_bytes(&self, key: &str) -> Option<&'a [u8]> {
        match self.get(key)? {
            MetaValue::Bytes(v) => Some(v),
            MetaValue::Str(v) => Some(v.as_bytes()),
            _ => None,
        }
    }
}

fn parse_tensor<'a>(c: &mut Cursor<'a>, data_off: u64, data: &'a [u8]) -> Result<TensorInfo<'a>> {
    let name = c.str_u16()?;
    let enc_id = c.u8()?;
    let encoding =
        Encoding::from_u8(enc_id).ok_or_else(|| Error::UnknownEncoding { tensor: name.into(), id: enc_id })?;
    let n_dims = c.u8()? as usize;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(corrupt(format!("tensor '{name}' has {n_dims} dimensions (1..={MAX_DIMS} allowed)")));
    }
    let mut shape = Vec::with_capacity(n_dims);
    for _ in 0..n_dims {
        let d = c.u64()?;
        if d == 0 {
            return Err(corrupt(format!("tensor '{name}' has a zero dimension")));
        }
        shape.push(d);
    }
    let group_size = c.u32()?;
    let n_seg = c.u8()? as usize;
    if n_seg > MAX_SEGMENTS {
        return Err(corrupt(format!("tensor '{name}' has {n_seg} segments")));
    }
    let specs = expected_segments(encoding, &shape, group_size).ok_or_else(|| {
        corrupt(format!(
            "tensor '{name}': shape {shape:?} with group size {group_size} is invalid for {}",
            encoding.name()
        ))
    })?;
    if specs.len() != n_seg {
        return Err(corrupt(format!(
            "tensor '{name}' has {n_seg} segments, encoding {} needs {}",
            encoding.name(),
            specs.len()
        )));
    }
    let mut segments = Vec::with_capacity(n_seg);
    for (i, spec) in specs.iter().enumerate() {
        let kind_id = c.u8()?;
        let bits = c.u8()?;
        let shift = c.u8()?;
        let _reserved = c.u8()?;
        let offset = c.u64()?;
        let len = c.u64()?;
        let sum = c.u64()?;
        let kind = SegmentKind::from_u8(kind_id);
        if kind != Some(spec.kind) || bits != spec.bits || shift != spec.shift || len != spec.len {
            return Err(corrupt(format!(
                "tensor '{name}' segment {i} is (kind {kind_id}, bits {bits}, shift {shift}, {len} bytes), expected {spec:?}"
            )));
        }
        if offset % DATA_ALIGN != 0 {
            return Err(corrupt(format!("tensor '{name}' segment {i} is not 64-byte aligned")));
        }
        let bytes = slice_at(data, offset, len, "tensor data")?;
        segments.push(Segment { kind: spec.kind, bits, shift, file_offset: data_off + offset, bytes, checksum: sum });
    }
    Ok(TensorInfo { name, encoding, shape, group_size, segments })
}
