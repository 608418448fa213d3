//! Loading checkpoint bytes from disk (std): memory-mapped, or read into an aligned buffer.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// The bytes of a checkpoint file, mapped or owned. Both are at least 64-byte aligned, so
/// tensor segments can be viewed in place as `f32`/`f16`.
pub enum CheckpointBytes {
    Mapped(memmap2::Mmap),
    /// Read into memory; `u128`-backed (16-byte aligned; segments are 64-byte aligned in the
    /// file, so every element view is aligned for its type).
    Owned { buf: Vec<u128>, len: usize },
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), message: e.to_string() }
}

impl CheckpointBytes {
    /// Memory-map `path` read-only.
    pub fn map(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| io(path, e))?;
        // SAFETY:
        // - the map is read-only, and we never hand out a mutable view of it;
        // - edge-pack replaces checkpoints by rename, never in place, so the mapped file is
        //   not truncated under us by our own tools (another process doing so is outside
        //   what any mmap-based loader can defend against).
        let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io(path, e))?;
        Ok(CheckpointBytes::Mapped(m))
    }

    /// Read `path` into memory.
    pub fn read(path: &Path) -> Result<Self> {
        use std::io::Read;
        let mut f = File::open(path).map_err(|e| io(path, e))?;
        let len = f.metadata().map_err(|e| io(path, e))?.len() as usize;
        let mut buf = vec![0u128; len.div_ceil(16)];
        let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut buf)[..len];
        f.read_exact(bytes).map_err(|e| io(path, e))?;
        Ok(CheckpointBytes::Owned { buf, len })
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CheckpointBytes::Mapped(m) => m,
            CheckpointBytes::Owned { buf, len } => &bytemuck::cast_slice(buf)[..*len],
        }
    }
}

impl CheckpointBytes {
    /// Tell the OS that the file range `(offset, len)` is no longer needed (a view was lowered):
    /// for a mapping, its whole pages inside the range are dropped from the resident set and
    /// would be read back from the file if touched again. An owned buffer cannot give back
    /// part of one allocation, so this is a no-op there. Returns the bytes released.
    pub fn release(&self, offset: u64, len: u64) -> u64 {
        match self {
            CheckpointBytes::Mapped(m) => {
                let page = 4096u64;
                let start = offset.div_ceil(page) * page;
                let end = (offset + len) / page * page;
                if end <= start || end > m.len() as u64 {
                    return 0;
                }
                // SAFETY:
                // - the range lies inside the mapping (checked above) and is page-aligned;
                // - the mapping is a read-only file mapping, so MADV_DONTNEED only
                //   drops clean pages, which the kernel re-reads from the file on the next
                //   access: no data visible through any `&[u8]` changes.
                let r = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start as usize, (end - start) as usize)
                };
                if r.is_ok() { end - start } else { 0 }
            }
            CheckpointBytes::Owned { .. } => 0,
        }
    }
}
