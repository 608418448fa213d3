//! Flip random bits in the stored bytes a view reads, for the robustness measurement of
//! docs/RESULTS.md (issue 20): `cargo run --release -p edge-runtime --example flip_bits --
//! IN.edge OUT.edge RATE BITS SEED`. RATE is the fraction of the view's bits flipped (each
//! nested tensor's group parameters and the planes the BITS-bit view reads; every byte of the
//! other tensors), BITS the view (2-8), SEED the generator's seed. Checksums are left as
//! stored, so a verifying reader must catch every flip. Prints the number of bits flipped.
use edge_runtime::format::{Encoding, SegmentKind};

fn fail(msg: String) -> ! {
    eprintln!("flip_bits: error: {msg}");
    std::process::exit(1);
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, rate, bits, seed] = a.as_slice() else {
        fail("usage: flip_bits IN.edge OUT.edge RATE BITS SEED".into());
    };
    let rate: f64 = rate.parse().ok().filter(|r: &f64| (0.0..=1.0).contains(r)).unwrap_or_else(|| fail(format!("RATE '{rate}' is not a fraction in 0..1")));
    let bits: u8 = bits.parse().ok().filter(|b| edge_runtime::blocks::is_nested8_view(*b)).unwrap_or_else(|| fail(format!("BITS '{bits}' is not a view (2, 3, 4, 5, 6 or 8)")));
    let mut s: u64 = seed.parse::<u64>().unwrap_or_else(|_| fail(format!("SEED '{seed}' is not a number"))) | 1;
    let mut bytes = std::fs::read(input).unwrap_or_else(|e| fail(format!("cannot read {input}: {e}")));
    let ranges: Vec<(usize, usize)> = {
        let ck = edge_runtime::Checkpoint::parse(&bytes).unwrap_or_else(|e| fail(format!("{input}: {e}")));
        let base = bytes.as_ptr() as usize;
        let planes = edge_runtime::blocks::nested8_planes_for_view(bits).unwrap_or(6);
        let mut out = Vec::new();
        for t in &ck.tensors {
            let mut plane = 0;
            for s in &t.segments {
                if s.kind == SegmentKind::Plane {
                    plane += 1;
                    if t.encoding == Encoding::Nested8 && plane > planes {
                        continue;
                    }
                }
                out.push((s.bytes.as_ptr() as usize - base, s.bytes.len()));
            }
        }
        out
    };
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let flips = ((total * 8) as f64 * rate).round().max(1.0) as usize;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..flips {
        let mut k = (next() % total as u64) as usize;
        let Some(&(offset, _)) = ranges.iter().find(|r| if k < r.1 { true } else { k -= r.1; false }) else { break };
        bytes[offset + k] ^= 1 << (next() % 8);
    }
    std::fs::write(output, &bytes).unwrap_or_else(|e| fail(format!("cannot write {output}: {e}")));
    println!("{flips}");
}
