//! Flip random bits in the stored bytes a view reads, for the robustness measurement of
//! docs/RESULTS.md (issue 20): `cargo run --release -p edge-runtime --example flip_bits --
//! IN.edge OUT.edge RATE BITS SEED`. RATE is the fraction of the view's bits flipped (each
//! nested tensor's group parameters and the planes the BITS-bit view reads; every byte of the
//! other tensors), BITS the view (2-8), SEED the generator's seed. Checksums are left as
//! stored, so a verifying reader must catch every flip. Prints the number of bits flipped.
use edge_runtime::format::{Encoding, SegmentKind};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, rate, bits, seed] = a.as_slice() else {
        eprintln!("usage: flip_bits IN.edge OUT.edge RATE BITS SEED");
        std::process::exit(2);
    };
    let (rate, bits, mut s): (f64, u8, u64) = (rate.parse().unwrap(), bits.parse().unwrap(), seed.parse::<u64>().unwrap() | 1);
    let mut bytes = std::fs::read(input).unwrap();
    let ranges: Vec<(usize, usize)> = {
        let ck = edge_runtime::Checkpoint::parse(&bytes).unwrap();
        let base = bytes.as_ptr() as usize;
        let planes = edge_runtime::blocks::nested8_planes_for_view(bits).unwrap();
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
        let &(offset, _) = ranges.iter().find(|r| if k < r.1 { true } else { k -= r.1; false }).unwrap();
        bytes[offset + k] ^= 1 << (next() % 8);
    }
    std::fs::write(output, &bytes).unwrap();
    println!("{flips}");
}
