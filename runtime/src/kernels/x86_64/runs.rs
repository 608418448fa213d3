//! Reading the runs of a view prepared as `Prepared::Runs` ([`crate::blocks::repack_top`]): a
//! run's 8 fields of 32 codes from its words, on 256 bits (one run) or 512 bits (two runs side
//! by side). Decode multiplies the fields with part A as they come
//! out; prefill transposes them back to natural order ([`super::repack`]).

use core::arch::x86_64::*;

/// The 8 fields of a [`crate::blocks::repack_top`] run of `$bits` (2, 3 or 4) bits per code
/// from its words `$a..$d`, with the given vector operations (one definition for
/// [`run_fields`] on 256 bits and [`run_fields512`] on two runs side by side).
macro_rules! fields_of_run {
    ($bits:expr, [$a:ident, $b:ident, $c:ident, $d:ident], $and:ident, $or:ident, $srli:ident, $set1:ident) => {
        match $bits {
            2 => {
                let m = $set1(3);
                [
                    $and($a, m),
                    $and($srli::<2>($a), m),
                    $and($srli::<4>($a), m),
                    $and($srli::<6>($a), m),
                    $and($b, m),
                    $and($srli::<2>($b), m),
                    $and($srli::<4>($b), m),
                    $and($srli::<6>($b), m),
                ]
            }
            3 => {
                let (m7, m3, m4) = ($set1(7), $set1(3), $set1(4));
                [
                    $and($a, m7),
                    $and($srli::<3>($a), m7),
                    $and($b, m7),
                    $and($srli::<3>($b), m7),
                    $and($c, m7),
                    $and($srli::<3>($c), m7),
                    $or($and($srli::<6>($a), m3), $and($srli::<4>($c), m4)),
                    $or($and($srli::<6>($b), m3), $and($srli::<5>($c), m4)),
                ]
            }
            _ => {
                let m = $set1(15);
                [
                    $and($a, m),
                    $and($srli::<4>($a), m),
                    $and($b, m),
                    $and($srli::<4>($b), m),
                    $and($c, m),
                    $and($srli::<4>($c), m),
                    $and($d, m),
                    $and($srli::<4>($d), m),
                ]
            }
        }
    };
}

/// The 8 fields of a [`crate::blocks::repack_top`] run of view `V` (2, 3 or 4 bits) from its
/// words (`regs[4..4 + bits]`): byte `4m + c` of field `r` is code
/// `32·PI[m] + 8·(r / 2) + 2c + r mod 2`, part A's source-3 order (register `r`). 16-bit shifts
/// move bits across bytes, but each mask keeps only bits of the byte's own.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn run_fields<const V: u8>(regs: [__m256i; 8]) -> [__m256i; 8] {
    let [_, _, _, _, a, b, c, d] = regs;
    fields_of_run!(V, [a, b, c, d], _mm256_and_si256, _mm256_or_si256, _mm256_srli_epi16, _mm256_set1_epi8)
}

/// [`run_fields`] on two runs side by side (words `regs[..bits]`, run `j` in the low 256 bits).
///
/// # Safety
/// The CPU supports AVX512F and AVX512BW.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
pub(super) unsafe fn run_fields512<const V: u8>(regs: [__m512i; 4]) -> [__m512i; 8] {
    let [a, b, c, d] = regs;
    fields_of_run!(V, [a, b, c, d], _mm512_and_si512, _mm512_or_si512, _mm512_srli_epi16, _mm512_set1_epi8)
}
