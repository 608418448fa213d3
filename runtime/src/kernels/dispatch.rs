//! The kernel table: filled with the scalar reference, then each architecture's `plug`
//! overwrites the entries its CPU can serve. With `std` the CPU is probed once at first use;
//! without `std` only features enabled at compile time (`-C target-feature`) are used.
//!
//! Every SIMD kernel is a private `#[target_feature]` function of its architecture's module,
//! reachable only through this table, which is only ever filled after the CPU reported the
//! feature.

use super::acts::QActs;
use super::{portable, reference, vector, Nested8};

/// Quantize `x` ((n, cols) row-major) into `acts` in blocks of `block` values (the contract of
/// [`super::acts`]; `aux` in this table's order).
pub type QuantizeActsFn = fn(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs);
/// Decode: `out[i] = row (first + i) · token 0 of acts` (see [`reference::nested8_row_dot`]).
pub type Nested8MatvecFn = fn(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]);
/// Prefill: `out[t * len + i] = row (first + i) · token t`, `len = out.len() / acts.n`.
pub type Nested8MatmulFn = fn(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]);

/// Decode attention of one query head: see [`vector::attend_head`], the definition.
/// The copy of a 2-, 3- or 4-bit view that a table's kernels read: equal to
/// [`crate::blocks::repack_top`]`(view_bits, planes, numel)`, however it is computed.
pub type RepackFn = fn(view_bits: u8, planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8>;

/// The low-nibble plane of an 8-bit view that a table's 8-bit kernels read: equal to
/// [`crate::blocks::low_nibbles`]`(planes, numel)`.
pub type NibblesFn = fn(planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8>;

/// SwiGLU's gate in place: see [`vector::swiglu`], the definition.
pub type SwigluFn = fn(gate: &mut [f32], up: &[f32]);

pub type AttendHeadFn = fn(q: &[f32], keys: &[f32], values: &[f32], stride: usize, scale: f32, scores: &mut [f32], out: &mut [f32]);

/// Function pointers for every product the model runs.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// What filled the table, e.g. `"scalar"`, `"avx2"`, `"neon+dotprod"`.
    pub name: &'static str,
    pub quantize_acts: QuantizeActsFn,
    /// Indexed by [`view_index`] (2, 3, 4, 5, 6, 8 bits).
    pub nested8_matvec: [Nested8MatvecFn; VIEW_SLOTS],
    pub nested8_matmul: [Nested8MatmulFn; VIEW_SLOTS],
    /// Set when this table's 2-, 3- and 4-bit kernels read [`Nested8::repacked`] (groups of a
    /// multiple of 32): [`super::Matrix::from_tensor`] makes the copy with it at load.
    pub repack: Option<RepackFn>,
    /// Set when this table's 8-bit kernels read [`Nested8::low`] (groups of a multiple of 32)
    /// through [`Nested8::kernel_form`]: [`super::Matrix::from_tensor`] builds it at load.
    pub nibbles: Option<NibblesFn>,
    /// Decode attention of one head (f32; bit-identical in every table).
    pub attend_head: AttendHeadFn,
    /// SwiGLU's elementwise step (f32; bit-identical in every table).
    pub swiglu: SwigluFn,
}

impl core::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kernels").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Slots of the per-view arrays: one per [`crate::blocks::NESTED8_VIEWS`].
pub const VIEW_SLOTS: usize = crate::blocks::NESTED8_VIEWS.len();

/// Slot of a view in the per-view arrays (its place in [`crate::blocks::NESTED8_VIEWS`]; the
/// 8-bit slot for anything else).
pub fn view_index(view_bits: u8) -> usize {
    crate::blocks::NESTED8_VIEWS.iter().position(|&v| v == view_bits).unwrap_or(VIEW_SLOTS - 1)
}

impl Kernels {
    /// The scalar reference everywhere.
    pub const SCALAR: Kernels = Kernels {
        name: "scalar",
        quantize_acts: reference::quantize_acts,
        nested8_matvec: [reference::nested8_matvec; VIEW_SLOTS],
        nested8_matmul: [reference::nested8_matmul; VIEW_SLOTS],
        repack: None,
        nibbles: None,
        attend_head: vector::attend_head,
        swiglu: vector::swiglu,
    };

    /// The reference arithmetic with each group's codes unpacked once ([`portable`]):
    /// bit-identical to [`Kernels::SCALAR`], what CPUs without a SIMD table run.
    pub const PORTABLE: Kernels = Kernels {
        name: "portable",
        quantize_acts: reference::quantize_acts,
        nested8_matvec: [portable::nested8_matvec; VIEW_SLOTS],
        nested8_matmul: [portable::nested8_matmul; VIEW_SLOTS],
        repack: None,
        nibbles: None,
        attend_head: vector::attend_head,
        swiglu: vector::swiglu,
    };

    /// The best table for this CPU (probed once with `std`).
    pub fn detect() -> Kernels {
        #[allow(unused_mut)]
        let mut k = Kernels::PORTABLE;
        #[cfg(target_arch = "x86_64")]
        super::x86_64::plug(&mut k);
        #[cfg(target_arch = "aarch64")]
        super::aarch64::plug(&mut k);
        k
    }

    /// Every table this architecture defines, each built on top of the scalar one, with `None`
    /// where this CPU lacks the features (name, table): the kernel tests run each against the
    /// reference and report the missing ones.
    pub fn variants() -> alloc::vec::Vec<(&'static str, Option<Kernels>)> {
        #[allow(unused_mut)]
        let mut v = alloc::vec![("scalar", Some(Kernels::SCALAR)), ("portable", Some(Kernels::PORTABLE))];
        #[cfg(target_arch = "x86_64")]
        super::x86_64::variants(&mut v);
        #[cfg(target_arch = "aarch64")]
        super::aarch64::variants(&mut v);
        v
    }
}

/// Whether nested weights meet f32 activations instead of int8 ones (measurement only: the
/// weights' own quality, as a round-to-nearest f16 baseline is measured; slow).
static FLOAT_ACTIVATIONS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Multiply nested weights with f32 activations (rows dequantized, as float weights are) instead
/// of int8-quantized ones: isolates weight quantization error from activation rounding when
/// comparing views with float baselines. Also set by `EDGE_RUN_KERNELS=float` (std).
pub fn set_float_activations(on: bool) {
    FLOAT_ACTIVATIONS.store(on, core::sync::atomic::Ordering::Relaxed);
}

/// See [`set_float_activations`] and [`with_float_activations`].
pub fn float_activations() -> bool {
    #[cfg(feature = "std")]
    {
        let _ = kernels();
        if FLOAT_HERE.with(|f| f.get()) {
            return true;
        }
    }
    FLOAT_ACTIVATIONS.load(core::sync::atomic::Ordering::Relaxed)
}

#[cfg(feature = "std")]
std::thread_local! {
    static FLOAT_HERE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Run `f` with nested weights meeting f32 activations on this thread only (models loaded and
/// products called from it; the pool's workers run what it hands them). The sensitivity
/// profile measures with it: with int8 activations, lowering any one layer flips activation
/// roundings downstream, a KL floor that does not shrink with the weights' error.
#[cfg(feature = "std")]
pub fn with_float_activations<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FLOAT_HERE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FLOAT_HERE.with(|c| c.replace(true)));
    f()
}

#[cfg(feature = "std")]
static SELECTED: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();

/// The table the products use: [`Kernels::detect`] once, or the scalar reference when the
/// environment variable `EDGE_RUN_KERNELS=scalar` is set (to compare outputs;
/// `portable` picks [`Kernels::PORTABLE`]; `float` multiplies nested weights with f32
/// activations, see [`set_float_activations`]; the name of another table this CPU runs, such
/// as `avx2` on an AVX-512 CPU, picks that table; a table it cannot run, or an unknown name,
/// falls back to [`Kernels::detect`]).
#[cfg(feature = "std")]
pub fn kernels() -> Kernels {
    *SELECTED.get_or_init(|| match std::env::var("EDGE_RUN_KERNELS").as_deref() {
        Ok("scalar") => Kernels::SCALAR,
        Ok("portable") => Kernels::PORTABLE,
        Ok("float") => {
            set_float_activations(true);
            Kernels::PORTABLE
        }
        Ok(name) => Kernels::variants()
            .into_iter()
            .find_map(|(n, k)| if n == name { k } else { None })
            .unwrap_or_else(Kernels::detect),
        _ => Kernels::detect(),
    })
}

/// The table the products use: without std, `detect` consults only the features enabled at
/// compile time (`-C target-feature=+avx2,+fma`, `+dotprod`), which costs nothing to repeat.
#[cfg(not(feature = "std"))]
pub fn kernels() -> Kernels {
    Kernels::detect()
}
