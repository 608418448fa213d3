//! Choosing the kernel table: [`Kernels`] (defined in [`super::frame`]) is filled with the
//! scalar reference, then each architecture's `plug` overwrites the entries its CPU can serve.
//! With `std` the CPU is probed once at first use; without `std` only features enabled at
//! compile time (`-C target-feature`) are used.
//!
//! Every SIMD kernel is a private `#[target_feature]` function of its architecture's module,
//! reachable only through this table, which is only ever filled after the CPU reported the
//! feature.

pub use super::frame::{
    view_index, AttendHeadFn, GegluFn, Kernels, KvRowsFn, Nested8MatmulFn, Nested8MatvecFn, NibblesFn, QuantizeActsFn, RepackFn, SwigluFn,
    VIEW_SLOTS,
};
use super::{portable, reference, vector};

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
        geglu: vector::geglu,
        softmax_rows: vector::softmax_rows,
        kv_rows: vector::kv_rows,
    };

    /// The reference arithmetic with each group's codes unpacked once (`portable.rs`):
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
        geglu: vector::geglu,
        softmax_rows: vector::softmax_rows,
        kv_rows: vector::kv_rows,
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
