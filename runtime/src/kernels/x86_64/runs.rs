//! Reading the runs of a view prepared as `Prepared::Runs` ([`crate::blocks::repack_top`]): a
//! run's 8 fields of 32 codes from its words. Decode multiplies the fields with part A as they
//! come out; prefill transposes them back to natural order ([`super::repack`]).

use core::arch::x86_64::*;

/// Most words of a run: an 8-bit view's.
pub(super) const MAX_RUN_WORDS: usize = 8;

/// The 8 fields of a [`crate::blocks::repack_top`] run of view `V` (2 to 6 or 8 bits) from its
/// words (`words[..V]`; the others are not read): byte `4m + c` of field `r` is code
/// `32·PI[m] + 8·(r / 2) + 2c + r mod 2`, part A's source-3 order (register `r`).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn run_fields<const V: u8>(words: [__m256i; MAX_RUN_WORDS]) -> [__m256i; 8] {
    // 16-bit shifts move bits across bytes, but each mask keeps only bits of the byte's own.
    let [a, b, c, d, e, f, _, _] = words;
    match V {
        // Whole bytes: the words are the fields.
        8 => words,
        2 => {
            let m = _mm256_set1_epi8(3);
            [
                _mm256_and_si256(a, m),
                _mm256_and_si256(_mm256_srli_epi16::<2>(a), m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(a), m),
                _mm256_and_si256(_mm256_srli_epi16::<6>(a), m),
                _mm256_and_si256(b, m),
                _mm256_and_si256(_mm256_srli_epi16::<2>(b), m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(b), m),
                _mm256_and_si256(_mm256_srli_epi16::<6>(b), m),
            ]
        }
        3 => {
            let (m7, m3, m4) = (_mm256_set1_epi8(7), _mm256_set1_epi8(3), _mm256_set1_epi8(4));
            [
                _mm256_and_si256(a, m7),
                _mm256_and_si256(_mm256_srli_epi16::<3>(a), m7),
                _mm256_and_si256(b, m7),
                _mm256_and_si256(_mm256_srli_epi16::<3>(b), m7),
                _mm256_and_si256(c, m7),
                _mm256_and_si256(_mm256_srli_epi16::<3>(c), m7),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<6>(a), m3), _mm256_and_si256(_mm256_srli_epi16::<4>(c), m4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<6>(b), m3), _mm256_and_si256(_mm256_srli_epi16::<5>(c), m4)),
            ]
        }
        4 => {
            let m = _mm256_set1_epi8(15);
            [
                _mm256_and_si256(a, m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(a), m),
                _mm256_and_si256(b, m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(b), m),
                _mm256_and_si256(c, m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(c), m),
                _mm256_and_si256(d, m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(d), m),
            ]
        }
        5 => {
            // F0..F4 in the low 5 bits of words 0..4; F5..F7 pieced from their top 3 bits.
            let (m31, m7, m24, m8, m16) = (_mm256_set1_epi8(31), _mm256_set1_epi8(7), _mm256_set1_epi8(0x18), _mm256_set1_epi8(8), _mm256_set1_epi8(0x10));
            [
                _mm256_and_si256(a, m31),
                _mm256_and_si256(b, m31),
                _mm256_and_si256(c, m31),
                _mm256_and_si256(d, m31),
                _mm256_and_si256(e, m31),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<5>(a), m7), _mm256_and_si256(_mm256_srli_epi16::<2>(d), m24)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<5>(b), m7), _mm256_and_si256(_mm256_srli_epi16::<2>(e), m24)),
                _mm256_or_si256(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<5>(c), m7), _mm256_and_si256(_mm256_srli_epi16::<4>(d), m8)), _mm256_and_si256(_mm256_srli_epi16::<3>(e), m16)),
            ]
        }
        _ => {
            // F0..F5 in the low 6 bits of words 0..5; F6 (F7) from the top 2 bits of words
            // 0, 2, 4 (1, 3, 5), low bits first.
            let (m63, m3, m12, m48) = (_mm256_set1_epi8(63), _mm256_set1_epi8(3), _mm256_set1_epi8(12), _mm256_set1_epi8(48));
            [
                _mm256_and_si256(a, m63),
                _mm256_and_si256(b, m63),
                _mm256_and_si256(c, m63),
                _mm256_and_si256(d, m63),
                _mm256_and_si256(e, m63),
                _mm256_and_si256(f, m63),
                _mm256_or_si256(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<6>(a), m3), _mm256_and_si256(_mm256_srli_epi16::<4>(c), m12)), _mm256_and_si256(_mm256_srli_epi16::<2>(e), m48)),
                _mm256_or_si256(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<6>(b), m3), _mm256_and_si256(_mm256_srli_epi16::<4>(d), m12)), _mm256_and_si256(_mm256_srli_epi16::<2>(f), m48)),
            ]
        }
    }
}
