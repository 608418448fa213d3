//! Number flags of both command lines (edge-pack's and edge-run's): each parsed against its
//! range in one place, with a one-line message that says what the number is and which values it
//! takes. NaN and infinities are never a value.

/// A whole number from `lo` to `hi`; otherwise "'S' is not WHAT; give a whole number from LO to
/// HI" and `hint` (e.g. "; 0 skips the test").
pub fn whole(s: &str, lo: u64, hi: u64, what: &str, hint: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not {what}; give a whole number from {lo} to {hi}{hint}")),
    }
}

/// A finite number in `lo < x <= hi`; otherwise "'S' is not WHAT; give a number above LO and at
/// most HI" and `hint`.
pub fn above_at_most(s: &str, lo: f64, hi: f64, what: &str, hint: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > lo && x <= hi => Ok(x),
        _ => Err(format!("'{s}' is not {what}; give a number above {lo} and at most {hi}{hint}")),
    }
}

/// A random seed: any whole number that fits 64 bits.
pub fn seed(s: &str) -> Result<u64, String> {
    whole(s, 0, u64::MAX, "a seed", "")
}

/// A group size of nested 8-bit weights (`--group-size`): a positive multiple of 8 (the bit
/// planes hold 8 codes a byte) and at most [`MAX_GROUP_SIZE`]; the packer refuses, once it knows
/// the rows, a group wider than them.
pub fn group_size(s: &str) -> Result<u32, String> {
    let bad = || format!("group size {s} is invalid: it must be a positive multiple of 8, at most {MAX_GROUP_SIZE} (64 is usual)");
    match s.trim().parse::<u32>() {
        Ok(g) if g > 0 && g.is_multiple_of(8) && g <= MAX_GROUP_SIZE => Ok(g),
        _ => Err(bad()),
    }
}

/// The widest group `--group-size` takes (wider than the rows of any model edge-run runs).
pub const MAX_GROUP_SIZE: u32 = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_messages() {
        assert_eq!(whole("7", 1, 8, "a count", ""), Ok(7));
        for bad in ["0", "9", "-1", "x", "1.5", ""] {
            let e = whole(bad, 1, 8, "a count", "; 4 is usual").unwrap_err();
            assert_eq!(e, format!("'{bad}' is not a count; give a whole number from 1 to 8; 4 is usual"));
        }
        assert_eq!(above_at_most("0.5", 0.0, 1.0, "p", ""), Ok(0.5));
        for bad in ["0", "1.01", "NaN", "inf", "-inf", "x"] {
            assert!(above_at_most(bad, 0.0, 1.0, "p", "").is_err(), "{bad}");
        }
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
        assert!(seed("18446744073709551616").is_err() && seed("-1").is_err());
        assert_eq!(group_size("64"), Ok(64));
        for bad in ["0", "12", "-8", "131072", "x"] {
            assert!(group_size(bad).unwrap_err().contains(&format!("group size {bad} is invalid")), "{bad}");
        }
    }
}
