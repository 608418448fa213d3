//! A matrix's prepared form made a slice at a time ([`Preparing`]), so that a live change of
//! views need not stall decode for a whole matrix: the token embedding of SmolLM2 (49152 x 576,
//! also the tied head) takes 15-30 ms to repack at once, several tokens' time.
//!
//! Both forms the kernel tables make are laid out by codes, independently of the rest of the
//! matrix: the runs of a 2- to 6-bit view ([`crate::blocks::repack_top`]: run `s` holds codes
//! `256 s..256 (s + 1)`) and the nibble plane of the 8-bit view ([`crate::blocks::low_nibbles`]:
//! codes `8k..8k + 8` in bytes `4k..4k + 4`). So a slice of whole runs of the stored planes
//! prepared on its own ([`crate::kernels::Nested8::for_active_table`], the same call as a whole
//! matrix's, so the table's choice of form is made in one place) is the matching slice of the
//! whole form; the slices are copied into one buffer allocated up front and left untouched
//! until written (its pages are faulted in a slice at a time, not all at once).

use alloc::sync::Arc;
use core::mem::MaybeUninit;

use crate::backend::{PreparedMatrix, Preparing as PreparingTrait};
use crate::blocks::RUN_CODES;
use crate::kernels::{Matrix, Nested8, Prepared, WeightView};

/// A CPU matrix being prepared ([`crate::backend::Backend::begin_prepare`]).
#[derive(Debug)]
pub struct Preparing<'a> {
    /// The matrix read from its stored planes; its form is added once complete.
    matrix: Matrix<'a>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// No slice made yet (the first one tells whether the active table makes a form at all).
    Start,
    /// The form is being made: codes `0..done` of `numel` are in `out[..written]`.
    Making { out: Arc<[MaybeUninit<u8>]>, written: usize, done: usize, numel: usize, nibbles: bool },
    /// Complete (`form`: the prepared form, if the table makes one).
    Done { form: Option<(Arc<[u8]>, bool)> },
}

impl<'a> Preparing<'a> {
    /// `matrix` read from its stored planes ([`Matrix::stored`]).
    pub fn new(matrix: Matrix<'a>) -> Self {
        Preparing { matrix, state: State::Start }
    }

    /// `matrix` kept as stored: complete from the start, no form made.
    pub fn stored(matrix: Matrix<'a>) -> Self {
        Preparing { matrix, state: State::Done { form: None } }
    }

    fn nested(&self) -> Option<&Nested8<'a>> {
        match &self.matrix.view {
            WeightView::Nested8(n) => Some(n),
            _ => None,
        }
    }

    /// Codes of the whole matrix as its form counts them (as [`Nested8::prepare`] does).
    fn numel(n: &Nested8<'_>) -> usize {
        n.planes[0].len() * 4
    }

    /// The prepared form of codes `lo..hi` alone (`lo` a whole number of runs), and whether it
    /// is a nibble plane; `None` when the active table reads the stored planes.
    fn slice(n: &Nested8<'a>, lo: usize, hi: usize) -> Option<(Arc<[u8]>, bool)> {
        let part = Nested8 { planes: n.planes_between(lo, hi), ..n.clone() }.for_active_table();
        match part.prepared() {
            Prepared::Runs(_) => part.repacked.map(|r| (r, false)),
            Prepared::Nibbles(_) => part.low.map(|l| (l, true)),
            Prepared::Planes => None,
        }
    }

    /// Bytes of the whole form of `numel` codes.
    fn form_bytes(view_bits: u8, numel: usize, nibbles: bool) -> usize {
        Prepared::len_of(view_bits, numel, nibbles)
    }
}

/// Copy `src` into `dst` (a part of a buffer not yet written).
fn write(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| {
        d.write(*s);
    });
}

impl<'a> PreparingTrait<Matrix<'a>> for Preparing<'a> {
    fn step(&mut self, bytes: usize) -> bool {
        let Some(n) = self.nested().cloned() else {
            self.state = State::Done { form: None };
            return true;
        };
        let numel = Self::numel(&n);
        let (lo, per_run) = match &self.state {
            State::Done { .. } => return true,
            // The first slice: one run, enough to learn the form and its size.
            State::Start => (0, usize::MAX),
            State::Making { done, nibbles, .. } => (*done, Self::form_bytes(n.view_bits, RUN_CODES, *nibbles)),
        };
        let hi = (lo + (bytes / per_run).max(1) * RUN_CODES).min(numel);
        let part = Self::slice(&n, lo, hi);
        match (&mut self.state, part) {
            (State::Start, None) => self.state = State::Done { form: None },
            (State::Start, Some((part, nibbles))) => {
                let mut out = Arc::new_uninit_slice(Self::form_bytes(n.view_bits, numel, nibbles));
                write(&mut Arc::get_mut(&mut out).expect("just made")[..part.len()], &part);
                self.state = State::Making { out, written: part.len(), done: hi, numel, nibbles };
            }
            (State::Making { out, written, done, .. }, Some((part, _))) => {
                let dst = Arc::get_mut(out).expect("owned alone until complete");
                write(&mut dst[*written..*written + part.len()], &part);
                *written += part.len();
                *done = hi;
            }
            (State::Making { .. }, None) => unreachable!("the table made a form for the first slice"),
            (State::Done { .. }, _) => unreachable!("returned above"),
        }
        self.complete()
    }

    fn finish(mut self) -> PreparedMatrix<Matrix<'a>> {
        while !self.step(1 << 20) {}
        let State::Done { form } = self.state else { unreachable!("step returned true") };
        let mut matrix = self.matrix;
        if let (WeightView::Nested8(n), Some((form, nibbles))) = (&mut matrix.view, form) {
            if nibbles {
                n.low = Some(form);
            } else {
                n.repacked = Some(form);
            }
        }
        let replaced_planes = matrix.replaced_planes();
        PreparedMatrix { matrix, replaced_planes }
    }

    fn replaced_so_far(&self) -> Option<(core::ops::Range<usize>, usize, usize)> {
        match (&self.state, self.nested()) {
            (State::Making { done, nibbles, numel, .. }, Some(n)) => Some((Nested8::replaced_by(n.view_bits, *nibbles), *done, *numel)),
            _ => None,
        }
    }
}

impl Preparing<'_> {
    /// Whether the matrix is complete (a form whose last slice is made is moved to `Done`).
    fn complete(&mut self) -> bool {
        if let State::Making { out, written, done, numel, nibbles } = &mut self.state {
            if *done < *numel {
                return false;
            }
            assert_eq!(*written, out.len(), "the slices fill the form");
            let out = core::mem::replace(out, Arc::new_uninit_slice(0));
            // SAFETY: every byte of `out` was written: the slices are contiguous from byte 0,
            // and `written == out.len()` (asserted above).
            let form = unsafe { out.assume_init() };
            let nibbles = *nibbles;
            self.state = State::Done { form: Some((form, nibbles)) };
        }
        matches!(self.state, State::Done { .. })
    }
}
