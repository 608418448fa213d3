//! The weights binding: every tensor the architecture names ([`crate::arch`]), checked against
//! the config, borrowed from the checkpoint at the views a plan picks and prepared by the
//! backend.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::arch::{Arch, Kind, Role, Tensor};
use crate::backend::{Backend, Cpu, Preparing};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{Checkpoint, Encoding, SegmentKind, TensorInfo};
use crate::plan::ViewPlan;

/// A file range: (offset, length) in bytes.
pub type FileRange = (u64, u64);

/// A matrix in the backend's form, with the view it was prepared at and the file ranges it
/// reads.
#[derive(Debug, Clone)]
pub struct Bound<M> {
    pub matrix: M,
    /// The view (`None`: a dense matrix).
    pub bits: Option<u8>,
    /// The checkpoint's byte ranges this view reads (not those its prepared copies replaced).
    pub reads: Vec<FileRange>,
    /// The checkpoint's byte ranges the prepared copies replaced.
    pub replaced: Vec<FileRange>,
}

/// The tensors of one layer (or the model's global ones), by kind.
#[derive(Debug, Clone)]
pub struct Slots<'a, M> {
    /// The f32 vectors (norms, biases, RoPE factors).
    vectors: [Option<&'a [f32]>; Kind::COUNT],
    mats: [Option<Bound<M>>; Kind::COUNT],
}

impl<'a, M> Slots<'a, M> {
    fn new() -> Self {
        Slots { vectors: [None; Kind::COUNT], mats: core::array::from_fn(|_| None) }
    }

    /// The norm weights of `kind` (dim). The binding fills every kind its architecture lists.
    pub fn norm(&self, kind: Kind) -> &'a [f32] {
        match self.vectors[kind.index()] {
            Some(n) => n,
            None => unreachable!("norm {} is not bound", kind.name()),
        }
    }

    /// The vector of `kind` (a bias, RoPE factors), if the architecture and config store one.
    pub fn vector(&self, kind: Kind) -> Option<&'a [f32]> {
        self.vectors[kind.index()]
    }

    /// The matrix of `kind`.
    pub fn w(&self, kind: Kind) -> &M {
        &self.bound(kind).matrix
    }

    fn bound(&self, kind: Kind) -> &Bound<M> {
        match &self.mats[kind.index()] {
            Some(b) => b,
            None => unreachable!("matrix {} is not bound", kind.name()),
        }
    }

    fn get(&self, kind: Kind) -> Option<&Bound<M>> {
        self.mats[kind.index()].as_ref()
    }
}

/// All weights, borrowed from the checkpoint.
#[derive(Debug)]
pub struct Weights<'a, B: Backend = Cpu> {
    pub arch: &'static Arch,
    pub config: Config,
    /// The global tensors (token embedding, final norm, output head).
    pub globals: Slots<'a, B::Matrix<'a>>,
    pub layers: Vec<Slots<'a, B::Matrix<'a>>>,
}

impl<'a, B: Backend> Clone for Weights<'a, B> {
    fn clone(&self) -> Self {
        Weights { arch: self.arch, config: self.config, globals: self.globals.clone(), layers: self.layers.clone() }
    }
}

fn require<'c, 'a>(ck: &'c Checkpoint<'a>, name: &str) -> Result<&'c TensorInfo<'a>> {
    ck.tensor(name).ok_or_else(|| Error::MissingTensor { name: name.into() })
}

fn check_shape(t: &TensorInfo<'_>, expected: &[u64]) -> Result<()> {
    if t.shape != expected {
        return Err(Error::ShapeMismatch { name: t.name.into(), expected: expected.to_vec(), found: t.shape.clone() });
    }
    Ok(())
}

fn vector<'a>(t: &TensorInfo<'a>) -> Result<&'a [f32]> {
    let name = t.name;
    if t.encoding != Encoding::F32 {
        return Err(Error::Corrupt { what: format!("vector '{name}' must be f32, is {}", t.encoding.name()) });
    }
    let bytes = t.segment(SegmentKind::Values).map(|s| s.bytes).unwrap_or_default();
    bytemuck::try_cast_slice(bytes)
        .map_err(|_| Error::Misaligned { what: format!("tensor '{name}'"), align: core::mem::align_of::<f32>() })
}

/// The byte ranges of `t` that view `bits` reads, but for the planes in `replaced`.
fn reads(t: &TensorInfo<'_>, bits: Option<u8>, replaced: &core::ops::Range<usize>) -> Vec<FileRange> {
    let range = |s: &crate::format::Segment<'_>| (s.file_offset, s.bytes.len() as u64);
    match t.encoding {
        Encoding::Nested8 | Encoding::Nested8Super => {
            let n = crate::blocks::nested8_planes_for_view(bits.unwrap_or(8)).unwrap_or(0);
            let params = t.segment(SegmentKind::GroupParams).map(range);
            let planes = t.planes().enumerate().filter(|(i, _)| *i < n && !replaced.contains(i)).map(|(_, s)| range(s));
            params.into_iter().chain(planes).filter(|r| r.1 > 0).collect()
        }
        _ => t.segments.iter().map(range).filter(|r| r.1 > 0).collect(),
    }
}

/// Bytes of a prepared copy made per step while a first binding releases the planes behind it:
/// under the allocator's mmap threshold (`memory::return_freed_copies` in the CLI: 256 KiB), so
/// each step's slice reuses the heap (and the cache) instead of faulting in fresh pages.
const PREPARE_STEP: usize = 192 << 10;
/// Releases per matrix, at most (each a slice of its codes; fewer, larger `madvise` calls): the
/// load's transient is then a sixteenth of the largest matrix's planes beside its copy.
const RELEASES: usize = 16;

/// [`Backend::prepare`] of `t` at view `bits`, made a slice at a time so that the stored planes
/// its copy replaces are released (`release(offset, length)`) as the copy grows: a large
/// matrix (a 1.5B model's 8-bit head: 233 MB of planes, 233 MB of runs) then holds little more
/// than its copy at the load's peak instead of both. The whole replaced ranges are released
/// again once complete (`bind`), pages cut by slice edges included.
fn prepare_releasing<'a, B: Backend>(backend: &B, t: &TensorInfo<'a>, bits: Option<u8>, release: &dyn Fn(u64, u64)) -> Result<crate::backend::PreparedMatrix<B::Matrix<'a>>> {
    use crate::backend::Preparing as _;
    let mut p = backend.begin_prepare(t, bits)?;
    let mut released = 0;
    while !p.step(PREPARE_STEP) {
        let Some((planes, done, _)) = p.replaced_so_far().filter(|&(_, done, all)| (done - released) * RELEASES >= all) else { continue };
        for (i, s) in t.planes().enumerate().filter(|(i, s)| planes.contains(i) && !s.bytes.is_empty()) {
            let b = crate::blocks::NESTED8_PLANES[i].bits as usize;
            let (from, to) = (released * b / 8, done * b / 8);
            release(s.file_offset + from as u64, (to - from) as u64);
        }
        released = done;
    }
    Ok(p.finish())
}

/// Whether `b` is already at view `bits` (`None`: 8; a dense matrix has one view).
fn at_view<M>(b: &Bound<M>, bits: Option<u8>) -> bool {
    b.bits.is_none_or(|v| v == bits.unwrap_or(8))
}

/// A prepared matrix of tensor `info` at view `bits`, with the file ranges its view reads and
/// those its prepared copy replaced.
fn bound<'a, B: Backend>(info: &TensorInfo<'a>, bits: Option<u8>, p: crate::backend::PreparedMatrix<B::Matrix<'a>>) -> Bound<B::Matrix<'a>> {
    let replaced: Vec<FileRange> = info
        .planes()
        .enumerate()
        .filter(|(i, s)| p.replaced_planes.contains(i) && !s.bytes.is_empty())
        .map(|(_, s)| (s.file_offset, s.bytes.len() as u64))
        .collect();
    let reads = reads(info, bits, &p.replaced_planes);
    Bound { bits: B::view_bits(&p.matrix), matrix: p.matrix, reads, replaced }
}

/// A change of views made beside a running model ([`Weights::begin_change`]): the matrices
/// whose view changes, each prepared a slice at a time ([`ViewChange::step`]) while the model
/// keeps reading the old ones, then swapped in at once ([`Weights::install`]). It owns what it
/// has made and borrows only the checkpoint (with the CPU backend it is `Send`).
#[derive(Debug)]
pub struct ViewChange<'a, B: Backend> {
    jobs: Vec<Job<'a, B>>,
    /// The first job not complete.
    next: usize,
}

#[derive(Debug)]
struct Job<'a, B: Backend> {
    tensor: Tensor,
    info: TensorInfo<'a>,
    bits: Option<u8>,
    prep: B::Preparing<'a>,
}

impl<'a, B: Backend> ViewChange<'a, B> {
    /// Make about `bytes` more bytes of the new copies; true once every one is complete.
    pub fn step(&mut self, bytes: usize) -> bool {
        if let Some(job) = self.jobs.get_mut(self.next) {
            if job.prep.step(bytes) {
                self.next += 1;
            }
        }
        self.is_complete()
    }

    /// Whether every new copy is made.
    pub fn is_complete(&self) -> bool {
        self.next == self.jobs.len()
    }

    /// Matrices whose view changes.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

impl<'a, B: Backend> Weights<'a, B> {
    /// Start changing the views to those `plan` picks without stopping the model: the matrices
    /// whose view changes are checked now and prepared later, a slice at a time
    /// ([`ViewChange::step`]); [`Weights::install`] swaps them in. While a change is made, the
    /// old copies and the new ones are both in memory (a caller short of memory changes the
    /// small units first; see the binary's controller).
    pub fn begin_change(&self, ck: &Checkpoint<'a>, plan: &ViewPlan, backend: &B) -> Result<ViewChange<'a, B>> {
        let mut jobs = Vec::new();
        for t in self.arch.tensors(&self.config).into_iter().filter(|t| t.spec.role != Role::Norm) {
            let info = require(ck, &t.name)?;
            check_shape(info, &t.shape)?;
            let bits = plan.bits_for(&t.name);
            if self.bound(&t).is_some_and(|b| at_view(b, bits)) {
                continue;
            }
            let prep = if t.spec.rows_only(&self.config) { backend.begin_prepare_rows(info, bits)? } else { backend.begin_prepare(info, bits)? };
            jobs.push(Job { tensor: t, info: info.clone(), bits, prep });
        }
        Ok(ViewChange { jobs, next: 0 })
    }

    /// Swap in the new copies of `change` (what is left of their preparation done first) and
    /// drop the old ones. Returns the file ranges no longer read, as [`crate::Model::set_views`]
    /// does: those the old views read and the new ones do not, and those the new copies were
    /// made from.
    pub fn install(&mut self, change: ViewChange<'a, B>) -> Vec<FileRange> {
        let mut unread = self.read_ranges();
        for job in change.jobs {
            let b = bound::<B>(&job.info, job.bits, job.prep.finish());
            unread.extend(b.replaced.iter().copied());
            let slots = match job.tensor.layer {
                Some(l) => &mut self.layers[l],
                None => &mut self.globals,
            };
            slots.mats[job.tensor.spec.kind.index()] = Some(b);
        }
        let after = self.read_ranges();
        unread.retain(|r| !after.contains(r));
        unread.sort_unstable();
        unread.dedup();
        unread
    }

    /// Check that `ck` stores exactly the tensors config `c` implies, with its shapes: before
    /// anything is sized by the config (a corrupt dimension would allocate gigabytes first), and
    /// so that a tensor the config does not use (a lowered block count, say) is refused rather
    /// than a part of the model run.
    pub fn check(ck: &Checkpoint<'_>, c: &Config) -> Result<()> {
        let expected = crate::arch::of_checkpoint(ck)?.tensors(c);
        for t in &expected {
            check_shape(require(ck, &t.name)?, &t.shape)?;
        }
        if let Some(t) = ck.tensors.iter().find(|t| !expected.iter().any(|e| e.name == t.name)) {
            return Err(Error::Corrupt {
                what: format!("tensor '{}' is not one of the {} its config ({} layers) uses", t.name, expected.len(), c.n_layers),
            });
        }
        Ok(())
    }

    /// Bind every weight of `ck` at the views `plan` picks, checking names and shapes against
    /// the config. `release(offset, length)` is told, as each matrix is prepared, the stored
    /// ranges its prepared copy replaced (so a mapped file's pages can leave memory before the
    /// next copy is made). A matrix of `reuse` already at its planned view is kept as it is.
    pub fn bind(
        ck: &Checkpoint<'a>,
        c: &Config,
        plan: &ViewPlan,
        backend: &B,
        reuse: Option<&Weights<'a, B>>,
        release: &dyn Fn(u64, u64),
    ) -> Result<Self> {
        let arch = crate::arch::of_checkpoint(ck)?;
        let expected = arch.tensors(c);
        let mut globals = Slots::new();
        let mut layers: Vec<Slots<'a, B::Matrix<'a>>> = (0..c.n_layers).map(|_| Slots::new()).collect();
        // Every matrix not kept from `reuse`, to prepare: (tensor, its info, its view).
        let mut jobs: Vec<(Tensor, TensorInfo<'a>, Option<u8>)> = Vec::new();
        for t in expected {
            let info = require(ck, &t.name)?;
            check_shape(info, &t.shape)?;
            let slots = match t.layer {
                Some(l) => &mut layers[l],
                None => &mut globals,
            };
            let kind = t.spec.kind;
            if !t.spec.takes_views() {
                slots.vectors[kind.index()] = Some(vector(info)?);
                continue;
            }
            let bits = plan.bits_for(&t.name);
            let old = reuse.and_then(|w| w.bound(&t)).filter(|b| at_view(b, bits));
            match old {
                Some(b) => slots.mats[kind.index()] = Some(b.clone()),
                None => jobs.push((t, info.clone(), bits)),
            }
        }
        // A live change (`reuse`) prepares its few matrices side by side; a first binding goes
        // one at a time, releasing each copy's stored planes as it is made (so the load's
        // transient stays a slice of one tensor's planes: `prepare_releasing`).
        // A matrix read a row at a time is kept as stored (`Backend::prepare_rows`).
        let rows_only = |t: &Tensor| t.spec.rows_only(c);
        let prepared: Vec<Result<crate::backend::PreparedMatrix<B::Matrix<'a>>>> = if reuse.is_some() {
            let refs: Vec<(&TensorInfo<'a>, Option<u8>)> = jobs.iter().filter(|(t, _, _)| !rows_only(t)).map(|(_, i, b)| (i, *b)).collect();
            backend.prepare_all(&refs)
        } else {
            Vec::new()
        };
        let mut prepared = prepared.into_iter();
        for (t, info, bits) in &jobs {
            let p = match reuse {
                _ if rows_only(t) => backend.prepare_rows(info, *bits)?,
                Some(_) => prepared.next().expect("one result per job")?,
                None => prepare_releasing(backend, info, *bits, release)?,
            };
            let b = bound::<B>(info, *bits, p);
            if reuse.is_none() {
                for &(offset, len) in &b.replaced {
                    release(offset, len);
                }
            }
            let slots = match t.layer {
                Some(l) => &mut layers[l],
                None => &mut globals,
            };
            slots.mats[t.spec.kind.index()] = Some(b);
        }
        Ok(Weights { arch, config: *c, globals, layers })
    }

    fn bound(&self, t: &Tensor) -> Option<&Bound<B::Matrix<'a>>> {
        match t.layer {
            Some(l) => self.layers.get(l)?.get(t.spec.kind),
            None => self.globals.get(t.spec.kind),
        }
    }

    /// The token embedding (vocab, dim).
    pub fn token_embd(&self) -> &B::Matrix<'a> {
        self.globals.w(Kind::TokenEmbd)
    }

    /// The output head (vocab, dim): the token embedding itself when tied.
    pub fn head(&self) -> &B::Matrix<'a> {
        match self.globals.get(Kind::Output) {
            Some(b) => &b.matrix,
            None => self.token_embd(),
        }
    }

    /// Every matrix with its canonical name, in file order of the model.
    pub fn matrices(&self) -> Vec<(String, &B::Matrix<'a>)> {
        self.arch.matrices(&self.config).into_iter().filter_map(|t| Some((t.name.clone(), &self.bound(&t)?.matrix))).collect()
    }

    /// Call `f` with every matrix, once each (the tied head is the embedding).
    pub fn for_each_matrix_mut(&mut self, mut f: impl FnMut(&mut B::Matrix<'a>)) {
        for slots in core::iter::once(&mut self.globals).chain(self.layers.iter_mut()) {
            slots.mats.iter_mut().flatten().for_each(|b| f(&mut b.matrix));
        }
    }

    /// (file offset, length) of every byte range of the checkpoint the current views read.
    pub fn read_ranges(&self) -> Vec<FileRange> {
        let mut out: Vec<FileRange> =
            self.arch.matrices(&self.config).iter().filter_map(|t| self.bound(t)).flat_map(|b| b.reads.iter().copied()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// (file offset, length) of the stored planes that prepared copies replaced (read at load,
    /// never again): a caller with a mapped file may drop them from the resident set.
    pub fn replaced_ranges(&self) -> Vec<FileRange> {
        let mut out: Vec<FileRange> = self
            .arch
            .matrices(&self.config)
            .iter()
            .filter_map(|t| self.bound(t))
            .flat_map(|b| b.replaced.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The stored planes that copies prepared anew (views that differ from `old`'s) were made
    /// from: read again to make them, they can leave memory again.
    pub fn replaced_since(&self, old: &Weights<'a, B>) -> Vec<FileRange> {
        let mut out: Vec<FileRange> = self
            .arch
            .matrices(&self.config)
            .iter()
            .filter_map(|t| Some((self.bound(t)?, old.bound(t))))
            .filter(|(new, old)| old.is_none_or(|o| o.bits != new.bits))
            .flat_map(|(new, _)| new.replaced.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Bytes the weights' current views read (norms, biases and RoPE factors included).
    pub fn view_bytes(&self) -> usize {
        let mut n = 0;
        for t in self.arch.tensors(&self.config) {
            n += match self.bound(&t) {
                _ if !t.spec.takes_views() => t.shape.iter().product::<u64>() as usize * 4,
                Some(b) => B::view_bytes(&b.matrix),
                None => 0,
            };
        }
        n
    }
}
