//! Checksums of the stored segments a run reads, verified beside it, so that a flipped bit in a
//! mapped checkpoint is reported while the run goes on rather than turned into wrong text. A
//! thread reads those segments through the file (`pread`: the page cache holds them, this
//! process's resident set does not grow) and hashes them; the run asks after each token whether
//! it found a mismatch, and waits for it at the end. `--no-verify` turns it off.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Result};
use edge_runtime::format::{Encoding, SegmentKind};
use edge_runtime::plan::ViewPlan;
use edge_runtime::Checkpoint;

/// One segment to check: where it lies in the file, its stored checksum, and what to call it.
struct Job {
    what: String,
    offset: u64,
    len: u64,
    checksum: u64,
}

/// What the verifier checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub segments: usize,
    pub bytes: u64,
    pub seconds: f64,
}

impl Summary {
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "segments": self.segments, "bytes": self.bytes, "seconds": self.seconds })
    }
}

/// The background check of one run.
pub struct Verifier {
    found: Arc<OnceLock<String>>,
    handle: Option<JoinHandle<Result<Summary, String>>>,
}

/// The segments `plan`'s views read (a nested tensor's group parameters and the prefix of its
/// planes its view needs; every segment of the others); with `every_view`, all of them (a run
/// whose controller may raise a view reads more planes later).
fn jobs(ck: &Checkpoint<'_>, plan: &ViewPlan, every_view: bool) -> Vec<Job> {
    let base = ck.bytes().as_ptr() as u64;
    let mut out = Vec::new();
    for t in &ck.tensors {
        let planes = match t.encoding {
            Encoding::Nested8 | Encoding::Nested8Super if !every_view => {
                edge_runtime::blocks::nested8_planes_for_view(plan.bits_for(t.name).unwrap_or(8)).unwrap_or(6)
            }
            _ => usize::MAX,
        };
        let mut plane = 0;
        for (i, s) in t.segments.iter().enumerate() {
            if s.kind == SegmentKind::Plane {
                plane += 1;
                if plane > planes {
                    continue;
                }
            }
            out.push(Job {
                what: format!("tensor '{}' segment {i}", t.name),
                offset: s.bytes.as_ptr() as u64 - base,
                len: s.bytes.len() as u64,
                checksum: s.checksum,
            });
        }
    }
    out
}

fn check(path: &Path, jobs: &[Job], found: &OnceLock<String>) -> Result<Summary, String> {
    let t = Instant::now();
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open {} to verify it: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut s = Summary::default();
    for j in jobs {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut at = 0u64;
        while at < j.len {
            let n = (j.len - at).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], j.offset + at)
                .map_err(|e| format!("cannot read {} of {} to verify it: {e}", j.what, path.display()))?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        let computed = h.digest();
        if computed != j.checksum {
            let msg = format!(
                "{}: checksum mismatch in {} (stored {:016x}, computed {computed:016x}): the file is corrupt; re-pack or re-copy it (--no-verify skips this check)",
                path.display(),
                j.what,
                j.checksum
            );
            let _ = found.set(msg.clone());
            return Err(msg);
        }
        s.segments += 1;
        s.bytes += j.len;
    }
    s.seconds = t.elapsed().as_secs_f64();
    Ok(s)
}

impl Verifier {
    /// Start checking, on a thread of its own, the segments of `ck` (the file at `path`) that
    /// `plan`'s views read, or every segment with `every_view`.
    pub fn start(path: &Path, ck: &Checkpoint<'_>, plan: &ViewPlan, every_view: bool) -> Verifier {
        let jobs = jobs(ck, plan, every_view);
        let found = Arc::new(OnceLock::new());
        let (f, path): (Arc<OnceLock<String>>, PathBuf) = (found.clone(), path.to_path_buf());
        let handle = std::thread::Builder::new().name("verify".into()).spawn(move || check(&path, &jobs, &f)).ok();
        Verifier { found, handle }
    }

    /// An error once a mismatch has been found (cheap: a load of a flag).
    pub fn poll(&self) -> Result<()> {
        match self.found.get() {
            Some(msg) => Err(anyhow!("{msg}")),
            None => Ok(()),
        }
    }

    /// `e`, the run's own failure, or the mismatch that explains it: corrupt weights can stop a
    /// run (non-finite logits) before the check reaches them, so it is waited for.
    pub fn explain(&mut self, e: anyhow::Error) -> anyhow::Error {
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(Err(mismatch))) => anyhow!("{mismatch}"),
            _ => e,
        }
    }

    /// Wait for the check to end: what it checked, or the mismatch it found.
    pub fn finish(mut self) -> Result<Summary> {
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r.map_err(|e| anyhow!("{e}")),
            Some(Err(_)) => Err(anyhow!("the checksum thread failed; rerun with --no-verify to skip the check")),
            None => Err(anyhow!("cannot start the checksum thread; rerun with --no-verify to skip the check")),
        }
    }
}
