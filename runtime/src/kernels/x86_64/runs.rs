//! Reading the runs of a view prepared as `Prepared::Runs` ([`crate::blocks::repack_top`]): a
//! run's 8 fields of 32 codes from its words, on 256 bits (one run) or 512 bits (two runs side
//! by side). Decode multiplies the fields with part A as they come
//! out; prefill transposes them back to natural order ([`super::repack`]).

use core::arch::x86_64::*;

/// The 8 fields of a [`crate::blocks::repack_top`] run of `$bits` (2 to 6) bits per code from
/// its words `$a..$f`, with the given vector operations (one definition for [`run_fields`] on
/// 256 bits and [`run_fields512`] on two runs side by side). 16-bit shifts move bits across
/// bytes, but each mask keeps only bits of the byte's own.
macro_rules! fields_of_run {
    ($bits:expr, [$a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident], $and:ident, $or:ident, $srli:ident, $set1:ident) => {
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
            4 => {
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
            5 => {
                // F0..F4 in the low 5 bits of words 0..4; F5..F7 pieced from their top 3 bits.
                let (m31, m7, m24, m8, m16) = ($set1(31), $set1(7), $set1(0x18), $set1(8), $set1(0x10));
                [
                    $and($a, m31),
                    $and($b, m31),
                    $and($c, m31),
                    $and($d, m31),
                    $and($e, m31),
                    $or($and($srli::<5>($a), m7), $and($srli::<2>($d), m24)),
                    $or($and($srli::<5>($b), m7), $and($srli::<2>($e), m24)),
                    $or($or($and($srli::<5>($c), m7), $and($srli::<4>($d), m8)), $and($srli::<3>($e), m16)),
                ]
            }
            _ => {
                // F0..F5 in the low 6 bits of words 0..5; F6 (F7) from the top 2 bits of words
                // 0, 2, 4 (1, 3, 5), low bits first.
                let (m63, m3, m12, m48) = ($set1(63), $set1(3), $set1(12), $set1(48));
                [
                    $and($a, m63),
                    $and($b, m63),
                    $and($c, m63),
                    $and($d, m63),
                    $and($e, m63),
                    $and($f, m63),
                    $or($or($and($srli::<6>($a), m3), $and($srli::<4>($c), m12)), $and($srli::<2>($e), m48)),
                    $or($or($and($srli::<6>($b), m3), $and($srli::<4>($d), m12)), $and($srli::<2>($f), m48)),
                ]
            }
        }
    };
}

/// Most words of a run: a 6-bit view's.
pub(super) const MAX_RUN_WORDS: usize = 6;

/// The 8 fields of a [`crate::blocks::repack_top`] run of view `V` (2 to 6 bits) from its
/// words (`words[..V]`; the others are not read): byte `4m + c` of field `r` is code
/// `32·PI[m] + 8·(r / 2) + 2c + r mod 2`, part A's source-3 order (register `r`).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn run_fields<const V: u8>(words: [__m256i; MAX_RUN_WORDS]) -> [__m256i; 8] {
    let [a, b, c, d, e, f] = words;
    fields_of_run!(V, [a, b, c, d, e, f], _mm256_and_si256, _mm256_or_si256, _mm256_srli_epi16, _mm256_set1_epi8)
}

/// [`run_fields`] on two runs side by side (words `words[..V]`, run `j` in the low 256 bits).
///
/// # Safety
/// The CPU supports AVX512F and AVX512BW.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
pub(super) unsafe fn run_fields512<const V: u8>(words: [__m512i; MAX_RUN_WORDS]) -> [__m512i; 8] {
    let [a, b, c, d, e, f] = words;
    fields_of_run!(V, [a, b, c, d, e, f], _mm512_and_si512, _mm512_or_si512, _mm512_srli_epi16, _mm512_set1_epi8)
}
