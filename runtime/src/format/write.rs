//! Checkpoint writer (std). Writes to a temporary file beside the destination and renames it
//! into place, so a reader never sees a half-written checkpoint.

use std::io::Write;
use std::path::Path;
use std::string::String;
use std::vec::Vec;

use super::{
    checksum, expected_segments, meta_type, Encoding, MetaValue, DATA_ALIGN, HEADER_LEN, MAGIC, VERSION,
};
use crate::error::{Error, Result};

/// A tensor to be written: its segments, in the order [`expected_segments`] gives.
#[derive(Debug, Clone)]
pub struct TensorData {
    pub name: String,
    pub encoding: Encoding,
    pub shape: Vec<u64>,
    pub group_size: u32,
    pub segments: Vec<Vec<u8>>,
}

/// Collects metadata and tensors, then writes one `.edge` file.
#[derive(Debug, Default)]
pub struct CheckpointWriter {
    meta: Vec<(String, OwnedMeta)>,
    tensors: Vec<TensorData>,
}

#[derive(Debug, Clone)]
enum OwnedMeta {
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    let message = if e.kind() == std::io::ErrorKind::StorageFull {
        format!("{e}: the disk is full; free space there or write elsewhere (-o, or EDGE_RUN_CACHE for edge-run's cache)")
    } else {
        e.to_string()
    };
    Error::Io { path: path.display().to_string(), message }
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(DATA_ALIGN) * DATA_ALIGN
}

impl CheckpointWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set a metadata value (replacing an earlier one with the same key).
    pub fn set_meta(&mut self, key: &str, value: MetaValue<'_>) {
        let owned = match value {
            MetaValue::U64(v) => OwnedMeta::U64(v),
            MetaValue::I64(v) => OwnedMeta::I64(v),
            MetaValue::F32(v) => OwnedMeta::F32(v),
            MetaValue::F64(v) => OwnedMeta::F64(v),
            MetaValue::Bool(v) => OwnedMeta::Bool(v),
            MetaValue::Str(v) => OwnedMeta::Str(v.into()),
            MetaValue::Bytes(v) => OwnedMeta::Bytes(v.into()),
        };
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.into(), owned));
    }

    /// Add a tensor, checking its segments against its encoding and shape.
    pub fn add_tensor(&mut self, t: TensorData) -> Result<()> {
        let specs = expected_segments(t.encoding, &t.shape, t.group_size).ok_or_else(|| Error::InvalidArgument {
            what: format!(
                "tensor '{}': shape {:?} with group size {} is invalid for {}",
                t.name,
                t.shape,
                t.group_size,
                t.encoding.name()
            ),
        })?;
        if specs.len() != t.segments.len()
            || specs.iter().zip(&t.segments).any(|(s, d)| s.len != d.len() as u64)
        {
            return Err(Error::InvalidArgument {
                what: format!("tensor '{}': segment lengths do not match its encoding", t.name),
            });
        }
        if t.name.len() > u16::MAX as usize || self.tensors.iter().any(|u| u.name == t.name) {
            return Err(Error::InvalidArgument { what: format!("tensor name '{}' is too long or repeated", t.name) });
        }
        self.tensors.push(t);
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorData] {
        &self.tensors
    }

    fn meta_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for (k, v) in &self.meta {
            b.extend_from_slice(&(k.len() as u16).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
            match v {
                OwnedMeta::U64(x) => {
                    b.push(meta_type::U64);
                    b.extend_from_slice(&x.to_le_bytes());
                }
                OwnedMeta::I64(x) => {
                    b.push(meta_type::I64);
                    b.extend_from_slice(&x.to_le_bytes());
                }
                OwnedMeta::F32(x) => {
                    b.push(meta_type::F32);
                    b.extend_from_slice(&x.to_bits().to_le_bytes());
                }
                OwnedMeta::F64(x) => {
                    b.push(meta_type::F64);
                    b.extend_from_slice(&x.to_bits().to_le_bytes());
                }
                OwnedMeta::Bool(x) => {
                    b.push(meta_type::BOOL);
                    b.push(*x as u8);
                }
                OwnedMeta::Str(s) => {
                    b.push(meta_type::STR);
                    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
                OwnedMeta::Bytes(s) => {
                    b.push(meta_type::BYTES);
                    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
                    b.extend_from_slice(s);
                }
            }
        }
        b
    }

    /// Serialise into `out`. `progress(done_bytes, total_bytes)` is called as data is written.
    pub fn write_to<W: Write>(&self, out: &mut W, mut progress: impl FnMut(u64, u64)) -> std::io::Result<u64> {
        let meta = self.meta_bytes();
        // Lay out the data section: every segment 64-byte aligned, offsets relative to its start.
        let mut offsets: Vec<Vec<u64>> = Vec::with_capacity(self.tensors.len());
        let mut cursor = 0u64;
        for t in &self.tensors {
            let mut offs = Vec::with_capacity(t.segments.len());
            for s in &t.segments {
                cursor = align_up(cursor);
                offs.push(cursor);
                cursor += s.len() as u64;
            }
            offsets.push(offs);
        }
        let data_len = cursor;
        let mut table = Vec::new();
        for (t, offs) in self.tensors.iter().zip(&offsets) {
            table.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
            table.extend_from_slice(t.name.as_bytes());
            table.push(t.encoding as u8);
            table.push(t.shape.len() as u8);
            for d in &t.shape {
                table.extend_from_slice(&d.to_le_bytes());
            }
            table.extend_from_slice(&t.group_size.to_le_bytes());
            table.push(t.segments.len() as u8);
            // add_tensor validated this combination; an error here would be a bug, not bad input.
            let specs = expected_segments(t.encoding, &t.shape, t.group_size)
                .ok_or_else(|| std::io::Error::other(format!("tensor '{}' has an invalid layout", t.name)))?;
            for ((spec, data), off) in specs.iter().zip(&t.segments).zip(offs) {
                table.push(spec.kind as u8);
                table.push(spec.bits);
                table.push(spec.shift);
                table.push(0);
                table.extend_from_slice(&off.to_le_bytes());
                table.extend_from_slice(&(data.len() as u64).to_le_bytes());
                table.extend_from_slice(&checksum(data).to_le_bytes());
            }
        }
        let meta_off = HEADER_LEN as u64;
        let table_off = meta_off + meta.len() as u64;
        let data_off = align_up(table_off + table.len() as u64);
        let file_len = data_off + data_len;

        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        header.extend_from_slice(&file_len.to_le_bytes());
        header.extend_from_slice(&meta_off.to_le_bytes());
        header.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        header.extend_from_slice(&table_off.to_le_bytes());
        header.extend_from_slice(&(table.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        header.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        header.extend_from_slice(&data_off.to_le_bytes());
        header.extend_from_slice(&data_len.to_le_bytes());
        header.extend_from_slice(&checksum(&meta).to_le_bytes());
        header.extend_from_slice(&checksum(&table).to_le_bytes());
        header.extend_from_slice(&[0u8; 24]);
        let hsum = checksum(&header);
        header.extend_from_slice(&hsum.to_le_bytes());
        debug_assert_eq!(header.len(), HEADER_LEN);

        out.write_all(&header)?;
        out.write_all(&meta)?;
        out.write_all(&table)?;
        let zeros = [0u8; DATA_ALIGN as usize];
        let pad = data_off - (table_off + table.len() as u64);
        out.write_all(&zeros[..pad as usize])?;
        let mut pos = 0u64;
        for (t, offs) in self.tensors.iter().zip(&offsets) {
            for (s, off) in t.segments.iter().zip(offs) {
                out.write_all(&zeros[..(off - pos) as usize])?;
                out.write_all(s)?;
                pos = off + s.len() as u64;
                progress(pos, data_len);
            }
        }
        Ok(file_len)
    }

    /// Write atomically to `path`: a temporary file in the same directory, synced, then renamed.
    /// Fails if `path` exists and `overwrite` is false.
    pub fn write_file(&self, path: &Path, overwrite: bool, progress: impl FnMut(u64, u64)) -> Result<u64> {
        if path.exists() && !overwrite {
            return Err(Error::Io {
                path: path.display().to_string(),
                message: "already exists; pass --force to overwrite".into(),
            });
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let result = (|| {
            let f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let n = self.write_to(&mut w, progress).map_err(|e| io_err(&tmp, e))?;
            let f = w.into_inner().map_err(|e| io_err(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}
